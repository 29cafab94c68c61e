"""Embedding sync: after training, a model's user and item vectors go to the vector store under the
artifact's version, so retrieval and the embeddings API see the same vectors the model serves with."""

from __future__ import annotations

import logging
from pathlib import Path

from models.embeddings import EMBEDDINGS_FILE, UserItemEmbeddings
from models.item_index import ItemIndex
from stores.artifacts import Manifest, read_json
from stores.settings import Settings
from stores.vectors import VectorStore

log = logging.getLogger(__name__)


def sync_artifact_embeddings(folder: Path, manifest: Manifest, settings: Settings) -> dict[str, int]:
    """Upsert the artifact's users and items (if it has embeddings); returns the count per kind."""
    if not (folder / EMBEDDINGS_FILE).exists():
        return {}
    embeddings = UserItemEmbeddings.load(folder)
    kinds = {
        "users": (read_json(folder / "users.json")["user_ids"], embeddings.users),
        "items": (ItemIndex.load(folder).item_ids, embeddings.items),
    }
    counts = {}
    with VectorStore.from_settings(settings) as store:
        for kind, (ids, vectors) in kinds.items():
            store.sync_embeddings(settings.namespace, manifest.model, manifest.version, kind, ids, vectors.numpy())
            counts[kind] = len(ids)
    log.info("synced %s %s embeddings to the vector store: %s", manifest.model, manifest.version, counts)
    return counts
