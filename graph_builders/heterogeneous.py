"""The heterogeneous graph HGT trains on: users, items and the things items and users relate to.

Node types (always present, possibly with 0 nodes, so every dataset yields the same metadata):
    user      interaction keys from events (users or "session:<id>") plus every user in the users frame
              (a cold-start user with attributes but no events still gets a node)
    item      catalogue order, then items seen only in events (`bipartite.item_id_order`)
    provider, category   distinct non-empty values of the items' columns
    badge     distinct entries of the items' badges lists
    device    distinct devices of users and events
    attribute "key=value" for the users' attrs named in `user_attribute_keys` (`user_attribute_values`)
  and "promotion" only when some item's attrs carry "promotions" (a string or a list of strings).

Edge types, each with its reverse "rev_<relation>" (torch_geometric.transforms.ToUndirected):
    (user, interacts, item)       edge_weight = W(u, i), positive totals only: a dislike (W < 0) is
                                  dropped from message passing (see edge_weights' module docstring)
    (item, made_by, provider)
    (item, has_badge, badge)
    (item, in_category, category)
    (user, uses, device)          users.device, else the user's most frequent event device
                                  (ties -> alphabetically first): the cold-start meta-path device -> users -> items
    (user, has_attribute, attribute)  the meta-path attribute -> users -> items (age band, gender, ...)
    (item, in_promotion, promotion)   only when promotions exist

Nodes carry `num_nodes` and no features: HGT learns an embedding per node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import torch
import torch_geometric.transforms as T
from torch_geometric.data import HeteroData

from graph_builders.bipartite import index_of, item_id_order
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, interaction_key

INTERACTS = ("user", "interacts", "item")
# Users' attrs that describe a segment. Anything else (ids, zip codes, planted demo truths) stays out.
USER_ATTRIBUTE_KEYS = ("age", "age_band", "gender", "occupation", "country")


def user_attribute_values(attrs: object, keys: Iterable[str] = USER_ATTRIBUTE_KEYS) -> list[str]:
    """A user's attribute nodes, "key=value": numbers by decade ("age=20s"), strings as they are;
    missing keys, empty values and nested values are skipped. Serving calls it on a request's
    attributes, so a cold user lands on the same nodes as the trained ones."""
    if not isinstance(attrs, dict):
        return []
    values = []
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, bool) or value is None or value == "":
            continue
        if isinstance(value, int | float) and np.isfinite(value):
            values.append(f"{key}={int(value) // 10 * 10}s")
        elif isinstance(value, str):
            values.append(f"{key}={value}")
    return values


@dataclass
class HeteroGraph:
    data: HeteroData
    node_ids: dict[str, list[str]]  # node type -> ids in index order
    node_index: dict[str, dict[str, int]]  # node type -> id -> index

    def num_nodes(self, node_type: str) -> int:
        return len(self.node_ids[node_type])


def _as_list(value: object) -> list[str]:
    """Badges / promotions cell -> list of non-empty strings (None, NaN, a str or any iterable)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    values = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return [str(v) for v in values if v is not None and str(v) != ""]


def _scalar_links(items: pd.DataFrame, column: str) -> pd.DataFrame:
    """(item_id, target) for a scalar item column, skipping missing and empty values."""
    links = pd.DataFrame({"item_id": items["item_id"].astype(object), "target": items[column].astype(object)})
    links = links[links["target"].notna()]
    links["target"] = links["target"].astype(str)
    return links[links["target"] != ""].drop_duplicates()


def _list_links(item_ids: Iterable[str], cells: Iterable[object]) -> pd.DataFrame:
    """(item_id, target) for a list-valued cell per item (badges, promotions)."""
    pairs = [(item, target) for item, cell in zip(item_ids, cells) for target in _as_list(cell)]
    return pd.DataFrame(pairs, columns=["item_id", "target"]).drop_duplicates()


def _promotions(items: pd.DataFrame) -> pd.DataFrame:
    cells = (attrs.get("promotions") if isinstance(attrs, dict) else None for attrs in items["attrs"])
    return _list_links(items["item_id"], cells)


def user_devices(events: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """(user_key, device): the users frame's device, else the most frequent event device of the key."""
    declared = pd.DataFrame({"user_key": users["user_id"].astype(object), "device": users["device"].astype(object)})
    declared = declared[declared["device"].notna()]
    observed = pd.DataFrame({"user_key": interaction_key(events).to_numpy(), "device": events["device"].astype(object)})
    observed = observed[observed["user_key"].notna() & observed["device"].notna()]
    counts = observed.groupby(["user_key", "device"]).size().rename("n").reset_index()
    # Sort so the first row per user is its most frequent device, ties broken alphabetically.
    counts = counts.sort_values(["user_key", "n", "device"], ascending=[True, False, True], kind="stable")
    modal = counts.drop_duplicates("user_key")[["user_key", "device"]]
    modal = modal[~modal["user_key"].isin(set(declared["user_key"]))]
    return pd.concat([declared, modal], ignore_index=True).drop_duplicates("user_key")


def _user_attributes(users: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    attrs = users["attrs"] if "attrs" in users else [None] * len(users)
    pairs = [(user, value) for user, cell in zip(users["user_id"], attrs) for value in user_attribute_values(cell, keys)]
    return pd.DataFrame(pairs, columns=["user_key", "attribute"], dtype=object)


def _edge_index(
    sources: pd.Series, targets: pd.Series, source_index: dict[str, int], target_index: dict[str, int]
) -> torch.Tensor:
    rows = sources.astype(object).map(source_index).to_numpy(dtype=np.int64)
    cols = targets.astype(object).map(target_index).to_numpy(dtype=np.int64)
    return torch.from_numpy(np.stack([rows, cols]).reshape(2, -1))


def build_hetero_graph(
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    config: EdgeWeights = EdgeWeights(),
    now: datetime | pd.Timestamp | None = None,
    user_attribute_keys: Iterable[str] = USER_ATTRIBUTE_KEYS,
) -> HeteroGraph:
    """HeteroData with the node and edge types of the module docstring, plus the id maps per node type."""
    users = users if users is not None else pd.DataFrame({"user_id": [], "device": []})
    attributes = _user_attributes(users, user_attribute_keys)
    pairs = aggregate_interactions(events, config, now=now)
    positive = pairs[pairs["weight"] > 0]
    devices = user_devices(events, users)
    links = {
        "provider": _scalar_links(items, "provider"),
        "category": _scalar_links(items, "category"),
        "badge": _list_links(items["item_id"], items["badges"]),
    }
    promotions = _promotions(items)
    if len(promotions):
        links["promotion"] = promotions

    node_ids = {
        "user": sorted(set(pairs["user_key"]) | set(users["user_id"].dropna())),
        "item": item_id_order(items, events),
        **{kind: sorted(set(frame["target"])) for kind, frame in links.items()},
        "device": sorted(set(users["device"].dropna()) | set(events["device"].dropna())),
        "attribute": sorted(set(attributes["attribute"])),
    }
    node_index = {kind: index_of(ids) for kind, ids in node_ids.items()}

    data = HeteroData()
    for kind, ids in node_ids.items():
        data[kind].num_nodes = len(ids)
    data[INTERACTS].edge_index = _edge_index(
        positive["user_key"], positive["item_id"], node_index["user"], node_index["item"]
    )
    data[INTERACTS].edge_weight = torch.from_numpy(positive["weight"].to_numpy(dtype=np.float32))
    relation = {"provider": "made_by", "category": "in_category", "badge": "has_badge", "promotion": "in_promotion"}
    for kind, frame in links.items():
        data["item", relation[kind], kind].edge_index = _edge_index(
            frame["item_id"], frame["target"], node_index["item"], node_index[kind]
        )
    data["user", "uses", "device"].edge_index = _edge_index(
        devices["user_key"], devices["device"], node_index["user"], node_index["device"]
    )
    data["user", "has_attribute", "attribute"].edge_index = _edge_index(
        attributes["user_key"], attributes["attribute"], node_index["user"], node_index["attribute"]
    )
    return HeteroGraph(data=T.ToUndirected()(data), node_ids=node_ids, node_index=node_index)
