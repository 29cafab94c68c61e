"""Fault drills under Locust load: break one thing at a time, put it back, and measure what callers saw.

    python -m loadtests.drills [--drills kill_replica slow_model vector_store_down postgres_down rollout]
                               [--namespace demo] [--users 4] [--fault-s 20] [--out reports/drills]

It starts the app (as `recserve serve` does), runs the locustfile's traffic throughout, and for each drill:
injects the fault, holds it for `--fault-s`, clears it, and waits until the app has recovered. From the
per-request log it reports, per drill: requests and errors from the fault until recovery (503 answers
that carry Retry-After are counted apart, as refusals: they are the designed answer while a dependency is
down), p99 while the fault held, and the time to recover after it was cleared. At the end every
interaction the app acknowledged (201) is looked up in PostgreSQL by its idempotency key: acknowledged
must equal stored.

- kill_replica: ray.kill of a model replica (HGT); Serve starts a new one, the cascade covers the gap.
- slow_model: LightGCN's recommend made 2 s slow (user_config.fault_delay_ms); its stage times out.
- vector_store_down: the embedded vector store's folder moved away; the content stage falls through.
- postgres_down: the embedded PostgreSQL stopped; interactions get 503 + Retry-After, recommendations go
  on; then it is started again. Needs the embedded server (DATABASE_URL unset): a server the drill does
  not own is never stopped.
- rollout: a newly trained popularity version rolled out through user_config.
- fuzz: schemathesis generates requests from the OpenAPI spec (beside the load); no answer may be a 5xx.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests

from stores.settings import REPO_ROOT, Settings, get_settings

HERE = Path(__file__).resolve().parent
DRILLS = ("kill_replica", "slow_model", "vector_store_down", "postgres_down", "rollout", "fuzz")


@dataclass
class Window:
    drill: str
    fault_at: float
    cleared_at: float = 0.0
    recovered_at: float = 0.0
    notes: dict = field(default_factory=dict)


class Drills:
    def __init__(self, settings: Settings, base: str, fault_s: float, out: Path):
        self.settings, self.base, self.fault_s, self.out = settings, base, fault_s, out

    # -- probes ------------------------------------------------------------------------------------
    def status(self) -> dict:
        return requests.get(f"{self.base}/v1/status", timeout=10).json()

    def wait_until(self, done: Callable[[], bool], timeout_s: float = 180) -> float:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if done():
                    return time.time()
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"not recovered within {timeout_s:.0f} s")

    def stage_outcome(self, model: str) -> str | None:
        """How `model` did in a fusion request (every source is asked)."""
        body = {"k": 5, "strategy": "fusion", "context": {"device": "mobile"}, "session_items": []}
        answer = requests.post(f"{self.base}/v1/recommend", json=body, timeout=30).json()
        return next((a["outcome"] for a in answer["models_tried"] if a["model"] == model), None)

    # -- the drills ----------------------------------------------------------------------------------
    def kill_replica(self) -> Window:
        import ray
        from ray.serve._private.constants import SERVE_NAMESPACE
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeInstanceDetails

        def replicas() -> list:
            details = ServeInstanceDetails(**_get_global_client().get_serve_details())
            deployment = details.applications["recserve"].deployments["HGTDeployment"]
            return [r for r in deployment.replicas if r.state == "RUNNING"]

        victim = replicas()[0]
        window = Window("kill_replica", time.time(), notes={"replica": victim.replica_id})
        ray.kill(ray.get_actor(victim.actor_name, namespace=SERVE_NAMESPACE), no_restart=True)
        window.cleared_at = window.fault_at  # the fault is the kill itself; Serve does the rest
        window.recovered_at = self.wait_until(
            lambda: any(r.replica_id != victim.replica_id for r in replicas()) and self.status()["models"]["hgt"]["loaded"]
        )
        return window

    def slow_model(self) -> Window:
        from deployments.rollouts import deploy_user_config

        window = Window("slow_model", time.time(), notes={"model": "lightgcn", "delay_ms": 2000})
        deploy_user_config("LightGCNDeployment", {"fault_delay_ms": 2000})
        time.sleep(self.fault_s)
        window.cleared_at = time.time()
        deploy_user_config("LightGCNDeployment", {"fault_delay_ms": 0})
        window.recovered_at = self.wait_until(lambda: self.stage_outcome("lightgcn") in ("served", "too_few"))
        return window

    def vector_store_down(self) -> Window:
        vectors = self.settings.state_dir / "vectors"
        aside = vectors.with_name("vectors.drill")
        window = Window("vector_store_down", time.time())
        vectors.rename(aside)
        try:
            time.sleep(self.fault_s)
        finally:
            window.cleared_at = time.time()
            aside.rename(vectors)
        window.recovered_at = self.wait_until(lambda: self.status()["models"]["content"]["healthy"])
        return window

    def postgres_down(self) -> Window:
        # Through the CLI in fresh processes: pgserver caches its server object per process, so a server
        # stopped here could not be started again from here.
        def db(action: str) -> None:
            subprocess.run([sys.executable, "-m", "pipelines.cli", "db", action], check=True, capture_output=True)

        window = Window("postgres_down", time.time())
        db("stop")
        try:
            time.sleep(self.fault_s)
        finally:
            window.cleared_at = time.time()
            db("start")

        def ingests() -> bool:
            event = {"session_id": "drill-probe", "item_id": self.any_item(), "event_type": "impression"}
            return requests.post(f"{self.base}/v1/interactions", json=event, timeout=10).status_code == 201

        window.recovered_at = self.wait_until(ingests)
        return window

    def rollout(self) -> Window:
        from deployments.rollouts import deploy_user_config
        from pipelines.training import train_model

        version = train_model("popularity", self.settings).version
        window = Window("rollout", time.time(), notes={"model": "popularity", "version": version})
        deploy_user_config("PopularityDeployment", {"version": version})
        window.cleared_at = window.fault_at
        window.recovered_at = self.wait_until(lambda: self.status()["models"]["popularity"]["version"] == version)
        return window

    def fuzz(self) -> Window:
        """schemathesis over the OpenAPI spec, beside the load: no answer may be a 5xx."""
        import xml.etree.ElementTree as ElementTree

        junit = self.out / "fuzz_junit.xml"
        window = Window("fuzz", time.time())
        done = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{self.base}/openapi.json",
             "--checks", "not_a_server_error", "-n", "25", "--generation-deterministic",
             "--report", "junit", "--report-junit-path", str(junit)],
            capture_output=True, text=True,
        )
        window.cleared_at = window.recovered_at = time.time()
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        window.notes = {"operations": int(suite.get("tests", 0)), "server_error_failures": int(suite.get("failures", 0)),
                        "errors": int(suite.get("errors", 0)), "schemathesis_exit": done.returncode}
        (self.out / "fuzz.txt").write_text(done.stdout[-20000:])
        return window

    def any_item(self) -> str:
        if not hasattr(self, "_item"):
            answer = requests.post(f"{self.base}/v1/recommend", json={"k": 1}, timeout=30).json()
            self._item = answer["items"][0]["item_id"]
        return self._item


def summarise(window: Window, log: list[dict]) -> dict:
    during = [r for r in log if window.fault_at <= r["t"] <= window.recovered_at + 1]
    held = [r["ms"] for r in log if window.fault_at <= r["t"] <= max(window.cleared_at, window.fault_at + 1)]
    refusals = sum(r["retry_after"] for r in during)
    errors = sum((r["failed"] or (r["status"] or 0) >= 400) and not r["retry_after"] for r in during)
    return {
        "drill": window.drill,
        "requests": len(during),
        "errors": int(errors),
        "refusals_503_retry_after": int(refusals),
        "p99_ms_during_fault": round(float(np.percentile(held, 99)), 1) if held else None,
        "fault_s": round(window.cleared_at - window.fault_at, 1),
        "recover_s": round(window.recovered_at - window.cleared_at, 1),
        **window.notes,
    }


def acknowledged_vs_stored(log: list[dict], settings: Settings) -> tuple[int, int]:
    from stores.event_store import EventStore
    from stores.postgres import Database

    keys = [r["acknowledged"] for r in log if r.get("acknowledged")]
    return len(keys), EventStore(Database.from_settings(settings)).count_idempotency_keys(keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drills", nargs="+", choices=DRILLS, default=list(DRILLS))
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--fault-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=10.0, help="normal traffic between drills")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "drills")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    drills = list(args.drills)
    if "postgres_down" in drills and settings.database_url:
        print("postgres_down skipped: DATABASE_URL names a server this drill does not own", file=sys.stderr)
        drills.remove("postgres_down")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "requests.jsonl"
    log_path.unlink(missing_ok=True)

    from pipelines import serving

    windows: list[Window] = []
    with serving.running(settings, http_port=args.port):
        base = f"http://127.0.0.1:{args.port}"
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--host", base, "--headless",
             "-u", str(args.users), "-r", str(args.users), "--csv", str(args.out / "run"),
             "--html", str(args.out / "report.html"), "--only-summary"],
            cwd=REPO_ROOT, env={**os.environ, "RECSERVE_NAMESPACE": settings.namespace, "RECSERVE_LOADTEST_LOG": str(log_path)},
        )
        try:
            drill = Drills(settings, base, args.fault_s, args.out)
            time.sleep(args.settle_s)
            for name in drills:
                print(f"== drill {name}", flush=True)
                windows.append(getattr(drill, name)())
                time.sleep(args.settle_s)
        finally:
            locust.send_signal(signal.SIGTERM)
            locust.wait(60)
    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    results = [summarise(w, log) for w in windows]
    acknowledged, stored = acknowledged_vs_stored(log, settings)
    report = {"drills": results, "acknowledged": acknowledged, "stored": stored, "requests": len(log),
              "users": args.users, "fault_s": args.fault_s, "windows": [asdict(w) for w in windows]}
    (args.out / "drills.json").write_text(json.dumps(report, indent=2))
    print("| drill | requests | errors | 503 + Retry-After | p99 ms during fault | fault s | recover s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['drill']} | {r['requests']} | {r['errors']} | {r['refusals_503_retry_after']} | "
              f"{r['p99_ms_during_fault']} | {r['fault_s']} | {r['recover_s']} |")
    print(f"\ninteractions acknowledged {acknowledged}, stored {stored}; {len(log)} requests in all; {args.out / 'drills.json'}")
    return 0 if acknowledged == stored else 1


if __name__ == "__main__":
    sys.exit(main())
