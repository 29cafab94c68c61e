"""The HTTP front door: FastAPI on `@serve.ingress`, composing the model deployments.

(No `from __future__ import annotations` here: FastAPI must see real types on the endpoints.)

Model handles are injected through `bind()` (see deployments/app.py). Events are written to
PostgreSQL before they are acknowledged. OpenAPI lives at /docs.

/v1/recommend does not wait on PostgreSQL in the common case: catalogue fields come from an
in-memory snapshot, seen items and whole answers from per-user TTL caches (deployments/caches.py),
and a user's stored interactions update that user's entries. Each replica holds its own caches, so
with several ingress replicas an interaction reaches the others' caches only through the TTLs.
"""

import asyncio
import logging
import random
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.admin import AdminRefused, TrainingJob, TrainingJobs, check_token
from deployments.caches import CatalogSnapshot, ItemMeta, PerUserCache, SeenItems, result_variant
from deployments.contract import (
    NOT_CALLED_OUTCOMES,
    Candidate,
    Filters,
    LookupResult,
    ModelQuery,
    ModelStatus,
    ProviderItemsQuery,
    SimilarItemsQuery,
    StageAttempt,
    TextSearchQuery,
)
from deployments.metrics import IngressMetrics
from deployments.rollouts import ARTIFACT_DEPLOYMENTS, deploy_user_config
from deployments.schemas import (
    EmbeddingResponse,
    ErrorResponse,
    FusionStatus,
    LoadRequest,
    LoadResponse,
    InteractionsBody,
    InteractionBatch,
    InteractionsResponse,
    UNION_TAGS,
    ProviderItemsRequest,
    ProviderItemsResponse,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
    SearchResponse,
    SessionResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
    StatusResponse,
    StoredEvent,
    Strategy,
    TrainRequest,
)
from fusion.assignment import OVERRIDE_ARM, ABSettings, assign
from fusion.cascade import CascadeResult, Stage, run_cascade
from fusion.parallel import run_fusion
from fusion.ranker import MIN_SOURCE_WEIGHT, AttentionFusion, FusionContext, FusionScorer, read_config
from models.sessions import session_key
from stores.artifacts import ArtifactNotFound, ArtifactStore
from stores.event_store import EventRow, EventStore
from stores.postgres import UNAVAILABLE_ERRORS, Database
from stores.settings import get_settings
from stores.vectors import VectorStore, VectorStoreUnavailable

log = logging.getLogger(__name__)


class IngressConfig(BaseModel):
    """Static ingress settings (app `args.ingress` in serve_config.yaml)."""

    namespace: str = "demo"
    cascade: list[str] = Field(
        default_factory=lambda: ["tgn", "hgt", "lightgcn", "content", "popularity"], description="model stages, in order"
    )
    stage_timeout_ms: dict[str, float] = Field(
        default_factory=lambda: {"tgn": 500.0, "hgt": 500.0, "lightgcn": 500.0, "content": 500.0, "popularity": 250.0},
        description="per model: how long a cascade stage, or a similar/provider-items call, may take",
    )
    default_stage_timeout_ms: float = 300.0
    status_refresh_s: float = Field(default=5.0, description="how stale a model's loaded/version view may be")
    retry_after_s: int = Field(default=5, description="Retry-After sent with 503 when PostgreSQL is down")
    catalog_refresh_s: float = Field(
        default=300.0, gt=0, description="how often the in-memory catalogue snapshot (title, provider, category) is reloaded"
    )
    seen_cache_ttl_s: float = Field(
        default=60.0, ge=0, description="how long a user's seen items (exclude_seen) are cached; 0 turns the cache off"
    )
    seen_cache_users: int = Field(default=10_000, ge=0, description="users whose seen items are cached (LRU beyond)")
    result_cache_ttl_s: float = Field(
        default=30.0, ge=0, description="how long a user's answer to an identical request is reused; 0 turns it off"
    )
    result_cache_users: int = Field(default=10_000, ge=0, description="users whose answers are cached (LRU beyond)")
    observe_timeout_ms: float = Field(
        default=2000.0, gt=0, description="how long /v1/interactions waits for TGN to apply the stored events"
    )
    session_timeout_ms: float = Field(default=2000.0, gt=0, description="how long /v1/sessions waits for TGN")


class IngressUserConfig(ABSettings):
    """What `serve deploy` may change on the running ingress (its `user_config`), without a restart."""

    fusion_version: str = Field(default="current", description="fusion ranker artifact version, or 'current'")
    fusion_min_source_weight: float = Field(
        default=MIN_SOURCE_WEIGHT, ge=0, le=0.2,  # 0.2: of five sources, the strongest is always asked
        description="fusion does not ask a source whose attention weight in the request's context is below this",
    )


api = FastAPI(
    title="recserve",
    version="0.1.0",
    description="Graph-neural-network recommendations served on Ray Serve.",
    responses={422: {"model": ErrorResponse}},
)


class BodySizeLimit:
    """Refuse oversized bodies before they are parsed: a declared Content-Length over the limit at once,
    a chunked body as soon as it passes the limit. Plain ASGI: starlette's BaseHTTPMiddleware would add
    a task and a copy of the body to every request."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:  # the server reads no more than the declared length
            if declared.isdigit() and int(declared) > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body, message = bytearray(), {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _too_large(self.max_bytes)(scope, receive, send)
                return
        buffered = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    error = ErrorResponse(error=f"request body is larger than {limit} bytes", fields=["body"])
    return JSONResponse(error.model_dump(), status_code=413)


api.add_middleware(BodySizeLimit, max_bytes=get_settings().max_body_bytes)

UserIdPath = Annotated[str, Path(min_length=1, max_length=128)]
EmbeddingIdPath = Annotated[str, Path(min_length=1, max_length=128)]
EmbeddingModel = Literal["lightgcn", "hgt", "tgn", "content"]
LookupQuery = SimilarItemsQuery | ProviderItemsQuery | TextSearchQuery
SessionIdPath = Annotated[str, Path(min_length=1, max_length=128)]


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 whose `fields` names every offending field, e.g. `k` or `events.0.event_type`."""
    fields = [".".join(str(p) for p in e["loc"][1:] if p not in UNION_TAGS) or "body" for e in exc.errors()]
    messages = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, exc.errors()))
    detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
    return JSONResponse(ErrorResponse(error=messages, fields=fields, detail=detail).model_dump(), status_code=422)


def _unavailable(message: str, retry_after_s: int) -> JSONResponse:
    error = ErrorResponse(error=message)
    return JSONResponse(error.model_dump(), status_code=503, headers={"Retry-After": str(retry_after_s)})


def _no_sessions() -> JSONResponse:
    error = ErrorResponse(error="sessions need the tgn model, which is not deployed")
    return JSONResponse(error.model_dump(), status_code=404)


_SESSION_ERRORS = {404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
_LOOKUP_ERRORS = {
    404: {"model": ErrorResponse, "description": "unknown item or provider; `error` says which"},
    503: {"model": ErrorResponse, "description": "no model that can answer is loaded, or it failed"},
}
# How the ingress calls the models (when Serve calls them over gRPC, see pipelines/serving.py): plain pickle, as
# every message is an importable pydantic model. A source's 50 candidates then cost 0.02 ms to send back instead
# of cloudpickle's 0.05 ms (benchmarks/replica_costs.py).
MODEL_CALLS = {"request_serialization": "pickle", "response_serialization": "pickle"}
# Cache metrics carry an A/B arm; the arms apply to /v1/recommend only.
NO_ARM = "none"


class ServedFusion(NamedTuple):
    """The fusion ranker an ingress replica serves."""

    version: str
    ranker: FusionScorer
    candidates_per_source: int  # what it asks each source for: the list length it was trained on


class Exclusions(NamedTuple):
    """What a request must not be shown, and its session items as the catalogue knows them."""

    exclude: list[str]
    session_items: list[str]  # in the catalogue, in order
    unknown_session_items: list[str]
    complete: bool  # False: the user's seen items could not be read (PostgreSQL down)
    history_length: int = 0  # the user's seen items, when they were read


@api.exception_handler(AdminRefused)
async def _admin_refused(request: Request, exc: AdminRefused) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    error = ErrorResponse(error=str(exc), fields=["Authorization"])
    return JSONResponse(error.model_dump(), status_code=exc.status_code, headers=headers)


StrategyHeader = Annotated[
    Strategy | None,
    Header(alias="X-Recserve-Strategy", description="force a strategy, like the body's `strategy` (the arm is then 'override')"),
]
AuthorizationHeader = Annotated[str | None, Header(description="Bearer <RECSERVE_ADMIN_TOKEN>")]
_ADMIN_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}
AdminModel = Literal["tgn", "hgt", "lightgcn", "content", "popularity", "fusion"]


def _not_found(message: str, field: str) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=message, fields=[field]).model_dump(), status_code=404)


_UNAVAILABLE = {
    "not_deployed": "is not deployed",
    "not_loaded": "has no trained artifact loaded",
    "unhealthy": "reports itself unhealthy",
    "error": "failed",
    "timeout": "did not answer in time",
}


def _enrichment(meta: ItemMeta | None) -> dict:
    """Catalogue fields for a response item (none when the item is not in the catalogue)."""
    return meta._asdict() if meta is not None else {}


@serve.deployment
@serve.ingress(api)
class Ingress:
    async def __init__(self, models: dict[str, DeploymentHandle], config: dict | None = None):
        self.config = IngressConfig.model_validate(config or {})
        self.models = {name: handle.options(**MODEL_CALLS) for name, handle in models.items()}
        self.store = EventStore(Database.from_settings(namespace=self.config.namespace))
        self.metrics = IngressMetrics()
        self._statuses: dict[str, ModelStatus] = {}
        self._statuses_at = 0.0  # time.monotonic() of the view's last refresh; 0: never
        self._status_lock = asyncio.Lock()
        self._status_refresh: asyncio.Task | None = None
        self.catalog = CatalogSnapshot.from_store(
            self.store, self.config.catalog_refresh_s, on_refresh=lambda count: self.metrics.catalog_items.set(count)
        )
        self.seen = SeenItems(self.store.seen_items, self.config.seen_cache_users, self.config.seen_cache_ttl_s)
        self.vectors = VectorStore.from_settings(get_settings())
        # One thread owns the vector store: its embedded readers are not shared across threads.
        self.vector_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-store")
        self.results: PerUserCache[tuple[RecommendResponse, bool]] = PerUserCache(
            self.config.result_cache_users, self.config.result_cache_ttl_s
        )
        self.admin_token = get_settings().admin_token
        self.artifacts = ArtifactStore(get_settings().artifacts_dir, self.config.namespace)
        self.training_jobs = TrainingJobs(self.config.namespace)
        self.ab = IngressUserConfig()
        self.fusion: ServedFusion | None = None
        await self.reconfigure({})
        # PostgreSQL down now: the ingress still comes up; enrichment waits for a later refresh.
        await self.catalog.refresh()
        self.catalog.start()

    async def reconfigure(self, user_config: dict) -> None:
        """A/B share and salt, and the fusion ranker's version: changed by `serve deploy`, no restart."""
        config = IngressUserConfig.model_validate(user_config or {})
        try:
            folder = self.artifacts.resolve("fusion", config.fusion_version)
            if self.fusion is None or self.fusion.version != folder.name:
                ranker = FusionScorer(await asyncio.to_thread(AttentionFusion.load, folder))
                candidates = int(read_config(folder)["candidates_per_source"])  # what it was trained on
                self.fusion = ServedFusion(folder.name, ranker, candidates)
        except ArtifactNotFound as missing:
            # The fusion arm then serves the cascade, and says so in models_tried.
            log.warning("fusion: %s", missing)
        self.ab = config
        self.metrics.fusion_share.set(config.fusion_share)
        log.info("A/B: fusion_share %.3f (salt %r); fusion ranker %s", config.fusion_share, config.salt,
                 self.fusion.version if self.fusion else "not loaded")

    async def ab_settings(self) -> ABSettings:
        return ABSettings(fusion_share=self.ab.fusion_share, salt=self.ab.salt)

    async def served_version(self) -> str | None:
        """The fusion ranker version this replica serves (rollouts wait on it, as on the models')."""
        return self.fusion.version if self.fusion else None

    # -- model status ----------------------------------------------------------------------------
    async def model_statuses(self, fresh: bool = False) -> dict[str, ModelStatus]:
        """Each model's loaded/version view. A stale view is refreshed in the background and served
        meanwhile, so that no request waits for five status calls; `fresh` (and the first call) waits."""
        if fresh or not self._statuses_at:
            await self._refresh_statuses()
        elif time.monotonic() - self._statuses_at > self.config.status_refresh_s and (
            self._status_refresh is None or self._status_refresh.done()
        ):
            self._status_refresh = asyncio.create_task(self._refresh_statuses())  # held: tasks are weakly referenced
        return self._statuses

    async def _refresh_statuses(self) -> None:
        started = time.monotonic()
        async with self._status_lock:
            if self._statuses_at > started:
                return  # refreshed while this call waited for the lock
            self._statuses = await self._fetch_statuses()
            self._statuses_at = time.monotonic()
            # Re-reported with each refresh: Ray stops exporting a gauge that is not set for a while.
            self.metrics.fusion_share.set(self.ab.fusion_share)

    async def _fetch_statuses(self) -> dict[str, ModelStatus]:
        async def one(name: str, handle: DeploymentHandle) -> ModelStatus:
            try:
                return await asyncio.wait_for(handle.status.remote(), 2.0)
            except Exception as error:  # noqa: BLE001 - an unreachable model is "not loaded"
                return ModelStatus(model=name, loaded=False, error=f"status failed: {type(error).__name__}")

        results = await asyncio.gather(*(one(n, h) for n, h in self.models.items()))
        return dict(zip(self.models, results))

    # -- recommendations -------------------------------------------------------------------------
    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest, x_recserve_strategy: StrategyHeader = None) -> RecommendResponse:
        """Top-k items for a user, an anonymous session, or a new user from `context`. The A/B arm (cascade or
        fusion) comes from a salted hash of the user (or session) id; `strategy` or the X-Recserve-Strategy
        header forces one (arm "override")."""
        return await self._recommend_cached(request, x_recserve_strategy)

    @api.post("/v1/recommend/batch", response_model=RecommendBatchResponse)
    async def recommend_batch(
        self, batch: RecommendBatchRequest, x_recserve_strategy: StrategyHeader = None
    ) -> RecommendBatchResponse:
        """Several recommendation requests in one call, answered concurrently, in order."""
        answers = await asyncio.gather(*(self._recommend_cached(r, x_recserve_strategy) for r in batch.requests))
        return RecommendBatchResponse(responses=list(answers))

    def _arm(self, request: RecommendRequest, forced: Strategy | None) -> tuple[Strategy, str]:
        """(strategy, A/B arm) of a request."""
        forced = request.strategy or forced
        if forced is not None:
            return forced, OVERRIDE_ARM
        unit = request.user_id or (f"session:{request.session_id}" if request.session_id else None)
        if unit is not None:
            arm = assign(self.ab, unit)
        else:  # nothing to keep stable for: a fresh draw at the configured share
            arm = "fusion" if random.random() < self.ab.fusion_share else "cascade"
        return arm, arm

    async def _recommend_cached(self, request: RecommendRequest, forced: Strategy | None) -> RecommendResponse:
        strategy, arm = self._arm(request, forced)
        statuses = await self.model_statuses()

        async def compute() -> tuple[RecommendResponse, bool]:
            return await self._recommend(request, statuses, strategy, arm)

        if request.user_id is None or not self.results.enabled:
            response, _ = await compute()
            return response
        versions = {name: status.version for name, status in statuses.items()}
        variant = (result_variant(request, versions), strategy, arm, await self.served_version())
        # Only complete answers are reused: not one that skipped exclude_seen or lost a stage.
        (response, _), hit = await self.results.get_or_load(request.user_id, variant, compute, keep=lambda r: r[1])
        self.metrics.count_cache("results", arm, hits=int(hit), misses=int(not hit))
        if not hit:
            return response
        self._count_request(strategy, arm, response.items)
        return response.model_copy(update={"request_id": uuid.uuid4().hex, "cached": True})

    async def _recommend(
        self, request: RecommendRequest, statuses: dict[str, ModelStatus], strategy: str, arm: str
    ) -> tuple[RecommendResponse, bool]:
        """The answer, computed, and whether it is complete enough to be cached."""
        exclusions = await self._exclusions(request, arm, need_history=strategy == "fusion")
        needed = request.offset + request.k
        query = ModelQuery(
            user_id=request.user_id,
            session_id=request.session_id,
            session_items=exclusions.session_items,
            device=request.context.device,
            attributes=request.context.attributes,
            time=request.context.time,
            k=needed,
            exclude_ids=exclusions.exclude,
            filters=request.filters,
        )
        stages = [self._stage(name, statuses.get(name)) for name in self.config.cascade if name in self.models]
        if strategy == "fusion":
            result, strategy = await self._fusion(stages, query, needed, exclusions.history_length, request)
        else:
            result = await run_cascade(stages, query, needed)
        for attempt in result.attempts:
            if attempt.outcome not in NOT_CALLED_OUTCOMES:
                self.metrics.stage_latency.observe(attempt.latency_ms, tags={"stage": attempt.model, "arm": arm})
            if attempt.outcome != "served":
                self.metrics.fallthroughs.inc(tags={"stage": attempt.model, "reason": attempt.outcome, "arm": arm})
        items, enriched = await self._enriched(result.candidates[request.offset : needed], arm)
        self._count_request(strategy, arm, items)
        response = RecommendResponse(
            request_id=uuid.uuid4().hex,
            user_id=request.user_id,
            strategy=strategy,
            arm=arm,
            items=items,
            models_tried=result.attempts,
            model_versions={
                **{name: status.version for name, status in statuses.items()},
                **({"fusion": self.fusion.version} if self.fusion and strategy == "fusion" else {}),
            },
            unknown_session_items=exclusions.unknown_session_items,
        )
        complete = (
            exclusions.complete and all(a.outcome not in ("error", "timeout") for a in result.attempts) and enriched
        )
        return response, complete

    async def _exclusions(
        self, request: RecommendRequest | ProviderItemsRequest, arm: str, need_history: bool = False
    ) -> Exclusions:
        """The request's exclude_ids and, with `filters.exclude_seen`, the user's seen items and the
        session's own items (an anonymous visitor has seen those too). The user's seen items are read
        for `exclude_seen`, or when `need_history` (their count is fusion's history length)."""
        exclude = list(request.exclude_ids)
        complete = True
        seen: frozenset[str] = frozenset()
        if request.user_id and (request.filters.exclude_seen or need_history):
            seen, complete = await self._seen_items(request.user_id, arm)
        if request.filters.exclude_seen:
            exclude += seen
        session_items, unknown_session_items = await self._known_session_items(request.session_items, arm)
        if request.filters.exclude_seen:
            exclude += session_items
        return Exclusions(exclude, session_items, unknown_session_items, complete, len(seen))

    async def _fusion(
        self, stages: list[Stage], query: ModelQuery, needed: int, history_length: int, request: RecommendRequest
    ) -> tuple[CascadeResult, Strategy]:
        """Fusion's answer and the strategy that gave it: the cascade's while no fusion ranker is loaded."""
        if self.fusion is None:
            result = await run_cascade(stages, query, needed)
            skipped = StageAttempt(model="fusion", outcome="not_loaded", latency_ms=0.0)
            return CascadeResult(result.candidates, [skipped, *result.attempts]), "cascade"
        _, ranker, per_source = self.fusion
        context = FusionContext(
            history_length=history_length + len(query.session_items),
            device=request.context.device,
            time=request.context.time or datetime.now(UTC),
        )
        result = await run_fusion(stages, query, needed, ranker, context, per_source, self.ab.fusion_min_source_weight)
        return result, "fusion"

    async def _enriched(self, page: list[Candidate], arm: str) -> tuple[list[RecommendedItem], bool]:
        """The page's items with their catalogue fields, and whether the catalogue knew all of them."""
        catalog = await self.catalog.lookup(c.item_id for c in page)
        self.metrics.count_cache("catalog", arm, hits=catalog.hits, misses=catalog.misses)
        items = [RecommendedItem(**c.model_dump(), **_enrichment(catalog.value.get(c.item_id))) for c in page]
        return items, len(catalog.value) == len({c.item_id for c in page})

    async def _known_session_items(self, session_items: list[str], arm: str) -> tuple[list[str], list[str]]:
        """(the session items in the catalogue, in order; the others, once each)."""
        if not session_items or not self.catalog.loaded:
            return session_items, []  # no catalogue to judge by (PostgreSQL down since start): keep them all
        catalog = await self.catalog.lookup(session_items)
        self.metrics.count_cache("catalog", arm, hits=catalog.hits, misses=catalog.misses)
        unknown = [item_id for item_id in dict.fromkeys(session_items) if item_id not in catalog.value]
        return [item_id for item_id in session_items if item_id in catalog.value], unknown

    def _count_request(self, strategy: str, arm: str, items: list[RecommendedItem]) -> None:
        for source in {i.source for i in items} or {"none"}:
            self.metrics.requests.inc(tags={"strategy": strategy, "arm": arm, "source": source})

    def _stage(self, name: str, status: ModelStatus | None) -> Stage:
        timeout_ms = self.config.stage_timeout_ms.get(name, self.config.default_stage_timeout_ms)
        handle = self.models[name]
        if status is None or not status.loaded:
            skip = "not_loaded"
        else:
            skip = None if status.healthy else "unhealthy"
        return Stage(name, lambda q: handle.recommend.remote(q), timeout_ms / 1000, skip)

    async def _seen_items(self, user_id: str, arm: str) -> tuple[frozenset[str], bool]:
        """(the user's seen items, whether they could be read)."""
        try:
            seen, hit = await self.seen.get(user_id)
        except UNAVAILABLE_ERRORS:
            # Recommendations keep working without PostgreSQL; they just cannot exclude history.
            log.warning("exclude_seen skipped: PostgreSQL unavailable")
            self.metrics.count_cache("seen", arm, hits=0, misses=1)
            return frozenset(), False
        self.metrics.count_cache("seen", arm, hits=int(hit), misses=int(not hit))
        return seen, True

    # -- similar items and provider items ---------------------------------------------------------
    @api.post(
        "/v1/similar_items",
        response_model=SimilarItemsResponse,
        responses=_LOOKUP_ERRORS,
        summary="Items similar to an item (HGT; the content retriever while HGT is unavailable)",
    )
    async def similar_items(self, request: SimilarItemsRequest) -> SimilarItemsResponse | JSONResponse:
        """Items like `item_id`. HGT answers by shared provider, badges and users; an item added to the
        catalogue after training is known from its provider, badges and category. While HGT is not loaded,
        fails or times out, the content retriever answers by text similarity.
        404: the item is unknown. 503: neither model could answer."""
        needed = request.offset + request.k
        query = SimilarItemsQuery(
            item_id=request.item_id,
            k=needed,
            exclude_ids=[*request.exclude_ids, request.item_id],
            filters=request.filters,
        )
        answer = await self._lookup_page("similar_items", ("hgt", "content"), query, request.offset, "item_id")
        if isinstance(answer, JSONResponse):
            return answer
        return SimilarItemsResponse(request_id=uuid.uuid4().hex, item_id=request.item_id, **answer)

    @api.post(
        "/v1/search",
        response_model=SearchResponse,
        responses={503: _LOOKUP_ERRORS[503]},
        summary="Items matching a free-text query (the content retriever)",
    )
    async def search(self, request: SearchRequest) -> SearchResponse | JSONResponse:
        """Catalogue items whose text (title, description, provider, category, tags) is nearest `text`,
        by MiniLM embeddings; items nobody has interacted with yet are found too. Filters: category,
        provider, any of `badges`. 503: the content retriever is not loaded, unhealthy, failed or timed out."""
        needed = request.offset + request.k
        query = TextSearchQuery(
            text=request.text,
            k=needed,
            exclude_ids=request.exclude_ids,
            filters=Filters(category=request.filters.category, provider=request.filters.provider),
            badges=request.filters.badges,
        )
        answer = await self._lookup_page("search", ("content",), query, request.offset)
        if isinstance(answer, JSONResponse):
            return answer
        return SearchResponse(request_id=uuid.uuid4().hex, text=request.text, **answer)

    @api.post(
        "/v1/provider_items",
        response_model=ProviderItemsResponse,
        responses=_LOOKUP_ERRORS,
        summary="A provider's items, personalised (HGT; popularity while HGT is not loaded)",
    )
    async def provider_items(self, request: ProviderItemsRequest) -> ProviderItemsResponse | JSONResponse:
        """The provider's items, ranked by HGT for the user (or their session, `context.device` and
        `context.attributes`) when anything of them is known, else by popularity. While HGT is not loaded,
        fails or times out, the popularity model answers instead. `filters.exclude_seen` (default true)
        leaves out the user's seen items and the session's items, as /v1/recommend does.
        404: the provider is unknown. 503: neither model could answer."""
        exclusions = await self._exclusions(request, NO_ARM)
        needed = request.offset + request.k
        query = ProviderItemsQuery(
            provider=request.provider,
            user_id=request.user_id,
            session_items=exclusions.session_items,
            device=request.context.device,
            attributes=request.context.attributes,
            k=needed,
            exclude_ids=exclusions.exclude,
            filters=Filters(category=request.filters.category),
        )
        answer = await self._lookup_page("provider_items", ("hgt", "popularity"), query, request.offset, "provider")
        if isinstance(answer, JSONResponse):
            return answer
        return ProviderItemsResponse(
            request_id=uuid.uuid4().hex,
            provider=request.provider,
            user_id=request.user_id,
            unknown_session_items=exclusions.unknown_session_items,
            **answer,
        )

    async def _lookup_page(
        self, endpoint: str, models: tuple[str, ...], query: LookupQuery, offset: int, looked_up: str | None = None
    ) -> dict[str, Any] | JSONResponse:
        """Ask `models` in order until one answers; its page from `offset` (the query asks for offset + k),
        enriched: the `items`, `model` and `version` of the response. A 404 naming the `looked_up` field when the
        model does not know it, a 503 saying why when no model answered."""
        outcomes = {}
        for model in models:
            result, outcomes[model] = await self._lookup(endpoint, model, query)
            if result is not None:
                break
        else:
            why = ", ".join(f"{model} {_UNAVAILABLE[outcome]}" for model, outcome in outcomes.items())
            message = f"{endpoint.replace('_', ' ')} cannot be served ({why}); retry later"
            return _unavailable(message, self.config.retry_after_s)
        if result.missing is not None and looked_up is not None:
            return _not_found(result.missing, looked_up)
        page = list(result.candidates.rows(offset, query.k)) if result.candidates is not None else []
        items, _ = await self._enriched(page, NO_ARM)
        return {"items": items, "model": model, "version": result.version}

    async def _lookup(self, endpoint: str, model: str, query: LookupQuery) -> tuple[LookupResult | None, str]:
        """Call `model`'s method `endpoint` under the model's stage timeout: (its answer, the outcome).
        The answer is None, and the outcome says why, when the model is not deployed, reports itself
        unhealthy, has no artifact loaded, failed or timed out; "not_found" and "served" come with the answer."""
        if model not in self.models:
            return None, "not_deployed"
        status = (await self.model_statuses()).get(model)
        if status is not None and not status.healthy:
            self.metrics.lookups.inc(tags={"endpoint": endpoint, "source": model, "outcome": "unhealthy"})
            return None, "unhealthy"
        timeout_ms = self.config.stage_timeout_ms.get(model, self.config.default_stage_timeout_ms)
        started = time.perf_counter()
        result: LookupResult | None = None
        try:
            result = await asyncio.wait_for(getattr(self.models[model], endpoint).remote(query), timeout_ms / 1000)
        except TimeoutError:
            log.warning("%s %s timed out after %.0f ms", model, endpoint, timeout_ms)
            outcome = "timeout"
        except Exception:  # noqa: BLE001 - one model's failure is an answer (503 or the fallback), not a 500
            log.exception("%s %s failed", model, endpoint)
            outcome = "error"
        else:
            if result.version is None:
                outcome, result = "not_loaded", None
            else:
                outcome = "not_found" if result.missing is not None else "served"
        tags = {"endpoint": endpoint, "source": model}
        self.metrics.lookup_latency.observe((time.perf_counter() - started) * 1000, tags=tags)
        self.metrics.lookups.inc(tags={**tags, "outcome": outcome})
        return result, outcome

    # -- interactions ----------------------------------------------------------------------------
    @api.post("/v1/interactions", response_model=InteractionsResponse, status_code=201)
    async def interactions(self, body: InteractionsBody) -> InteractionsResponse | JSONResponse:
        events = body.events if isinstance(body, InteractionBatch) else [body]
        now = datetime.now(UTC)
        rows = [
            EventRow(e.user_id, e.item_id, e.session_id, e.event_type.value, e.value, e.device, e.ts or now, e.idempotency_key)
            for e in events
        ]
        try:
            stored = await asyncio.to_thread(self.store.insert_events, rows)
        except UNAVAILABLE_ERRORS:
            self.metrics.events_rejected.inc(len(rows), tags={"reason": "database_unavailable"})
            error = "the event store is unavailable; nothing was stored, retry later"
            return _unavailable(error, self.config.retry_after_s)
        items_by_user: dict[str, set[str]] = defaultdict(set)
        for event, result in zip(events, stored):
            if not result.duplicate:
                self.metrics.events_ingested.inc(tags={"event_type": event.event_type.value})
            if event.user_id is not None:
                items_by_user[event.user_id].add(event.item_id)
        memory_updated = await self._observe([r.event_id for r in stored if not r.duplicate])
        # Stored and handed to TGN, so now (not before) the user's caches change: their new items
        # count as seen and their cached answers go. A recommendation in flight for them (which may
        # predate TGN's update) is not cached either.
        for user_id, item_ids in items_by_user.items():
            self.seen.add(user_id, item_ids)
            self.results.invalidate(user_id)
        duplicates = sum(r.duplicate for r in stored)
        return InteractionsResponse(
            accepted=len(stored) - duplicates,
            duplicates=duplicates,
            events=[StoredEvent(event_id=r.event_id, duplicate=r.duplicate) for r in stored],
            memory_updated=memory_updated,
        )

    async def _observe(self, event_ids: list[int]) -> bool:
        """Hand newly stored events to TGN's live memory; returns whether it applied them.

        Best effort: the events are stored whatever happens here, and TGN follows the event store,
        so a failure only delays the update.
        """
        if "tgn" not in self.models or not event_ids:
            return False
        return await self._tgn_update("observe", event_ids, self.config.observe_timeout_ms) is True

    async def _tgn_update(self, call: str, argument: Any, timeout_ms: float) -> Any:
        """Send TGN a live update (its method `call`) under a timeout: its answer, None when it failed."""
        try:
            answer = await asyncio.wait_for(getattr(self.models["tgn"], call).remote(argument), timeout_ms / 1000)
        except TimeoutError:
            log.warning("tgn %s timed out after %.0f ms", call, timeout_ms)
            outcome, answer = "timeout", None
        except Exception:  # noqa: BLE001 - what was stored stays stored; TGN catches up from PostgreSQL
            log.exception("tgn %s failed", call)
            outcome, answer = "error", None
        else:
            outcome = "applied" if answer else "not_applied"  # observe answers False while it waits
        self.metrics.tgn_updates.inc(tags={"call": call, "outcome": outcome})
        return answer

    # -- sessions --------------------------------------------------------------------------------
    @api.get("/v1/sessions/{user_id}", response_model=SessionResponse, responses=_SESSION_ERRORS)
    async def user_session(self, user_id: UserIdPath) -> SessionResponse | JSONResponse:
        """The user's current session (TGN)."""
        return await self._session(user_id, None)

    @api.delete("/v1/sessions/{user_id}", response_model=SessionResponse, responses=_SESSION_ERRORS)
    async def end_user_session(self, user_id: UserIdPath) -> SessionResponse | JSONResponse:
        """End the user's session now: later recommendations no longer use it."""
        return await self._end_session(user_id, None)

    @api.get("/v1/sessions/anonymous/{session_id}", response_model=SessionResponse, responses=_SESSION_ERRORS)
    async def anonymous_session(self, session_id: SessionIdPath) -> SessionResponse | JSONResponse:
        """An anonymous visitor's session (their interactions' session_id)."""
        return await self._session(None, session_id)

    @api.delete("/v1/sessions/anonymous/{session_id}", response_model=SessionResponse, responses=_SESSION_ERRORS)
    async def end_anonymous_session(self, session_id: SessionIdPath) -> SessionResponse | JSONResponse:
        """End an anonymous visitor's session now."""
        return await self._end_session(None, session_id)

    async def _session(self, user_id: str | None, session_id: str | None) -> SessionResponse | JSONResponse:
        if "tgn" not in self.models:
            return _no_sessions()
        key = session_key(user_id, session_id)
        try:
            return await asyncio.wait_for(self.models["tgn"].session.remote(key), self.config.session_timeout_ms / 1000)
        except Exception:  # noqa: BLE001 - a timeout too: only TGN holds the session state
            log.exception("tgn session(%r) failed", key)
            return _unavailable("the tgn model did not answer, retry later", self.config.retry_after_s)

    async def _end_session(self, user_id: str | None, session_id: str | None) -> SessionResponse | JSONResponse:
        if "tgn" not in self.models:
            return _no_sessions()
        key = session_key(user_id, session_id)
        # Stored first, so every TGN replica (and any restarted one) applies the end too.
        try:
            await asyncio.to_thread(self.store.end_session, key)
        except UNAVAILABLE_ERRORS:
            error = "the event store is unavailable; the session was not ended, retry later"
            return _unavailable(error, self.config.retry_after_s)
        ended = await self._tgn_update("end_session", key, self.config.session_timeout_ms)
        if user_id is not None:  # anonymous answers are not cached
            self.results.invalidate(user_id)
        if ended is not None:
            return ended
        # The end is stored, so it stands without TGN's answer: the session is over and holds nothing.
        return SessionResponse(key=key, user_id=user_id, session_id=session_id, active=False)

    # -- embeddings --------------------------------------------------------------------------------
    @api.get(
        "/v1/embeddings/{model}/{kind}/{id}",
        response_model=EmbeddingResponse,
        responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
        summary="A user's or item's vector, as synced to the vector store",
    )
    async def embedding(self, model: EmbeddingModel, kind: Literal["users", "items"], id: EmbeddingIdPath):
        """The current synced version's vector (what retrieval searches with). 404: nothing synced for that model
        and kind, or the id is not in it. 503: the vector store cannot be reached."""
        loop = asyncio.get_running_loop()
        namespace = self.config.namespace

        def read() -> tuple[str | None, Any]:
            version = self.vectors.current_version(namespace, model, kind)
            if version is None:
                return None, None
            return version, self.vectors.get_vector(namespace, model, kind, id, version=version)

        try:
            version, vector = await loop.run_in_executor(self.vector_thread, read)
        except VectorStoreUnavailable as error:
            return _unavailable(f"the vector store is unavailable: {error}", self.config.retry_after_s)
        if version is None:
            return _not_found(f"no {kind} vectors synced for {model}", "model")
        if vector is None:
            return _not_found(f"unknown {kind[:-1]} {id!r} in {model} {version}", "id")
        return EmbeddingResponse(model=model, kind=kind, id=id, version=version, vector=vector.tolist())

    # -- admin -------------------------------------------------------------------------------------
    @api.post("/v1/train/{model}", response_model=TrainingJob, status_code=202, responses=_ADMIN_ERRORS)
    async def train(self, model: AdminModel, request: TrainRequest, authorization: AuthorizationHeader = None) -> TrainingJob:
        """Start `recserve train <model>` as a Ray task, outside the request path; with `load`, its new version
        is rolled out when it succeeds. Poll GET /v1/train/jobs/{job_id}. Needs the admin token."""
        check_token(self.admin_token, authorization)
        return self.training_jobs.start(model, request.settings, request.load)

    @api.get("/v1/train/jobs/{job_id}", response_model=TrainingJob, responses={**_ADMIN_ERRORS, 404: {"model": ErrorResponse}})
    async def training_job(self, job_id: Annotated[str, Path(max_length=64)], authorization: AuthorizationHeader = None):
        """A training job this ingress replica started. Needs the admin token."""
        check_token(self.admin_token, authorization)
        job = self.training_jobs.jobs.get(job_id)
        return job if job is not None else _not_found(f"no training job {job_id!r} on this replica", "job_id")

    @api.post(
        "/v1/models/{model}/load",
        response_model=LoadResponse,
        status_code=202,
        responses={**_ADMIN_ERRORS, 404: {"model": ErrorResponse}},
    )
    async def load_model(self, model: AdminModel, request: LoadRequest, authorization: AuthorizationHeader = None):
        """Roll out an artifact version of a model (or of the fusion ranker) to its serving replicas, as
        `serve deploy` with a new user_config would: a hot swap, no restart. Needs the admin token."""
        check_token(self.admin_token, authorization)
        try:
            version = self.artifacts.resolve(model, request.version).name
        except ArtifactNotFound as missing:
            return _not_found(str(missing), "version")
        deployment, key = ARTIFACT_DEPLOYMENTS[model]
        # The resolved version, not "current": a user_config that reads the same would reconfigure nothing.
        # Not blocking: the ingress may itself be the deployment being reconfigured.
        try:
            await asyncio.to_thread(deploy_user_config, deployment, {key: version}, False)
        except RuntimeError as error:  # the model is not deployed in this app
            return _not_found(str(error), "model")
        return LoadResponse(model=model, version=version, deployment=deployment)

    # -- service ---------------------------------------------------------------------------------
    @api.get("/v1/status", response_model=StatusResponse)
    async def status(self) -> StatusResponse:
        fusion = None
        if self.fusion is not None:
            fusion = FusionStatus(
                version=self.fusion.version,
                sources=self.fusion.ranker.sources,
                candidates_per_source=self.fusion.candidates_per_source,
            )
        return StatusResponse(
            namespace=self.config.namespace,
            models=await self.model_statuses(fresh=True),  # status is the place to see a fresh view
            ab=await self.ab_settings(),
            fusion=fusion,
            cascade=self.config.cascade,
            ingress_replica=serve.get_replica_context().replica_id.unique_id,
        )

    @api.get("/healthz")
    async def healthz(self) -> dict:
        statuses = await self.model_statuses()
        return {"status": "ok", "models_loaded": sorted(n for n, s in statuses.items() if s.loaded)}
