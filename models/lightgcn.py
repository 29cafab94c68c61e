"""LightGCN: "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation"
(He et al., SIGIR 2020, https://arxiv.org/abs/2002.02126).

Users and items are the nodes of one graph (users first, N = U + I). Each layer is a plain
normalised neighbourhood sum, with no weights and no non-linearity (eq. 3, 7):

    E^(k+1) = A_hat E^(k)                A_hat = D^-1/2 A D^-1/2   (graph_builders.bipartite)
    E       = sum_{k=0..K} alpha_k E^(k),   alpha_k = 1 / (K + 1)
    y(u, i) = e_u . e_i

PyG's `LightGCN` / `LGConv` do the propagation. The adjacency is passed pre-normalised as a torch
sparse CSR matrix (`normalize=False`), so each layer is one sparse-dense product instead of an
`edge_index` gather/scatter, and nothing is re-normalised per forward pass. A_hat is symmetric, so the
backward pass is A_hat @ grad as well: `SymmetricLGConv` says so to autograd, which otherwise transposes
the CSR matrix on every backward pass (several times slower than the product itself on CPU).
Training lives in `models/lightgcn_training.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import LGConv
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from models.embeddings import UserItemEmbeddings


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A that needs no gradient: dL/dx = A^T g = A g."""

    @staticmethod
    def forward(ctx, adjacency: Tensor, x: Tensor) -> Tensor:
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, ctx.adjacency @ grad.contiguous()


class SymmetricLGConv(LGConv):
    """`LGConv` over a pre-normalised, symmetric torch sparse adjacency (see the module docstring)."""

    def __init__(self):
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return _SymmetricSpMM.apply(adj_t, x)


class LightGCN(torch.nn.Module):
    """LightGCN over a user-item graph whose users come first in the node order.

    Args:
        num_users: number of user nodes.
        num_items: number of item nodes.
        embedding_dim: size of the ego embeddings E^(0).
        num_layers: number of propagation layers K.
        alpha: layer weights alpha_k (default 1 / (K + 1) each).
        init_std: E^(0) starts as N(0, init_std^2), as in the paper's code (0.1); None keeps PyG's
            Xavier-uniform, which at Gowalla's 70k nodes is about 20x smaller.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 3,
        alpha: float | Tensor | None = None,
        init_std: float | None = 0.1,
    ):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.gcn = PyGLightGCN(num_users + num_items, embedding_dim, num_layers, alpha, normalize=False)
        self.gcn.convs = torch.nn.ModuleList(SymmetricLGConv() for _ in range(num_layers))
        if init_std is not None:  # else PyG's Xavier-uniform, drawn above
            torch.nn.init.normal_(self.ego.weight, std=init_std)

    @property
    def ego(self) -> torch.nn.Embedding:
        """E^(0), the only trained parameters."""
        return self.gcn.embedding

    def forward(self, adjacency: Tensor) -> tuple[Tensor, Tensor]:
        """Final (user, item) embeddings propagated over the normalised, symmetric (U + I) x (U + I)
        sparse adjacency (`BipartiteGraph.normalized_adjacency`)."""
        out = self.gcn.get_embedding(adjacency)
        return out[: self.num_users], out[self.num_users :]

    def embeddings(self, adjacency: Tensor, cosine: bool = False) -> UserItemEmbeddings:
        """The final embeddings to serve with; unit-length rows when trained with a cosine objective,
        so that the dot product is the score the model was trained on."""
        with torch.no_grad():
            users, items = self(adjacency)
        if cosine:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return UserItemEmbeddings(users.detach().cpu().contiguous(), items.detach().cpu().contiguous())
