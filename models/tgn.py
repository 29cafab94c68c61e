"""TGN as a next-interaction recommender, built from PyG's TGN parts.

Temporal Graph Networks (Rossi et al., 2020, https://arxiv.org/abs/2006.10637), in the shape of PyG's
examples/tgn.py: `TGNMemory` with `IdentityMessage` and `LastAggregator`, `LastNeighborLoader` for the
most recent interactions of every node, and `TransformerConv` temporal attention over them.

Node ids: items 0..I-1 first, then users and anonymous sessions I..I+U-1, so new users are appended
without renumbering items (`grow`).

    memory        s_v(t) = GRU(m_v(t), s_v(t-)),   m_v = [s_v || s_w || raw_msg || phi(t - t_v-)]   (TGNMemory)
    item          x_i = s_i + e_i                   (memory plus a learned identity embedding)
    candidate     h_i = W_c x_i
    query         z_u = W_r s_u + sum_j a_uj (W_v x_j + W_e [psi(log(1 + dt_j)) + r_j || msg_j])
                        over u's N most recent interactions j (TransformerConv; dt_j = query time - t_j,
                        r_j = a learned embedding of j's recency rank, 0 = newest)
    score         y_ui = z_u . h_i

The candidate side reads the stored item memory (no gradient through the GRU), so scoring the whole
catalogue is one [B, d] x [d, I] product and is the same in training and at serving. A query needs no
stored node: an anonymous session is a zero memory attending over the items it names.

The score is therefore exactly a dot product of a per-query vector and a per-item vector: h_i carries
W_c's bias, and nothing is added after the product. Both sides are snapshots of the state, though: z_u
depends on the query time (the ages of u's interactions) and on u's memory and recent items, and h_i on
the item's memory, which every new interaction with the item moves (`user_vectors`, `item_vectors`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Module
from torch_geometric.nn import TransformerConv
from torch_geometric.nn.models.tgn import IdentityMessage, LastAggregator, LastNeighborLoader, TGNMemory, TimeEncoder


STATE_BUFFERS = {"memory.memory", "memory.last_update", "memory._assoc"}


@dataclass
class RecentInteractions:
    """The interactions a batch of queries attends over, one row per (query, interaction)."""

    owner: Tensor  # [E] row of the query in the batch
    items: Tensor  # [E] item index
    t: Tensor  # [E] unix seconds of the interaction
    msg: Tensor  # [E, msg_dim] raw message
    rank: Tensor  # [E] 0 = the query's newest interaction


class InteractionHistory:
    """Every node's N most recent interactions (PyG's `LastNeighborLoader`) and the edge log they point into.

    `insert` must see events in the order they are applied to memory; edge ids are positions in the log.
    """

    def __init__(self, num_nodes: int, size: int, msg_dim: int):
        self.size, self.msg_dim = size, msg_dim
        self.loader = LastNeighborLoader(num_nodes, size=size)
        # The edge log grows by doubling: serving appends one event at a time.
        self._t = torch.empty(1024, dtype=torch.long)
        self._msg = torch.empty(1024, msg_dim)
        self.num_edges = 0

    @property
    def num_nodes(self) -> int:
        return self.loader.neighbors.size(0)

    @property
    def t(self) -> Tensor:
        return self._t[: self.num_edges]

    @property
    def msg(self) -> Tensor:
        return self._msg[: self.num_edges]

    def reset(self) -> None:
        self.loader.reset_state()
        self.num_edges = 0

    def insert(self, src: Tensor, dst: Tensor, t: Tensor, msg: Tensor) -> None:
        self.loader.insert(src, dst)
        end = self.num_edges + t.numel()
        if end > self._t.numel():
            capacity = max(end, 2 * self._t.numel())
            self._t = torch.cat([self.t, self._t.new_empty(capacity - self.num_edges)])
            self._msg = torch.cat([self.msg, self._msg.new_empty(capacity - self.num_edges, self.msg_dim)])
        self._t[self.num_edges : end], self._msg[self.num_edges : end] = t, msg
        self.num_edges = end

    def apply(self, fn) -> None:
        """Apply a tensor function (a device move) to every tensor held."""
        loader = self.loader
        loader.neighbors, loader.e_id, loader._assoc = fn(loader.neighbors), fn(loader.e_id), fn(loader._assoc)
        self._t, self._msg = fn(self._t), fn(self._msg)

    def recent(self, nodes: Tensor) -> RecentInteractions:
        """The stored interactions of `nodes` ([B]), newest first within each node."""
        e_id = self.loader.e_id[nodes]  # [B, N], sorted newest first; -1 = empty slot
        valid = e_id >= 0
        owner = torch.arange(nodes.numel(), device=e_id.device).unsqueeze(1).expand_as(e_id)[valid]
        rank = torch.arange(self.size, device=e_id.device).unsqueeze(0).expand_as(e_id)[valid]
        edges = e_id[valid]
        return RecentInteractions(owner, self.loader.neighbors[nodes][valid], self.t[edges], self.msg[edges], rank)

    def recent_with_batch(self, src: Tensor, dst: Tensor, t: Tensor, msg: Tensor) -> RecentInteractions:
        """What each event of a batch may attend over: its node's stored interactions plus the same
        node's earlier events in this batch (not yet inserted), so a query always sees its exact prefix
        whatever the batch size."""
        stored = self.recent(src)
        same = (src.unsqueeze(1) == src.unsqueeze(0)).tril(diagonal=-1)  # same[k, j]: j earlier, same node
        earlier = same.sum(1)  # [B] in-batch predecessors of each event
        query, before = same.nonzero(as_tuple=True)
        rank = earlier[query] - 1 - earlier[before]  # 0 = the newest predecessor
        recent = rank < self.size
        query, before, rank = query[recent], before[recent], rank[recent]
        stored_rank = stored.rank + earlier[stored.owner]
        keep = stored_rank < self.size
        return RecentInteractions(
            owner=torch.cat([query, stored.owner[keep]]),
            items=torch.cat([dst[before], stored.items[keep]]),
            t=torch.cat([t[before], stored.t[keep]]),
            msg=torch.cat([msg[before], stored.msg[keep]]),
            rank=torch.cat([rank, stored_rank[keep]]),
        )

    def grow(self, num_nodes: int) -> None:
        extra = num_nodes - self.num_nodes
        if extra <= 0:
            return
        loader = self.loader
        loader.neighbors = torch.cat([loader.neighbors, loader.neighbors.new_zeros(extra, self.size)])
        loader.e_id = torch.cat([loader.e_id, loader.e_id.new_full((extra, self.size), -1)])
        loader._assoc = torch.cat([loader._assoc, loader._assoc.new_empty(extra)])

    def state(self) -> dict[str, Tensor | int]:
        return {"neighbors": self.loader.neighbors.cpu(), "e_id": self.loader.e_id.cpu(),
                "cur_e_id": self.loader.cur_e_id, "t": self.t.cpu(), "msg": self.msg.cpu()}

    def load_state(self, state: dict[str, Tensor | int]) -> None:
        self.grow(state["neighbors"].size(0))
        n = state["neighbors"].size(0)
        self.loader.neighbors[:n], self.loader.e_id[:n] = state["neighbors"], state["e_id"]
        self.loader.cur_e_id = int(state["cur_e_id"])
        device = self.loader.e_id.device
        self._t, self._msg = state["t"].to(device, copy=True), state["msg"].to(device, copy=True)
        self.num_edges = self._t.numel()


class TemporalAttention(Module):
    """A query's attention over its recent interactions: PyG's TGN `GraphAttentionEmbedding`, bipartite
    (interactions -> queries), with a log-scaled time encoding (seconds to months in one encoder) and a
    recency-rank embedding added to it."""

    def __init__(self, in_channels: int, out_channels: int, msg_dim: int, time_dim: int, max_rank: int,
                 heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.time_enc = TimeEncoder(time_dim)
        self.recency = Embedding(max_rank, time_dim)
        self.conv = TransformerConv(in_channels, out_channels // heads, heads=heads, dropout=dropout,
                                    edge_dim=time_dim + msg_dim)

    def forward(self, query_x: Tensor, neighbor_x: Tensor, recent: RecentInteractions, query_t: Tensor) -> Tensor:
        age = (query_t[recent.owner] - recent.t).clamp(min=0).to(query_x.dtype)
        edge_attr = torch.cat([self.time_enc(torch.log1p(age)) + self.recency(recent.rank), recent.msg], dim=-1)
        edge_index = torch.stack([torch.arange(recent.owner.numel(), device=query_x.device), recent.owner])
        return self.conv((neighbor_x, query_x), edge_index, edge_attr)


class TGNRecommender(Module):
    """TGN memory + temporal attention, scoring every item for a user or an anonymous session.

    Args:
        num_items: catalogue size (node ids 0..num_items-1).
        num_users: user and session nodes (ids num_items..); `grow` adds more.
        msg_dim: raw message size (graph_builders.temporal.MESSAGE_DIM).
        memory_dim, time_dim, embedding_dim: sizes of memory, time encodings and output vectors.
        num_neighbors: interactions a query attends over (and a session holds).
    """

    def __init__(self, num_items: int, num_users: int, msg_dim: int, memory_dim: int = 100, time_dim: int = 100,
                 embedding_dim: int = 100, num_neighbors: int = 10, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.num_items = num_items
        self.memory = TGNMemory(num_items + num_users, msg_dim, memory_dim, time_dim,
                                message_module=IdentityMessage(msg_dim, memory_dim, time_dim),
                                aggregator_module=LastAggregator())
        self.item_embedding = Embedding(num_items, memory_dim)
        self.attention = TemporalAttention(memory_dim, embedding_dim, msg_dim, time_dim, num_neighbors, heads, dropout)
        self.candidate = Linear(memory_dim, embedding_dim)
        self.history = InteractionHistory(num_items + num_users, num_neighbors, msg_dim)

    @property
    def num_nodes(self) -> int:
        return self.memory.num_nodes

    def _apply(self, fn, recurse: bool = True):
        # `.to(device)` moves parameters and buffers; the history's tensors must follow them.
        super()._apply(fn, recurse)
        self.history.apply(fn)
        if not self.memory.training:
            # PyG keeps the memory's message stores in plain dicts, which `.to` does not reach; a loaded model
            # moved to cuda then failed in torch.cat on the first event. In eval mode they hold nothing
            # pending (each message is applied as it arrives), so they start afresh on the new device.
            self.memory._reset_message_store()
        return self

    def train(self, mode: bool = True) -> TGNRecommender:
        """Set training or eval mode. Entering eval mode applies the messages training left pending to just
        their nodes: PyG's `TGNMemory.train(False)` would run the GRU over every node, moving memories that
        had no message and zeroing their last-update times (which would, for one, wreck a state loaded
        with `load_state` into a freshly built model before `eval()`)."""
        memory = self.memory
        if memory.training and not mode:
            pending = [j for store in (memory.msg_s_store, memory.msg_d_store) for j, m in store.items() if m[0].numel()]
            if pending:
                with torch.no_grad():
                    memory._update_memory(torch.tensor(sorted(set(pending)), device=memory.device))
            memory._reset_message_store()
            memory.training = False  # so Module.train below does not flush every node again
        return super().train(mode)

    def reset_state(self) -> None:
        """Forget every interaction (memory and history); the weights stay."""
        self.memory.reset_state()
        self.history.reset()

    def item_vectors(self) -> Tensor:
        """[I, d] candidate vectors h_i from the stored item memory."""
        return self.candidate(self._item_x(torch.arange(self.num_items, device=self.memory.device)))

    def user_vectors(self, nodes: Tensor, query_t: Tensor | int, batch_size: int = 4096) -> Tensor:
        """[len(nodes), d] query vectors z_u of stored user/session nodes at time `query_t` (unix seconds,
        one for all or one per node), computed `batch_size` nodes at a time and collected on the CPU.

        Row u is what `user_queries` scores the catalogue with at that time: `user_vectors(...) @
        item_vectors().T` are the model's own scores, for as long as the state does not change. Needs eval
        mode (as serving runs): in training mode memory would return pending, not stored, updates.
        """
        if self.training:
            raise RuntimeError("user_vectors needs eval mode (models.tgn_training.settle applies pending messages)")
        device = self.memory.device
        nodes = nodes.to(device)
        query_t = torch.as_tensor(query_t, dtype=torch.long, device=device).expand(nodes.numel())
        with torch.no_grad():
            parts = [self.user_queries(nodes[start:start + batch_size], query_t[start:start + batch_size]).cpu()
                     for start in range(0, nodes.numel(), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.candidate.out_features)

    def has_interactions(self, nodes: Tensor) -> Tensor:
        """[len(nodes)] bool: which nodes have at least one interaction in the history."""
        return (self.history.loader.e_id[nodes.to(self.memory.device)] >= 0).any(dim=1).cpu()

    def _item_x(self, items: Tensor) -> Tensor:
        return self.memory.memory[items].detach() + self.item_embedding(items)

    def query_vectors(self, query_memory: Tensor, recent: RecentInteractions, query_t: Tensor) -> Tensor:
        """[B, d] query vectors z_u from each query's memory ([B, memory_dim]) and recent interactions."""
        return self.attention(query_memory, self._item_x(recent.items), recent, query_t)

    def user_queries(self, nodes: Tensor, query_t: Tensor) -> Tensor:
        """Query vectors of stored user/session nodes at times `query_t`."""
        # Serving builds its inputs on the CPU (deployments/tgn.py); they follow the model, as in `user_vectors`.
        nodes, query_t = nodes.to(self.memory.device), query_t.to(self.memory.device)
        memory, _ = self.memory(nodes)
        return self.query_vectors(memory, self.history.recent(nodes), query_t)

    def session_query(self, items: Tensor, t: Tensor, msg: Tensor, query_t: Tensor) -> Tensor:
        """[1, d] query vector of an anonymous session: no memory, attending over `items` (oldest first)."""
        items, t, msg, query_t = (x.to(self.memory.device) for x in (items, t, msg, query_t))
        n = items.numel()
        recent = RecentInteractions(items.new_zeros(n), items, t, msg, torch.arange(n - 1, -1, -1, device=items.device))
        keep = recent.rank < self.history.size
        recent = RecentInteractions(*(getattr(recent, f)[keep] for f in ("owner", "items", "t", "msg", "rank")))
        memory = self.memory.memory.new_zeros(1, self.memory.memory_dim)
        return self.query_vectors(memory, recent, query_t.view(1))

    def batch_queries(self, src: Tensor, dst: Tensor, t: Tensor, msg: Tensor) -> Tensor:
        """Query vectors for each event of a batch, at the event's time, from the state before the batch
        plus the same user's earlier events in the batch (memory sees those only after `observe`)."""
        memory, _ = self.memory(src)
        return self.query_vectors(memory, self.history.recent_with_batch(src, dst, t, msg), t)

    def observe(self, src: Tensor, dst: Tensor, t: Tensor, msg: Tensor) -> None:
        """Apply interactions (user node src, item node dst) to memory and history, in this order.

        TGN's memory assumes time never runs backwards for a node: an event older than a node's last
        update is applied at that last update's time, so late or replayed events cannot rewind memory.
        """
        last = self.memory.last_update
        src, dst, t, msg = (x.to(last.device) for x in (src, dst, t, msg))
        t = torch.maximum(t, torch.maximum(last[src], last[dst]))
        self.memory.update_state(src, dst, t, msg)
        self.history.insert(src, dst, t, msg)

    def grow(self, num_nodes: int) -> None:
        """Room for user nodes up to `num_nodes` in total (new nodes start with empty memory)."""
        memory = self.memory
        extra = num_nodes - memory.num_nodes
        if extra <= 0:
            return
        memory.memory = torch.cat([memory.memory, memory.memory.new_zeros(extra, memory.memory_dim)])
        memory.last_update = torch.cat([memory.last_update, memory.last_update.new_zeros(extra)])
        memory._assoc = torch.cat([memory._assoc, memory._assoc.new_empty(extra)])
        empty = (memory.last_update.new_empty(0),) * 3 + (memory.memory.new_empty(0, memory.raw_msg_dim),)
        for store in (memory.msg_s_store, memory.msg_d_store):
            store.update({j: empty for j in range(memory.num_nodes, num_nodes)})
        memory.num_nodes = num_nodes
        self.history.grow(num_nodes)

    def weights(self) -> dict[str, Tensor]:
        """The learned parameters only: memory buffers are sized by node count and saved by `state`."""
        return {k: v.cpu() for k, v in self.state_dict().items() if k not in STATE_BUFFERS}

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - STATE_BUFFERS:
            raise ValueError(f"weights do not fit this TGN: missing {missing}, unexpected {unexpected}")

    def state(self) -> dict:
        """Memory and history: what serving needs besides the weights to go on where training stopped."""
        # The message stores are left out: in eval mode messages are applied as they arrive, so
        # nothing is pending between calls.
        return {"memory": self.memory.memory.cpu(), "last_update": self.memory.last_update.cpu(),
                "history": self.history.state()}

    def load_state(self, state: dict) -> None:
        self.grow(state["memory"].size(0))
        n = state["memory"].size(0)
        self.memory.memory[:n], self.memory.last_update[:n] = state["memory"], state["last_update"]
        self.history.load_state(state["history"])
