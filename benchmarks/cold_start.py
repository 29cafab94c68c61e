"""Cold start (issue 5): held-out users given their attributes plus 0, 1 and 3 interactions.

    .venv/bin/python -m benchmarks.cold_start [--dataset ml-100k|demo] [--fraction 0.15] [--seed 0]

Protocol (graph_builders.splits.cold_start_cases): a seeded 15% of the users is removed entirely from the
training events and the users frame. A held-out user with at least 4 relevant items (undecayed total
weight >= 1: a click, a 3+ star rating) is a case; it is given its device, its attributes and its first
g = 0, 1, 3 relevant items, and is measured on its other relevant items (the same targets for every g).
Every method ranks all items that have a training event, the given items masked, and is scored with
models.evaluation (Recall / NDCG / MRR / HitRate at 10, 20, 50; the table shows @20).

Methods are functions `method(cases, g) -> [num_cases, num_items] scores` (columns in cases.item_ids
order), or None when the method has nothing to say at that g. To compare a model, plug it in next to the
baselines:

    from benchmarks.cold_start import default_methods, run, print_table
    report = run("ml-100k", {**default_methods(), "hgt": hgt_scores})
    print_table(report)

where `hgt_scores(cases, g)` trains (once; cache it on the `cases` object) on cases.train, cases.users
(held-out users removed) and cases.items, then scores each case from case.device,
user_attribute_values(case.attrs) (attrs also hold non-segment keys, e.g. the demo's planted
"taste_top_*" truths, which must not be used) and case.given[:g].

Baselines (fitted on the training events only, with undecayed weights: held-out users' interactions
span the whole log, not its last weeks):
  popularity              global popularity (models.popularity)
  popularity-by-segment   models.segment_popularity (device and attribute values)
  content                 models.metadata_similarity (TF-IDF over provider / category / badges), ties
                          broken by global popularity; at g = 0 it has nothing to say and IS popularity,
                          hence the name "content (popularity at 0)"
  content + popularity    log p(i) + 2 * mean similarity to the given items: metadata as a lift on
                          popularity. Not part of the issue's goal; it shows how much of the content
                          row's gap to popularity is popularity alone
  item-knn                models.item_knn fitted on the training users' binary interactions, scoring the
                          given items; only at g >= 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from graph_builders.bipartite import BipartiteGraph, csr_from_indices
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import ColdStartCases, cold_start_cases
from models.evaluation import evaluate_full_ranking
from graph_builders.heterogeneous import build_hetero_graph
from models.hgt_serving import HGTIndex, UserContext
from models.item_knn import ItemKNN
from models.metadata_similarity import MetadataSimilarity
from models.popularity import PopularityModel
from models.segment_popularity import SegmentPopularity, segments_of
from pipelines.datasets import read_dataset
from pipelines.hgt import HGTOptions, fit_selected, serving_index
from stores.frames import Dataset

Method = Callable[[ColdStartCases, int], "torch.Tensor | None"]
KS = (10, 20, 50)
BASELINE_WEIGHTS = EdgeWeights().without_decay()
CONTENT = "content (popularity at 0)"
CONTENT_POPULARITY = "content + popularity (popularity at 0)"


class _FittedOnce:
    """A method whose model is fitted on the first call for a ColdStartCases object and then reused."""

    def __init__(self) -> None:
        self._fitted: tuple[ColdStartCases, object] | None = None

    def model(self, cases: ColdStartCases):
        if self._fitted is None or self._fitted[0] is not cases:
            self._fitted = (cases, self.fit(cases))
        return self._fitted[1]

    def fit(self, cases: ColdStartCases):
        raise NotImplementedError


class Popularity(_FittedOnce):
    def __init__(self, weights: EdgeWeights = BASELINE_WEIGHTS) -> None:
        super().__init__()
        self.weights = weights

    def fit(self, cases: ColdStartCases) -> PopularityModel:
        return PopularityModel.fit(cases.train, cases.item_ids, self.weights)

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor:
        return self.model(cases).overall.expand(len(cases.cases), -1)


class SegmentPopularityMethod(_FittedOnce):
    def __init__(self, weights: EdgeWeights = BASELINE_WEIGHTS, **options) -> None:
        super().__init__()
        self.weights, self.options = weights, options

    def fit(self, cases: ColdStartCases) -> SegmentPopularity:
        return SegmentPopularity.fit(cases.train, cases.users, cases.item_ids, self.weights, **self.options)

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor:
        return self.model(cases).scores([segments_of(case.device, case.attrs) for case in cases.cases])


class Content(_FittedOnce):
    """Metadata similarity to the given items + a popularity tie-break; popularity alone at g = 0."""

    def __init__(self, weights: EdgeWeights = BASELINE_WEIGHTS, title_words: bool = False,
                 tie_break: bool = True) -> None:
        super().__init__()
        self.popularity = Popularity(weights)
        self.title_words, self.tie_break = title_words, tie_break

    def fit(self, cases: ColdStartCases) -> MetadataSimilarity:
        if cases.items is None:
            raise ValueError("the content baseline needs the catalogue (cold_start_cases(..., items=...))")
        return MetadataSimilarity.fit(cases.items, cases.item_ids, title_words=self.title_words)

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor:
        popularity = self.popularity(cases, g)
        if g == 0:
            return popularity
        similarity = self.model(cases).scores(cases.given_indices(g))
        if not self.tie_break:
            return similarity
        # Similarities are sums of at most g cosines; a popularity share < 1e-3 of the smallest useful step
        # only orders items whose metadata scores tie (e.g. the same genres).
        return similarity.double() + 1e-6 * popularity.double() / popularity.max().double()


class ContentPopularity(Content):
    """log p(i) + strength * mean_j sim(j, i): metadata similarity to the given items as a lift on global
    popularity (popularity alone at g = 0). strength = 2 was picked on seeds 1 and 2 of both datasets
    (0.5 and 1 stay near popularity, 4 is better on the demo data and worse on MovieLens at g = 1)."""

    def __init__(self, weights: EdgeWeights = BASELINE_WEIGHTS, strength: float = 2.0) -> None:
        super().__init__(weights)
        self.strength = strength

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor:
        popularity = self.popularity(cases, g)
        if g == 0:
            return popularity
        similarity = self.model(cases).scores(cases.given_indices(g)).double() / g
        return popularity.double().clamp(min=1e-12).log() + self.strength * similarity


class ItemKNNMethod(_FittedOnce):
    def __init__(self, weights: EdgeWeights = BASELINE_WEIGHTS, **options) -> None:
        super().__init__()
        self.weights, self.options = weights, options

    def fit(self, cases: ColdStartCases) -> ItemKNN:
        graph = BipartiteGraph.from_events(cases.train, cases.items, self.weights, binary=True)
        # The graph's columns also hold catalogue items without training events; map to the cases' columns.
        column = torch.full((graph.num_items,), -1, dtype=torch.long)
        column[torch.tensor([graph.item_index[item] for item in cases.item_ids])] = torch.arange(len(cases.item_ids))
        users, items = graph.edge_index
        interactions = csr_from_indices(users, column[items], (graph.num_users, len(cases.item_ids)))
        return ItemKNN.fit(interactions, **self.options)

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor | None:
        if g == 0:
            return None
        return self.model(cases).scores_for(given_matrix(cases, g).to_dense())


class HGTMethod(_FittedOnce):
    """HGT (models/hgt.py) trained on the training events and users, epochs selected on held-out edges;
    a case is placed as a new user node from its device, attributes and given items."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = HGTOptions(refit=False, **options)

    def fit(self, cases: ColdStartCases) -> HGTIndex:
        graph = build_hetero_graph(cases.train, cases.items, cases.users, EdgeWeights())
        with torch.enable_grad():  # fitted lazily, from inside the evaluation's no_grad
            result = fit_selected(graph, self.options)
        return serving_index(graph, result, cases.items)

    def __call__(self, cases: ColdStartCases, g: int) -> torch.Tensor:
        index = self.model(cases)
        columns = torch.tensor([index.items.index[item] for item in cases.item_ids])
        rows = []
        for case in cases.cases:
            found = index.user_scores(UserContext(session_items=case.given[:g], device=case.device, attributes=case.attrs))
            rows.append(found[0][columns] if found else torch.zeros(len(columns)))
        return torch.stack(rows)


def default_methods(weights: EdgeWeights = BASELINE_WEIGHTS) -> dict[str, Method]:
    return {
        "popularity": Popularity(weights),
        "popularity-by-segment": SegmentPopularityMethod(weights),
        CONTENT: Content(weights),
        CONTENT_POPULARITY: ContentPopularity(weights),
        "item-knn": ItemKNNMethod(weights),
    }


def given_matrix(cases: ColdStartCases, g: int) -> torch.Tensor:
    """cases x items CSR of ones at each case's first g given items."""
    return _indicator(cases.given_indices(g), len(cases.cases), len(cases.item_ids))


def _indicator(rows: Sequence[Sequence[int]], num_rows: int, num_cols: int) -> torch.Tensor:
    row = [r for r, cols in enumerate(rows) for _ in cols]
    col = [c for cols in rows for c in cols]
    return csr_from_indices(row, col, (num_rows, num_cols))


def evaluate(cases: ColdStartCases, method: Method, g: int, ks: Sequence[int] = KS) -> dict[str, float] | None:
    """Full-ranking metrics of one method at g given items, the given items masked; None if it abstains."""
    started = time.perf_counter()
    with torch.no_grad():
        scores = method(cases, g)
    if scores is None:
        return None
    num_cases, num_items = len(cases.cases), len(cases.item_ids)
    if tuple(scores.shape) != (num_cases, num_items):
        raise ValueError(f"a method returned {tuple(scores.shape)}, expected {(num_cases, num_items)}")
    scores = scores if scores.is_floating_point() else scores.float()
    targets = _indicator(cases.target_indices(), num_cases, num_items)
    metrics = evaluate_full_ranking(lambda batch: scores[batch], given_matrix(cases, g), targets, ks=ks)
    return {**metrics.as_dict(), "seconds": time.perf_counter() - started}


def run(
    dataset: str | Dataset,
    methods: dict[str, Method] | None = None,
    fraction: float = 0.15,
    seed: int = 0,
    given: Sequence[int] = (0, 1, 3),
    data_dir: Path | str = DEFAULT_DATA_DIR,
    ks: Sequence[int] = KS,
) -> dict:
    """Build the protocol for `dataset` (a read_dataset name or a Dataset) and measure every method."""
    data = read_dataset(dataset, data_dir) if isinstance(dataset, str) else dataset
    cases = cold_start_cases(data.events, data.users, fraction=fraction, seed=seed, given=given, items=data.items)
    methods = default_methods() if methods is None else methods
    results = {name: {str(g): evaluate(cases, method, g, ks) for g in cases.given} for name, method in methods.items()}
    return {
        "dataset": data.name,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "protocol": cases.summary(),
        "methods": results,
    }


def print_table(report: dict, k: int = 20) -> None:
    protocol = report["protocol"]
    given = protocol["given"]
    print(f"{report['dataset']}: {protocol['cases']} held-out users measured (of {protocol['held_out_users']} "
          f"held out, fraction {protocol['fraction']}, seed {protocol['seed']}), {protocol['items']} items ranked, "
          f"{protocol['targets']} target items")
    header = " | ".join(f"Recall@{k} g={g} | NDCG@{k} g={g}" for g in given)
    print(f"| method | {header} |\n|---|{'---|---|' * len(given)}")
    for name, by_given in report["methods"].items():
        cells = []
        for g in given:
            metrics = by_given[str(g)]
            cells += ["—", "—"] if metrics is None else [f"{metrics[f'recall@{k}']:.4f}", f"{metrics[f'ndcg@{k}']:.4f}"]
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "demo"])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hgt", action="store_true", help="also train and measure HGT")
    parser.add_argument("--hgt-set", nargs="*", default=[], metavar="KEY=VALUE", help="HGT settings (HGTOptions)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/cold_start_<dataset>.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

    methods = default_methods()
    if args.hgt:
        methods["hgt"] = HGTMethod(**dict(setting.split("=", 1) for setting in args.hgt_set))
    report = run(args.dataset, methods, fraction=args.fraction, seed=args.seed, data_dir=args.data_dir)
    print_table(report)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"cold_start_{args.dataset}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
