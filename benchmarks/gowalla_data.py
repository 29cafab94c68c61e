"""The Gowalla paper split as the LightGCN benchmarks use it: the protocol graph and the test CSR,
built exactly as `recserve train` builds them (pipelines/protocol.py), straight from the files."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import preset_split
from pipelines.datasets.gowalla import read_gowalla
from pipelines.protocol import RankingProtocol, TrainingData

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"


def gowalla_protocol(data_dir: Path = DEFAULT_DATA_DIR) -> RankingProtocol:
    started = time.perf_counter()
    dataset = read_gowalla(data_dir)
    data = TrainingData(
        dataset.events, dataset.items, pd.DataFrame(), preset_split(dataset.events, dataset.preset_split), "paper"
    )
    protocol = RankingProtocol.build(data, EdgeWeights())
    print(f"gowalla: {protocol.graph.num_users:,} users, {protocol.graph.num_items:,} items, "
          f"{protocol.graph.edge_index.size(1):,} train edges, {protocol.test._nnz():,} test pairs "
          f"({time.perf_counter() - started:.0f} s to build)", flush=True)
    return protocol
