"""The fusion strategy: ask every source at once, each under its own timeout, and let the
attention-fusion ranker merge what came back.

A source that errors, times out, is not loaded or answers nothing simply has no list; the ranker's
attention is a softmax over the sources that did answer, so the others take its weight. TGN answers
only while the user's session is active, which is how the ranker learns that a session is active.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from deployments.contract import Candidate, ModelQuery, StageAttempt
from fusion.cascade import CascadeResult, Stage
from fusion.ranker import AttentionFusion, FusionContext

log = logging.getLogger(__name__)
SESSION_SOURCE = "tgn"


async def _ask(stage: Stage, query: ModelQuery) -> tuple[list[Candidate], StageAttempt]:
    if stage.skip_reason is not None:
        return [], StageAttempt(model=stage.name, outcome=stage.skip_reason, latency_ms=0.0)
    started = time.perf_counter()
    try:
        candidates = await asyncio.wait_for(stage.call(query), stage.timeout_s)
    except TimeoutError:
        return [], StageAttempt(model=stage.name, outcome="timeout", latency_ms=_ms(started))
    except Exception:  # noqa: BLE001 - one source failing must not fail the request
        log.exception("source %s failed", stage.name)
        return [], StageAttempt(model=stage.name, outcome="error", latency_ms=_ms(started))
    outcome = "served" if candidates else "too_few"
    return candidates, StageAttempt(model=stage.name, outcome=outcome, returned=len(candidates), latency_ms=_ms(started))


async def run_fusion(
    stages: list[Stage], query: ModelQuery, needed: int, ranker: AttentionFusion, context: FusionContext
) -> CascadeResult:
    """The ranker's top `needed` of the union of the stages' candidates (each asked for `query.k`)."""
    answers = await asyncio.gather(*(_ask(stage, query) for stage in stages))
    by_source = {stage.name: candidates for stage, (candidates, _) in zip(stages, answers) if candidates}
    lists = {name: [(c.item_id, c.score) for c in candidates] for name, candidates in by_source.items()}
    context = dataclasses.replace(context, session_active=bool(lists.get(SESSION_SOURCE)))
    originals = {name: {c.item_id: c for c in candidates} for name, candidates in by_source.items()}
    started = time.perf_counter()
    fused = []
    for item_id, score, contributions in ranker.rank(lists, context, limit=needed):
        # The item's source is its largest contributor among the sources that returned it; its reason is that source's.
        returned_by = [s for s in contributions if item_id in originals.get(s, {})]
        source = max(returned_by, key=lambda s: contributions[s])
        reason = originals[source][item_id].reason
        fused.append(Candidate(item_id=item_id, score=score, source=source, reason=reason, contributions=contributions))
    ranking = StageAttempt(model="fusion", outcome="served", returned=len(fused), latency_ms=_ms(started))
    return CascadeResult(fused, [*(attempt for _, attempt in answers), ranking])


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
