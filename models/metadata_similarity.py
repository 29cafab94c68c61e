"""Metadata similarity: the "content" cold-start baseline until the MiniLM retriever lands.

Each item is a bag of metadata tokens: "provider=<p>", "category=<c>", one "badge=<b>" per badge, and
optionally "title=<word>" per lower-cased title word (letters and digits; "(1995)" gives "title=1995").
With N items and df(t) the number of items carrying token t, an item's vector is binary TF-IDF,
L2-normalised (the smoothed idf of scikit-learn's TfidfVectorizer):

    x_i(t)       = idf(t) if item i has token t else 0,   idf(t) = ln((1 + N) / (1 + df(t))) + 1
    x_i          = x_i / |x_i|
    sim(i, j)    = x_i . x_j                                   cosine, in [0, 1]
    score(u, i)  = sum_{j in G(u)} w_j sim(j, i)               G(u): the user's given items (w_j = 1 by default)

so an item sharing the provider and the rarer badges of what the user liked ranks first. A rare token
(a small studio, a niche tag) counts more than a ubiquitous one. Scores are one product
(sum_j w_j x_j) @ X^T per user: no item x item matrix is stored.

With no given item the score is 0 everywhere: metadata has nothing to say about a user it knows nothing
of. benchmarks/cold_start.py then ranks by global popularity and labels the row "content (popularity at 0)".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

FIELDS = ("provider", "category", "badges")
_WORD = re.compile(r"[a-z0-9]+")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != ""


def _as_list(value: object) -> list[str]:
    """A badges cell (None, NaN, a string or any iterable of strings) -> its non-empty entries."""
    if isinstance(value, str):
        return [value] if value else []
    if value is None or isinstance(value, float):
        return []
    return [str(entry) for entry in value if _present(entry)]  # type: ignore[union-attr]


def item_tokens(item: pd.Series | dict, fields: Iterable[str] = FIELDS, title_words: bool = False) -> list[str]:
    """The distinct metadata tokens of one catalogue row (see the module docstring)."""
    tokens = []
    for name in fields:
        value = item.get(name)
        if name == "badges":
            tokens += [f"badge={badge}" for badge in _as_list(value)]
        elif _present(value):
            tokens.append(f"{name}={value}")
    title = item.get("title")
    if title_words and _present(title):
        tokens += [f"title={word}" for word in _WORD.findall(str(title).lower())]
    return list(dict.fromkeys(tokens))


@dataclass
class MetadataSimilarity:
    item_ids: list[str]
    vocabulary: list[str]
    vectors: torch.Tensor  # [I, V] float32 sparse COO (coalesced), rows L2-normalised (0 for an item without tokens)

    @classmethod
    def fit(
        cls,
        items: pd.DataFrame,
        item_ids: Sequence[str] | None = None,
        fields: Iterable[str] = FIELDS,
        title_words: bool = False,
    ) -> MetadataSimilarity:
        """TF-IDF vectors for `item_ids` (default: the catalogue's rows, in order); an id missing from the
        catalogue gets no tokens. idf is computed over those items only."""
        catalogue = items.drop_duplicates("item_id").set_index("item_id", drop=False)
        item_ids = list(catalogue.index) if item_ids is None else list(item_ids)
        fields = tuple(fields)
        rows = [
            item_tokens(catalogue.loc[item], fields, title_words) if item in catalogue.index else []
            for item in item_ids
        ]
        vocabulary = sorted({token for tokens in rows for token in tokens})
        token_index = {token: t for t, token in enumerate(vocabulary)}
        row = np.repeat(np.arange(len(rows)), [len(tokens) for tokens in rows])
        col = np.asarray([token_index[token] for tokens in rows for token in tokens], dtype=np.int64)
        df = np.bincount(col, minlength=len(vocabulary))
        idf = np.log((1 + len(rows)) / (1 + df)) + 1.0
        values = idf[col]
        norms = np.sqrt(np.bincount(row, weights=values**2, minlength=len(rows)))
        values = values / norms[row] if len(values) else values
        vectors = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([row, col]).astype(np.int64)).reshape(2, -1),
            torch.from_numpy(values).float(),
            size=(len(rows), len(vocabulary)),
            check_invariants=True,
        ).coalesce()
        return cls(item_ids, vocabulary, vectors)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def scores(self, given: Sequence[Sequence[int]], weights: Sequence[Sequence[float]] | None = None) -> torch.Tensor:
        """[B, I] float32: score(u, i) = sum_j w_j sim(j, i) over row u's given item indices (all 0 for an
        empty row). The given items themselves score highest; callers mask them."""
        rows = [torch.full((len(ids),), b, dtype=torch.long) for b, ids in enumerate(given)]
        cols = [torch.as_tensor(list(ids), dtype=torch.long) for ids in given]
        row = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        col = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)
        values = (
            torch.ones(row.numel())
            if weights is None
            else torch.cat([torch.as_tensor(list(w), dtype=torch.float32) for w in weights])
        )
        selection = torch.zeros(len(given), self.num_items).index_put_((row, col), values, accumulate=True)
        profiles = torch.sparse.mm(self.vectors.t(), selection.T)  # [V, B]: sum_j w_j x_j per row
        return torch.sparse.mm(self.vectors, profiles).T.contiguous()
