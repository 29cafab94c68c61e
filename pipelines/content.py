"""`recserve train content`: MiniLM vectors for the whole catalogue, user vectors from the events.

1. Every catalogue item is embedded (models/content.py), also items nobody has interacted with: those
   are the items the content retriever exists for. Texts whose vector the current artifact already
   holds (same text, same encoder) are not encoded again.
2. Held-out metrics: the shared protocol (pipelines/protocol.py). User vectors are built from the
   protocol graph (everything before the test period), the whole catalogue is ranked, earlier items
   masked. There is nothing to train, so nothing is selected on validation.
3. The served artifact holds the same item vectors and user vectors built from ALL events.

Artifact files:
    embeddings.pt   models.embeddings.UserItemEmbeddings: users [U, 384] (weighted means), items [I, 384]
                    (centred MiniLM vectors, unit length), rows in users.json / items.json order
    users.json      {"user_ids": [...]}
    items.json      models.item_index.ItemIndex: every catalogue item (then items seen only in events)
    text_vectors.pt models.content.ItemTextVectors: the raw MiniLM vectors, their centre (a text query
                    needs it to be scored against the items) and a hash of each item's text, by
                    which the next training run re-uses vectors
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from graph_builders.bipartite import BipartiteGraph, item_id_order
from graph_builders.edge_weights import EdgeWeights
from models.content import TEXT_VECTORS_FILE, ItemTextVectors, TextEncoder, catalogue_texts, user_vectors
from models.embeddings import UserItemEmbeddings
from models.item_index import ItemIndex
from pipelines.protocol import RankingProtocol, TrainingData, data_window
from stores.artifacts import ArtifactNotFound, ArtifactStore, Manifest, write_json

log = logging.getLogger(__name__)

MODEL = "content"


class ContentOptions(BaseModel):
    """`recserve train content --set KEY=VALUE` settings."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=32, ge=1, description="texts per MiniLM forward pass")
    max_seq_length: int | None = Field(default=None, ge=8, le=512, description="word pieces per text; None = the model's 256")
    half_life_days: float | None = Field(
        default=7.0, gt=0, description="time decay of the event weights in the user means; None = no decay"
    )
    reuse_previous: bool = Field(default=True, description="re-use the current artifact's vectors of unchanged texts")
    progress: bool = Field(default=True, description="show a progress bar while encoding")
    device: str = "cpu"


def previous_cache(artifacts: ArtifactStore, encoder: TextEncoder) -> tuple[dict[str, np.ndarray], str | None]:
    """(text hash -> item vector, version) from the current content artifact; empty when there is none
    or it was made with another encoder."""
    try:
        folder = artifacts.resolve(MODEL)
    except ArtifactNotFound:
        return {}, None
    if not (folder / TEXT_VECTORS_FILE).exists():
        return {}, None
    previous = ItemTextVectors.load(folder)
    if previous.encoder != encoder.fingerprint:
        log.info("content: %s was encoded with %s, not re-using it", folder.name, previous.encoder)
        return {}, None
    return previous.cache(), folder.name


def train_content_artifact(
    data: TrainingData,
    artifacts: ArtifactStore,
    overrides: dict[str, Any],
    encoder: TextEncoder | None = None,
) -> Manifest:
    """Embed the catalogue, measure on the held-out test period, publish the `content` artifact.

    `encoder` lets a caller that already holds a loaded TextEncoder (a test, a benchmark) share it; it
    must match the options' device and max_seq_length.
    """
    options = ContentOptions.model_validate(overrides)
    encoder = encoder or TextEncoder(device=options.device, max_seq_length=options.max_seq_length)
    weights = EdgeWeights(half_life_days=options.half_life_days)

    item_ids = item_id_order(data.items, data.events)
    texts = catalogue_texts(data.items, item_ids)
    cache, previous = previous_cache(artifacts, encoder) if options.reuse_previous else ({}, None)
    started = time.perf_counter()
    vectors, reused = encoder.encode_cached(texts, cache, batch_size=options.batch_size, progress=options.progress)
    encode_seconds = time.perf_counter() - started
    encoded = len(texts) - reused
    log.info("content: encoded %d item texts in %.1f s (%d re-used from %s)", encoded, encode_seconds, reused, previous)
    text_vectors = ItemTextVectors.build(encoder.fingerprint, texts, vectors)
    item_vectors = text_vectors.items()
    position = {item: i for i, item in enumerate(item_ids)}

    protocol = RankingProtocol.build(data, weights)
    # The protocol graph orders items by the catalogue, then by items seen only in the history: the same
    # ids, possibly in another order than the served list (which adds items seen only later). Map by id.
    protocol_items = item_vectors[torch.tensor([position[item] for item in protocol.graph.item_ids], dtype=torch.long)]
    held_out = UserItemEmbeddings(user_vectors(protocol.graph.user_item_csr(), protocol_items), protocol_items)
    metrics = protocol.evaluate(held_out.scores)
    log.info("content: test recall@20 %.4f ndcg@20 %.4f", metrics["recall@20"], metrics["ndcg@20"])

    served_graph = BipartiteGraph.from_events(data.events, data.items, weights)
    if served_graph.item_ids != item_ids:  # both come from item_id_order(data.items, data.events)
        raise AssertionError("the served graph's item order differs from the embedded catalogue's")
    served = UserItemEmbeddings(user_vectors(served_graph.user_item_csr(), item_vectors), item_vectors)
    items = ItemIndex.from_items(item_ids, data.items)
    without_signal = int((served.users.abs().sum(1) == 0).sum())

    def build(folder: Path) -> None:
        served.save(folder)
        write_json(folder / "users.json", {"user_ids": served_graph.user_ids})
        items.save(folder)
        text_vectors.save(folder)

    return artifacts.publish(
        MODEL,
        build,
        {
            "data_window": data_window(data.events),
            "config": {
                **options.model_dump(),
                "encoder": encoder.fingerprint,
                "edge_weights": weights.model_dump(),
                "split": data.split_name,
                "summary": {
                    "items embedded": len(item_ids),
                    "items without a positive interaction": len(item_ids) - int(served_graph.item_degrees().gt(0).sum()),
                    "texts encoded": encoded,
                    "vectors re-used": f"{reused} from {previous}" if previous else 0,
                    "encode seconds": round(encode_seconds, 1),
                    "users without a positive interaction (zero vector)": without_signal,
                },
            },
            "metrics": metrics,
            "item_count": len(items),
            "user_count": served_graph.num_users,
        },
    )
