"""The content retriever served through the ingress by a real `recserve serve`, on the embedded vector store:
free-text search, an item nobody has interacted with, filters, similar items while HGT is not trained, a
known user in the cascade, and the vector store going away and coming back under a running service.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import requests

from pipelines.training import train_model
from stores.vectors import VectorStore
from tests.serve_process import demo_namespace, serving

pytestmark = pytest.mark.serve

UNTOUCHED = "g-untouched-nebula"
UNTOUCHED_TEXT = "Nebula Armada: command a fleet of starships in a cooperative space strategy campaign"


@pytest.fixture(scope="module")
def service(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_content", seed=7) as (settings, store):
        with store.db.cursor() as cur:  # in the catalogue, and no event mentions it
            cur.execute(
                "INSERT INTO items (item_id, title, description, provider, category, badges) VALUES (%s, %s, %s, %s, %s, %s)",
                (UNTOUCHED, "Nebula Armada", UNTOUCHED_TEXT, "Orbit Works", "strategy", ["space", "co-op"]),
            )
        train_model("popularity", settings)
        content = train_model("content", settings)
        with serving(settings, tmp_path_factory.mktemp("logs"), wait_for="content") as (base, _):
            yield base, settings, store, content.version


def post(base: str, path: str, body: dict, status: int = 200) -> requests.Response:
    response = requests.post(f"{base}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    return response


def content_status(base: str) -> dict:
    return requests.get(f"{base}/v1/status", timeout=10).json()["models"]["content"]


def test_text_search_finds_an_item_nobody_has_interacted_with(service):
    base, _, store, version = service
    assert UNTOUCHED not in set(store.events_frame()["item_id"])
    body = post(base, "/v1/search", {"text": "space fleet strategy with co-op", "k": 5}).json()
    assert (body["model"], body["version"]) == ("content", version)
    assert body["items"][0]["item_id"] == UNTOUCHED
    assert body["items"][0]["title"] == "Nebula Armada" and body["items"][0]["source"] == "content"
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5


def test_search_filters_by_category_provider_and_badges(service):
    base, _, store, _ = service
    items = store.items_frame().set_index("item_id")
    category = items["category"].value_counts().index[1]  # not the biggest, so the filter has work to do
    body = post(base, "/v1/search", {"text": "a game", "k": 20, "filters": {"category": category}}).json()
    assert body["items"] and {items.loc[i["item_id"], "category"] for i in body["items"]} == {category}
    badge = items["badges"].explode().value_counts().index[-1]
    body = post(base, "/v1/search", {"text": "a game", "k": 50, "filters": {"badges": [badge]}}).json()
    assert body["items"] and all(badge in items.loc[i["item_id"], "badges"] for i in body["items"])
    provider = items["provider"].iloc[0]
    body = post(base, "/v1/search", {"text": "a game", "k": 50, "filters": {"provider": provider}}).json()
    assert len(body["items"]) == int((items["provider"] == provider).sum())
    assert post(base, "/v1/search", {"text": ""}, status=422).json()["fields"] == ["text"]


def test_similar_items_come_from_content_while_hgt_is_not_trained(service):
    base, _, store, _ = service
    items = store.items_frame().set_index("item_id")
    item_id = items.index[0]
    body = post(base, "/v1/similar_items", {"item_id": item_id, "k": 10}).json()
    assert body["model"] == "content"
    returned = [i["item_id"] for i in body["items"]]
    assert len(returned) == 10 and item_id not in returned
    # Text neighbours share the item's genre far more often than the catalogue does.
    share = (items.loc[returned, "category"] == items.loc[item_id, "category"]).mean()
    assert share > 2 * (items["category"] == items.loc[item_id, "category"]).mean()
    missing = post(base, "/v1/similar_items", {"item_id": "no-such-game"}, status=404).json()
    assert missing["error"] == "unknown item 'no-such-game'"


def test_a_known_user_is_served_by_content_in_the_cascade(service):
    base, _, store, _ = service
    user = store.events_frame()["user_id"].value_counts().index[0]
    body = post(base, "/v1/recommend", {"user_id": user, "k": 10}).json()
    tried = {m["model"]: m["outcome"] for m in body["models_tried"]}
    assert tried["lightgcn"] == "not_loaded" and tried["content"] == "served"
    assert {i["source"] for i in body["items"]} == {"content"}
    assert not {i["item_id"] for i in body["items"]} & set(store.seen_items(user))


def test_embeddings_are_served_from_the_vector_store(service):
    base, settings, _, version = service
    response = requests.get(f"{base}/v1/embeddings/content/items/{UNTOUCHED}", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["kind"], body["id"], body["version"]) == ("content", "items", UNTOUCHED, version)
    with VectorStore.from_settings(settings) as store:
        expected = store.get_vector(settings.namespace, "content", "items", UNTOUCHED)
    np.testing.assert_allclose(body["vector"], expected, rtol=1e-6)
    assert len(body["vector"]) == 384

    unknown = requests.get(f"{base}/v1/embeddings/content/users/nobody", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["fields"] == ["id"]
    unsynced = requests.get(f"{base}/v1/embeddings/lightgcn/items/{UNTOUCHED}", timeout=10)
    assert unsynced.status_code == 404 and unsynced.json()["error"] == "no items vectors synced for lightgcn"
    assert requests.get(f"{base}/v1/embeddings/nope/items/x", timeout=10).status_code == 422
    assert requests.get(f"{base}/v1/embeddings/content/things/x", timeout=10).status_code == 422


def _wait_for(base: str, healthy: bool, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while content_status(base)["healthy"] != healthy:
        assert time.monotonic() < deadline, f"content never became healthy={healthy}"
        time.sleep(1)


def test_without_the_vector_store_the_ingress_falls_through_with_no_500(service):
    base, settings, store, _ = service
    user = store.events_frame()["user_id"].value_counts().index[1]
    vectors, away = settings.state_dir / "vectors", settings.state_dir / "vectors-away"
    shutil.move(vectors, away)
    try:
        _wait_for(base, healthy=False)
        assert "vector store unavailable" in content_status(base)["error"]
        body = post(base, "/v1/recommend", {"user_id": user, "k": 10}).json()
        tried = {m["model"]: m["outcome"] for m in body["models_tried"]}
        assert tried["content"] == "unhealthy" and tried["popularity"] == "served"
        assert len(body["items"]) == 10 and {i["source"] for i in body["items"]} == {"popularity"}
        search = post(base, "/v1/search", {"text": "space"}, status=503)
        assert search.headers["retry-after"] and "content reports itself unhealthy" in search.json()["error"]
        post(base, "/v1/similar_items", {"item_id": store.items_frame()["item_id"].iloc[0]}, status=503)
        embedding = requests.get(f"{base}/v1/embeddings/content/items/{UNTOUCHED}", timeout=10)
        assert embedding.status_code == 503 and embedding.headers["retry-after"]
    finally:
        shutil.move(away, vectors)
    _wait_for(base, healthy=True)
    assert post(base, "/v1/search", {"text": "space"}).json()["model"] == "content"
