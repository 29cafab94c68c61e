"""The real Serve app, started with `recserve serve` from serve_config.yaml and called over HTTP."""

from __future__ import annotations

import json

import time
import uuid

import pytest
import requests

from deployments.schemas import RecommendResponse, StatusResponse
from pipelines.training import train_model
from tests.serve_process import demo_namespace, serving

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def service(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_serve", seed=3) as (settings, store):
        train_model("popularity", settings)
        with serving(settings, tmp_path_factory.mktemp("logs")) as (base, metrics_port):
            yield base, store, metrics_port


def post(base: str, path: str, body=None, **kwargs) -> requests.Response:
    return requests.post(base + path, json=body, timeout=30, **kwargs)


def test_recommend_is_schema_valid_excludes_seen_and_enriches(service):
    base, store, _ = service
    user = store.events_frame()["user_id"].dropna().iloc[0]
    response = post(base, "/v1/recommend", {"user_id": user, "k": 5})
    assert response.status_code == 200, response.text
    body = RecommendResponse.model_validate(response.json())
    assert len(body.items) == 5
    assert {i.source for i in body.items} == {"popularity"}
    assert not {i.item_id for i in body.items} & set(store.seen_items(user))
    assert all(i.title and i.reason for i in body.items)
    outcomes = {attempt.model: attempt.outcome for attempt in body.models_tried}
    assert body.model_versions["popularity"] and outcomes["popularity"] == "served"  # stages before it: untrained


def test_filters_paging_and_device(service):
    base, store, _ = service
    category = store.items_frame()["category"].dropna().iloc[0]
    filtered = post(base, "/v1/recommend", {"k": 4, "filters": {"category": category}}).json()
    assert filtered["items"] and all(i["category"] == category for i in filtered["items"])
    first = post(base, "/v1/recommend", {"k": 6}).json()["items"]
    page = post(base, "/v1/recommend", {"k": 3, "offset": 3}).json()["items"]
    assert [i["item_id"] for i in page] == [i["item_id"] for i in first[3:6]]
    device = store.events_frame()["device"].dropna().iloc[0]
    on_device = post(base, "/v1/recommend", {"k": 3, "context": {"device": device}}).json()["items"]
    assert all(device in i["reason"] for i in on_device)


def test_interactions_are_stored_before_ack_and_idempotent(service):
    base, store, _ = service
    key = f"test-{uuid.uuid4().hex}"
    event = {"user_id": "new-user-1", "item_id": "i-x", "event_type": "play", "value": 42.5, "idempotency_key": key}
    before = store.counts()["events"]
    first = post(base, "/v1/interactions", event)
    assert first.status_code == 201, first.text
    assert first.json()["accepted"] == 1
    assert store.counts()["events"] == before + 1  # stored by the time it was acknowledged
    retry = post(base, "/v1/interactions", event)
    assert retry.status_code == 201 and retry.json()["duplicates"] == 1 and retry.json()["accepted"] == 0
    assert retry.json()["events"][0]["event_id"] == first.json()["events"][0]["event_id"]
    assert store.counts()["events"] == before + 1
    batch = post(base, "/v1/interactions", {"events": [dict(event, idempotency_key=None, item_id=f"b{i}") for i in range(3)]})
    assert batch.status_code == 201 and batch.json()["accepted"] == 3


def test_own_fresh_interaction_is_excluded_at_once_despite_the_caches(service):
    base, store, _ = service
    user = store.events_frame()["user_id"].dropna().unique()[1]
    body = {"user_id": user, "k": 5, "filters": {"exclude_seen": True}}
    first = post(base, "/v1/recommend", body).json()
    top = first["items"][0]["item_id"]
    assert post(base, "/v1/recommend", body).json()["cached"]  # both caches hold this user now
    stored = post(base, "/v1/interactions", {"user_id": user, "item_id": top, "event_type": "click"})
    assert stored.status_code == 201, stored.text
    after = post(base, "/v1/recommend", body).json()
    assert not after["cached"]
    assert top not in {i["item_id"] for i in after["items"]} and len(after["items"]) == 5
    assert not {i["item_id"] for i in after["items"]} & set(store.seen_items(user))
    assert post(base, "/v1/recommend", body).json()["items"] == after["items"]


def test_identical_requests_are_served_from_the_result_cache(service):
    base, store, _ = service
    user = store.events_frame()["user_id"].dropna().unique()[2]
    body = {"user_id": user, "k": 4, "offset": 2, "context": {"device": "web"}}
    first = RecommendResponse.model_validate(post(base, "/v1/recommend", body).json())
    second = RecommendResponse.model_validate(post(base, "/v1/recommend", body).json())
    assert not first.cached and second.cached
    assert second.items == first.items and second.request_id != first.request_id
    assert all(i.title for i in second.items)
    other = post(base, "/v1/recommend", dict(body, k=3)).json()  # another request: computed afresh
    assert not other["cached"] and [i["item_id"] for i in other["items"]] == [i.item_id for i in first.items[:3]]
    anonymous = [post(base, "/v1/recommend", {"k": 3}).json() for _ in range(2)]
    assert not any(a["cached"] for a in anonymous)


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/recommend", {"k": 0}, "k"),
        ("/v1/recommend", {"k": 10000}, "k"),
        ("/v1/recommend", {"k": "ten"}, "k"),
        ("/v1/recommend", {"k": 5, "colour": "red"}, "colour"),
        ("/v1/recommend", {"filters": {"category": 7}}, "filters.category"),
        ("/v1/interactions", {"user_id": "u", "item_id": "i", "event_type": "teleport"}, "event_type"),
        ("/v1/interactions", {"user_id": "u", "item_id": "i", "event_type": "rating", "value": 7}, "value"),
        ("/v1/interactions", {"item_id": "i", "event_type": "click"}, "session_id"),
        ("/v1/interactions", {"user_id": "u", "item_id": "i", "event_type": "click", "extra": 1}, "extra"),
        ("/v1/interactions", {"events": [{"user_id": "u", "item_id": "i", "event_type": "click"},
                                         {"user_id": "u", "item_id": "i", "event_type": "nope"}]}, "events.1.event_type"),
    ],
)
def test_bad_requests_name_the_field_and_write_nothing(service, path, body, field):
    base, store, _ = service
    before = store.counts()["events"]
    response = post(base, path, body)
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]
    assert store.counts()["events"] == before


def test_oversized_and_malformed_bodies(service):
    base, store, _ = service
    before = store.counts()["events"]
    huge = {"events": [{"user_id": "u" * 100, "item_id": "i" * 100, "event_type": "click"}] * 2000}
    assert post(base, "/v1/interactions", huge).status_code == 413
    broken = requests.post(base + "/v1/interactions", data=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert broken.status_code == 422
    assert store.counts()["events"] == before

    def chunked(body: bytes, size: int = 4096):  # no Content-Length: the limit must count the chunks
        yield from (body[start : start + size] for start in range(0, len(body), size))

    json_header = {"content-type": "application/json"}
    streamed = requests.post(base + "/v1/interactions", data=chunked(json.dumps(huge).encode()), headers=json_header, timeout=10)
    assert streamed.status_code == 413 and streamed.json()["fields"] == ["body"]
    assert store.counts()["events"] == before
    one = {"user_id": "chunked-user", "item_id": "i1", "event_type": "click"}
    accepted = requests.post(base + "/v1/interactions", data=chunked(json.dumps(one).encode(), 16), headers=json_header, timeout=10)
    assert accepted.status_code == 201, accepted.text
    assert store.counts()["events"] == before + 1


def test_status_health_and_openapi(service):
    base, _, _ = service
    status = StatusResponse.model_validate(requests.get(base + "/v1/status", timeout=10).json())
    assert status.models["popularity"].loaded and status.models["popularity"].version
    assert requests.get(base + "/docs", timeout=10).status_code == 200
    spec = requests.get(base + "/openapi.json", timeout=10).json()
    assert {"/v1/recommend", "/v1/interactions", "/v1/status", "/healthz"} <= set(spec["paths"])


def test_without_hgt_provider_items_come_from_popularity_and_similar_items_are_503(service):
    base, store, _ = service
    items = store.items_frame()
    provider = items["provider"].value_counts().index[0]
    response = post(base, "/v1/provider_items", {"provider": provider, "k": 100, "context": {"device": "web"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "popularity" and body["version"] and body["items"]
    assert {i["provider"] for i in body["items"]} == {provider} and {i["source"] for i in body["items"]} == {"popularity"}
    assert {i["item_id"] for i in body["items"]} <= set(items.loc[items["provider"] == provider, "item_id"])
    unknown = post(base, "/v1/provider_items", {"provider": "Nobody Games"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown provider 'Nobody Games'"
    similar = post(base, "/v1/similar_items", {"item_id": items["item_id"].iloc[0]})
    assert similar.status_code == 503 and "hgt" in similar.json()["error"] and similar.headers["Retry-After"]


def test_metrics_are_exported(service):
    base, store, metrics_port = service
    post(base, "/v1/recommend", {"k": 3})
    user = store.events_frame()["user_id"].dropna().unique()[3]
    for _ in range(2):  # a miss, then a hit
        post(base, "/v1/recommend", {"user_id": user, "k": 3})
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        wanted = ["ray_recserve_recommend_requests", "ray_recserve_events_ingested", 'cache="results"',
                  'cache="seen"', 'cache="catalog"', "ray_recserve_cache_misses", "ray_recserve_catalog_snapshot_items",
                  'endpoint="provider_items"', "ray_recserve_lookup_latency_ms"]
        if all(w in text for w in wanted) and "ray_recserve_cache_hits" in text:
            return
        time.sleep(3)
    pytest.fail("project metrics missing from the metrics port:\n" + "\n".join(l for l in text.splitlines() if "recserve" in l)[:2000])
