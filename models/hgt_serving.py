"""What an HGT artifact serves: recommendations (cold users included), similar items and provider items.

Known users and items are scored with their full-graph HGT representations Z. A user the graph has never
seen is placed by `HGTRecommender.embed_new_node` from what the request says about them: their device,
their attributes ("age=20s", "gender=F", ...) and any items of the session: the meta-paths
device -> users -> items and attribute -> users -> items. Catalogue items added after training are
embedded the same way from their provider, badges and category (`add_catalogue_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from graph_builders.heterogeneous import user_attribute_values
from models.embeddings import UserItemEmbeddings
from models.hgt import HGTRecommender, LayerOutputs, combine
from models.item_index import ItemIndex
from models.ranking import top_k_items
from stores.artifacts import read_json, write_json

MODEL_FILE, LAYERS_FILE, NODES_FILE, CATALOG_FILE = "model.pt", "layers.pt", "nodes.json", "catalog.json"
SEGMENTS_FILE = "segments.pt"
CO_CONSUMPTION_WEIGHT = 0.2  # of cos(Z_i, Z_j) in similar_items, next to cos(F_i, F_j)
# Item facet node type -> the relation from it into an item.
ITEM_FACETS = {
    "provider": ("provider", "rev_made_by", "item"),
    "badge": ("badge", "rev_has_badge", "item"),
    "category": ("category", "rev_in_category", "item"),
}
USER_LINKS = {
    "device": ("device", "rev_uses", "user"),
    "attribute": ("attribute", "rev_has_attribute", "user"),
    "item": ("item", "rev_interacts", "user"),
}


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    reason: str


class UnknownEntity(LookupError):
    def __init__(self, kind: str, key: str):
        super().__init__(f"unknown {kind} {key!r}")
        self.kind, self.key = kind, key

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class UserContext:
    user_id: str | None = None
    session_items: Sequence[str] = ()
    device: str | None = None
    attributes: Mapping[str, str | int | float] = field(default_factory=dict)


@dataclass
class HGTIndex:
    model: HGTRecommender
    layers: LayerOutputs
    node_index: dict[str, dict[str, int]]
    items: ItemIndex
    badges: list[list[str]]
    popularity: Tensor  # [I] summed interaction weight in the training graph
    segment_items: dict[str, Tensor]  # "device" / "attribute" -> [segment nodes, I]: P(item | segment)
    user_vectors: Tensor = field(init=False)  # [U, d]: Z of the trained users
    item_vectors: Tensor = field(init=False)  # [I, d]: Z, grows with add_catalogue_items
    likeness: Tensor = field(init=False)  # [I, 2d]: what similar_items compares (see there)
    z_mean: Tensor = field(init=False)
    facet_units: dict[str, Tensor] = field(init=False)  # facet node type -> centred, unit-length Z

    def __post_init__(self) -> None:
        final = combine(self.layers)
        self.user_vectors, self.item_vectors = final["user"], final["item"]
        self.z_mean = self.item_vectors.mean(0)
        self.facet_units = {t: F.normalize(final[t] - final[t].mean(0), dim=-1)
                            for t in ITEM_FACETS if t in final and len(final[t])}
        facets = self._facet_vectors([self.facets_of(i) for i in range(len(self.items))])
        self.likeness = self._likeness(self.item_vectors, facets)

    def facets_of(self, item: int) -> dict[str, list[str]]:
        provider, category = self.items.providers[item], self.items.categories[item]
        return {"provider": [provider] if provider else [], "category": [category] if category else [],
                "badge": list(self.badges[item])}

    def _likeness(self, collaborative: Tensor, facets: Tensor) -> Tensor:
        """Vectors whose dot product is cos(F_i, F_j) + CO_CONSUMPTION_WEIGHT * cos(Z_i, Z_j), Z centred
        on the trained items' mean first (see `similar_items`)."""
        co_consumption = F.normalize(collaborative - self.z_mean, dim=-1)
        return torch.cat([F.normalize(facets, dim=-1), CO_CONSUMPTION_WEIGHT**0.5 * co_consumption], dim=-1)

    def _facet_vectors(self, facets: Sequence[Mapping[str, Sequence[str]]]) -> Tensor:
        """F: per item, the sum over its facet types (provider, badges, category) of the mean of those
        facet nodes' HGT representations, each centred and unit length. Items that share a provider
        share that part exactly."""
        out = self.item_vectors.new_zeros(len(facets), self.item_vectors.size(1))
        for row, values in enumerate(facets):
            for node_type, vectors in self.facet_units.items():
                index = self.node_index.get(node_type, {})
                ids = [index[v] for v in values.get(node_type, ()) if v in index]
                if ids:
                    out[row] += vectors[ids].mean(0)
        return out

    def _placements(self, facets: Sequence[Mapping[str, Sequence[str]]]) -> Tensor:
        """Z of new items: each placed by HGT from its provider, badges and category (`embed_new_nodes`)."""
        edge_types = set(self.model.metadata[1])
        edges: dict[tuple, tuple[list[int], list[int]]] = {}
        for row, values in enumerate(facets):
            for node_type, edge_type in ITEM_FACETS.items():
                index = self.node_index.get(node_type, {})
                for value in values.get(node_type, ()):
                    if value in index and edge_type in edge_types:
                        sources, targets = edges.setdefault(edge_type, ([], []))
                        sources.append(index[value])
                        targets.append(row)
        device = self.item_vectors.device
        as_tensors = {e: (torch.tensor(s, device=device), torch.tensor(t, device=device)) for e, (s, t) in edges.items()}
        return self.model.embed_new_nodes("item", len(facets), as_tensors, self.layers)

    # --- artifact ---------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> HGTIndex:
        saved = torch.load(folder / MODEL_FILE, map_location=device, weights_only=False)
        model = HGTRecommender(saved["num_nodes"], saved["metadata"], **saved["hyperparameters"]).to(device)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        layers = torch.load(folder / LAYERS_FILE, map_location=device, weights_only=True)
        node_ids = read_json(folder / NODES_FILE)
        catalog = read_json(folder / CATALOG_FILE)
        return cls(
            model=model,
            layers=layers,
            node_index={t: {node: i for i, node in enumerate(ids)} for t, ids in node_ids.items()},
            items=ItemIndex.load(folder),
            badges=catalog["badges"],
            popularity=torch.tensor(catalog["popularity"], dtype=torch.float32, device=device),
            segment_items=torch.load(folder / SEGMENTS_FILE, map_location=device, weights_only=True),
        )

    def save(self, folder: Path, hyperparameters: dict) -> None:
        """Everything `load` reads, plus the served vectors for the vector-store sync (`embeddings.pt`,
        `users.json`)."""
        model = self.model
        torch.save({"num_nodes": model.num_nodes, "metadata": model.metadata, "hyperparameters": hyperparameters,
                    "state_dict": model.state_dict()}, folder / MODEL_FILE)
        torch.save([{t: x.detach().cpu() for t, x in layer.items()} for layer in self.layers], folder / LAYERS_FILE)
        write_json(folder / NODES_FILE, {t: list(index) for t, index in self.node_index.items()})
        write_json(folder / CATALOG_FILE, {"badges": self.badges, "popularity": self.popularity.tolist()})
        torch.save({t: shares.cpu() for t, shares in self.segment_items.items()}, folder / SEGMENTS_FILE)
        self.items.save(folder)
        write_json(folder / "users.json", {"user_ids": list(self.node_index["user"])})
        UserItemEmbeddings(self.user_vectors.cpu().contiguous(), self.item_vectors.cpu().contiguous()).save(folder)

    # --- placing new nodes ------------------------------------------------------------------

    def _neighbours(self, links: Mapping[str, tuple], values: Mapping[str, Sequence[str]]) -> dict[tuple, Tensor]:
        """Edge type -> indices of the known nodes among `values[node type]`."""
        edge_types = set(self.model.metadata[1])
        out = {}
        for node_type, edge_type in links.items():
            index = self.node_index.get(node_type, {})
            known = sorted({index[v] for v in values.get(node_type, ()) if v in index})
            if known and edge_type in edge_types:
                out[edge_type] = torch.tensor(known, device=self.item_vectors.device)
        return out

    def add_catalogue_items(self, catalogue: pd.DataFrame) -> int:
        """Embeds the catalogue items the artifact does not know from their provider, badges and
        category; returns how many were added (an item linked to nothing known is left out)."""
        new = catalogue[~catalogue["item_id"].isin(self.items.index)].drop_duplicates("item_id")
        rows = [
            (str(row.item_id), {
                "provider": [row.provider] if isinstance(row.provider, str) and row.provider else [],
                "category": [row.category] if isinstance(row.category, str) and row.category else [],
                "badge": [str(b) for b in row.badges] if isinstance(row.badges, list | tuple) else [],
            })
            for row in new.itertuples(index=False)
        ]
        known = [(item, facets) for item, facets in rows
                 if any(v in self.node_index.get(t, {}) for t, values in facets.items() for v in values)]
        if not known:
            return 0
        facets = [f for _, f in known]
        placed = self._placements(facets)
        self.items = ItemIndex(
            self.items.item_ids + [item for item, _ in known],
            self.items.categories + [(f["category"] or [None])[0] for _, f in known],
            self.items.providers + [(f["provider"] or [None])[0] for _, f in known],
        )
        self.badges = self.badges + [f["badge"] for _, f in known]
        self.popularity = torch.cat([self.popularity, self.popularity.new_zeros(len(known))])
        # New items have no plays in any segment yet: each segment's rarest share.
        self.segment_items = {t: torch.cat([shares, shares.min(1, keepdim=True).values.expand(-1, len(known))], 1)
                              for t, shares in self.segment_items.items()}
        self.item_vectors = torch.cat([self.item_vectors, placed])
        self.likeness = torch.cat([self.likeness, self._likeness(placed, self._facet_vectors(facets))])
        return len(known)

    def user_scores(self, user: UserContext) -> tuple[Tensor, str] | None:
        """[I] scores for this user and why; None when nothing is known of them.

        A known user: Z_u . Z_i. A new one: HGT places them from their device, attributes and session
        items (`embed_new_node`), and the meta-paths device -> users -> items and attribute -> users ->
        items weigh in as what those segments' users play, a product of experts:

            log softmax_i(Z_new . Z_i) + log mean_s P(i | s)      s: the user's known device / attributes

        Placement alone did not separate devices on the small generated data of the serve tests
        (tests/test_hgt_serving.py asserts that the two most different devices get lists as different
        as half their players' difference); the segments' own choices do.
        """
        users = self.node_index["user"]
        if user.user_id is not None and user.user_id in users:
            return self.item_vectors @ self.user_vectors[users[user.user_id]], "liked by users with your history"
        segments = user_attribute_values(dict(user.attributes))
        values = {"device": [user.device] if user.device else [], "attribute": segments, "item": list(user.session_items)}
        neighbours = self._neighbours(USER_LINKS, values)
        if not neighbours:
            return None
        scores = torch.log_softmax(self.item_vectors @ self.model.embed_new_node("user", neighbours, self.layers), 0)
        shares = [self.segment_items[t][neighbours[USER_LINKS[t]]] for t in ("device", "attribute")
                  if USER_LINKS[t] in neighbours and t in self.segment_items]
        if shares:
            scores = scores + torch.log(torch.cat(shares).mean(0))
        known = [f"device={user.device}"] if USER_LINKS["device"] in neighbours else []
        known += [s for s in segments if s in self.node_index.get("attribute", {})]
        if USER_LINKS["item"] in neighbours:
            known.append("your session")
        return scores, "popular with people like you: " + ", ".join(known)

    # --- serving ----------------------------------------------------------------------------

    def _top(self, scores: Tensor, k: int, exclude_ids: Sequence[str], allowed: Tensor | None) -> list[tuple[int, float]]:
        values, indices = top_k_items(scores, k, [self.items.indices(exclude_ids)], allowed)
        return [(i, v) for v, i in zip(values.tolist(), indices.tolist()) if v != float("-inf")]

    def recommend(self, user: UserContext, k: int, exclude_ids: Sequence[str] = (),
                  category: str | None = None, provider: str | None = None) -> list[ScoredItem]:
        found = self.user_scores(user)
        if found is None:
            return []
        scores, reason = found
        ranked = self._top(scores, k, [*exclude_ids, *user.session_items],
                           self.items.mask(category, provider))
        return [ScoredItem(self.items.item_ids[i], score, reason) for i, score in ranked]

    def similar_items(self, item_id: str, k: int, exclude_ids: Sequence[str] = (),
                      category: str | None = None, provider: str | None = None) -> list[ScoredItem]:
        """Nearest items by cos(F_i, F_j) + 0.2 cos(Z_i, Z_j) (`_likeness`): F is built from the HGT
        representations of the item's provider, badges and category (`_facet_vectors`), Z is the item's
        own (who played it). Both are centred first: uncentred, every vector shares one large common
        direction. Z alone follows co-consumption, and its neighbours shared a provider or badges no
        more often than random pairs (tests/test_hgt_serving.py holds F + Z to 1.5x chance). The reason
        names a shared provider, badges or category when there is one."""
        if item_id not in self.items.index:
            raise UnknownEntity("item", item_id)
        anchor = self.items.index[item_id]
        ranked = self._top(self.likeness @ self.likeness[anchor], k, [*exclude_ids, item_id],
                           self.items.mask(category, provider))
        return [ScoredItem(self.items.item_ids[i], score, self._evidence(anchor, i)) for i, score in ranked]

    def _evidence(self, anchor: int, other: int) -> str:
        provider = self.items.providers[anchor]
        if provider is not None and provider == self.items.providers[other]:
            return f"also by {provider}"
        shared = [b for b in self.badges[anchor] if b in set(self.badges[other])]
        if shared:
            return "shares " + ", ".join(shared[:3])
        category = self.items.categories[anchor]
        if category is not None and category == self.items.categories[other]:
            return f"also {category}"
        return "liked by the same people"

    def provider_items(self, provider: str, k: int, user: UserContext | None = None,
                       exclude_ids: Sequence[str] = (), category: str | None = None) -> list[ScoredItem]:
        """The provider's items: ranked for the user when anything is known of them, else by popularity."""
        allowed = self.items.mask(category, provider)
        if allowed is None or not bool(self.items.mask(None, provider).any()):
            raise UnknownEntity("provider", provider)
        found = self.user_scores(user) if user is not None else None
        if found is None:
            scores, reason = self.popularity, f"popular from {provider}"
        else:
            scores, reason = found[0], f"from {provider}, for you"
        exclude = [*exclude_ids, *(user.session_items if user else ())]
        return [ScoredItem(self.items.item_ids[i], s, reason) for i, s in self._top(scores, k, exclude, allowed)]
