"""TGN served by a real `recserve serve`: live sessions, online memory updates, anonymous sessions, and
state rebuilt from PostgreSQL after a restart."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path
from datetime import UTC, datetime, timedelta

import pytest
import requests
import yaml

from pipelines.serving import DEFAULT_CONFIG
from pipelines.training import train_model
from stores.event_store import EventRow
from tests.serve_process import demo_namespace, serving

pytestmark = pytest.mark.serve

FAST = {"max_epochs": 2, "memory_dim": 32, "time_dim": 16, "embedding_dim": 32}


class Service:
    """One `recserve serve` at a time (never two Ray clusters), restartable."""

    def __init__(self, settings, log_dir):
        self.settings, self.log_dir = settings, log_dir
        self.stack = ExitStack()
        self.start()

    def start(self, config: Path | None = None) -> None:
        self.base, _ = self.stack.enter_context(serving(self.settings, self.log_dir, wait_for="tgn", config=config))

    def restart(self, config: Path | None = None) -> None:
        self.stack.close()
        self.start(config)


@pytest.fixture(scope="module")
def running(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_tgn", seed=5) as (settings, store):
        train_model("popularity", settings)
        train_model("tgn", settings, FAST)
        service = Service(settings, tmp_path_factory.mktemp("logs"))
        try:
            yield service, store
        finally:
            service.stack.close()


@pytest.fixture
def service(running):
    service, store = running
    return service.base, store


def post(base: str, path: str, body: dict, status: int = 200) -> dict:
    response = requests.post(f"{base}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def items_of(store, n: int) -> list[str]:
    return store.items_frame()["item_id"].head(n).tolist()


def clicks(user: str, items: list[str], start: datetime | None = None) -> dict:
    start = start or datetime.now(UTC) - timedelta(seconds=len(items))
    return {"events": [{"user_id": user, "item_id": item, "event_type": "click",
                        "ts": (start + timedelta(seconds=i)).isoformat()} for i, item in enumerate(items)]}


def test_interactions_start_a_session_and_change_the_recommendations(service):
    base, store = service
    user = f"u-{uuid.uuid4().hex[:8]}"
    first, later = items_of(store, 6)[:3], items_of(store, 6)[3:]
    stored = post(base, "/v1/interactions", clicks(user, first), status=201)
    assert stored["memory_updated"] is True

    session = requests.get(f"{base}/v1/sessions/{user}", timeout=10).json()
    assert session["active"] and [i["item_id"] for i in session["items"]] == first

    body = post(base, "/v1/recommend", {"user_id": user, "k": 10, "filters": {"exclude_seen": False}})
    assert body["models_tried"][0]["model"] == "tgn" and {i["source"] for i in body["items"]} == {"tgn"}
    post(base, "/v1/interactions", clicks(user, later), status=201)
    again = post(base, "/v1/recommend", {"user_id": user, "k": 10, "filters": {"exclude_seen": False}})
    assert [i["item_id"] for i in again["items"]] != [i["item_id"] for i in body["items"]]

    ended = requests.delete(f"{base}/v1/sessions/{user}", timeout=10)
    assert ended.status_code == 200 and ended.json()["active"] is False
    after = post(base, "/v1/recommend", {"user_id": user, "k": 10})
    assert after["models_tried"][0] == {**after["models_tried"][0], "model": "tgn", "outcome": "too_few"}


def test_a_session_ends_after_its_idle_timeout(service):
    base, store = service
    user = f"u-{uuid.uuid4().hex[:8]}"
    # Activity 31 minutes ago: past the 30-minute timeout.
    post(base, "/v1/interactions", clicks(user, items_of(store, 2), datetime.now(UTC) - timedelta(minutes=31)), status=201)
    session = requests.get(f"{base}/v1/sessions/{user}", timeout=10).json()
    assert session["active"] is False
    post(base, "/v1/interactions", clicks(user, items_of(store, 1)), status=201)
    assert requests.get(f"{base}/v1/sessions/{user}", timeout=10).json()["active"] is True


def test_anonymous_session_with_unknown_items(service):
    base, store = service
    known = items_of(store, 3)
    body = post(base, "/v1/recommend", {"session_items": [*known, "no-such-item"], "k": 5})
    assert body["unknown_session_items"] == ["no-such-item"]
    assert len(body["items"]) == 5 and {i["source"] for i in body["items"]} == {"tgn"}
    assert not {i["item_id"] for i in body["items"]} & set(known)  # exclude_seen covers the session


def test_duplicate_events_are_applied_once(service):
    base, store = service
    user = f"u-{uuid.uuid4().hex[:8]}"
    event = clicks(user, items_of(store, 1))["events"][0] | {"idempotency_key": f"k-{uuid.uuid4().hex}"}
    post(base, "/v1/interactions", event, status=201)
    repeat = post(base, "/v1/interactions", event, status=201)
    assert repeat["duplicates"] == 1
    session = requests.get(f"{base}/v1/sessions/{user}", timeout=10).json()
    assert session["events"] == 1 and len(session["items"]) == 1


def test_a_restarted_service_rebuilds_sessions_and_memory_from_postgres(running):
    service, store = running
    user = f"u-{uuid.uuid4().hex[:8]}"
    # A fixed request time: the attention reads each interaction's age at that time.
    at = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    query = {"user_id": user, "k": 10, "filters": {"exclude_seen": False}, "context": {"time": at}}
    post(service.base, "/v1/interactions", clicks(user, items_of(store, 4)), status=201)
    session = requests.get(f"{service.base}/v1/sessions/{user}", timeout=10).json()
    before = post(service.base, "/v1/recommend", query)

    service.restart()
    assert requests.get(f"{service.base}/v1/sessions/{user}", timeout=10).json()["items"] == session["items"]
    after = post(service.base, "/v1/recommend", query)
    assert {i["source"] for i in after["items"]} == {"tgn"}
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]
    assert [i["score"] for i in after["items"]] == pytest.approx([i["score"] for i in before["items"]], rel=1e-4)


def two_tgn_replicas(folder: Path) -> Path:
    """serve_config.yaml with two TGN replicas (a quarter CPU each, so a 2-core machine fits them)."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    app = config["applications"][0]
    app["args"]["models"]["tgn"]["num_cpus"] = 0.25
    tgn = next(d for d in app["deployments"] if d["name"] == "TGNDeployment")
    tgn["num_replicas"] = 2
    # No periodic reads: what a replica was not told by `observe` it learns from PostgreSQL's notification.
    tgn["user_config"]["max_log_staleness_s"] = 3600
    path = folder / "two_tgn_replicas.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_replicas_agree_on_sessions_and_recommendations(running, tmp_path):
    """Each replica follows the events table, so whichever one a request reaches answers the same, also
    right after events that reached it only through PostgreSQL."""
    service, store = running
    service.restart(two_tgn_replicas(tmp_path))
    user = f"u-{uuid.uuid4().hex[:8]}"
    for item in items_of(store, 3):  # separate posts: each observe reaches one replica or the other
        post(service.base, "/v1/interactions", clicks(user, [item]), status=201)
    at = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    query = {"user_id": user, "k": 10, "filters": {"exclude_seen": False}, "context": {"time": at}}
    sessions = [requests.get(f"{service.base}/v1/sessions/{user}", timeout=10).json()["items"] for _ in range(8)]
    # A different dummy exclusion each time, so the ingress's result cache cannot answer for the replicas.
    answers = [post(service.base, "/v1/recommend", {**query, "exclude_ids": [f"none-{n}"]})["items"] for n in range(8)]
    assert all(s == sessions[0] for s in sessions) and len(sessions[0]) == 3
    assert all([i["item_id"] for i in a] == [i["item_id"] for i in answers[0]] for a in answers)
    assert {i["source"] for a in answers for i in a} == {"tgn"}

    # Events from a writer other than the ingress (no `observe`): each replica learns of them from the notification.
    store.insert_events([EventRow(user, item, None, "click", None, None, datetime.now(UTC), None)
                         for item in items_of(store, 6)[3:]])
    later = [post(service.base, "/v1/recommend", {**query, "exclude_ids": [f"none-{n}"]})["items"] for n in range(8, 16)]
    assert all([i["item_id"] for i in a] == [i["item_id"] for i in later[0]] for a in later)
    assert [i["item_id"] for i in later[0]] != [i["item_id"] for i in answers[0]]
