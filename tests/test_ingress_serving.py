"""The ingress's A/B switch, fusion arm, admin endpoints and metrics on a real `recserve serve`, over HTTP:
a share changed through the ingress's user_config takes effect without a restart, the admin endpoints
refuse callers without the token and roll versions out for those with it, a training job runs as a Ray
task, and a rollout during a Locust run drops no request."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fusion.assignment import ABSettings, assign
from fusion.ranker import AttentionFusion
from pipelines.training import train_model
from stores.artifacts import ArtifactStore
from tests.serve_process import demo_namespace, serve_env, serving

pytestmark = pytest.mark.serve

TOKEN = "test-admin-token-0123456789"
REPO = Path(__file__).resolve().parent.parent
SOURCES = ["tgn", "hgt", "lightgcn", "content", "popularity"]


@pytest.fixture(scope="module")
def service(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_ingress", seed=5) as (settings, store):
        train_model("popularity", settings)
        artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
        artifacts.publish("fusion", lambda folder: AttentionFusion(SOURCES).save(folder, candidates_per_source=20), {})
        os.environ["RECSERVE_ADMIN_TOKEN"] = TOKEN  # the service's environment is this one's
        try:
            with serving(settings, tmp_path_factory.mktemp("logs")) as (base, metrics_port):
                yield base, store, settings, metrics_port
        finally:
            os.environ.pop("RECSERVE_ADMIN_TOKEN")


def post(base: str, path: str, body=None, **kwargs) -> requests.Response:
    return requests.post(base + path, json=body, timeout=60, **kwargs)


def status(base: str) -> dict:
    return requests.get(base + "/v1/status", timeout=10).json()


def set_share(settings, share: float) -> None:
    command = [sys.executable, "-m", "pipelines.cli", "ab", "--fusion-share", str(share)]
    done = subprocess.run(command, env=serve_env(settings, 0), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"fusion_share {share}" in done.stdout


def test_share_change_takes_effect_without_a_restart(service):
    base, store, settings, _ = service
    before = status(base)
    assert before["ab"]["fusion_share"] == 0.0 and before["fusion"]["sources"] == SOURCES
    users = store.most_active_users(60)
    arms = {post(base, "/v1/recommend", {"user_id": u, "k": 5}).json()["arm"] for u in users[:10]}
    assert arms == {"cascade"}

    set_share(settings, 0.5)
    after = status(base)
    assert after["ab"]["fusion_share"] == 0.5
    assert after["ingress_replica"] == before["ingress_replica"]  # reconfigured in place, not restarted
    expected = ABSettings(fusion_share=0.5, salt=after["ab"]["salt"])
    answers = {u: post(base, "/v1/recommend", {"user_id": u, "k": 5}).json() for u in users}
    assert {u: a["arm"] for u, a in answers.items()} == {u: assign(expected, u) for u in users}
    fused = [a for a in answers.values() if a["arm"] == "fusion"]
    assert fused and all(a["strategy"] == "fusion" and a["model_versions"]["fusion"] for a in fused)
    for item in (i for a in fused for i in a["items"]):
        assert item["contributions"] and abs(sum(item["contributions"].values()) - item["score"]) < 1e-3
    forced = post(base, "/v1/recommend", {"user_id": users[0], "k": 5}, headers={"X-Recserve-Strategy": "fusion"})
    assert (forced.json()["strategy"], forced.json()["arm"]) == ("fusion", "override")
    set_share(settings, 0.0)


def test_batch_over_http(service):
    base, store, _, _ = service
    users = store.most_active_users(3)
    response = post(base, "/v1/recommend/batch", {"requests": [{"user_id": u, "k": 4} for u in users]})
    assert response.status_code == 200, response.text
    assert [r["user_id"] for r in response.json()["responses"]] == users
    too_many = post(base, "/v1/recommend/batch", {"requests": [{"k": 1}] * 33})
    assert too_many.status_code == 422 and too_many.json()["fields"] == ["requests"]


@pytest.mark.parametrize(
    "path, body",
    [("/v1/train/popularity", {}), ("/v1/models/popularity/load", {"version": "current"})],
)
def test_admin_endpoints_refuse_without_the_token(service, path, body):
    base, _, _, _ = service
    missing = post(base, path, body)
    assert missing.status_code == 401 and missing.json()["fields"] == ["Authorization"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = post(base, path, body, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert requests.get(base + "/v1/train/jobs/anything", timeout=10).status_code == 401


def test_load_rolls_a_version_out_and_train_runs_a_job(service):
    base, _, settings, _ = service
    admin = {"Authorization": f"Bearer {TOKEN}"}
    artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
    first = artifacts.resolve("popularity", "current").name
    unknown = post(base, "/v1/models/popularity/load", {"version": "no-such-version"}, headers=admin)
    assert unknown.status_code == 404 and unknown.json()["fields"] == ["version"]

    job = post(base, "/v1/train/popularity", {"load": True}, headers=admin)
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        record = requests.get(f"{base}/v1/train/jobs/{job_id}", headers=admin, timeout=10).json()
        if record["state"] != "running":
            break
        time.sleep(2)
    assert record["state"] == "succeeded", record["log_tail"]
    assert record["loaded"] and record["version"] != first, record
    wait_for_version(base, "popularity", record["version"])

    back = post(base, "/v1/models/popularity/load", {"version": first}, headers=admin)
    assert back.status_code == 202 and back.json() == {"model": "popularity", "version": first, "deployment": "PopularityDeployment"}
    wait_for_version(base, "popularity", first)
    # "current" is resolved before the rollout (the job's version is current), so it changes the replicas.
    current = post(base, "/v1/models/popularity/load", {"version": "current"}, headers=admin)
    assert current.status_code == 202 and current.json()["version"] == record["version"]
    wait_for_version(base, "popularity", record["version"])


def wait_for_version(base: str, model: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if status(base)["models"][model]["version"] == version:
            return
        time.sleep(1)
    pytest.fail(f"{model} did not serve {version} within {timeout_s:.0f} s")


def test_a_rollout_during_a_locust_run_drops_no_request(service, tmp_path):
    base, _, settings, _ = service
    previous = status(base)["models"]["popularity"]["version"]
    second = train_model("popularity", settings)
    locust = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"), "--host", base,
         "--headless", "-u", "8", "-r", "8", "-t", "25s", "--csv", str(tmp_path / "run"), "--only-summary",
         "ReturningUser", "ColdStartUser", "BatchCaller"],
        env={**serve_env(settings, 0), "RECSERVE_NAMESPACE": settings.namespace}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(8)
    rollout = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "rollout", "popularity", second.version, "--namespace", settings.namespace],
        env=serve_env(settings, 0), capture_output=True, text=True, timeout=180,
    )
    output, _ = locust.communicate(timeout=120)
    assert rollout.returncode == 0, rollout.stderr[-3000:]
    assert second.version != previous and status(base)["models"]["popularity"]["version"] == second.version
    with open(tmp_path / "run_stats.csv") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 50, output[-3000:]
    assert int(total["Failure Count"]) == 0, output[-3000:]


def test_metrics_by_arm_are_on_the_metrics_port(service):
    base, store, settings, metrics_port = service
    users = store.most_active_users(20)
    for user in users:
        post(base, "/v1/recommend", {"user_id": user, "k": 3, "strategy": "fusion"})
        post(base, "/v1/recommend", {"user_id": user, "k": 3})
    wanted = ['arm="override"', 'arm="cascade"', 'strategy="fusion"', "ray_recserve_ab_fusion_share",
              'stage="fusion"', "ray_recserve_fallthroughs", "ray_serve_num_http_requests"]
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            return
        time.sleep(3)
    missing = [w for w in wanted if w not in text]
    pytest.fail(f"missing from the metrics port: {missing}")
