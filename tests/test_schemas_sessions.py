"""The API's session fields and the ingress's session/TGN logic, without Ray or PostgreSQL.

The ingress's helpers run on a stand-in object that borrows them (TGN handles, the event store and
metrics are stand-ins); the real HTTP path is covered by the Serve tests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg2
import pytest

from deployments.caches import CatalogSnapshot, ItemMeta, PerUserCache
from deployments.contract import ModelQuery
from deployments.ingress import Ingress, IngressConfig, api
from deployments.schemas import InteractionsResponse, RecommendRequest, RecommendResponse, SessionResponse
from models.sessions import SessionItem, SessionState
from stores.event_store import SessionEnd
from tests.ingress_stand_ins import Counter, Method, fields_of_422, run

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)



# -- schemas ----------------------------------------------------------------------------------------


def test_recommend_request_takes_a_session_id():
    request = RecommendRequest.model_validate({"session_id": " s1 ", "session_items": ["i1"]})
    assert request.session_id == "s1" and request.user_id is None
    assert fields_of_422({"session_id": ""}) == ["session_id"]
    assert fields_of_422({"session_id": "s" * 129}) == ["session_id"]
    assert fields_of_422({"session_id": 7}) == ["session_id"]


def test_model_query_session_key():
    assert ModelQuery(user_id="u1", session_id="s1").session_key == "u1"
    assert ModelQuery(session_id="s1").session_key == "session:s1"
    assert ModelQuery().session_key is None


def test_new_response_fields_default_and_round_trip():
    response = RecommendResponse(
        request_id="r", user_id=None, strategy="cascade", arm="cascade", items=[], models_tried=[], model_versions={}
    )
    assert response.unknown_session_items == []
    assert InteractionsResponse(accepted=0, duplicates=0, events=[]).memory_updated is False
    state = SessionState(
        key="session:s1",
        session_id="s1",
        active=True,
        items=[SessionItem(item_id="i1", ts=NOW)],
        started_at=NOW,
        last_activity_at=NOW,
        expires_at=NOW,
        events=1,
    )
    assert SessionResponse.model_validate_json(state.model_dump_json()) == state


def test_session_routes_are_in_the_openapi_spec_with_bounded_ids():
    paths = api.openapi()["paths"]
    for path, name in [("/v1/sessions/{user_id}", "user_id"), ("/v1/sessions/anonymous/{session_id}", "session_id")]:
        assert set(paths[path]) == {"get", "delete"}
        (parameter,) = paths[path]["get"]["parameters"]
        assert parameter["name"] == name and parameter["schema"]["maxLength"] == 128
        assert {"200", "404", "422", "503"} <= set(paths[path]["delete"]["responses"])


def test_tgn_leads_the_default_cascade():
    config = IngressConfig()
    assert config.cascade[0] == "tgn" and config.stage_timeout_ms["tgn"] == 500.0
    assert config.observe_timeout_ms == 2000.0


# -- the ingress's session logic, on stand-ins ------------------------------------------------------


class TGN:
    def __init__(self, **methods: Method):
        self.observe = methods.get("observe", Method(answer=True))
        self.session = methods.get("session", Method())
        self.end_session = methods.get("end_session", Method())


class Metrics:
    def __init__(self) -> None:
        self.tgn_updates = Counter()

    def count_cache(self, cache: str, arm: str, hits: int, misses: int) -> None:
        pass

    def tgn(self, call: str, outcome: str) -> int:
        return self.tgn_updates.counts.get((("call", call), ("outcome", outcome)), 0)


class Store:
    def __init__(self, down: bool = False) -> None:
        self.down, self.ended = down, []

    def end_session(self, key: str) -> SessionEnd:
        if self.down:
            raise psycopg2.OperationalError("connection refused")
        self.ended.append(key)
        return SessionEnd(len(self.ended), key, NOW)


class IngressUnderTest:
    """The ingress's own session and TGN helpers, on stand-ins instead of a Serve replica."""

    _observe = Ingress.func_or_class._observe
    _tgn_update = Ingress.func_or_class._tgn_update
    _session = Ingress.func_or_class._session
    _end_session = Ingress.func_or_class._end_session
    _known_session_items = Ingress.func_or_class._known_session_items

    def __init__(self, tgn: TGN | None = None, store: Store | None = None, **config):
        self.models = {"popularity": object()} | ({"tgn": tgn} if tgn is not None else {})
        self.config = IngressConfig.model_validate(config)
        self.metrics = Metrics()
        self.store = store or Store()
        self.results: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)
        catalog = {"i1": ItemMeta("One", None, None), "i2": ItemMeta("Two", None, None)}
        self.catalog = CatalogSnapshot(
            lambda: catalog, lambda ids: {i: catalog[i] for i in ids if i in catalog}, refresh_s=60
        )


def test_observe_hands_new_event_ids_to_tgn():
    tgn = TGN()
    ingress = IngressUnderTest(tgn)
    assert run(ingress._observe([7, 8])) is True
    assert tgn.observe.calls == [[7, 8]] and ingress.metrics.tgn("observe", "applied") == 1
    assert run(ingress._observe([])) is False and len(tgn.observe.calls) == 1  # nothing new: nothing to send
    assert run(IngressUnderTest()._observe([7])) is False  # no tgn deployed


@pytest.mark.parametrize(
    "method, outcome",
    [
        (Method(answer=False), "not_applied"),  # TGN answered, but has not got the events yet
        (Method(error=RuntimeError("replica died")), "error"),
        (Method(delay_s=1.0), "timeout"),
    ],
)
def test_a_failed_observe_is_counted_not_raised(method, outcome):
    ingress = IngressUnderTest(TGN(observe=method), observe_timeout_ms=20)
    assert run(ingress._observe([1])) is False
    assert ingress.metrics.tgn("observe", outcome) == 1 and ingress.metrics.tgn("observe", "applied") == 0


def test_sessions_need_the_tgn_model():
    ingress = IngressUnderTest()
    for response in (run(ingress._session("u1", None)), run(ingress._end_session("u1", None))):
        assert response.status_code == 404 and "tgn" in json.loads(response.body)["error"]
    assert ingress.store.ended == []


def test_session_state_comes_from_tgn_by_key():
    state = SessionState(key="session:s1", session_id="s1", active=True, events=1)
    tgn = TGN(session=Method(answer=state))
    ingress = IngressUnderTest(tgn)
    assert run(ingress._session(None, "s1")) == state
    assert run(ingress._session("u1", None)) == state
    assert tgn.session.calls == ["session:s1", "u1"]
    down = IngressUnderTest(TGN(session=Method(delay_s=1.0)), session_timeout_ms=20)
    response = run(down._session("u1", None))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"


def test_ending_a_session_stores_it_tells_tgn_and_drops_cached_answers():
    ended = SessionState(key="u1", user_id="u1", active=False)
    tgn = TGN(end_session=Method(answer=ended))
    ingress = IngressUnderTest(tgn)
    ingress.results.put("u1", "page", "cached answer")
    assert run(ingress._end_session("u1", None)) == ended
    assert ingress.store.ended == ["u1"] and tgn.end_session.calls == ["u1"]
    assert ingress.results.get("u1", "page") is None
    assert ingress.metrics.tgn("end_session", "applied") == 1
    run(ingress._end_session(None, "s1"))
    assert ingress.store.ended == ["u1", "session:s1"] and tgn.end_session.calls[-1] == "session:s1"


def test_an_end_is_not_sent_to_tgn_unless_stored():
    tgn = TGN()
    ingress = IngressUnderTest(tgn, Store(down=True), retry_after_s=7)
    response = run(ingress._end_session("u1", None))
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert tgn.end_session.calls == []


def test_a_stored_end_stands_when_tgn_does_not_answer():
    ingress = IngressUnderTest(TGN(end_session=Method(error=RuntimeError("replica died"))))
    state = run(ingress._end_session(None, "s1"))
    assert state == SessionState(key="session:s1", session_id="s1", active=False)
    assert ingress.store.ended == ["session:s1"] and ingress.metrics.tgn("end_session", "error") == 1


def test_unknown_session_items_are_reported_and_dropped():
    ingress = IngressUnderTest()
    # No catalogue loaded yet (PostgreSQL down since start): nothing to judge by, all are kept.
    assert run(ingress._known_session_items(["i1", "x"], "cascade")) == (["i1", "x"], [])

    async def loaded():
        await ingress.catalog.refresh()
        return await ingress._known_session_items(["i1", "x", "i2", "x", "i1"], "cascade")

    assert run(loaded()) == (["i1", "i2", "i1"], ["x"])
