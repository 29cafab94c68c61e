"""The contract every model deployment follows (DESIGN.md, "Serving contract").

    recommend(query) -> Candidates   # the ranked (item_id, score, source, reason) rows, as columns
    status() -> ModelStatus
    reconfigure(user_config)   # loads the artifact version named there: hot swap, no restart

Model-specific lookups (HGT's `similar_items` / `provider_items`, popularity's `provider_items`) answer
a `LookupResult` rather than raising: an unknown item or provider is an answer, not an error, and
exceptions do not cross Serve handles cleanly.

`ArtifactModel` implements status/reconfigure once: the new version is loaded off the event loop
and swapped in with one assignment, so requests in flight finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.metrics import ModelMetrics
from models.sessions import session_key
from stores.artifacts import ArtifactNotFound, ArtifactStore, Manifest

log = logging.getLogger(__name__)


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=128)


class ModelQuery(BaseModel):
    user_id: str | None = None
    session_id: str | None = None  # an anonymous visitor's tracked session
    session_items: list[str] = Field(default_factory=list)
    device: str | None = None
    attributes: dict[str, str | int | float] = Field(
        default_factory=dict, description="what the client knows of the user (age, country, ...), for cold start"
    )
    time: datetime | None = Field(default=None, description="when the request is made (default: now)")
    k: int = 10
    exclude_ids: list[str] = Field(default_factory=list)
    filters: Filters = Field(default_factory=Filters)
    session_only: bool = Field(
        default=True,
        description="TGN: answer only within an active session (the cascade's rule); fusion asks with false and "
        "weighs the session itself",
    )

    @property
    def session_key(self) -> str | None:
        """The key TGN tracks this query's session under: user_id, else "session:<session_id>"."""
        if self.user_id is None and self.session_id is None:
            return None
        return session_key(self.user_id, self.session_id)


# TGN's reasons. Fusion tells from them whether TGN's answer came from an active session.
TGN_SESSION_REASON = "follows your current session"
TGN_SESSION_ITEMS_REASON = "follows the items in your session"
TGN_HISTORY_REASON = "follows your recent activity"  # no active session; only for session_only=False


class Candidate(BaseModel):
    item_id: str
    score: float
    source: str
    reason: str
    # Fusion only: each answering source's share of `score` (they add up to it).
    contributions: dict[str, float] | None = None


class Candidates(BaseModel):
    """A model's answer, best first, as columns: row i is the `Candidate` (`item_ids[i]`, `scores[i]`, `source`,
    `reasons[i]`).

    Columns rather than a `Candidate` per item, as every model call returns one of these and fusion makes five
    per request: a source's 50 rows take about 0.02 ms to pickle and unpickle as three lists, and 0.21 ms to
    build, pickle and unpickle as 50 pydantic objects (benchmarks/replica_costs.py).
    """

    source: str
    item_ids: list[str] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rows_line_up(self) -> Candidates:
        if not len(self.item_ids) == len(self.scores) == len(self.reasons):
            raise ValueError("item_ids, scores and reasons must be as long as each other")
        return self

    @classmethod
    def of(cls, source: str, item_ids: Sequence[str], scores: Sequence[float], reasons: str | Sequence[str]) -> Candidates:
        """`reasons` may be one reason for every row."""
        reasons = [reasons] * len(item_ids) if isinstance(reasons, str) else list(reasons)
        return cls(source=source, item_ids=list(item_ids), scores=list(scores), reasons=reasons)

    @classmethod
    def from_top_k(
        cls,
        source: str,
        catalogue: Sequence[str],
        values: Sequence[float],
        indices: Sequence[int],
        reasons: str | Sequence[str],
        above: float = -math.inf,
    ) -> Candidates:
        """A descending top-k (`values` of the `catalogue` items at `indices`), less its rows not `above`: the
        items masked out (scored -inf), which sort last."""
        kept = sum(value > above for value in values)
        reasons = reasons if isinstance(reasons, str) else reasons[:kept]
        return cls.of(source, [catalogue[i] for i in indices[:kept]], values[:kept], reasons)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __iter__(self) -> Iterator[Candidate]:  # type: ignore[override]
        """The rows, as a list of `Candidate`s would give them; not pydantic's (field, value) pairs."""
        return self.rows()

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[Candidate]:
        """Rows `start` to `stop` as `Candidate`s, built as they are asked for."""
        for item_id, score, reason in zip(self.item_ids[start:stop], self.scores[start:stop], self.reasons[start:stop]):
            yield Candidate(item_id=item_id, score=score, source=self.source, reason=reason)


class SimilarItemsQuery(BaseModel):
    """Items like `item_id` (HGT: sharing its provider, badges, category, or its users)."""

    item_id: str
    k: int = 10
    exclude_ids: list[str] = Field(default_factory=list)
    filters: Filters = Field(default_factory=Filters)


class TextSearchQuery(BaseModel):
    """Items whose text is nearest a free-text query (the content retriever)."""

    text: str
    k: int = 10
    exclude_ids: list[str] = Field(default_factory=list)
    filters: Filters = Field(default_factory=Filters)
    badges: list[str] = Field(default_factory=list, description="only items carrying any of these")


class ProviderItemsQuery(BaseModel):
    """A provider's items, personalised for the user (or session, device, attributes) when known."""

    provider: str
    user_id: str | None = None
    session_items: list[str] = Field(default_factory=list)
    device: str | None = None
    attributes: dict[str, str | int | float] = Field(default_factory=dict)
    k: int = 10
    exclude_ids: list[str] = Field(default_factory=list)
    filters: Filters = Field(default_factory=Filters)  # category; the provider is `provider`


class LookupResult(BaseModel):
    """A lookup's answer: `candidates` when it was served. `missing`: the unknown item or provider ("unknown
    provider 'x'"), and then no candidates. `version`: the artifact version that answered; None when no artifact
    is loaded."""

    candidates: Candidates | None = None
    missing: str | None = None
    version: str | None = None


class StageAttempt(BaseModel):
    """How one model stage of a request went; the response lists them in the order tried."""

    model: str
    outcome: Literal["served", "too_few", "not_loaded", "unhealthy", "error", "timeout", "low_weight"]
    returned: int = 0
    latency_ms: float


# Outcomes of a stage the ingress did not call: it has no latency to report.
NOT_CALLED_OUTCOMES = frozenset({"not_loaded", "unhealthy", "low_weight"})


class ModelStatus(BaseModel):
    model: str
    loaded: bool
    healthy: bool = Field(default=True, description="false while something it needs (the vector store) is down")
    version: str | None = None
    trained_at: datetime | None = None
    item_count: int = 0
    user_count: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class ModelUserConfig(BaseModel):
    """What `serve deploy` sends a model through `user_config`."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(default="current", description="artifact version to serve, or 'current'")
    fault_delay_ms: float = Field(
        default=0.0, ge=0, le=10_000, description="fault drills only: a delay added to every recommend (0 in production)"
    )


LoadedT = TypeVar("LoadedT")


class ArtifactModel(Generic[LoadedT]):
    """Base of the model deployments: holds the loaded artifact and swaps it on reconfigure."""

    model_name: ClassVar[str]

    def __init__(self, namespace: str, artifacts_dir: str):
        self.artifacts = ArtifactStore(Path(artifacts_dir), namespace)
        self.metrics = ModelMetrics()
        self.loaded: LoadedT | None = None
        self.manifest: Manifest | None = None
        self.fault_delay_s = 0.0
        self.error: str | None = None

    def load_artifact(self, folder: Path) -> LoadedT:
        raise NotImplementedError

    async def reconfigure(self, user_config: dict) -> None:
        config = ModelUserConfig.model_validate(user_config or {})
        self.fault_delay_s = config.fault_delay_ms / 1000
        try:
            folder = self.artifacts.resolve(self.model_name, config.version)
            if self.manifest is not None and folder.name == self.manifest.version:
                return  # already serving it: a change of other settings must not reload the artifact
            manifest = self.artifacts.manifest(self.model_name, folder.name)
            loaded = await asyncio.to_thread(self.load_artifact, folder)
        except ArtifactNotFound as missing:
            # Not trained yet is a state, not a crash: status() says so and recommend() is empty.
            self.error = str(missing)
            log.warning("%s: %s", self.model_name, missing)
            return
        previous = self.manifest
        self.loaded, self.manifest, self.error = loaded, manifest, None
        if previous is not None:
            self.metrics.version.set(0, tags={"model": self.model_name, "version": previous.version})
        self.metrics.version.set(1, tags={"model": self.model_name, "version": manifest.version})
        log.info("%s: serving version %s", self.model_name, manifest.version)

    async def served_version(self) -> str | None:
        """The artifact version this replica serves (rollouts wait on it)."""
        return self.manifest.version if self.loaded is not None and self.manifest is not None else None

    async def fault_delay(self) -> None:
        """The drill's injected slowness (`user_config.fault_delay_ms`); nothing in production."""
        if self.fault_delay_s:
            await asyncio.sleep(self.fault_delay_s)

    async def status(self) -> ModelStatus:
        manifest = self.manifest
        if self.loaded is None or manifest is None:
            return ModelStatus(model=self.model_name, loaded=False, error=self.error)
        return ModelStatus(
            model=self.model_name,
            loaded=True,
            version=manifest.version,
            trained_at=manifest.created_at,
            item_count=manifest.item_count,
            user_count=manifest.user_count,
            metrics=manifest.metrics,
        )
