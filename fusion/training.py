"""Training the attention-fusion ranker on a validation period (kept apart from the module, as in PyG).

One example is one user's request at the start of the validation period: the sources' candidate lists
(models fitted before that period), the request context, and which candidates the user went on to
interact with in the period. The loss is listwise: minus the log of the softmax mass the ranker puts
on those positives within the union of candidates. Examples whose union holds no positive teach
nothing and are dropped.

The epoch is chosen by NDCG@20 on a held-out share of the users, the metric the ranker is judged by,
not by the held-out loss: with a few hundred examples the loss keeps falling as the ranker leans on
one strong source (popularity), while its top 20 get worse. Epoch 0, the initial ranker (every
source's rank order, equally trusted), is a candidate too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from fusion.ranker import AttentionFusion, FusionContext, Ranked, evidence

log = logging.getLogger(__name__)
SELECTION_K = 20  # the epoch is chosen by held-out NDCG at this K


@dataclass
class FusionExample:
    context: Tensor  # [CONTEXT_DIM]
    evidence: Tensor  # [items, sources, EVIDENCE_DIM]
    answered: Tensor  # [sources] bool
    positive: Tensor  # [items] bool

    @classmethod
    def build(
        cls, lists: Mapping[str, Ranked], context: FusionContext, positives: set[str], sources: Sequence[str]
    ) -> FusionExample | None:
        """None when the union of the lists holds none of `positives`."""
        items, item_evidence, answered = evidence(lists, sources)
        positive = torch.tensor([item in positives for item in items], dtype=torch.bool)
        if not positive.any():
            return None
        return cls(context.features(), item_evidence, answered, positive)


class FusionTrainingConfig(BaseModel):
    attention_dim: int = Field(default=16, ge=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=64, ge=1)
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=8, ge=1)
    validation_fraction: float = Field(default=0.2, ge=0, lt=1,
                                       description="users held out to choose the epoch (by NDCG@20; 0: by train loss)")
    seed: int = 0


@dataclass
class FusionTrainingResult:
    model: AttentionFusion
    best_epoch: int
    epochs_run: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    examples: int = 0
    held_out: list[int] = field(default_factory=list)  # positions in `examples` of the users held out to choose the epoch


def collate(examples: Sequence[FusionExample]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pad to the longest union: (context, evidence, answered, positive, valid)."""
    width = max(len(e.positive) for e in examples)
    sources, dims = examples[0].evidence.shape[1:]
    batch = len(examples)
    item_evidence = torch.zeros(batch, width, sources, dims)
    positive = torch.zeros(batch, width, dtype=torch.bool)
    valid = torch.zeros(batch, width, dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.positive)
        item_evidence[row, :n] = example.evidence
        positive[row, :n] = example.positive
        valid[row, :n] = True
    context = torch.stack([e.context for e in examples])
    answered = torch.stack([e.answered for e in examples])
    return context, item_evidence, answered, positive, valid


def listwise_loss(scores: Tensor, positive: Tensor, valid: Tensor) -> Tensor:
    """Mean over requests of -log(sum of softmax mass on the positives)."""
    scores = scores.masked_fill(~valid, float("-inf"))
    log_all = torch.logsumexp(scores, dim=1)
    log_positive = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_positive).mean()


def _epoch_loss(model: AttentionFusion, batches: list[tuple[Tensor, ...]]) -> float:
    with torch.no_grad():
        total = sum(listwise_loss(model(*b[:3])[0], b[3], b[4]).item() * len(b[0]) for b in batches)
    return total / max(1, sum(len(b[0]) for b in batches))


def union_ndcg(model: AttentionFusion, batches: list[tuple[Tensor, ...]], k: int = SELECTION_K) -> float:
    """Mean NDCG@k of the ranker's order of each request's union, against the positives in the union."""
    total, count = 0.0, 0
    with torch.no_grad():
        for context, item_evidence, answered, positive, valid in batches:
            scores = model(context, item_evidence, answered)[0].masked_fill(~valid, float("-inf"))
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices
            discount = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float32))
            dcg = (positive.gather(1, top).float() * discount).sum(1)
            ideal = torch.cumsum(discount, 0)[positive.sum(1).clamp(max=top.shape[1]) - 1]
            total += (dcg / ideal).sum().item()
            count += len(context)
    return total / max(1, count)


def train_fusion(
    examples: Sequence[FusionExample], sources: Sequence[str], config: FusionTrainingConfig = FusionTrainingConfig()
) -> FusionTrainingResult:
    """Fit the ranker with Adam; the weights of the epoch (0: the initial ranker) with the best held-out
    NDCG@20 are kept (without held-out users: the lowest train loss)."""
    if not examples:
        raise ValueError("no training examples: no user's candidates held any of their validation items")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(examples), generator=generator).tolist()
    held = int(len(examples) * config.validation_fraction)
    held_out = [examples[i] for i in order[:held]]
    fit = [examples[i] for i in order[held:]]
    check = [collate(held_out[i : i + 256]) for i in range(0, len(held_out), 256)] or None
    model = AttentionFusion(sources, attention_dim=config.attention_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Higher is better: held-out NDCG@20, or minus the train loss without held-out users.
    best = (union_ndcg(model.eval(), check) if check else float("-inf"), 0,
            {k: v.clone() for k, v in model.state_dict().items()})
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        permutation = torch.randperm(len(fit), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(fit), config.batch_size):
            context, item_evidence, answered, positive, valid = collate([fit[i] for i in permutation[start : start + config.batch_size]])
            loss = listwise_loss(model(context, item_evidence, answered)[0], positive, valid)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(context)
        model.eval()
        held_loss = _epoch_loss(model, check) if check else total / len(fit)
        score = union_ndcg(model, check) if check else -total / len(fit)
        history.append({"epoch": epoch, "train_loss": total / len(fit), "validation_loss": held_loss,
                        **({"validation_ndcg@20": score} if check else {})})
        log.info("fusion epoch %d: train loss %.4f, held-out loss %.4f%s", epoch, total / len(fit), held_loss,
                 f", held-out NDCG@{SELECTION_K} {score:.4f}" if check else "")
        if score > best[0] + 1e-6:
            best = (score, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    return FusionTrainingResult(
        model.eval(), best[1], epoch, time.perf_counter() - started, history, examples=len(examples),
        held_out=sorted(order[:held]),
    )
