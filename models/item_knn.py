"""Item-kNN: the classic item-based collaborative-filtering baseline, in torch sparse ops.

References: B. Sarwar, G. Karypis, J. Konstan, J. Riedl, "Item-based collaborative filtering
recommendation algorithms", WWW 2001 (cosine item-item similarity; an item is predicted from its k most
similar items); M. Deshpande, G. Karypis, "Item-based top-N recommendation algorithms", ACM TOIS 22(1),
2004 (keep only each item's k most similar items; top-N scores are one sparse product).

With R the users x items interaction matrix (binary, or positive weights) and r_i its column i:

    S(i, j)      = r_i . r_j / (|r_i| |r_j| + shrink)     cosine; shrink = 0 gives normalize(R)^T normalize(R)
    S(i, i)      = 0
    N_k(i)       = the `neighbors` items j with the largest S(i, j) > 0 (fewer if fewer are positive)
    W(j, i)      = S(j, i) if j in N_k(i) else 0           prune_by="target" (default): column i holds N_k(i)
    W(i, j)      = S(i, j) if j in N_k(i) else 0           prune_by="history": row i holds N_k(i)
    score(u, :)  = R(u, :) @ W

S is symmetric, so both prunings keep the same k entries of S for each item; they differ in where they
are used. "target" (Sarwar et al.; also the ItemKNN-CF of Dacrema et al., RecSys 2019, which the
neural-recommender reproducibility studies use) scores item i from the user's items among i's own k
neighbours: score(u, i) = sum over j in N_k(i) of R(u, j) S(j, i). "history" (Deshpande & Karypis's
model matrix) lets every item of the history vote for its own k neighbours. The sum is not divided by
the sum of similarities: that normalisation is for rating prediction (it would rank an item with one
weakly similar neighbour in the history as high as one with many strong ones).
`shrink` (as in Bell & Koren) damps similarities resting on few co-occurrences.

Defaults: neighbors=100, shrink=100, prune_by="target". shrink=100 is Dacrema et al.'s default; on a
Gowalla validation split (20% of each user's train items held out, the test period untouched) it beat
10 and 400, "target" beat "history" by 3-11% Recall@20 at every setting tried, and k = 50..200 lay
within 1.5% of one another, so 100 sits in the flat middle. Measured with the defaults on the Gowalla LightGCN
split (binary train graph, full ranking, k=20): Recall 0.1464, NDCG 0.1161 (popularity 0.0416/0.0317;
the LightGCN paper reports Recall 0.1830).

Memory and speed: S is computed in blocks of `block_size` item rows. A block's co-occurrence counts
R[:, B]^T R come from one sparse x sparse product (work ~ sum over users of their degree squared, not
items^2 x users), its non-zeros are divided by the norms, scattered into a reused dense
[|B|, num_items] float32 buffer (256 MB by default) and cut with torch.topk. Only the pruned rows are
kept, so memory is O(buffer + num_items * neighbors). Scores for a batch of users are sparse x sparse
products R[users] @ W over row chunks of bounded size, scattered into the dense result. Gowalla
(29,858 x 40,981, 810k edges) fits in about 6 s of CPU on one thread (k=100; 8 s for k=200) with a
peak of about 1.2 GB; scoring every user in batches of 1024 takes about 10 s more and peaks at 2.3 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

DEFAULT_NEIGHBORS = 100
DEFAULT_SHRINK = 100.0
PRUNE_BY = ("target", "history")
BLOCK_BYTES = 256 * 2**20  # one dense [block, num_items] float32 similarity block
PRODUCT_ENTRIES = 1 << 22  # intermediate terms per sparse product when scoring


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _as_csr(matrix: torch.Tensor) -> torch.Tensor:
    """float32 sparse CSR with int64 indices, on the CPU, from a CSR, COO or dense matrix."""
    if matrix.dim() != 2:
        raise ValueError(f"interactions must be a 2-D users x items matrix, got shape {tuple(matrix.shape)}")
    matrix = matrix.detach().cpu()
    if matrix.layout == torch.sparse_coo:
        matrix = matrix.coalesce()
    if matrix.layout != torch.sparse_csr:
        matrix = matrix.to_sparse_csr()
    values = matrix.values()
    if values.dtype != torch.float32 or matrix.crow_indices().dtype != torch.long:
        crow, col = matrix.crow_indices().long(), matrix.col_indices().long()
        matrix = _csr(crow, col, values.float(), tuple(matrix.shape))
    if values.numel() and bool((values < 0).any()):
        raise ValueError("interactions must be non-negative (build them from positive edges only)")
    return matrix


def _transpose(csr: torch.Tensor) -> torch.Tensor:
    """CSR of the transpose, columns sorted within each row."""
    rows, cols = csr.shape
    crow, col, values = csr.crow_indices(), csr.col_indices(), csr.values()
    row_of = torch.repeat_interleave(torch.arange(rows), torch.diff(crow))
    # Stable sort by column keeps the original rows in ascending order inside each new row.
    order = torch.argsort(col, stable=True)
    new_crow = torch.zeros(cols + 1, dtype=torch.long)
    new_crow[1:] = torch.cumsum(torch.bincount(col, minlength=cols), 0)
    return _csr(new_crow, row_of[order], values[order], (cols, rows))


def _row_range(csr: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    crow = csr.crow_indices()
    first, last = int(crow[start]), int(crow[stop])
    return _csr(
        crow[start : stop + 1] - first,
        csr.col_indices()[first:last],
        csr.values()[first:last],
        (stop - start, csr.size(1)),
    )


def gather_rows(csr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """CSR of the given rows (any order, repeats allowed) of a CSR matrix."""
    rows = rows.long().cpu()
    crow = csr.crow_indices()
    starts = crow[rows]
    counts = crow[rows + 1] - starts
    new_crow = torch.zeros(rows.numel() + 1, dtype=torch.long)
    new_crow[1:] = torch.cumsum(counts, 0)
    positions = torch.repeat_interleave(starts - new_crow[:-1], counts) + torch.arange(int(new_crow[-1]))
    return _csr(new_crow, csr.col_indices()[positions], csr.values()[positions], (rows.numel(), csr.size(1)))


def _densify(csr: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dense copy of a CSR matrix with unique (row, column) entries, written into `out` when given.

    One flat scatter: several times faster than Tensor.to_dense() or an accumulating index_put_ for CSR.
    """
    rows, cols = csr.shape
    dense = torch.zeros(rows, cols, dtype=csr.values().dtype) if out is None else out[:rows].zero_()
    row_of = torch.repeat_interleave(torch.arange(rows), torch.diff(csr.crow_indices()))
    dense.view(-1).scatter_(0, row_of * cols + csr.col_indices(), csr.values())
    return dense


def _block_size(num_items: int, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return block_size
    return max(1, BLOCK_BYTES // (4 * max(num_items, 1)))


def item_similarity(
    interactions: torch.Tensor,
    neighbors: int | None = DEFAULT_NEIGHBORS,
    shrink: float = DEFAULT_SHRINK,
    block_size: int | None = None,
) -> torch.Tensor:
    """items x items float32 CSR: shrunk cosine similarity, zero diagonal, row i = N_k(i) (top-k per row).

    neighbors=None keeps every non-zero similarity (the full, symmetric S; only for small catalogues).
    A row keeps min(neighbors, number of items with a positive similarity to it) entries; where several
    items tie at the k-th value, which of them are kept is unspecified. See the module docstring.
    """
    if neighbors is not None and neighbors < 1:
        raise ValueError(f"neighbors must be >= 1 or None, got {neighbors}")
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    matrix = _as_csr(interactions)
    num_items = matrix.size(1)
    by_item = _transpose(matrix)  # items x users
    norms = torch.zeros(num_items, dtype=torch.float32)
    norms.index_add_(0, matrix.col_indices(), matrix.values() ** 2)
    norms = norms.sqrt()
    step = _block_size(num_items, block_size)
    buffer = torch.empty(min(step, num_items), num_items)
    crows, cols, values = [torch.zeros(1, dtype=torch.long)], [], []
    entries = 0
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        # Co-occurrences of the block's items with every item, shrunk cosine on the non-zeros only.
        dots = torch.sparse.mm(_row_range(by_item, start, stop), matrix)
        block_row = torch.repeat_interleave(torch.arange(stop - start), torch.diff(dots.crow_indices()))
        denominator = norms[block_row + start] * norms[dots.col_indices()] + shrink
        sim = dots.values() / denominator.clamp_(min=torch.finfo(torch.float32).tiny)
        block = _densify(_csr(dots.crow_indices(), dots.col_indices(), sim, tuple(dots.shape)), buffer)
        del dots, block_row, denominator, sim
        local = torch.arange(stop - start)
        block[local, local + start] = 0.0
        if neighbors is None:
            keep = block > 0
            row_counts = keep.sum(1)
            cols.append(keep.nonzero()[:, 1])
            values.append(block[keep])
        else:
            top_values, top_cols = torch.topk(block, min(neighbors, num_items), dim=1, sorted=False)
            keep = top_values > 0
            row_counts = keep.sum(1)
            # Each row's kept entries, ordered by column as CSR wants.
            top_cols = torch.where(keep, top_cols, num_items)
            top_cols, order = torch.sort(top_cols, dim=1)
            top_values = torch.gather(top_values, 1, order)
            kept = top_cols < num_items
            cols.append(top_cols[kept])
            values.append(top_values[kept])
        crows.append(entries + torch.cumsum(row_counts, 0))
        entries += int(row_counts.sum())
    col = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)
    value = torch.cat(values) if values else torch.zeros(0)
    return _csr(torch.cat(crows), col, value, (num_items, num_items))


@dataclass
class ItemKNN:
    interactions: torch.Tensor  # users x items float32 CSR: the histories users are scored from
    similarity: torch.Tensor  # items x items float32 CSR: W, the pruned similarity; scores = R @ W
    neighbors: int
    shrink: float
    prune_by: Literal["target", "history"] = "target"

    @property
    def num_users(self) -> int:
        return self.interactions.size(0)

    @property
    def num_items(self) -> int:
        return self.interactions.size(1)

    @classmethod
    def fit(
        cls,
        interactions: torch.Tensor,
        neighbors: int = DEFAULT_NEIGHBORS,
        shrink: float = DEFAULT_SHRINK,
        prune_by: Literal["target", "history"] = "target",
        block_size: int | None = None,
    ) -> ItemKNN:
        """interactions: users x items (torch sparse CSR, e.g. BipartiteGraph.user_item_csr()); binary
        (graph built with binary=True) is the standard choice, positive weights also work. See the module
        docstring for the parameters."""
        if prune_by not in PRUNE_BY:
            raise ValueError(f"prune_by must be one of {PRUNE_BY}, not {prune_by!r}")
        matrix = _as_csr(interactions)
        pruned = item_similarity(matrix, neighbors, shrink, block_size)  # row i = N_k(i)
        weights = _transpose(pruned) if prune_by == "target" else pruned
        return cls(matrix, weights, neighbors, float(shrink), prune_by)

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), num_items] float32 (a fresh tensor): R[users] @ W. Usable as the score_fn of
        models.evaluation.evaluate_full_ranking; it does not mask the users' own items."""
        return self.scores_for(gather_rows(self.interactions, torch.as_tensor(users).reshape(-1)))

    def scores_for(self, histories: torch.Tensor) -> torch.Tensor:
        """Scores for histories given directly (rows x items, sparse or dense), e.g. a live session.

        The product runs over row chunks of about PRODUCT_ENTRIES intermediate terms (history entries
        times their neighbour-row lengths), each written into the dense result: with "target" pruning a
        popular item sits in thousands of neighbourhoods, and one sparse product over a 1024-user Gowalla
        batch would hold ~20M terms (several GB inside torch's sparse matmul).
        """
        rows = _as_csr(histories)
        if rows.size(1) != self.num_items:
            raise ValueError(f"histories have {rows.size(1)} items, the model {self.num_items}")
        out = torch.zeros(rows.size(0), self.num_items)
        if rows.values().numel() == 0 or self.similarity.values().numel() == 0:
            return out
        crow = rows.crow_indices()
        neighbor_rows = torch.diff(self.similarity.crow_indices())[rows.col_indices()]
        terms = torch.zeros(neighbor_rows.numel() + 1, dtype=torch.long)
        terms[1:] = torch.cumsum(neighbor_rows, 0)
        work = torch.cumsum(terms[crow[1:]] - terms[crow[:-1]], 0)  # terms up to and including each row
        limits = torch.arange(PRODUCT_ENTRIES, max(int(work[-1]), PRODUCT_ENTRIES), PRODUCT_ENTRIES)
        cuts = torch.searchsorted(work, limits, right=True)
        start = 0
        for stop in sorted({*cuts.tolist(), rows.size(0)}):  # a chunk exceeds the limit by at most one row
            if stop > start:
                _densify(torch.sparse.mm(_row_range(rows, start, stop), self.similarity), out[start:stop])
                start = stop
        return out

    def save(self, folder: Path) -> None:
        state = {"neighbors": self.neighbors, "shrink": self.shrink, "prune_by": self.prune_by}
        for name, matrix in (("interactions", self.interactions), ("similarity", self.similarity)):
            state[name] = {
                "crow_indices": matrix.crow_indices(),
                "col_indices": matrix.col_indices(),
                "values": matrix.values(),
                "shape": tuple(matrix.shape),
            }
        torch.save(state, Path(folder) / "item_knn.pt")

    @classmethod
    def load(cls, folder: Path) -> ItemKNN:
        state = torch.load(Path(folder) / "item_knn.pt", weights_only=True)

        def matrix(name: str) -> torch.Tensor:
            part = state[name]
            return _csr(part["crow_indices"], part["col_indices"], part["values"], tuple(part["shape"]))

        return cls(
            matrix("interactions"),
            matrix("similarity"),
            int(state["neighbors"]),
            float(state["shrink"]),
            state["prune_by"],
        )
