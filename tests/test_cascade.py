import asyncio

import pytest

from deployments.contract import Candidates, ModelQuery
from fusion.cascade import Stage, run_cascade


def returning(name: str, ids: list[str], delay: float = 0.0):
    async def call(query: ModelQuery) -> Candidates:
        await asyncio.sleep(delay)
        kept = [i for i in ids if i not in query.exclude_ids]
        return Candidates.of(name, kept, [1.0] * len(kept), "test")

    return call


async def failing(query: ModelQuery) -> Candidates:
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


def test_candidates_are_rows_in_columns():
    answer = Candidates.of("m", ["1", "2", "3"], [0.9, 0.5, 0.1], ["r1", "r2", "r3"])
    assert len(answer) == 3
    assert [(c.item_id, c.score, c.source, c.reason) for c in answer.rows(1)] == [("2", 0.5, "m", "r2"), ("3", 0.1, "m", "r3")]
    assert [c.item_id for c in answer.rows(0, 2)] == ["1", "2"]
    assert list(answer) == list(answer.rows())  # iterated like the list of rows it replaces
    assert not any(Candidates(source="m")) and any(answer)
    assert Candidates.of("m", ["1", "2"], [1.0, 0.5], "same").reasons == ["same", "same"]
    with pytest.raises(ValueError, match="as long as each other"):
        Candidates(source="m", item_ids=["1", "2"], scores=[1.0], reasons=["r", "r"])


def test_candidates_from_a_top_k_leave_out_masked_rows():
    catalogue = ["a", "b", "c", "d"]
    top = Candidates.from_top_k("m", catalogue, [0.7, 0.0, float("-inf")], [2, 0, 3], ["x", "y", "z"])
    assert (top.item_ids, top.reasons) == (["c", "a"], ["x", "y"])
    assert Candidates.from_top_k("m", catalogue, [0.7, 0.0, float("-inf")], [2, 0, 3], "why", above=0.0).item_ids == ["c"]
