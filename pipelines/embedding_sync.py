"""Embedding sync: after training, a model's user and item vectors go to the vector store under the
artifact's version, so retrieval and the embeddings API see the same vectors the model serves with.

Item points carry the catalogue's category, provider and badges, so searches can filter on them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from models.embeddings import EMBEDDINGS_FILE, UserItemEmbeddings
from models.item_index import ItemIndex
from stores.artifacts import Manifest, read_json
from stores.settings import Settings
from stores.vectors import VectorSet, VectorStore

log = logging.getLogger(__name__)


def item_payloads(item_ids: list[str], catalog: pd.DataFrame) -> list[dict[str, Any]]:
    """Each item's searchable fields; fields the catalogue lacks are left out (a filter then never matches)."""
    rows = catalog.drop_duplicates("item_id").set_index("item_id").reindex(item_ids)
    payloads = []
    for _, row in rows.iterrows():
        payload: dict[str, Any] = {key: row[key] for key in ("category", "provider") if isinstance(row.get(key), str)}
        badges = row.get("badges")
        if badges is not None and not isinstance(badges, float) and len(badges):
            payload["badges"] = [str(badge) for badge in badges]
        payloads.append(payload)
    return payloads


def sync_artifact_embeddings(
    folder: Path, manifest: Manifest, settings: Settings, catalog: pd.DataFrame | None = None
) -> dict[str, int]:
    """Write the artifact's users and items (if it has embeddings) as one version; returns the count per kind."""
    if not (folder / EMBEDDINGS_FILE).exists():
        return {}
    embeddings = UserItemEmbeddings.load(folder)
    item_ids = ItemIndex.load(folder).item_ids
    sets = {
        "users": VectorSet(read_json(folder / "users.json")["user_ids"], embeddings.users.numpy()),
        "items": VectorSet(
            item_ids, embeddings.items.numpy(), item_payloads(item_ids, catalog) if catalog is not None else None
        ),
    }
    with VectorStore.from_settings(settings) as store:
        store.sync_version(settings.namespace, manifest.model, manifest.version, sets)
    counts = {kind: len(vector_set.ids) for kind, vector_set in sets.items()}
    log.info("synced %s %s embeddings to the vector store: %s", manifest.model, manifest.version, counts)
    return counts
