"""The CI-sized Locust run: `python -m loadtests.run --profile smoke` starts the app, drives it for 30 s
with the locustfile's user classes, writes Locust's CSV and HTML reports and holds them to the budgets."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from loadtests.capacity import measure
from loadtests.run import Budget, check
from pipelines.training import train_model
from tests.serve_process import demo_namespace, free_port, serve_env

pytestmark = pytest.mark.serve


def test_smoke_profile_holds_its_budgets(dsn, tmp_path_factory, tmp_path):
    with demo_namespace(dsn, tmp_path_factory, "t_load", seed=6) as (settings, _):
        train_model("popularity", settings)
        command = [sys.executable, "-m", "loadtests.run", "--profile", "smoke", "--namespace", settings.namespace,
                   "--port", str(free_port()), "--out", str(tmp_path),
                   # Item pages need HGT or content, which this namespace does not train.
                   "ReturningUser", "AnonymousSession", "ColdStartUser", "BatchCaller"]
        done = subprocess.run(command, env=serve_env(settings, free_port()), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "every budget held" in done.stdout and "| /v1/recommend | p99 |" in done.stdout
    assert (tmp_path / "report.html").stat().st_size > 10_000
    with open(tmp_path / "run_stats.csv") as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(stats["Aggregated"]["Request Count"]) > 30 and int(stats["Aggregated"]["Failure Count"]) == 0
    assert int(stats["recommend [cascade]"]["Request Count"]) > 0  # the per-arm rows


def test_a_broken_budget_is_reported_and_fails(tmp_path):
    stats = tmp_path / "run_stats.csv"
    columns = ["Type", "Name", "Request Count", "Failure Count", "50%", "95%", "99%"]
    with open(stats, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerow(["POST", "/v1/recommend", "100", "0", "40", "90", "300"])
        writer.writerow(["POST", "/v1/interactions", "50", "1", "10", "20", "30"])
        writer.writerow(["", "Aggregated", "150", "1", "30", "80", "250"])
    budget = Budget(p50=50, p95=100, p99=200, error_rate=0.0)
    rows, ok = check({"/v1/recommend": budget, "/v1/interactions": budget, "/v1/search": budget}, stats)
    assert not ok
    verdicts = {(r[0], r[1]): r[4] for r in rows}
    assert verdicts[("/v1/recommend", "p99")] == "BROKEN" and verdicts[("/v1/recommend", "p50")] == "ok"
    assert verdicts[("/v1/interactions", "errors")] == "BROKEN"
    assert verdicts[("/v1/search", "requests")] == "not exercised"
    rows, ok = check({"/v1/interactions": Budget(p50=50, p95=100, p99=200, error_rate=0.05)}, stats)
    assert ok


def test_a_capacity_step_counts_each_request_once_and_names_what_broke(tmp_path):
    stats = tmp_path / "run_stats.csv"
    with open(stats, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Type", "Name", "Request Count", "Failure Count", "50%", "95%", "99%", "Requests/s"])
        writer.writerow(["POST", "/v1/recommend", "100", "0", "40", "90", "300", "10.0"])
        writer.writerow(["ARM", "recommend [cascade]", "100", "0", "40", "90", "300", "10.0"])  # the same requests
        writer.writerow(["POST", "/v1/interactions", "50", "0", "120", "200", "300", "5.0"])
        writer.writerow(["", "Aggregated", "250", "0", "40", "90", "300", "25.0"])
    budget = Budget(p50=100, p95=400, p99=800, error_rate=0.0)
    rows, held = check({"/v1/recommend": budget, "/v1/interactions": budget}, stats)
    step = measure(32, stats, rows, held)
    assert (step.requests, step.requests_per_s, step.failures) == (150, 15.0, 0)
    assert step.recommend_ms == (40.0, 90.0, 300.0)
    assert not step.held and step.broken == ["/v1/interactions p50"]


def test_a_drill_counts_errors_until_recovery_and_refusals_apart():
    from loadtests.drills import Window, summarise

    window = Window("postgres_down", fault_at=100.0, cleared_at=120.0, recovered_at=123.0)
    log = [
        {"t": 99.0, "ms": 900.0, "status": 500, "failed": True, "retry_after": False},  # before: not counted
        {"t": 101.0, "ms": 10.0, "status": 503, "failed": True, "retry_after": True},  # the designed refusal
        {"t": 110.0, "ms": 30.0, "status": 200, "failed": False, "retry_after": False},
        {"t": 119.0, "ms": 600.0, "status": 504, "failed": True, "retry_after": False},  # an error
        {"t": 122.0, "ms": 20.0, "status": 200, "failed": False, "retry_after": False},  # recovering: counted
        {"t": 130.0, "ms": 5.0, "status": 500, "failed": True, "retry_after": False},  # after: not counted
    ]
    result = summarise(window, log)
    assert (result["requests"], result["errors"], result["refusals_503_retry_after"]) == (4, 1, 1)
    assert result["fault_s"] == 20.0 and result["recover_s"] == 3.0
    assert result["p99_ms_during_fault"] > 500  # over the requests while the fault held
