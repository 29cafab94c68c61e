"""`recserve serve`: start a local Ray cluster on 127.0.0.1 and deploy serve_config.yaml onto it.

This is what `serve run serve_config.yaml` does, with Ray bound to the loopback address, the
dashboard off, and the metrics export port fixed. Stopping (Ctrl-C or SIGTERM) shuts Serve down and
stops the Ray processes this driver started; nobody else's.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from stores.postgres import resolve_dsn
from stores.settings import REPO_ROOT, Settings

DEFAULT_CONFIG = REPO_ROOT / "serve_config.yaml"
# Ray Serve's throughput-optimized settings (its "Performance Tuning" guide), less direct ingress, which would
# have every ingress replica open HTTP and gRPC ports of its own instead of the proxy's one on 127.0.0.1.
# They halve a fusion request's latency on the 2-core benchmark machine (BENCHMARKS.md). Read by every Ray
# process at start, so they are set before Ray starts; a value already in the environment wins.
SERVE_FAST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # user code on the replica's event loop: no thread hop
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",  # handle calls routed on the caller's loop: no thread hop
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",  # deployment handles call each other over gRPC, by value
}
log = logging.getLogger(__name__)


def load_serve_config(path: Path, http_port: int | None = None, namespace: str | None = None) -> Any:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text())
    if http_port is not None:
        raw.setdefault("http_options", {})["port"] = http_port
    if namespace is not None:
        for application in raw["applications"]:
            application.setdefault("args", {})["namespace"] = namespace
    return ServeDeploySchema.model_validate(raw)


def start(settings: Settings, config_path: Path = DEFAULT_CONFIG, http_port: int | None = None, timeout_s: float = 180):
    """Start Ray + Serve and wait until every application is RUNNING. Returns the deployed config."""
    if settings.serve_fast_path:
        for name, value in SERVE_FAST_PATH_ENV.items():
            os.environ.setdefault(name, value)
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run <config>` itself calls
    from ray.serve._private.constants import SERVE_NAMESPACE

    # Replicas inherit the environment: one DSN for all of them (embedded server started once here).
    os.environ["DATABASE_URL"] = resolve_dsn(settings)
    os.environ["RECSERVE_NAMESPACE"] = settings.namespace
    config = load_serve_config(config_path, http_port, settings.namespace)
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(
        namespace=SERVE_NAMESPACE,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=settings.metrics_port,
        configure_logging=False,
    )
    # ray.init installs a native fatal-signal handler that kills this process on SIGTERM before
    # stop() can run, orphaning Ray's agents; ours turns SIGTERM into a clean shutdown instead.
    signal.signal(signal.SIGTERM, handler)
    client = serve_api.serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    # Not Serve's own blocking wait: it gives up after 60 s, which a busy 2-core machine can exceed.
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = {name: app.status for name, app in serve.status().applications.items()}
        if statuses and all(s == "RUNNING" for s in statuses.values()):
            return config
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            raise RuntimeError(f"deployment failed: {serve.status().applications}")
        time.sleep(1)
    raise TimeoutError(f"Serve applications not RUNNING after {timeout_s:.0f} s: {serve.status().applications}")


def rollout(model: str, version: str, settings: Settings, address: str = "auto", timeout_s: float = 120) -> str:
    """Serve `version` of `model` on the running cluster: what `serve deploy` does after an edit of that
    deployment's user_config (deployments/rollouts.py). Returns the version the replicas now report."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    from deployments.rollouts import ARTIFACT_DEPLOYMENTS, deploy_user_config
    from stores.artifacts import ArtifactStore

    if model not in ARTIFACT_DEPLOYMENTS:
        raise ValueError(f"unknown model {model!r}; known: {sorted(ARTIFACT_DEPLOYMENTS)}")
    # Fails before deploying when the version does not exist; "current" resolves to its version name.
    expected = ArtifactStore(settings.artifacts_dir, settings.namespace).resolve(model, version).name
    deployment, key = ARTIFACT_DEPLOYMENTS[model]
    ray.init(address=address, namespace=SERVE_NAMESPACE, configure_logging=False)
    try:
        deploy_user_config(deployment, {key: expected})  # resolved: "current" twice would change nothing
        return _wait_for_version(deployment, expected, timeout_s)
    finally:
        ray.shutdown()


def set_ab(fusion_share: float, salt: str | None = None, address: str = "auto", timeout_s: float = 60):
    """Change the ingress's A/B split on the running cluster through its user_config, as `serve deploy`
    would: Serve reconfigures the ingress replicas in place. Returns the settings they now report."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_NAMESPACE

    from deployments.rollouts import deploy_user_config
    from fusion.assignment import ABSettings

    update = {"fusion_share": fusion_share, **({"salt": salt} if salt else {})}
    ABSettings.model_validate(update)  # a bad share fails here, not in the replicas
    ray.init(address=address, namespace=SERVE_NAMESPACE, configure_logging=False)
    try:
        deploy_user_config("Ingress", update)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for app_name in serve.status().applications:
                reported = serve.get_deployment_handle("Ingress", app_name).ab_settings.remote().result(timeout_s=10)
                if reported.fusion_share == fusion_share and (salt is None or reported.salt == salt):
                    return reported
            time.sleep(0.5)
        raise TimeoutError(f"the ingress did not report fusion_share {fusion_share} within {timeout_s:.0f} s")
    finally:
        ray.shutdown()


def _wait_for_version(deployment: str, version: str, timeout_s: float) -> str:
    """Until Serve calls the deployment healthy again and a replica reports serving `version`."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    client = _get_global_client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = ServeInstanceDetails(**client.get_serve_details())
        for app_name, application in details.applications.items():
            state = application.deployments.get(deployment)
            if state is not None and state.status == "HEALTHY":
                served = serve.get_deployment_handle(deployment, app_name).served_version.remote().result(timeout_s=10)
                if served == version:
                    return version
        time.sleep(0.5)
    raise TimeoutError(f"{deployment} did not report version {version} within {timeout_s:.0f} s")


def stop() -> None:
    """Shut Serve and Ray down, then reap any Ray process this driver started that outlived it.

    Ray's agents can outlive `ray.shutdown()` as orphans; only our own descendants are touched.
    """
    import psutil
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    ours = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    log.info("stopping Serve and %d Ray processes", len(ours))
    serve.shutdown()
    ray.shutdown()
    _, alive = psutil.wait_procs(ours, timeout=10)
    if alive:
        log.info("reaping %d Ray processes that outlived ray.shutdown(): %s", len(alive), [p.pid for p in alive])
    for process in alive:
        process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for process in alive:
        process.kill()


def _is_ray_process(process) -> bool:
    try:
        return "ray" in " ".join(process.cmdline()[:3]).lower()
    except Exception:  # noqa: BLE001 - it exited meanwhile
        return False


@contextmanager
def running(settings: Settings, config_path: Path = DEFAULT_CONFIG, http_port: int | None = None) -> Iterator[Any]:
    """Serve for the duration of the block; Ctrl-C and SIGTERM end it cleanly. Stopped while it is still starting,
    it exits with status 130 (the block never runs)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            config = start(settings, config_path, http_port)
        except KeyboardInterrupt:
            log.info("stopped while starting")
            raise SystemExit(130) from None
        try:
            yield config
        except KeyboardInterrupt:
            pass
    finally:
        stop()


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_forever(settings: Settings, config_path: Path = DEFAULT_CONFIG, http_port: int | None = None) -> None:
    with running(settings, config_path, http_port) as config:
        print(
            f"recserve is serving on http://{config.http_options.host}:{config.http_options.port} (OpenAPI: /docs); "
            f"metrics on 127.0.0.1:{settings.metrics_port}/metrics. Ctrl-C stops it.",
            flush=True,
        )
        while True:
            time.sleep(3600)
