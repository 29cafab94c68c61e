"""Top-k selection over item scores with exclusions and filters, shared by every model deployment."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k_items(
    scores: torch.Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over a [B, num_items] (or [num_items]) score matrix.

    `exclude[b]` lists item indices never returned for row b (already seen, explicit exclusions);
    `allowed` is a bool mask ([num_items] or [B, num_items]) from category/provider filters.
    Returns (values, indices), each [B, k']; k' = min(k, num_items). Masked slots have -inf
    values, so callers drop them with `values.isfinite()`.
    """
    squeeze = scores.dim() == 1
    scores = scores.unsqueeze(0) if squeeze else scores
    scores = scores.clone()
    if allowed is not None:
        # Catalogue masks are built on the CPU (ItemIndex.mask); masked_fill_ needs them on the scores' device.
        scores.masked_fill_(~allowed.to(scores.device).expand_as(scores), float("-inf"))
    if exclude is not None:
        mask_items(scores, exclude)
    values, indices = torch.topk(scores, min(k, scores.size(-1)), dim=-1)
    return (values[0], indices[0]) if squeeze else (values, indices)


def mask_items(scores: torch.Tensor, exclude: Sequence[Sequence[int]]) -> torch.Tensor:
    """Set scores[b, i] = -inf in place for every i in exclude[b]; returns scores."""
    rows = [torch.full((len(ids),), b, dtype=torch.long) for b, ids in enumerate(exclude)]
    cols = [torch.as_tensor(ids, dtype=torch.long) for ids in exclude]
    if rows:
        scores[torch.cat(rows).to(scores.device), torch.cat(cols).to(scores.device)] = float("-inf")
    return scores
