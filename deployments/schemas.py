"""The HTTP API's request and response models. Unknown fields are rejected, sizes are bounded."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
)

from deployments.contract import Filters, ModelStatus, StageAttempt
from fusion.assignment import ABSettings
from models.sessions import SessionState
from stores.frames import EventType

MAX_K = 100
MAX_BATCH_REQUESTS = 32
MAX_BATCH_EVENTS = 500
# Clients' clocks drift; an event much later than the server's now is a bug, not a future event.
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_ATTRIBUTES = 20
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_TEXT = 128

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Strategy = Literal["cascade", "fusion"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendFilters(Filters):
    exclude_seen: bool = Field(default=True, description="leave out items the user already interacted with")


def _bounded_attributes(value: Any) -> Any:
    """All of `context.attributes`' checks in one place, so a 422 names `context.attributes` (not one
    entry per member of the value union) and says which attribute is wrong."""
    if not isinstance(value, dict):
        raise ValueError("attributes must be an object of name -> string or number")
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes, got {len(value)}")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_ATTRIBUTE_KEY:
            raise ValueError(f"attribute names are 1 to {MAX_ATTRIBUTE_KEY} characters, got one of {len(key)}")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError(f"attribute {key!r} must be a string or a number")
        if isinstance(item, str) and len(item) > MAX_ATTRIBUTE_TEXT:
            raise ValueError(f"attribute {key!r} is longer than {MAX_ATTRIBUTE_TEXT} characters")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"attribute {key!r} must be a finite number")
    return value


AttributeValue = Annotated[StrictStr, StringConstraints(max_length=MAX_ATTRIBUTE_TEXT)] | StrictInt | StrictFloat
Attributes = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY)], AttributeValue],
    BeforeValidator(_bounded_attributes),
    Field(json_schema_extra={"maxProperties": MAX_ATTRIBUTES}),
]


class RequestContext(Strict):
    device: Id | None = None
    time: datetime | None = Field(default=None, description="the client's local time, for time-of-day context")
    attributes: Attributes = Field(
        default_factory=dict,
        description=f"what is known of the user, e.g. {{\"age\": 27, \"country\": \"DE\"}}: up to {MAX_ATTRIBUTES} "
        f"names of up to {MAX_ATTRIBUTE_KEY} characters, each a number or a string of up to {MAX_ATTRIBUTE_TEXT}. "
        "HGT serves a new user from them (and from `device`)",
        examples=[{"age": 27, "country": "DE"}],
    )


class RecommendRequest(Strict):
    user_id: Id | None = Field(default=None, description="known or new user; omit for an anonymous visitor")
    session_id: Id | None = Field(
        default=None,
        description="an anonymous visitor's tracked session (the session_id of their interactions); "
        "with a user_id, that user's session is used",
    )
    session_items: list[Id] = Field(default_factory=list, max_length=50, description="anonymous session, oldest first")
    k: int = Field(default=10, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=1000, description="skip this many results (paging)")
    context: RequestContext = Field(default_factory=RequestContext)
    filters: RecommendFilters = Field(default_factory=RecommendFilters)
    exclude_ids: list[Id] = Field(default_factory=list, max_length=500)
    strategy: Strategy | None = Field(default=None, description="override the A/B arm's strategy")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(description="the model that produced this item (fusion: the largest contribution)")
    reason: str
    contributions: dict[str, float] | None = Field(
        default=None, description="fusion only: each answering source's part of `score`; they add up to it"
    )
    title: str | None = None
    provider: str | None = None
    category: str | None = None


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str | None
    strategy: Strategy
    arm: str
    items: list[RecommendedItem]
    models_tried: list[StageAttempt]
    model_versions: dict[str, str | None]
    cached: bool = Field(
        default=False, description="served from the per-user result cache (items as first computed, within its TTL)"
    )
    unknown_session_items: list[str] = Field(
        default_factory=list, description="session_items that are not in the catalogue; the models did not see them"
    )


class SimilarItemsRequest(Strict):
    item_id: Id = Field(description="the item to find similar items for")
    k: int = Field(default=10, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=1000, description="skip this many results (paging)")
    filters: Filters = Field(default_factory=Filters, description="only items in this category and/or of this provider")
    exclude_ids: list[Id] = Field(default_factory=list, max_length=500)


class SearchFilters(Filters):
    badges: list[Id] = Field(
        default_factory=list, max_length=16, description="only items carrying any of these badges (tags)"
    )


class SearchRequest(Strict):
    text: str = Field(min_length=1, max_length=512, description='what to look for, e.g. "space strategy with co-op"')
    k: int = Field(default=10, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=1000, description="skip this many results (paging)")
    filters: SearchFilters = Field(default_factory=SearchFilters)
    exclude_ids: list[Id] = Field(default_factory=list, max_length=500)


class ProviderItemsFilters(Strict):
    category: str | None = Field(default=None, max_length=128)
    exclude_seen: bool = Field(
        default=True, description="leave out items the user already interacted with (and the session's items)"
    )


class ProviderItemsRequest(Strict):
    provider: Id = Field(description="the provider (studio, brand, seller) whose items to list")
    user_id: Id | None = Field(default=None, description="personalise for this user; omit for an anonymous visitor")
    session_items: list[Id] = Field(default_factory=list, max_length=50, description="anonymous session, oldest first")
    context: RequestContext = Field(default_factory=RequestContext)
    k: int = Field(default=10, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=1000, description="skip this many results (paging)")
    filters: ProviderItemsFilters = Field(default_factory=ProviderItemsFilters)
    exclude_ids: list[Id] = Field(default_factory=list, max_length=500)


class ItemListResponse(BaseModel):
    request_id: str
    items: list[RecommendedItem]
    model: str = Field(description="the model that answered")
    version: str | None = Field(description="that model's artifact version")


class SimilarItemsResponse(ItemListResponse):
    item_id: str


class SearchResponse(ItemListResponse):
    text: str


class EmbeddingResponse(BaseModel):
    model: str
    kind: Literal["users", "items"]
    id: str
    version: str = Field(description="the synced model version the vector belongs to (the alias's current one)")
    vector: list[float]


class ProviderItemsResponse(ItemListResponse):
    provider: str
    user_id: str | None
    unknown_session_items: list[str] = Field(
        default_factory=list, description="session_items that are not in the catalogue; the models did not see them"
    )


class Interaction(Strict):
    user_id: Id | None = None
    session_id: Id | None = Field(default=None, validate_default=True, description="required when user_id is absent")
    item_id: Id
    event_type: EventType
    value: float | None = Field(
        default=None, allow_inf_nan=False, validate_default=True, description="seconds for play, 1..5 for rating"
    )
    device: Id | None = None
    ts: datetime | None = Field(default=None, description="when it happened (default: now); must carry a timezone")
    idempotency_key: Id | None = Field(default=None, description="retries with the same key store one event")

    # Each check hangs on the field it is about, so a 422's `loc` names that field.
    @field_validator("session_id")
    @classmethod
    def _someone(cls, session_id: str | None, info: ValidationInfo) -> str | None:
        if session_id is None and "user_id" in info.data and info.data["user_id"] is None:
            raise ValueError("an event needs a user_id or a session_id")
        return session_id

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: float | None, info: ValidationInfo) -> float | None:
        event_type = info.data.get("event_type")
        if event_type == EventType.RATING and (value is None or not 1 <= value <= 5):
            raise ValueError("a rating needs a value between 1 and 5")
        if event_type == EventType.PLAY and value is not None and value < 0:
            raise ValueError("play seconds cannot be negative")
        return value

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, ts: datetime | None) -> datetime | None:
        if ts is not None:
            if ts.tzinfo is None:
                raise ValueError("ts needs a timezone, e.g. 2026-01-01T12:00:00Z")
            if ts > datetime.now(UTC) + MAX_CLOCK_SKEW:
                raise ValueError("ts is in the future")
        return ts


class InteractionBatch(Strict):
    events: list[Interaction] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


def _event_or_batch(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "event"


# One event, or {"events": [...]}. The tag keeps validation errors to the shape that was sent.
InteractionsBody = Annotated[
    Annotated[Interaction, Tag("event")] | Annotated[InteractionBatch, Tag("batch")],
    Discriminator(_event_or_batch),
]
UNION_TAGS = frozenset({"event", "batch"})


class StoredEvent(BaseModel):
    event_id: int
    duplicate: bool


class InteractionsResponse(BaseModel):
    accepted: int = Field(description="events stored by this call")
    duplicates: int = Field(description="events whose idempotency_key was already stored")
    events: list[StoredEvent]
    memory_updated: bool = Field(
        default=False,
        description="TGN applied this call's new events to its live memory and sessions; when false, it "
        "catches up from the event store instead",
    )


# GET/DELETE /v1/sessions/...: the TGN deployment's session state, as it reports it.
SessionResponse = SessionState


class FusionStatus(BaseModel):
    version: str
    sources: list[str]
    candidates_per_source: int


class StatusResponse(BaseModel):
    namespace: str
    models: dict[str, ModelStatus]
    ab: ABSettings = Field(description="the A/B split between the cascade and fusion")
    fusion: FusionStatus | None = Field(description="the fusion ranker served; null: the fusion arm serves the cascade")
    cascade: list[str]
    ingress_replica: str = Field(description="the ingress replica that answered (it changes only on a restart)")


class RecommendBatchRequest(Strict):
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH_REQUESTS)


class RecommendBatchResponse(BaseModel):
    responses: list[RecommendResponse]


class LoadRequest(Strict):
    version: Id = Field(default="current", description="an artifact version, or 'current'")


class LoadResponse(BaseModel):
    model: str
    version: str = Field(description="the version being rolled out ('current' resolved)")
    deployment: str


class TrainRequest(Strict):
    settings: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], StrictStr | StrictInt | StrictFloat | bool] = Field(
        default_factory=dict, max_length=32, description="training settings, as `recserve train --set KEY=VALUE`"
    )
    load: bool = Field(default=True, description="roll the new version out when training succeeds")


class ErrorResponse(BaseModel):
    error: str
    fields: list[str] = Field(default_factory=list, description="dotted paths of the offending fields")
    detail: Any = None
