"""`context.attributes`, /v1/similar_items and /v1/provider_items without Ray or PostgreSQL: the request
bounds, the ingress's answers (404 / 503 / popularity fallback) on stand-in model handles, and the
model deployments' lookup methods on stand-in state. The real HTTP path is tests/test_hgt_serving.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
import torch
from pydantic import ValidationError

from deployments.caches import CatalogSnapshot, ItemMeta, SeenItems, result_variant
from deployments.contract import Candidates, LookupResult, ModelQuery, ModelStatus, ProviderItemsQuery, TextSearchQuery
from deployments.ingress import Ingress, IngressConfig, api
from deployments.popularity import LoadedPopularity, PopularityDeployment
from deployments.schemas import (
    MAX_ATTRIBUTES,
    ProviderItemsRequest,
    ProviderItemsResponse,
    RecommendRequest,
    RequestContext,
    SearchRequest,
    SearchResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)
from models.item_index import ItemIndex
from models.popularity import PopularityModel
from stores.artifacts import Manifest
from tests.ingress_stand_ins import Counter, Method, fields_of_422, run



# -- context.attributes -----------------------------------------------------------------------------


def test_attributes_take_strings_and_numbers_and_reach_the_model_query():
    context = RequestContext.model_validate({"device": "ios", "attributes": {"age": 27, "country": "DE", "score": 0.5}})
    assert context.attributes == {"age": 27, "country": "DE", "score": 0.5}
    assert RequestContext().attributes == {}
    assert ModelQuery(attributes=context.attributes).attributes["age"] == 27
    assert ModelQuery().attributes == {}
    limit = {f"k{i}": i for i in range(MAX_ATTRIBUTES)}
    assert RequestContext.model_validate({"attributes": limit}).attributes == limit
    assert RequestContext.model_validate({"attributes": {"k" * 64: "v" * 128}})


@pytest.mark.parametrize(
    "attributes, says",
    [
        ({f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)}, "at most 20"),
        ({"k" * 65: 1}, "1 to 64 characters"),
        ({"": 1}, "1 to 64 characters"),
        ({"country": "x" * 129}, "'country' is longer than 128"),
        ({"member": True}, "'member' must be a string or a number"),
        ({"tags": ["a", "b"]}, "'tags' must be a string or a number"),
        ({"nested": {"a": 1}}, "'nested' must be a string or a number"),
        ({"age": None}, "'age' must be a string or a number"),
        (["age", 27], "must be an object"),
    ],
)
def test_attribute_bounds_name_the_field(attributes, says):
    for model, payload in [
        (RecommendRequest, {"context": {"attributes": attributes}}),
        (ProviderItemsRequest, {"provider": "p", "context": {"attributes": attributes}}),
    ]:
        assert fields_of_422(payload, model) == ["context.attributes"]
        with pytest.raises(ValidationError, match=says):
            model.model_validate(payload)


def test_non_finite_attribute_numbers_are_refused():
    with pytest.raises(ValidationError, match="finite"):
        RecommendRequest.model_validate_json('{"context": {"attributes": {"age": NaN}}}')


def test_attributes_shape_the_result_cache_key():
    base = {"user_id": "u1", "context": {"device": "ios", "attributes": {"age": 27}}}
    key = result_variant(RecommendRequest.model_validate(base), {})
    other = result_variant(RecommendRequest.model_validate({**base, "context": {"device": "ios", "attributes": {"age": 41}}}), {})
    assert key != other


def test_attributes_are_documented_with_their_bounds():
    schema = RecommendRequest.model_json_schema()["$defs"]["RequestContext"]["properties"]["attributes"]
    assert schema["maxProperties"] == MAX_ATTRIBUTES and schema["propertyNames"]["maxLength"] == 64
    assert {"type": "string", "maxLength": 128} in schema["additionalProperties"]["anyOf"]


# -- request and response models --------------------------------------------------------------------


def test_similar_and_provider_requests_are_bounded():
    assert SimilarItemsRequest.model_validate({"item_id": " g1 "}).item_id == "g1"
    assert fields_of_422({}, SimilarItemsRequest) == ["item_id"]
    assert fields_of_422({"item_id": "g1", "k": 0}, SimilarItemsRequest) == ["k"]
    assert fields_of_422({"item_id": "g1", "filters": {"exclude_seen": True}}, SimilarItemsRequest) == [
        "filters.exclude_seen"
    ]
    assert fields_of_422({"item_id": "g1", "user_id": "u"}, SimilarItemsRequest) == ["user_id"]
    request = ProviderItemsRequest.model_validate({"provider": "Valve"})
    assert request.filters.exclude_seen and request.k == 10 and request.offset == 0
    assert fields_of_422({}, ProviderItemsRequest) == ["provider"]
    assert fields_of_422({"provider": "x" * 129}, ProviderItemsRequest) == ["provider"]
    assert fields_of_422({"provider": "p", "filters": {"provider": "q"}}, ProviderItemsRequest) == ["filters.provider"]
    assert fields_of_422({"provider": "p", "session_items": ["i"] * 51}, ProviderItemsRequest) == ["session_items"]
    assert fields_of_422({"provider": "p", "offset": -1}, ProviderItemsRequest) == ["offset"]


def test_openapi_documents_the_lookup_endpoints():
    spec = api.openapi()
    for path, response in [("/v1/similar_items", "SimilarItemsResponse"), ("/v1/provider_items", "ProviderItemsResponse")]:
        operation = spec["paths"][path]["post"]
        assert operation["summary"] and operation["description"]
        assert {"200", "404", "422", "503"} <= set(operation["responses"])
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(response)
        assert operation["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")


def test_hgt_is_second_in_the_default_cascade():
    config = IngressConfig()
    assert config.cascade == ["tgn", "hgt", "lightgcn", "content", "popularity"]
    assert config.stage_timeout_ms["hgt"] == 500.0


# -- the ingress's lookup endpoints, on stand-ins -------------------------------------------------


class Model:
    def __init__(self, **methods: Method):
        for name, method in methods.items():
            setattr(self, name, method)


class Metrics:
    def __init__(self) -> None:
        self.lookups, self.lookup_latency, self.cache = Counter(), Counter(), Counter()

    def count_cache(self, cache: str, arm: str, hits: int, misses: int) -> None:
        self.cache.inc(hits + misses, {"cache": cache, "arm": arm})

    def lookup(self, endpoint: str, source: str, outcome: str) -> int:
        return self.lookups.counts.get((("endpoint", endpoint), ("outcome", outcome), ("source", source)), 0)


CATALOG = {
    "g1": ItemMeta("Half-Life", "Valve", "shooter"),
    "g2": ItemMeta("Portal", "Valve", "puzzle"),
    "g3": ItemMeta("Dota", "Valve", "strategy"),
}


class IngressUnderTest:
    """The ingress's lookup endpoints and the helpers they share with /v1/recommend."""

    similar_items = Ingress.func_or_class.similar_items
    provider_items = Ingress.func_or_class.provider_items
    search = Ingress.func_or_class.search
    _lookup_page = Ingress.func_or_class._lookup_page
    _lookup = Ingress.func_or_class._lookup
    _exclusions = Ingress.func_or_class._exclusions
    _enriched = Ingress.func_or_class._enriched
    _seen_items = Ingress.func_or_class._seen_items
    _known_session_items = Ingress.func_or_class._known_session_items

    def __init__(
        self,
        models: dict,
        seen: dict[str, list[str]] | None = None,
        db_down: bool = False,
        statuses: dict[str, ModelStatus] | None = None,
        **config,
    ):
        self.models = models
        self.statuses = statuses or {}
        self.config = IngressConfig.model_validate(config)
        self.metrics = Metrics()

        def load_seen(user_id: str) -> list[str]:
            if db_down:
                raise psycopg2.OperationalError("connection refused")
            return (seen or {}).get(user_id, [])

        self.seen = SeenItems(load_seen, max_users=10, ttl_s=60)
        self.catalog = CatalogSnapshot(lambda: CATALOG, lambda ids: {}, refresh_s=60)
        run(self.catalog.refresh())

    async def model_statuses(self) -> dict[str, ModelStatus]:
        return self.statuses


def candidates(source: str, *item_ids: str) -> Candidates:
    return Candidates.of(source, item_ids, [1.0 - n / 10 for n in range(len(item_ids))], f"{source} reason")


def body(response) -> dict:
    return json.loads(response.body)


def test_similar_items_come_from_hgt_enriched_and_paged():
    hgt = Model(similar_items=Method(LookupResult(candidates=candidates("hgt", "g2", "g3"), version="v7")))
    ingress = IngressUnderTest({"hgt": hgt})
    request = SimilarItemsRequest(item_id="g1", k=1, offset=1, exclude_ids=["g9"], filters={"category": "strategy"})
    response = run(ingress.similar_items(request))
    assert isinstance(response, SimilarItemsResponse)
    assert response.model == "hgt" and response.version == "v7" and response.item_id == "g1"
    assert [(i.item_id, i.title, i.provider, i.source) for i in response.items] == [("g3", "Dota", "Valve", "hgt")]
    (query,) = hgt.similar_items.calls
    assert query.k == 2 and query.filters.category == "strategy" and set(query.exclude_ids) == {"g9", "g1"}
    assert ingress.metrics.lookup("similar_items", "hgt", "served") == 1


def test_an_unknown_item_is_a_404_that_says_which():
    hgt = Model(similar_items=Method(LookupResult(missing="unknown item 'nope'", version="v7")))
    ingress = IngressUnderTest({"hgt": hgt})
    response = run(ingress.similar_items(SimilarItemsRequest(item_id="nope")))
    assert response.status_code == 404
    assert body(response)["error"] == "unknown item 'nope'" and body(response)["fields"] == ["item_id"]
    assert ingress.metrics.lookup("similar_items", "hgt", "not_found") == 1


@pytest.mark.parametrize(
    "models, outcome, says",
    [
        ({}, "not_deployed", "is not deployed"),
        ({"hgt": Model(similar_items=Method(LookupResult()))}, "not_loaded", "has no trained artifact loaded"),
        ({"hgt": Model(similar_items=Method(error=RuntimeError("replica died")))}, "error", "failed"),
        ({"hgt": Model(similar_items=Method(delay_s=1.0))}, "timeout", "did not answer in time"),
    ],
)
def test_similar_items_without_a_working_model_is_a_clear_503(models, outcome, says):
    ingress = IngressUnderTest(models, stage_timeout_ms={"hgt": 20}, retry_after_s=9)
    response = run(ingress.similar_items(SimilarItemsRequest(item_id="g1")))
    assert response.status_code == 503 and response.headers["retry-after"] == "9"
    error = body(response)["error"]
    assert error.startswith("similar items cannot be served (hgt ") and says in error
    assert "content is not deployed" in error
    if outcome != "not_deployed":
        assert ingress.metrics.lookup("similar_items", "hgt", outcome) == 1


def test_similar_items_fall_back_to_the_content_retriever():
    hgt = Model(similar_items=Method(error=RuntimeError("replica died")))
    content = Model(similar_items=Method(LookupResult(candidates=candidates("content", "g2"), version="c1")))
    ingress = IngressUnderTest({"hgt": hgt, "content": content})
    response = run(ingress.similar_items(SimilarItemsRequest(item_id="g1")))
    assert isinstance(response, SimilarItemsResponse)
    assert (response.model, response.version, [i.item_id for i in response.items]) == ("content", "c1", ["g2"])
    assert ingress.metrics.lookup("similar_items", "hgt", "error") == 1
    assert ingress.metrics.lookup("similar_items", "content", "served") == 1


def test_text_search_passes_its_filters_and_pages():
    content = Model(search=Method(LookupResult(candidates=candidates("content", "g2", "g3"), version="c1")))
    ingress = IngressUnderTest({"content": content})
    request = SearchRequest(text="space strategy", k=1, offset=1, filters={"category": "strategy", "badges": ["Co-op"]})
    response = run(ingress.search(request))
    assert isinstance(response, SearchResponse) and response.text == "space strategy"
    assert [i.item_id for i in response.items] == ["g3"]
    (query,) = content.search.calls
    assert isinstance(query, TextSearchQuery)
    assert (query.text, query.k, query.filters.category, query.badges) == ("space strategy", 2, "strategy", ["Co-op"])


def test_an_unhealthy_model_is_not_called_and_the_answer_is_a_503():
    content = Model(search=Method(LookupResult(candidates=candidates("content", "g2"), version="c1")))
    unhealthy = ModelStatus(model="content", loaded=True, healthy=False, error="vector store unavailable")
    ingress = IngressUnderTest({"content": content}, statuses={"content": unhealthy}, retry_after_s=7)
    response = run(ingress.search(SearchRequest(text="space")))
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert body(response)["error"] == "search cannot be served (content reports itself unhealthy); retry later"
    assert content.search.calls == []
    assert ingress.metrics.lookup("search", "content", "unhealthy") == 1


@pytest.mark.parametrize("bad", [{"text": ""}, {"text": "x" * 513}, {"text": "a", "filters": {"badges": ["b"] * 17}}])
def test_search_requests_are_bounded(bad):
    with pytest.raises(ValidationError):
        SearchRequest.model_validate(bad)


def test_provider_items_come_from_hgt_for_the_user_without_what_they_have_seen():
    hgt = Model(provider_items=Method(LookupResult(candidates=candidates("hgt", "g1", "g3"), version="v7")))
    popularity = Model(provider_items=Method(LookupResult(candidates=candidates("popularity", "g2"), version="p1")))
    ingress = IngressUnderTest({"hgt": hgt, "popularity": popularity}, seen={"u1": ["g2", "g5"]})
    request = ProviderItemsRequest(
        provider="Valve",
        user_id="u1",
        session_items=["g4", "unknown"],
        context={"device": "console", "attributes": {"age": 27}},
        filters={"category": "shooter"},
        exclude_ids=["g6"],
    )
    response = run(ingress.provider_items(request))
    assert isinstance(response, ProviderItemsResponse)
    assert response.model == "hgt" and response.version == "v7" and response.provider == "Valve"
    assert [i.item_id for i in response.items] == ["g1", "g3"] and response.items[0].title == "Half-Life"
    (query,) = hgt.provider_items.calls
    assert isinstance(query, ProviderItemsQuery)
    assert (query.provider, query.user_id, query.device, query.attributes) == ("Valve", "u1", "console", {"age": 27})
    assert query.filters.category == "shooter" and query.filters.provider is None
    # /v1/recommend's exclusions: the request's ids, the user's seen items, the session's known items.
    assert set(query.exclude_ids) == {"g6", "g2", "g5"}
    assert response.unknown_session_items == ["g4", "unknown"]  # not in the stand-in catalogue
    assert popularity.provider_items.calls == []


def test_exclude_seen_off_keeps_seen_items():
    hgt = Model(provider_items=Method(LookupResult(candidates=candidates("hgt", "g1"), version="v7")))
    ingress = IngressUnderTest({"hgt": hgt}, seen={"u1": ["g2"]})
    run(ingress.provider_items(ProviderItemsRequest(provider="Valve", user_id="u1", filters={"exclude_seen": False})))
    assert hgt.provider_items.calls[0].exclude_ids == []


def test_provider_items_still_answer_when_seen_items_cannot_be_read():
    hgt = Model(provider_items=Method(LookupResult(candidates=candidates("hgt", "g1"), version="v7")))
    ingress = IngressUnderTest({"hgt": hgt}, db_down=True)
    response = run(ingress.provider_items(ProviderItemsRequest(provider="Valve", user_id="u1")))
    assert [i.item_id for i in response.items] == ["g1"]


@pytest.mark.parametrize(
    "hgt, outcome",
    [
        (None, "not_deployed"),
        (Model(provider_items=Method(LookupResult())), "not_loaded"),
        (Model(provider_items=Method(error=RuntimeError("replica died"))), "error"),
        (Model(provider_items=Method(delay_s=1.0)), "timeout"),
    ],
)
def test_provider_items_fall_back_to_popularity(hgt, outcome):
    popularity = Model(provider_items=Method(LookupResult(candidates=candidates("popularity", "g2", "g1"), version="p1")))
    models = {"popularity": popularity} | ({"hgt": hgt} if hgt is not None else {})
    ingress = IngressUnderTest(models, stage_timeout_ms={"hgt": 20})
    response = run(ingress.provider_items(ProviderItemsRequest(provider="Valve", k=1)))
    assert response.model == "popularity" and response.version == "p1"
    assert [(i.item_id, i.source) for i in response.items] == [("g2", "popularity")]
    assert popularity.provider_items.calls[0].provider == "Valve"
    assert ingress.metrics.lookup("provider_items", "popularity", "served") == 1
    if outcome != "not_deployed":
        assert ingress.metrics.lookup("provider_items", "hgt", outcome) == 1


def test_an_unknown_provider_is_a_404_that_says_which():
    for models in (
        {"hgt": Model(provider_items=Method(LookupResult(missing="unknown provider 'Nobody'", version="v7")))},
        {"hgt": Model(provider_items=Method(LookupResult())),
         "popularity": Model(provider_items=Method(LookupResult(missing="unknown provider 'Nobody'", version="p1")))},
    ):
        response = run(IngressUnderTest(models).provider_items(ProviderItemsRequest(provider="Nobody")))
        assert response.status_code == 404
        assert body(response) == {"error": "unknown provider 'Nobody'", "fields": ["provider"], "detail": None}


def test_provider_items_503_when_no_model_can_answer():
    models = {
        "hgt": Model(provider_items=Method(LookupResult())),
        "popularity": Model(provider_items=Method(error=RuntimeError("replica died"))),
    }
    response = run(IngressUnderTest(models).provider_items(ProviderItemsRequest(provider="Valve")))
    assert response.status_code == 503 and "retry-after" in response.headers
    assert "hgt has no trained artifact loaded" in body(response)["error"]
    assert "popularity failed" in body(response)["error"]


# -- the model deployments' lookup methods ------------------------------------------------------------


def manifest(model: str, version: str) -> Manifest:
    return Manifest(model=model, version=version, created_at=datetime(2026, 1, 1, tzinfo=UTC), namespace="t")


class PopularityUnderTest:
    provider_items = PopularityDeployment.func_or_class.provider_items
    recommend = PopularityDeployment.func_or_class.recommend
    fault_delay = PopularityDeployment.func_or_class.fault_delay

    def __init__(self, loaded: LoadedPopularity | None):
        self.loaded, self.manifest = loaded, manifest("popularity", "p1") if loaded else None
        self.fault_delay_s = 0.0


def popularity_model() -> LoadedPopularity:
    items = ItemIndex(["a", "b", "c", "d"], ["x", "y", "x", "x"], ["P", "P", "Q", "P"])
    scores = torch.tensor([0.5, 0.3, 0.2, 0.0])
    return LoadedPopularity(PopularityModel(items.item_ids, scores, {"ios": torch.tensor([0.1, 0.6, 0.3, 0.0])}), items)


def test_popularity_lists_a_providers_items_unpopular_last():
    deployment = PopularityUnderTest(popularity_model())
    result = run(deployment.provider_items(ProviderItemsQuery(provider="P", k=10)))
    assert result.version == "p1" and result.missing is None
    assert result.candidates.item_ids == ["a", "b", "d"]  # d: never interacted with, still P's
    assert result.candidates.source == "popularity"
    on_ios = run(deployment.provider_items(ProviderItemsQuery(provider="P", device="ios", exclude_ids=["d"], k=10)))
    assert on_ios.candidates.item_ids == ["b", "a"]
    in_x = run(deployment.provider_items(ProviderItemsQuery(provider="P", filters={"category": "x"}, k=10)))
    assert in_x.candidates.item_ids == ["a", "d"]
    # /v1/recommend still leaves out what nobody interacted with.
    assert run(deployment.recommend(ModelQuery(k=10))).item_ids == ["a", "b", "c"]


def test_popularity_names_an_unknown_provider_and_says_when_not_loaded():
    result = run(PopularityUnderTest(popularity_model()).provider_items(ProviderItemsQuery(provider="Z")))
    assert result == LookupResult(missing="unknown provider 'Z'", version="p1")
    assert run(PopularityUnderTest(None).provider_items(ProviderItemsQuery(provider="P"))) == LookupResult()


def test_hgt_deployment_loads_without_the_catalogue_when_postgresql_is_down(monkeypatch, tmp_path: Path):
    import deployments.hgt as hgt

    class Index:
        added = None

        def add_catalogue_items(self, items):
            Index.added = len(items)
            return 0

    class Store:
        def __init__(self, down: bool):
            self.down = down

        def items_frame(self):
            if self.down:
                raise psycopg2.OperationalError("connection refused")
            return [1, 2, 3]

    monkeypatch.setattr(hgt.HGTIndex, "load", classmethod(lambda cls, folder, device="cpu": Index()))
    deployment = object.__new__(hgt.HGTDeployment.func_or_class)
    deployment.store = Store(down=True)
    assert isinstance(deployment.load_artifact(tmp_path), Index) and Index.added is None
    deployment.store = Store(down=False)
    deployment.load_artifact(tmp_path)
    assert Index.added == 3
