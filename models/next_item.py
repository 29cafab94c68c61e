"""Next-item evaluation for session-based recommendation, vectorised in torch (the session-rec protocol).

Protocol: M. Ludewig, N. Mauro, S. Latifi, D. Jannach, "Empirical analysis of session-based recommendation
algorithms", UMUAI 31, 2021 (session-rec, evaluation.evaluate_sessions). A test session s = (s_1, ..., s_n)
of train-catalogue item indices in time order gives n - 1 cases: after each click i = 1..n-1 the model sees
the WHOLE prefix s_1..s_i and ranks every catalogue item as the next click; the target is s_{i+1}. Items of
the prefix are not masked: clicking an item again is a legitimate next click (frequent on YOOCHOOSE), and
session-rec does not mask them either. For one case with target t and scores x over all items:

    rank        = |{j : x_j >= x_t}|          the target itself counts, and so does every item tied with it
    Recall@K    = 1 if rank <= K else 0       = HitRate@K: what GRU4Rec and session-rec call Recall@20 / HR@20
    MRR@K       = 1 / rank if rank <= K else 0
    Coverage@K  = |union over cases of the items ranked <= K by the same rule| / num_items

Recall and MRR are averaged over the cases; every case counts once, so long sessions weigh more.

Ties are counted against the target (pessimistic; GRU4Rec's own evaluation calls it "conservative"): a
method cannot gain from scores it does not distinguish. An all-equal row ranks the target at num_items, a
miss, and a target with score 0 behind the non-zero scores of a short kNN or rule list is a miss too.
The alternatives are both optimistic in some way: the original GRU4Rec code counts only strictly higher
scores (rank = 1 + |{j : x_j > x_t}|, so an all-equal row is a hit at rank 1), and session-rec sorts with
pandas and reads the list as sorted, so zero-score items padding a short list can hit in arbitrary order.
The rule matters for sparse scorers (rules, kNN) and hardly at all for dense ones (popularity, neural).
A NaN score counts as -inf; a target scored -inf is never a hit, and an item scored -inf is never covered.

Speed: cases are scored in batches (one [B, num_items] matrix from score_fn). The target's rank is one
comparison of the batch against the targets' scores; coverage needs one torch.topk and one more comparison
against each row's K-th value. No Python loop per case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.ranking import mask_items

PrefixScoreFn = Callable[[list[list[int]]], torch.Tensor]


@dataclass
class NextItemCases:
    """One row per case: the prefix, the next item, and where the case comes from."""

    prefixes: list[list[int]]  # items[:i], the whole prefix, time order
    targets: torch.Tensor  # [N] long: items[i]
    sessions: torch.Tensor  # [N] long: index of the session in the list given to next_item_cases
    positions: torch.Tensor  # [N] long: i, the target's position in its session (= prefix length, >= 1)

    def __len__(self) -> int:
        return len(self.prefixes)


def next_item_cases(sessions: list[list[int]]) -> NextItemCases:
    """Every (prefix, next item) case of the sessions; a session with fewer than 2 items gives none."""
    prefixes: list[list[int]] = []
    targets: list[int] = []
    owners: list[int] = []
    positions: list[int] = []
    for number, items in enumerate(sessions):
        for i in range(1, len(items)):
            prefixes.append(list(items[:i]))
            targets.append(items[i])
            owners.append(number)
            positions.append(i)
    return NextItemCases(
        prefixes=prefixes,
        targets=torch.tensor(targets, dtype=torch.long),
        sessions=torch.tensor(owners, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
    )


class NextItemAccumulator:
    """Per-case ranks over batches, turned into Recall@K, MRR@K and Coverage@K once at the end."""

    def __init__(self, num_items: int, ks: Sequence[int] = (20,)):
        self.ks = tuple(sorted(set(ks)))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive, got {ks}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.ranks: list[torch.Tensor] = []
        self.covered = {k: torch.zeros(num_items, dtype=torch.bool) for k in self.ks}

    def add(self, scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[Sequence[int]] | None = None) -> None:
        """scores [B, num_items] (any device, not modified), targets [B] item indices; exclude[b]: items
        case b may not rank (e.g. the user's earlier items where nothing is consumed twice)."""
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if scores.shape != (targets.numel(), self.num_items):
            raise ValueError(f"scores have shape {tuple(scores.shape)}, expected {(targets.numel(), self.num_items)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_items):
            raise ValueError(f"targets must lie in [0, {self.num_items})")
        with torch.no_grad():
            scores = scores.detach()
            if bool(torch.isnan(scores).any()):
                scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            if exclude is not None:
                scores = mask_items(scores.clone(), exclude)
            targets = targets.to(scores.device)
            target_scores = scores.gather(1, targets.unsqueeze(1))
            rank = (scores >= target_scores).sum(1)
            # An unscored (-inf) target is ranked past the catalogue, so it misses even when K >= num_items.
            rank = torch.where(target_scores.squeeze(1) > float("-inf"), rank, self.num_items + 1)
            self.ranks.append(rank.cpu())
            self._cover(scores)

    def _cover(self, scores: torch.Tensor) -> None:
        values, items = torch.topk(scores, min(self.ks[-1], self.num_items), dim=1)
        for k in self.ks:
            top_values, top_items = values[:, :k], items[:, :k]
            kth = top_values[:, -1:]
            # An item above the K-th value has rank <= K; one equal to it only when no more than K items reach it.
            fits = (scores >= kth).sum(1, keepdim=True) <= k
            sure = ((top_values > kth) | fits) & (top_values > float("-inf"))
            self.covered[k][top_items[sure].cpu()] = True

    def result(self) -> dict[str, float]:
        """{"recall@K": ..., "mrr@K": ..., "coverage@K": ..., "cases": N}; averages are 0.0 with no case."""
        ranks = torch.cat(self.ranks) if self.ranks else torch.zeros(0, dtype=torch.long)
        cases = ranks.numel()
        out: dict[str, float] = {}
        for k in self.ks:
            hit = ranks <= k
            out[f"recall@{k}"] = float(hit.double().mean()) if cases else 0.0
            out[f"mrr@{k}"] = float(torch.where(hit, 1.0 / ranks.double(), 0.0).mean()) if cases else 0.0
            out[f"coverage@{k}"] = float(self.covered[k].sum()) / self.num_items
        out["cases"] = float(cases)
        return out


def evaluate_next_item(
    score_fn: PrefixScoreFn,
    cases: NextItemCases,
    num_items: int,
    ks: Sequence[int] = (20,),
    batch_size: int = 512,
) -> dict[str, float]:
    """Recall@K, MRR@K and Coverage@K of score_fn over the cases (see the module docstring).

    score_fn(prefixes: list[list[int]]) -> [len(prefixes), num_items] float scores, called under no_grad in
    batches of `batch_size` cases; the batch size cannot change the result.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    accumulator = NextItemAccumulator(num_items, ks)
    with torch.no_grad():
        for start in range(0, len(cases), batch_size):
            stop = min(start + batch_size, len(cases))
            accumulator.add(score_fn(cases.prefixes[start:stop]), cases.targets[start:stop])
    return accumulator.result()
