"""LightGCN served through the ingress by a real `recserve serve`: filters, fall-through, and a hot swap
of the artifact version (`recserve rollout`) while requests are in flight."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import pytest
import requests

from pipelines.training import train_model
from stores.artifacts import ArtifactStore
from stores.event_store import EventStore
from tests.serve_process import demo_namespace, serve_env, serving

pytestmark = pytest.mark.serve

FAST = {"max_epochs": 6, "eval_every": 2, "batch_size": 4096}


@pytest.fixture(scope="module")
def service(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_lgcn", seed=4) as (settings, store):
        train_model("popularity", settings)
        first = train_model("lightgcn", settings, FAST)
        with serving(settings, tmp_path_factory.mktemp("logs"), wait_for="lightgcn") as (base, _):
            yield base, store, settings, first.version


def recommend(base: str, **body) -> dict:
    response = requests.post(f"{base}/v1/recommend", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def loaded_stages(body: dict) -> list[str]:
    """The cascade stages that ran (TGN, untrained here, is passed over as not loaded)."""
    return [m["model"] for m in body["models_tried"] if m["outcome"] != "not_loaded"]


def a_user_with_history(store: EventStore) -> tuple[str, set[str]]:
    events = store.events_frame()
    user = events["user_id"].value_counts().index[0]
    return user, set(events.loc[events["user_id"] == user, "item_id"])


def test_known_user_is_served_by_lightgcn_without_seen_items(service):
    base, store, _, _ = service
    user, seen = a_user_with_history(store)
    body = recommend(base, user_id=user, k=10, filters={"exclude_seen": True})
    assert loaded_stages(body)[:1] == ["lightgcn"]
    assert len(body["items"]) == 10 and {i["source"] for i in body["items"]} == {"lightgcn"}
    assert not {i["item_id"] for i in body["items"]} & seen
    assert body["model_versions"]["lightgcn"]


def test_category_filter_is_respected(service):
    base, store, _, _ = service
    user, _ = a_user_with_history(store)
    category = store.items_frame()["category"].dropna().iloc[0]
    body = recommend(base, user_id=user, k=5, filters={"category": category})
    assert body["items"] and all(i["category"] == category for i in body["items"])
    assert {i["source"] for i in body["items"]} == {"lightgcn"}


def test_anonymous_session_and_unknown_users(service):
    base, store, _, _ = service
    session = store.events_frame()["item_id"].head(3).tolist()
    body = recommend(base, session_items=session, k=5)
    assert {i["source"] for i in body["items"]} == {"lightgcn"}
    assert not {i["item_id"] for i in body["items"]} & set(session)

    cold = recommend(base, user_id=f"new-{uuid.uuid4().hex}", k=5)
    assert loaded_stages(cold)[:1] == ["lightgcn"]
    assert next(m for m in cold["models_tried"] if m["model"] == "lightgcn")["outcome"] == "too_few"
    assert {i["source"] for i in cold["items"]} == {"popularity"}, cold["models_tried"]


def test_hot_swap_during_traffic_drops_no_request(service):
    base, store, settings, first_version = service
    second = train_model("lightgcn", settings, {**FAST, "seed": 1})
    ArtifactStore(settings.artifacts_dir, settings.namespace).set_current("lightgcn", first_version)
    user, _ = a_user_with_history(store)

    failures, served_by, stop = [], [], threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                response = requests.post(f"{base}/v1/recommend", json={"user_id": user, "k": 5}, timeout=30)
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    served_by.append({i["source"] for i in response.json()["items"]})
            except requests.RequestException as error:
                failures.append(repr(error))

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        rollout = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "rollout", "lightgcn", second.version, "--namespace", settings.namespace],
            env=serve_env(settings, 0), capture_output=True, text=True, timeout=180,
        )
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert rollout.returncode == 0, rollout.stderr[-3000:]
    assert f"serving version {second.version}" in rollout.stdout
    assert not failures
    assert len(served_by) > 10 and all(sources == {"lightgcn"} for sources in served_by)
    status = requests.get(f"{base}/v1/status", timeout=10).json()
    assert status["models"]["lightgcn"]["version"] == second.version
