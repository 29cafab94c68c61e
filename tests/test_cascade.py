import asyncio

import pytest

from deployments.contract import Candidate, ModelQuery
from fusion.cascade import Stage, run_cascade


def returning(name: str, ids: list[str], delay: float = 0.0):
    async def call(query: ModelQuery) -> list[Candidate]:
        await asyncio.sleep(delay)
        return [Candidate(item_id=i, score=1.0, source=name, reason="test") for i in ids if i not in query.exclude_ids]

    return call


async def failing(query: ModelQuery) -> list[Candidate]:
    raise RuntimeError("model exploded")


def run(stages, needed=3):
    return asyncio.run(run_cascade(stages, ModelQuery(k=needed), needed))


def test_first_stage_that_fills_k_serves():
    result = run([Stage("a", returning("a", ["1", "2", "3"]), 1.0), Stage("b", returning("b", ["4"]), 1.0)])
    assert [c.item_id for c in result.candidates] == ["1", "2", "3"]
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "served")]


@pytest.mark.parametrize(
    "stage, reason",
    [
        (Stage("a", failing, 1.0), "error"),
        (Stage("a", returning("a", ["1"], delay=0.5), 0.05), "timeout"),
        (Stage("a", returning("a", ["1"]), 1.0, skip_reason="not_loaded"), "not_loaded"),
        (Stage("a", returning("a", ["1"]), 1.0), "too_few"),
    ],
)
def test_each_failure_falls_through_with_its_reason(stage, reason):
    result = run([stage, Stage("b", returning("b", ["7", "8", "9"]), 1.0)])
    assert result.attempts[0].outcome == reason
    assert result.attempts[1].outcome == "served"
    assert len(result.candidates) == 3
    assert {c.source for c in result.candidates} <= {"a", "b"}


def test_partial_results_are_kept_and_not_repeated():
    result = run([Stage("a", returning("a", ["1", "2"]), 1.0), Stage("b", returning("b", ["2", "3", "4"]), 1.0)])
    assert [(c.item_id, c.source) for c in result.candidates] == [("1", "a"), ("2", "a"), ("3", "b")]
    assert [a.returned for a in result.attempts] == [2, 1]


def test_every_stage_failing_returns_what_there_is():
    result = run([Stage("a", failing, 1.0)])
    assert result.candidates == [] and result.attempts[0].outcome == "error"
