"""A real `recserve serve` in a subprocess, for the tests that talk to the Serve app over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(settings: Settings, metrics_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "RECSERVE_ARTIFACTS_DIR": str(settings.artifacts_dir),
        "RECSERVE_STATE_DIR": str(settings.state_dir),
        "RECSERVE_METRICS_PORT": str(metrics_port),
    }


@contextmanager
def serving(
    settings: Settings, log_dir: Path, wait_for: str = "popularity", config: Path | None = None
) -> Iterator[tuple[str, int]]:
    """(base URL, metrics port) of a service that has loaded `wait_for`; stopped (SIGTERM) afterwards.
    `config`: a Serve config other than serve_config.yaml."""
    port, metrics_port = free_port(), free_port()
    log = open(log_dir / "serve.log", "w")
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--namespace", settings.namespace, "--port", str(port)]
    process = subprocess.Popen(
        command + (["--config", str(config)] if config else []),
        env=serve_env(settings, metrics_port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_loaded(base, process, log.name, wait_for)
        yield base, metrics_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # our own process group only
        log.close()


def every_replica_answers(base: str) -> bool:
    """Every model deployment answered its status call: none is still starting up (a replica that is loading,
    say, MiniLM takes CPU from the others, and their first requests could miss their stage timeouts)."""
    models = requests.get(f"{base}/v1/status", timeout=10).json()["models"]
    return not any((status.get("error") or "").startswith("status failed") for status in models.values())


def wait_until_loaded(base: str, process: subprocess.Popen, log_path: str, model: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"recserve serve exited with {process.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            health = requests.get(f"{base}/healthz", timeout=2)
            if health.ok and model in health.json()["models_loaded"] and every_replica_answers(base):
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(1)
    pytest.fail(f"service not ready after {timeout} s:\n{open(log_path).read()[-3000:]}")


@contextmanager
def demo_namespace(dsn: str, tmp_path_factory, prefix: str, seed: int) -> Iterator[tuple[Settings, EventStore]]:
    """A small generated platform in a throwaway namespace with its own artifact and state folders."""
    from pipelines.loading import load_into_store
    from stores.migrations import drop_namespace

    settings = Settings(
        database_url=dsn,
        namespace=f"{prefix}_{uuid.uuid4().hex[:8]}",
        artifacts_dir=tmp_path_factory.mktemp("artifacts"),
        state_dir=tmp_path_factory.mktemp("state"),
    )
    load_into_store("demo", settings, users=300, items=120, events=20_000, seed=seed)
    store = EventStore(Database(dsn, settings.namespace))
    try:
        yield settings, store
    finally:
        drop_namespace(store.db)
