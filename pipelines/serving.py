"""`recserve serve`: start a local Ray cluster on 127.0.0.1 and deploy serve_config.yaml onto it.

This is what `serve run serve_config.yaml` does, with Ray bound to the loopback address, the
dashboard off, and the metrics export port fixed. Stopping (Ctrl-C or SIGTERM) shuts Serve down and
stops the Ray processes this driver started; nobody else's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from stores.postgres import resolve_dsn
from stores.settings import REPO_ROOT, Settings

DEFAULT_CONFIG = REPO_ROOT / "serve_config.yaml"


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
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run <config>` itself calls
    from ray.serve._private.constants import SERVE_NAMESPACE

    # Replicas inherit the environment: one DSN for all of them (embedded server started once here).
    os.environ["DATABASE_URL"] = resolve_dsn(settings)
    os.environ["RECSERVE_NAMESPACE"] = settings.namespace
    config = load_serve_config(config_path, http_port, settings.namespace)
    ray.init(
        namespace=SERVE_NAMESPACE,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=settings.metrics_port,
        configure_logging=False,
    )
    client = serve_api.serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = {name: app.status for name, app in serve.status().applications.items()}
        if statuses and all(s == "RUNNING" for s in statuses.values()):
            return config
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            raise RuntimeError(f"deployment failed: {serve.status().applications}")
        time.sleep(1)
    raise TimeoutError(f"Serve applications not RUNNING after {timeout_s:.0f} s: {serve.status().applications}")


def stop() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_forever(settings: Settings, config_path: Path = DEFAULT_CONFIG, http_port: int | None = None) -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        config = start(settings, config_path, http_port)
        port = config.http_options.port
        print(f"recserve is serving on http://{config.http_options.host}:{port} (OpenAPI: /docs); "
              f"metrics on 127.0.0.1:{settings.metrics_port}/metrics. Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
