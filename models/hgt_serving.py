"""What an HGT artifact serves: recommendations (cold users included), similar items and provider items.

Known users and items are scored with their full-graph HGT outputs H^(L). A user the graph has never
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
from models.hgt import HGTRecommender, LayerOutputs
from models.item_index import ItemIndex
from models.ranking import top_k_items
from stores.artifacts import read_json, write_json

MODEL_FILE, LAYERS_FILE, NODES_FILE, CATALOG_FILE = "model.pt", "layers.pt", "nodes.json", "catalog.json"
# Item facet node type -> (the relation from it into an item, the items-frame column it comes from).
ITEM_FACETS = {
    "provider": (("provider", "rev_made_by", "item"), "provider"),
    "badge": (("badge", "rev_has_badge", "item"), "badges"),
    "category": (("category", "rev_in_category", "item"), "category"),
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
    item_vectors: Tensor = field(init=False)  # [I, d], grows with add_catalogue_items
    unit_items: Tensor = field(init=False)  # the same, unit length, for similar_items

    def __post_init__(self) -> None:
        self.item_vectors = self.layers[-1]["item"]
        self.unit_items = F.normalize(self.item_vectors, dim=-1)

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
        )

    @staticmethod
    def save(folder: Path, model: HGTRecommender, hyperparameters: dict, layers: LayerOutputs,
             node_ids: dict[str, list[str]], items: ItemIndex, badges: list[list[str]], popularity: Sequence[float]) -> None:
        torch.save({"num_nodes": model.num_nodes, "metadata": model.metadata, "hyperparameters": hyperparameters,
                    "state_dict": model.state_dict()}, folder / MODEL_FILE)
        torch.save([{t: x.detach().cpu() for t, x in layer.items()} for layer in layers], folder / LAYERS_FILE)
        write_json(folder / NODES_FILE, node_ids)
        write_json(folder / CATALOG_FILE, {"badges": badges, "popularity": [float(p) for p in popularity]})
        items.save(folder)

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
        vectors, ids, categories, providers, badges = [], [], [], [], []
        for row in new.itertuples(index=False):
            facets = {
                "provider": [row.provider] if isinstance(row.provider, str) else [],
                "category": [row.category] if isinstance(row.category, str) else [],
                "badge": [str(b) for b in row.badges] if isinstance(row.badges, list | tuple) else [],
            }
            neighbours = self._neighbours({t: edge for t, (edge, _) in ITEM_FACETS.items()}, facets)
            if not neighbours:
                continue
            vectors.append(self.model.embed_new_node("item", neighbours, self.layers))
            ids.append(str(row.item_id))
            categories.append(facets["category"][0] if facets["category"] else None)
            providers.append(facets["provider"][0] if facets["provider"] else None)
            badges.append(facets["badge"])
        if ids:
            self.items = ItemIndex(self.items.item_ids + ids, self.items.categories + categories,
                                   self.items.providers + providers)
            self.badges = self.badges + badges
            self.popularity = torch.cat([self.popularity, self.popularity.new_zeros(len(ids))])
            self.item_vectors = torch.cat([self.item_vectors, torch.stack(vectors)])
            self.unit_items = F.normalize(self.item_vectors, dim=-1)
        return len(ids)

    def user_vector(self, user: UserContext) -> tuple[Tensor, str] | None:
        """The vector to score items with for this user, and why; None when nothing is known."""
        users = self.node_index["user"]
        if user.user_id is not None and user.user_id in users:
            return self.layers[-1]["user"][users[user.user_id]], "liked by users with your history"
        segments = user_attribute_values(dict(user.attributes))
        values = {"device": [user.device] if user.device else [], "attribute": segments, "item": list(user.session_items)}
        neighbours = self._neighbours(USER_LINKS, values)
        if not neighbours:
            return None
        vector = self.model.embed_new_node("user", neighbours, self.layers)
        known = [f"device={user.device}"] if USER_LINKS["device"] in neighbours else []
        known += [s for s in segments if s in self.node_index.get("attribute", {})]
        if USER_LINKS["item"] in neighbours:
            known.append("your session")
        return vector, "popular with people like you: " + ", ".join(known)

    # --- serving ----------------------------------------------------------------------------

    def _top(self, scores: Tensor, k: int, exclude_ids: Sequence[str], allowed: Tensor | None) -> list[tuple[int, float]]:
        values, indices = top_k_items(scores, k, [self.items.indices(exclude_ids)], allowed)
        return [(i, v) for v, i in zip(values.tolist(), indices.tolist()) if v != float("-inf")]

    def recommend(self, user: UserContext, k: int, exclude_ids: Sequence[str] = (),
                  category: str | None = None, provider: str | None = None) -> list[ScoredItem]:
        found = self.user_vector(user)
        if found is None:
            return []
        vector, reason = found
        ranked = self._top(self.item_vectors @ vector, k, [*exclude_ids, *user.session_items],
                           self.items.mask(category, provider))
        return [ScoredItem(self.items.item_ids[i], score, reason) for i, score in ranked]

    def similar_items(self, item_id: str, k: int, exclude_ids: Sequence[str] = (),
                      category: str | None = None, provider: str | None = None) -> list[ScoredItem]:
        """Nearest items by cosine of their HGT outputs; the reason names a shared provider, badges
        or category when there is one."""
        if item_id not in self.items.index:
            raise UnknownEntity("item", item_id)
        anchor = self.items.index[item_id]
        ranked = self._top(self.unit_items @ self.unit_items[anchor], k, [*exclude_ids, item_id],
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
        found = self.user_vector(user) if user is not None else None
        if found is None:
            scores, reason = self.popularity, f"popular from {provider}"
        else:
            scores, reason = self.item_vectors @ found[0], f"from {provider}, for you"
        exclude = [*exclude_ids, *(user.session_items if user else ())]
        return [ScoredItem(self.items.item_ids[i], s, reason) for i, s in self._top(scores, k, exclude, allowed)]
