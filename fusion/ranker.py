"""The attention-fusion ranker: one learned score over the union of every source's candidates.

Each source (TGN, HGT, LightGCN, content, popularity) hands in its own top-N list. What a source's score
means differs from model to model and from request to request (a TGN score mid-session is worth more
than one for a user idle for a month), so the ranker learns both parts:

- **evidence** e_{i,s}: what source s says about item i, from its own list only (present, its score
  standardised within the list, its reciprocal rank), turned into a relevance g_s(e_{i,s}) by a small
  per-source linear map; an item the source did not return gets 0 from it;
- **attention** a_s(c): how much to trust source s in this request's context c (history length, session
  active, cold start, device, time of day), a softmax over the sources that answered:

    a_s = softmax_s( (W_q c) . k_s / sqrt(d) ),      score_i = sum_s a_s * g_s(e_{i,s})

The per-source contributions a_s * g_s(e_{i,s}) add up to the score and are reported with each item.
This is the late-fusion form of attention-based ensembles (e.g. "Attentive Collaborative Filtering",
Chen et al., SIGIR 2017, attention over components from the user's context), kept small so it runs in
the ingress on a CPU in well under a millisecond per request.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

DEVICES = ("desktop", "mobile", "tablet", "tv")  # anything else is "other"; none is all zeros
# Platforms name devices differently (the demo: ios, android, web, console, smart_tv); these names count as
# the class they belong to, so the same device class shares one context feature whatever the data calls it.
DEVICE_ALIASES = {
    "ios": "mobile", "android": "mobile", "phone": "mobile", "smartphone": "mobile",
    "web": "desktop", "pc": "desktop", "mac": "desktop", "windows": "desktop", "linux": "desktop",
    "ipad": "tablet", "smart_tv": "tv", "smarttv": "tv",
}
# log1p(history) / log1p(HISTORY_SCALE): about 1 for a user with HISTORY_SCALE events.
HISTORY_SCALE = 1000
CONTEXT_FEATURES = (
    "history",
    "session_active",
    "cold_start",
    *(f"device_{d}" for d in DEVICES),
    "device_other",
    "hour_sin",
    "hour_cos",
    "time_known",
)
CONTEXT_DIM = len(CONTEXT_FEATURES)
EVIDENCE_FEATURES = ("present", "score_z", "reciprocal_rank")
EVIDENCE_DIM = len(EVIDENCE_FEATURES)
SESSION_SOURCE = "tgn"  # its answer tells whether the user's session is active
# Sources under this attention weight, with the session active or not, are not asked (fusion/parallel.py).
# On both offline datasets this changes no test figure (BENCHMARKS.md, "fusion (every source asked)").
MIN_SOURCE_WEIGHT = 0.02
WEIGHTS_FILE = "fusion.pt"
CONFIG_FILE = "fusion.json"

Ranked = Sequence[tuple[str, float]]  # (item_id, score), best first


@dataclass(frozen=True)
class FusionContext:
    """What the ranker knows of the request."""

    history_length: int = 0  # the user's stored interactions
    session_active: bool = False
    device: str | None = None
    time: datetime | None = None

    @property
    def cold_start(self) -> bool:
        return self.history_length == 0

    def features(self) -> Tensor:
        return torch.from_numpy(self.feature_array())

    def feature_array(self) -> np.ndarray:
        """[CONTEXT_DIM] float32."""
        device = [0.0] * (len(DEVICES) + 1)
        if self.device is not None:
            name = self.device.lower()
            name = DEVICE_ALIASES.get(name, name)
            device[DEVICES.index(name) if name in DEVICES else len(DEVICES)] = 1.0
        if self.time is not None:
            hour = self.time.hour + self.time.minute / 60
            clock = [math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24), 1.0]
        else:
            clock = [0.0, 0.0, 0.0]
        history = math.log1p(self.history_length) / math.log1p(HISTORY_SCALE)
        values = [history, float(self.session_active), float(self.cold_start), *device, *clock]
        return np.array(values, dtype=np.float32)


def evidence(lists: Mapping[str, Ranked], sources: Sequence[str]) -> tuple[list[str], Tensor, Tensor]:
    """The union of the lists' items (first seen first), their evidence [items, sources, EVIDENCE_DIM],
    and which sources answered [sources] (a source with an empty or missing list did not)."""
    items, out, answered = evidence_arrays(lists, sources)
    return items, torch.from_numpy(out), torch.from_numpy(answered)


def evidence_arrays(lists: Mapping[str, Ranked], sources: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`evidence` as numpy arrays. Every list is handled in one pass of array operations: the ingress runs
    this for each fusion request, and numpy's per-call overhead would dwarf the arithmetic of a per-list loop."""
    ranked = [lists.get(source) or () for source in sources]
    answered = np.array([len(r) > 0 for r in ranked], dtype=bool)
    lengths = np.array([len(r) for r in ranked])
    total = int(lengths.sum())
    items: dict[str, int] = {}
    for candidates in ranked:
        for item_id, _ in candidates:
            items.setdefault(item_id, len(items))
    out = np.zeros((len(items), len(sources), EVIDENCE_DIM), dtype=np.float32)
    if not total:
        return list(items), out, answered
    rows = np.fromiter((items[item_id] for r in ranked for item_id, _ in r), dtype=np.intp, count=total)
    scores = np.fromiter((score for r in ranked for _, score in r), dtype=np.float32, count=total)
    columns = np.repeat(np.arange(len(sources)), lengths)
    starts = np.cumsum(lengths) - lengths
    present = lengths[answered]
    # Each list's scores as z-scores (a list of one, or of equal scores, has no spread: every z is 0).
    mean = np.add.reduceat(scores, starts[answered]) / present
    deviation = scores - np.repeat(mean, present).astype(np.float32)
    spread = np.maximum(np.sqrt(np.add.reduceat(deviation * deviation, starts[answered]) / present), 1e-6)
    out[rows, columns, 0] = 1.0
    out[rows, columns, 1] = deviation / np.repeat(spread, present)
    out[rows, columns, 2] = 1.0 / (np.arange(total) - np.repeat(starts, lengths) + 1)
    return list(items), out, answered


class AttentionFusion(nn.Module):
    r"""Attention over candidate sources, conditioned on the request context (module docstring).

    Args:
        sources: the source names, in the order of the evidence tensor's source axis.
        context_dim: context features (:data:`CONTEXT_DIM`).
        evidence_dim: evidence features per item and source (:data:`EVIDENCE_DIM`).
        attention_dim: size of the query/key space.
    """

    def __init__(
        self,
        sources: Sequence[str],
        context_dim: int = CONTEXT_DIM,
        evidence_dim: int = EVIDENCE_DIM,
        attention_dim: int = 16,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.attention_dim = attention_dim
        self.query = nn.Sequential(nn.Linear(context_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, attention_dim))
        self.keys = nn.Parameter(torch.randn(len(self.sources), attention_dim) * 0.1)
        self.relevance = nn.Parameter(torch.zeros(len(self.sources), evidence_dim))
        self.relevance_bias = nn.Parameter(torch.zeros(len(self.sources)))
        with torch.no_grad():  # start from "rank order of each source, equally trusted"
            self.relevance[:, EVIDENCE_FEATURES.index("reciprocal_rank")] = 1.0

    def attention(self, context: Tensor, answered: Tensor) -> Tensor:
        """Source weights [batch, sources] for contexts [batch, context_dim]; 0 for sources that did not answer."""
        logits = self.query(context) @ self.keys.T / math.sqrt(self.attention_dim)
        logits = logits.masked_fill(~answered, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return torch.nan_to_num(weights, nan=0.0)  # a request no source answered

    def forward(self, context: Tensor, evidence: Tensor, answered: Tensor) -> tuple[Tensor, Tensor]:
        """Scores [batch, items] and per-source contributions [batch, items, sources].

        context [batch, context_dim], evidence [batch, items, sources, evidence_dim], answered [batch, sources].
        """
        present = evidence[..., 0]
        relevance = ((evidence * self.relevance).sum(-1) + self.relevance_bias) * present
        contributions = self.attention(context, answered).unsqueeze(1) * relevance
        return contributions.sum(-1), contributions

    def rank(
        self, lists: Mapping[str, Ranked], context: FusionContext, limit: int | None = None
    ) -> list[tuple[str, float, dict[str, float]]]:
        """One request: the union of `lists`, best first (the top `limit`), as (item_id, score, {source: contribution})."""
        return FusionScorer(self).rank(lists, context, limit)

    def save(self, folder: Path, **extra: object) -> None:
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        config = {"sources": self.sources, "attention_dim": self.attention_dim, **extra}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> AttentionFusion:
        config = json.loads((folder / CONFIG_FILE).read_text())
        module = cls(config["sources"], attention_dim=config["attention_dim"])
        module.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
        return module.eval()


class FusionScorer:
    """`AttentionFusion`'s inference for one request at a time, in numpy on a copy of its weights.

    The ingress ranks every fusion request on its event loop; on arrays this small, torch's per-call
    overhead (dispatch, autograd bookkeeping) costs several times the arithmetic. Same equations as
    `AttentionFusion.forward` (tests/test_fusion.py checks that they agree).
    """

    def __init__(self, module: AttentionFusion):
        def array(tensor: Tensor) -> np.ndarray:
            return tensor.detach().cpu().numpy().astype(np.float64)

        inner, outer = module.query[0], module.query[2]
        self.sources = list(module.sources)
        self._inner = (array(inner.weight).T, array(inner.bias))
        self._outer = (array(outer.weight).T, array(outer.bias))
        self._keys = array(module.keys).T / math.sqrt(module.attention_dim)
        self._relevance, self._relevance_bias = array(module.relevance), array(module.relevance_bias)

    def attention(self, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """Source weights [batch, sources] for context features [batch, CONTEXT_DIM]; 0 where not `answered`."""
        hidden = np.tanh(features @ self._inner[0] + self._inner[1])
        logits = (hidden @ self._outer[0] + self._outer[1]) @ self._keys
        logits = np.where(answered, logits, -np.inf)
        if not answered.any():
            return np.zeros_like(logits)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return weights / weights.sum(axis=-1, keepdims=True)

    def rank(
        self, lists: Mapping[str, Ranked], context: FusionContext, limit: int | None = None
    ) -> list[tuple[str, float, dict[str, float]]]:
        """See `AttentionFusion.rank`."""
        items, item_evidence, answered = evidence_arrays(lists, self.sources)
        if not items:
            return []
        relevance = ((item_evidence * self._relevance).sum(-1) + self._relevance_bias) * item_evidence[..., 0]
        contributions = self.attention(context.feature_array()[None], answered)[0] * relevance  # [items, sources]
        scores = contributions.sum(-1)
        # Best first, ties in first-seen order (as torch's stable argsort).
        order = np.argsort(-scores, kind="stable")[:limit]
        answering = [s for s, ok in zip(self.sources, answered) if ok]
        top = contributions[order][:, answered]
        return [
            (items[i], float(scores[i]), {s: round(float(c), 6) for s, c in zip(answering, parts)})
            for i, parts in zip(order.tolist(), top)
        ]

    def sources_worth_asking(
        self, context: FusionContext, available: Sequence[str], min_weight: float = MIN_SOURCE_WEIGHT
    ) -> set[str]:
        """The `available` sources the ranker knows whose attention weight reaches `min_weight` in `context`,
        with the session active or not: which of the two holds shows only once TGN has answered. 0 asks
        every source the ranker knows."""
        answered = np.array([s in available for s in self.sources])
        features = np.stack([dataclasses.replace(context, session_active=session).feature_array()
                             for session in (False, True)])
        best = self.attention(features, answered).max(axis=0)
        return {s for s, weight in zip(self.sources, best.tolist()) if s in available and weight >= min_weight}


def read_config(folder: Path) -> dict:
    """The artifact's fusion.json (sources, candidates per source, ...)."""
    return json.loads((folder / CONFIG_FILE).read_text())
