"""HGT served through the ingress by a real `recserve serve`: cold start from a device or attributes in the
cascade, /v1/similar_items, /v1/provider_items, a catalogue item added after training, and the 404s.

The demo platform plants the structure checked here (pipelines/datasets/demo.py): each device has its
own genre appetite (DEVICE_TASTE), and studios and tags go with genres. Every expectation is computed
from what the store holds, not from the generator's constants.
"""

from __future__ import annotations

import itertools
import uuid

import pandas as pd
import pytest
import requests

from deployments.schemas import ProviderItemsResponse, SimilarItemsResponse
from pipelines.training import train_model
from tests.serve_process import demo_namespace, serving

pytestmark = pytest.mark.serve

FAST = {"max_epochs": 8}
NEW_ITEM = "g-new-after-training"


@pytest.fixture(scope="module")
def service(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_hgt", seed=6) as (settings, store):
        train_model("popularity", settings)
        hgt = train_model("hgt", settings, FAST)
        add_item_after_training(store)
        with serving(settings, tmp_path_factory.mktemp("logs"), wait_for="hgt") as (base, _):
            yield base, store, hgt.version


def add_item_after_training(store) -> None:
    """A game the artifact has never seen: the studio of the most prolific provider, the badges and
    category of one of its games. The HGT replica embeds it at load from those facets."""
    items = store.items_frame()
    provider = items["provider"].value_counts().index[0]
    model = items[items["provider"] == provider].iloc[0]
    with store.db.cursor() as cur:
        cur.execute(
            "INSERT INTO items (item_id, title, provider, category, badges) VALUES (%s, %s, %s, %s, %s)",
            (NEW_ITEM, "Brand New Game", provider, model["category"], list(model["badges"])),
        )


def post(base: str, path: str, body: dict, status: int = 200) -> dict:
    response = requests.post(f"{base}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def outcome(body: dict, model: str) -> str:
    return next(m["outcome"] for m in body["models_tried"] if m["model"] == model)


def category_shares(item_ids: pd.Series, items: pd.DataFrame) -> pd.Series:
    """Share of each category among the given items (one row per event or per recommended item)."""
    categories = items.set_index("item_id")["category"].sort_index()
    return item_ids.map(categories).value_counts(normalize=True).reindex(categories.unique(), fill_value=0.0)


# -- cold start in the cascade ----------------------------------------------------------------------


def test_a_new_user_with_only_a_device_gets_that_devices_segment(service):
    base, store, _ = service
    events, items = store.events_frame(), store.items_frame()
    by_device = {
        device: category_shares(group["item_id"], items)
        for device, group in events.groupby("device")
        if len(group) >= 500
    }
    # The two devices whose players differ most in what they play.
    a, b = max(itertools.combinations(by_device, 2), key=lambda p: (by_device[p[0]] - by_device[p[1]]).abs().sum())
    recommended = {}
    for device in (a, b):
        body = post(base, "/v1/recommend", {"user_id": f"new-{uuid.uuid4().hex}", "k": 20, "context": {"device": device}})
        assert outcome(body, "hgt") == "served" and {i["source"] for i in body["items"]} == {"hgt"}
        recommended[device] = [i["item_id"] for i in body["items"]]
    assert recommended[a] != recommended[b]
    for device, other in ((a, b), (b, a)):
        top = by_device[device].nlargest(3).index  # the device's favourite categories, from its events
        played_gap = by_device[device][top].sum() - by_device[other][top].sum()
        shares = {d: category_shares(pd.Series(recommended[d]), items)[top].sum() for d in (device, other)}
        # The recommendations follow the devices' real difference: at least half of its size.
        assert shares[device] - shares[other] >= played_gap / 2, (device, list(top), played_gap, shares)


def test_a_new_user_with_only_attributes_is_served_by_hgt(service):
    base, store, _ = service
    attrs = store.users_frame()["attrs"].iloc[0]
    attributes = {key: attrs[key] for key in ("age_band", "country") if key in attrs}
    assert attributes, attrs
    body = post(base, "/v1/recommend", {"k": 10, "context": {"attributes": attributes}})
    assert outcome(body, "hgt") == "served" and {i["source"] for i in body["items"]} == {"hgt"}
    # Nothing to go on: HGT answers nothing and popularity fills the page.
    nothing = post(base, "/v1/recommend", {"k": 10})
    assert outcome(nothing, "hgt") == "too_few" and {i["source"] for i in nothing["items"]} == {"popularity"}


def test_a_known_user_is_served_by_hgt_without_seen_items(service):
    base, store, version = service
    events = store.events_frame()
    user = events["user_id"].value_counts().index[0]
    body = post(base, "/v1/recommend", {"user_id": user, "k": 10})
    assert outcome(body, "hgt") == "served" and len(body["items"]) == 10
    assert {i["source"] for i in body["items"]} == {"hgt"} and all(i["title"] for i in body["items"])
    assert not {i["item_id"] for i in body["items"]} & set(events.loc[events["user_id"] == user, "item_id"])
    assert body["model_versions"]["hgt"] == version


def test_attribute_bounds_are_enforced_over_http(service):
    base, _, _ = service
    too_many = {f"a{i}": i for i in range(21)}
    body = post(base, "/v1/recommend", {"context": {"attributes": too_many}}, status=422)
    assert body["fields"] == ["context.attributes"]


# -- similar items ----------------------------------------------------------------------------------


def related(items: pd.DataFrame):
    providers = items.set_index("item_id")["provider"].to_dict()
    badges = items.set_index("item_id")["badges"].map(set).to_dict()
    return lambda a, b: providers[a] == providers[b] or bool(badges[a] & badges[b])


def test_similar_items_share_provider_or_badges_far_more_often_than_chance(service):
    base, store, version = service
    items, events = store.items_frame(), store.events_frame()
    shares = related(items)
    chance = sum(shares(a, b) for a, b in itertools.permutations(items["item_id"], 2)) / (len(items) * (len(items) - 1))
    hits = total = 0
    for item in events["item_id"].value_counts().index[:20]:
        body = SimilarItemsResponse.model_validate(post(base, "/v1/similar_items", {"item_id": item, "k": 5}))
        assert body.model == "hgt" and body.version == version and body.item_id == item
        assert len(body.items) == 5 and item not in {i.item_id for i in body.items}
        assert {i.source for i in body.items} == {"hgt"} and all(i.title and i.reason for i in body.items)
        hits += sum(shares(item, i.item_id) for i in body.items)
        total += len(body.items)
    assert hits / total >= max(1.5 * chance, chance + 0.2), (hits / total, chance)


def test_similar_items_filters_and_paging(service):
    base, store, _ = service
    items = store.items_frame()
    item = store.events_frame()["item_id"].value_counts().index[0]
    category = items.loc[items["item_id"] != item, "category"].value_counts().index[0]
    body = post(base, "/v1/similar_items", {"item_id": item, "k": 4, "filters": {"category": category}})
    assert len(body["items"]) == 4 and {i["category"] for i in body["items"]} == {category}
    first = [i["item_id"] for i in post(base, "/v1/similar_items", {"item_id": item, "k": 6})["items"]]
    page = post(base, "/v1/similar_items", {"item_id": item, "k": 3, "offset": 3, "exclude_ids": []})["items"]
    assert [i["item_id"] for i in page] == first[3:6]
    excluded = post(base, "/v1/similar_items", {"item_id": item, "k": 6, "exclude_ids": first[:2]})["items"]
    assert not {i["item_id"] for i in excluded} & set(first[:2])


def test_an_item_added_after_training_is_served(service):
    """Added to PostgreSQL after training: the replica embedded it at load, from its facets."""
    base, store, _ = service
    provider = store.items_frame().set_index("item_id").at[NEW_ITEM, "provider"]
    body = post(base, "/v1/similar_items", {"item_id": NEW_ITEM, "k": 5})
    assert len(body["items"]) == 5 and NEW_ITEM not in {i["item_id"] for i in body["items"]}
    listed = post(base, "/v1/provider_items", {"provider": provider, "k": 100})["items"]
    assert NEW_ITEM in {i["item_id"] for i in listed}
    assert next(i for i in listed if i["item_id"] == NEW_ITEM)["title"] == "Brand New Game"


def test_an_item_added_after_training_is_similar_to_items_sharing_its_facets(service):
    base, store, _ = service
    body = post(base, "/v1/similar_items", {"item_id": NEW_ITEM, "k": 5})
    shares = related(store.items_frame())
    assert sum(shares(NEW_ITEM, i["item_id"]) for i in body["items"]) >= 3, body["items"]


# -- provider items ---------------------------------------------------------------------------------


def test_provider_items_are_that_providers_items_with_and_without_a_user(service):
    base, store, version = service
    items, events = store.items_frame(), store.events_frame()
    provider = items["provider"].value_counts().index[1]
    catalogue = set(items.loc[items["provider"] == provider, "item_id"])
    anonymous = ProviderItemsResponse.model_validate(post(base, "/v1/provider_items", {"provider": provider, "k": 100}))
    assert anonymous.model == "hgt" and anonymous.version == version and anonymous.provider == provider
    assert {i.item_id for i in anonymous.items} == catalogue  # all of them, nothing else
    assert {i.provider for i in anonymous.items} == {provider} and {i.source for i in anonymous.items} == {"hgt"}

    # A user who played some of them: personalised, and without what they have seen.
    played = events[events["item_id"].isin(catalogue) & events["user_id"].notna()]
    user = played["user_id"].value_counts().index[0]
    seen = set(events.loc[events["user_id"] == user, "item_id"])
    assert catalogue - seen and catalogue & seen
    body = post(base, "/v1/provider_items", {"provider": provider, "user_id": user, "k": 100})
    assert {i["item_id"] for i in body["items"]} == catalogue - seen
    assert {i["provider"] for i in body["items"]} == {provider} and body["user_id"] == user
    everything = post(base, "/v1/provider_items", {"provider": provider, "user_id": user, "k": 100,
                                                   "filters": {"exclude_seen": False}})
    assert {i["item_id"] for i in everything["items"]} == catalogue

    # Device and attributes only, a category filter, and paging.
    category = items.loc[items["provider"] == provider, "category"].value_counts().index[0]
    cold = post(base, "/v1/provider_items", {"provider": provider, "k": 100, "filters": {"category": category},
                                             "context": {"device": events["device"].iloc[0], "attributes": {"age": 30}}})
    expected = set(items.loc[(items["provider"] == provider) & (items["category"] == category), "item_id"])
    assert {i["item_id"] for i in cold["items"]} == expected
    assert {(i["provider"], i["category"]) for i in cold["items"]} == {(provider, category)}
    ranked = [i.item_id for i in anonymous.items]
    page = post(base, "/v1/provider_items", {"provider": provider, "k": 1, "offset": 1})["items"]
    assert [i["item_id"] for i in page] == ranked[1:2]


def test_unknown_item_or_provider_is_a_404_that_says_which(service):
    base, _, _ = service
    missing = post(base, "/v1/similar_items", {"item_id": "no-such-game"}, status=404)
    assert missing["error"] == "unknown item 'no-such-game'" and missing["fields"] == ["item_id"]
    nobody = post(base, "/v1/provider_items", {"provider": "Nobody Games", "user_id": "u1"}, status=404)
    assert nobody["error"] == "unknown provider 'Nobody Games'" and nobody["fields"] == ["provider"]


def test_status_and_openapi_list_hgt(service):
    base, _, version = service
    status = requests.get(f"{base}/v1/status", timeout=10).json()
    assert status["models"]["hgt"]["loaded"] and status["models"]["hgt"]["version"] == version
    assert status["cascade"] == ["tgn", "hgt", "lightgcn", "content", "popularity"]
    paths = requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/similar_items", "/v1/provider_items"} <= set(paths)
