"""Locust traffic for recserve: the kinds of callers a platform sees, weighted by how common they are.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 8 -t 60s

Ids come from the namespace's event store (DATABASE_URL, RECSERVE_NAMESPACE) when the test starts:
returning users are the most active users, items the catalogue's. Recommendation requests are also
reported a second time under "recommend [<arm>]" (request type "ARM"), so budgets and reports can be
read per A/B arm.
"""

from __future__ import annotations

import json
import os
import random
import uuid

from locust import HttpUser, between, events, task

from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import get_settings

IDS: dict[str, list[str]] = {"users": [], "items": [], "providers": []}
DEVICES = ["mobile", "desktop", "tablet", "tv"]
SEARCHES = ["space strategy with co-op", "relaxing puzzle", "fast shooter", "story rich adventure", "racing"]


# RECSERVE_LOADTEST_LOG=<file>: one JSON line per request (the fault drills read their windows from it),
# with the idempotency key of every acknowledged interaction.
_LOG = open(os.environ["RECSERVE_LOADTEST_LOG"], "a", buffering=1) if os.environ.get("RECSERVE_LOADTEST_LOG") else None


@events.request.add_listener
def _log_request(request_type, name, response_time, exception=None, response=None, start_time=None, context=None, **kwargs) -> None:
    if _LOG is None or request_type == "ARM":
        return
    status = getattr(response, "status_code", None)
    line = {"t": start_time, "name": name, "ms": round(response_time, 2), "status": status, "failed": exception is not None,
            "retry_after": bool(response is not None and status == 503 and response.headers.get("Retry-After"))}
    if context and status == 201 and context.get("idempotency_key"):
        line["acknowledged"] = context["idempotency_key"]
    _LOG.write(json.dumps(line) + "\n")


@events.init.add_listener
def _load_ids(environment, **kwargs) -> None:
    store = EventStore(Database.from_settings(get_settings()))
    items = store.items_frame()
    IDS["users"] = store.most_active_users(1000)
    IDS["items"] = items["item_id"].tolist()
    IDS["providers"] = items["provider"].dropna().unique().tolist()
    if not IDS["users"] or not IDS["items"]:
        raise RuntimeError(f"namespace {get_settings().namespace!r} has no events or items to draw load from")


class RecserveUser(HttpUser):
    abstract = True
    wait_time = between(0.5, 2.0)

    def recommend(self, body: dict, name: str = "/v1/recommend") -> list[str]:
        """POST /v1/recommend; the recommended item ids. Also reported per A/B arm."""
        with self.client.post("/v1/recommend", json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return []
            answer = response.json()
            arm = answer["arm"]
        events.request.fire(
            request_type="ARM", name=f"recommend [{arm}]", response_time=response.elapsed.total_seconds() * 1000,
            response_length=len(response.content), exception=None, context={},
        )
        return [item["item_id"] for item in answer["items"]]

    def interact(self, body: dict) -> None:
        self.client.post("/v1/interactions", json=body, name="/v1/interactions",
                         context={"idempotency_key": body.get("idempotency_key")})


class ReturningUser(RecserveUser):
    """A known user: recommendations, now and then a click on one of them, then fresh recommendations."""

    weight = 5

    def on_start(self) -> None:
        self.user_id = random.choice(IDS["users"])
        self.device = random.choice(DEVICES)

    @task(4)
    def browse(self) -> None:
        self.recommend({"user_id": self.user_id, "k": 10, "context": {"device": self.device}})

    @task(1)
    def click_and_refresh(self) -> None:
        shown = self.recommend({"user_id": self.user_id, "k": 10, "context": {"device": self.device}})
        if shown:
            item = random.choice(shown)
            self.interact({"user_id": self.user_id, "item_id": item, "event_type": "click", "device": self.device,
                           "idempotency_key": uuid.uuid4().hex})
            self.recommend({"user_id": self.user_id, "k": 10, "context": {"device": self.device}})


class AnonymousSession(RecserveUser):
    """A visitor without an account: clicks tracked under a session id, recommendations from the session."""

    weight = 2

    def on_start(self) -> None:
        self.session_id = f"load-{uuid.uuid4().hex[:12]}"
        self.items: list[str] = []

    @task
    def click_and_recommend(self) -> None:
        item = random.choice(IDS["items"])
        self.items = [*self.items, item][-10:]
        self.interact({"session_id": self.session_id, "item_id": item, "event_type": "click",
                       "idempotency_key": uuid.uuid4().hex})
        self.recommend({"session_id": self.session_id, "session_items": self.items, "k": 10})


class ColdStartUser(RecserveUser):
    """A user the models have never seen, known only from the request context."""

    weight = 1

    @task
    def first_visit(self) -> None:
        context = {"device": random.choice(DEVICES), "attributes": {"age": random.randint(16, 70)}}
        self.recommend({"user_id": f"new-{uuid.uuid4().hex[:12]}", "k": 10, "context": context})


class SimilarItemsBrowser(RecserveUser):
    """Item pages: similar items, the provider's other items, and free-text search."""

    weight = 2

    @task(3)
    def similar(self) -> None:
        with self.client.post("/v1/similar_items", json={"item_id": random.choice(IDS["items"]), "k": 10},
                              name="/v1/similar_items", catch_response=True) as response:
            if response.status_code == 404:
                response.success()  # an item the model has not seen yet is an answer, not a failure

    @task(1)
    def provider(self) -> None:
        if IDS["providers"]:
            self.client.post("/v1/provider_items", json={"provider": random.choice(IDS["providers"]), "k": 10},
                             name="/v1/provider_items")

    @task(1)
    def search(self) -> None:
        self.client.post("/v1/search", json={"text": random.choice(SEARCHES), "k": 10}, name="/v1/search")


class BatchCaller(RecserveUser):
    """A backend precomputing an email or a feed: eight users per call."""

    weight = 1
    wait_time = between(2.0, 4.0)

    @task
    def batch(self) -> None:
        users = random.sample(IDS["users"], min(8, len(IDS["users"])))
        body = {"requests": [{"user_id": user, "k": 10} for user in users]}
        self.client.post("/v1/recommend/batch", json=body, name="/v1/recommend/batch")
