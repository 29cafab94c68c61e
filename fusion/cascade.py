"""The fallback cascade: ask each model in order until k items are filled.

A stage that errors, times out, is not loaded, or returns fewer items than still needed passes the
request on; what it did return is kept, and the next stages fill the rest. Every attempt is
recorded with its outcome, so the ingress can count fall-throughs by stage and reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from deployments.contract import Candidate, Candidates, ModelQuery, StageAttempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    call: Callable[[ModelQuery], Awaitable[Candidates]]
    timeout_s: float
    # None: ask. A string: skip, and that is the recorded reason (e.g. "not_loaded").
    skip_reason: str | None = None


@dataclass
class CascadeResult:
    candidates: list[Candidate]
    attempts: list[StageAttempt]


async def run_cascade(stages: list[Stage], query: ModelQuery, needed: int) -> CascadeResult:
    """Fill `needed` distinct items from the stages in order. `query.k` is what each stage is asked for."""
    chosen: dict[str, Candidate] = {}
    attempts: list[StageAttempt] = []
    for stage in stages:
        if len(chosen) >= needed:
            break
        if stage.skip_reason is not None:
            attempts.append(StageAttempt(model=stage.name, outcome=stage.skip_reason, latency_ms=0.0))
            continue
        # Items already chosen are excluded, so a later stage fills the gap instead of repeating them.
        stage_query = query.model_copy(update={"exclude_ids": [*query.exclude_ids, *chosen]})
        started = time.perf_counter()
        try:
            async with asyncio.timeout(stage.timeout_s):  # unlike wait_for, no extra task per call
                candidates = await stage.call(stage_query)
        except TimeoutError:
            attempts.append(StageAttempt(model=stage.name, outcome="timeout", latency_ms=_ms(started)))
            continue
        except Exception:  # noqa: BLE001 - any failure of one model must not fail the request
            log.exception("stage %s failed", stage.name)
            attempts.append(StageAttempt(model=stage.name, outcome="error", latency_ms=_ms(started)))
            continue
        fresh = [c for c in candidates.rows() if c.item_id not in chosen][: needed - len(chosen)]
        chosen.update((c.item_id, c) for c in fresh)
        outcome = "served" if len(chosen) >= needed else "too_few"
        attempts.append(StageAttempt(model=stage.name, outcome=outcome, returned=len(fresh), latency_ms=_ms(started)))
    return CascadeResult(list(chosen.values()), attempts)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
