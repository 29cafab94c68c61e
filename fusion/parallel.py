"""The fusion strategy: ask every source at once, each under its own timeout, and let the
attention-fusion ranker merge what came back.

A source that errors, times out, is not loaded or answers nothing simply has no list; the ranker's
attention is a softmax over the sources that did answer, so the others take its weight. TGN is asked
with `session_only=False`: it answers a known user whatever the session, and its reason says whether
the answer came from an active session, which is how the ranker learns that a session is active.

A source the ranker would hardly weigh in this request's context is not asked at all (outcome
`low_weight`): its contribution could barely move the ranking, and on a busy machine its model call
is what a fusion request waits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from deployments.contract import TGN_HISTORY_REASON, Candidate, Candidates, ModelQuery, StageAttempt
from fusion.cascade import CascadeResult, Stage
from fusion.ranker import MIN_SOURCE_WEIGHT, SESSION_SOURCE, FusionContext, FusionScorer

log = logging.getLogger(__name__)


async def _ask(stage: Stage, query: ModelQuery) -> tuple[Candidates | None, StageAttempt]:
    if stage.skip_reason is not None:
        return None, StageAttempt(model=stage.name, outcome=stage.skip_reason, latency_ms=0.0)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(stage.timeout_s):  # unlike wait_for, no extra task per call
            candidates = await stage.call(query)
    except TimeoutError:
        return None, StageAttempt(model=stage.name, outcome="timeout", latency_ms=_ms(started))
    except Exception:  # noqa: BLE001 - one source failing must not fail the request
        log.exception("source %s failed", stage.name)
        return None, StageAttempt(model=stage.name, outcome="error", latency_ms=_ms(started))
    outcome = "served" if candidates else "too_few"
    return candidates, StageAttempt(model=stage.name, outcome=outcome, returned=len(candidates), latency_ms=_ms(started))


async def run_fusion(
    stages: list[Stage],
    query: ModelQuery,
    needed: int,
    ranker: FusionScorer,
    context: FusionContext,
    per_source: int,
    min_source_weight: float = MIN_SOURCE_WEIGHT,
) -> CascadeResult:
    """The ranker's top `needed` of the union of the stages' candidates. Each source is asked for
    `per_source` items (the list length the ranker was trained on; at least `needed`), TGN whatever the
    session; the sources under `min_source_weight` in this context are not asked."""
    started = time.perf_counter()
    available = [stage.name for stage in stages if stage.skip_reason is None]
    worth = ranker.sources_worth_asking(context, available, min_source_weight)
    stages = [stage if stage.skip_reason is not None or stage.name in worth
              else dataclasses.replace(stage, skip_reason="low_weight") for stage in stages]
    choosing_ms = _ms(started)
    query = query.model_copy(update={"k": max(needed, per_source), "session_only": False})
    answers = await asyncio.gather(*(_ask(stage, query) for stage in stages))
    by_source = {stage.name: candidates for stage, (candidates, _) in zip(stages, answers) if candidates}
    lists = {name: list(zip(candidates.item_ids, candidates.scores)) for name, candidates in by_source.items()}
    session = by_source.get(SESSION_SOURCE)
    context = dataclasses.replace(context, session_active=bool(session) and session.reasons[0] != TGN_HISTORY_REASON)
    reasons = {name: dict(zip(candidates.item_ids, candidates.reasons)) for name, candidates in by_source.items()}
    started = time.perf_counter()
    fused = []
    for item_id, score, contributions in ranker.rank(lists, context, limit=needed):
        # The item's source is its largest contributor among the sources that returned it; its reason is that source's.
        returned_by = [s for s in contributions if item_id in reasons.get(s, {})]
        source = max(returned_by, key=lambda s: contributions[s])
        reason = reasons[source][item_id]
        fused.append(Candidate(item_id=item_id, score=score, source=source, reason=reason, contributions=contributions))
    # The ranker's own time: choosing the sources, then ranking what they returned.
    ranking = StageAttempt(model="fusion", outcome="served", returned=len(fused), latency_ms=choosing_ms + _ms(started))
    return CascadeResult(fused, [*(attempt for _, attempt in answers), ranking])


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
