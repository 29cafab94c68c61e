"""Train / validation / test splits and the ground truth offline metrics are computed against.

Protocol
--------
- Temporal (default): one GLOBAL time cutoff for everyone, at event-count quantiles of the time-sorted
  events. With test_fraction=0.2 and validation_fraction=0.1, the last 20% of events are test, the 10%
  before them validation, the rest train:

      train       ts <  validation_from
      validation  validation_from <= ts < test_from
      test        ts >= test_from

  Events sharing the cutoff timestamp all fall on the later side, so no test event is ever at or before a
  train event (no leakage), at the price of fractions that are off by the size of a tie.
  A `blackout` gap drops every event in [cutoff - blackout, cutoff) before each cutoff, from all parts: it
  stops near-duplicate sessions straddling a cutoff from leaking the answer.
- Preset: a published split (stores.frames.PresetSplit, e.g. the LightGCN Gowalla split) is kept exactly:
  train = ts < test_from, test = the rest; an optional validation part is the last fraction of train events.
- Cold start: `held_out_users_split` removes a seeded random fraction of users (interaction keys)
  entirely from training. `cold_start_cases` builds the cold-start protocol on it: each held-out user
  is given their device and attributes plus their chronologically first g relevant items (g in
  `given`, e.g. 0, 1, 3), and is measured on their other relevant items (see its docstring).
- Ground truth (`evaluation_targets`): for users who also appear in train, the test (user, item) pairs with
  an undecayed total weight >= min_weight (default 1.0 = one click: an impression alone or a 1-2 star
  rating is not a relevant item), deduplicated, restricted to items that appear in train (a CF model cannot
  score an item it has never seen), and by default excluding items already in that user's train history
  ("new items for the user"; this is the LightGCN/NGCF protocol, where train and test are disjoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import torch

from graph_builders.bipartite import item_id_order
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, interaction_key
from stores.frames import PresetSplit


@dataclass
class TemporalSplit:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_from: pd.Timestamp  # first validation instant; equals test_from when validation is empty
    test_from: pd.Timestamp
    blackout: timedelta = timedelta(0)

    def summary(self) -> dict[str, object]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "validation_from": self.validation_from.isoformat(),
            "test_from": self.test_from.isoformat(),
            "blackout_seconds": self.blackout.total_seconds(),
        }


def _utc(events: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(events["ts"], utc=True)


def _quantile_time(sorted_ts: np.ndarray, fraction_before: float) -> pd.Timestamp:
    """The timestamp of the event at position floor(n * fraction_before) of the time-sorted events."""
    position = min(int(np.floor(len(sorted_ts) * fraction_before)), len(sorted_ts) - 1)
    return pd.Timestamp(sorted_ts[position]).tz_localize("UTC")


def _check_fractions(*fractions: float) -> None:
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"fractions must be >= 0 and sum to less than 1, got {fractions}")


def _parts(
    events: pd.DataFrame, validation_from: pd.Timestamp, test_from: pd.Timestamp, blackout: timedelta
) -> TemporalSplit:
    ts = _utc(events)
    kept = pd.Series(True, index=events.index)
    for cutoff in {validation_from, test_from}:
        kept &= ~((ts >= cutoff - blackout) & (ts < cutoff))
    return TemporalSplit(
        train=events[kept & (ts < validation_from)],
        validation=events[kept & (ts >= validation_from) & (ts < test_from)],
        test=events[kept & (ts >= test_from)],
        validation_from=validation_from,
        test_from=test_from,
        blackout=blackout,
    )


def temporal_split(
    events: pd.DataFrame,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    blackout: timedelta = timedelta(0),
) -> TemporalSplit:
    """Global time cutoffs at event-count quantiles (see the module docstring)."""
    _check_fractions(test_fraction, validation_fraction)
    if events.empty:
        raise ValueError("cannot split an empty event frame")
    if blackout < timedelta(0):
        raise ValueError("blackout must be >= 0")
    ordered = np.sort(_utc(events).dt.tz_localize(None).to_numpy())
    test_from = _quantile_time(ordered, 1.0 - test_fraction)
    validation_from = (
        _quantile_time(ordered, 1.0 - test_fraction - validation_fraction) if validation_fraction > 0 else test_from
    )
    return _parts(events, validation_from, test_from, blackout)


def preset_split(events: pd.DataFrame, preset: PresetSplit, validation_fraction: float = 0.0) -> TemporalSplit:
    """A published split kept as given; validation = the last `validation_fraction` of the train events."""
    _check_fractions(validation_fraction)
    test_from = pd.Timestamp(preset.test_from)
    test_from = test_from.tz_localize("UTC") if test_from.tzinfo is None else test_from.tz_convert("UTC")
    validation_from = test_from
    train_ts = _utc(events)[lambda ts: ts < test_from]
    if validation_fraction > 0 and len(train_ts):
        validation_from = _quantile_time(np.sort(train_ts.dt.tz_localize(None).to_numpy()), 1 - validation_fraction)
    return _parts(events, validation_from, test_from, timedelta(0))


def held_out_users_split(
    events: pd.DataFrame, fraction: float = 0.15, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train events without the held-out users, the held-out users' events, held-out keys sorted).

    Users are interaction keys; round(fraction * number of keys) of them are drawn with numpy's seeded
    generator from the sorted keys, so the same frame and seed always hold out the same users.
    """
    _check_fractions(fraction)
    keys = interaction_key(events)
    candidates = np.asarray(sorted(keys.dropna().unique()), dtype=object)
    count = int(round(fraction * len(candidates)))
    held_out = sorted(np.random.default_rng(seed).choice(candidates, size=count, replace=False).tolist())
    is_held = keys.isin(set(held_out)).to_numpy()
    return events[~is_held], events[is_held], held_out


def edge_holdout_mask(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int,
                      fraction: float, seed: int) -> torch.Tensor:
    """Bool mask of a seeded random `fraction` of the (user, item) edges to hold out for validation,
    leaving every user and item at least one training edge (so every held-out edge can be scored)."""
    held = torch.rand(users.numel(), generator=torch.Generator().manual_seed(seed)) < fraction
    for nodes, count in ((users, num_users), (items, num_items)):
        remaining = torch.bincount(nodes[~held], minlength=count)
        held &= remaining[nodes] > 0
    return held


def evaluation_targets(
    train: pd.DataFrame,
    test: pd.DataFrame,
    exclude_train_items: bool = True,
    min_weight: float | None = 1.0,
    config: EdgeWeights = EdgeWeights(),
) -> pd.DataFrame:
    """Ground-truth (user_key, item_id) pairs, one per pair, sorted (see the module docstring).

    min_weight=None counts every test event as relevant.
    """
    relevant = aggregate_interactions(test, config.without_decay())
    if min_weight is not None:
        relevant = relevant[relevant["weight"] >= min_weight]
    train_keys = interaction_key(train)
    relevant = relevant[
        relevant["user_key"].isin(set(train_keys.dropna())) & relevant["item_id"].isin(set(train["item_id"].dropna()))
    ]
    if exclude_train_items:
        history = pd.MultiIndex.from_arrays([train_keys.to_numpy(), train["item_id"].astype(object).to_numpy()])
        pairs = pd.MultiIndex.from_arrays([relevant["user_key"].to_numpy(), relevant["item_id"].to_numpy()])
        relevant = relevant[~pairs.isin(history)]
    return relevant[["user_key", "item_id"]].reset_index(drop=True)


@dataclass
class ColdStartCase:
    """One held-out user: what is known about them, and what they went on to like."""

    user_key: str
    device: str | None  # the users frame's device, else the user's most frequent event device
    attrs: dict  # the users frame's attrs ({} when the user is not in it)
    given: list[str]  # their first max(given) relevant items, oldest first; the g-interaction case sees given[:g]
    targets: list[str]  # their other relevant items, sorted: the same for every g


@dataclass
class ColdStartCases:
    """The cold-start protocol: training data without the held-out users, and one case per measured user."""

    train: pd.DataFrame  # events without any event of a held-out user
    users: pd.DataFrame  # the users frame without the held-out users
    item_ids: list[str]  # the ranked catalogue: items with a training event, in `item_id_order`
    items: pd.DataFrame | None  # the catalogue frame as given (provider, category, badges, ...)
    cases: list[ColdStartCase]  # held-out users with >= max(given) + 1 relevant items, sorted by key
    held_out: list[str]  # every held-out key (also those too short to be a case)
    given: tuple[int, ...]
    fraction: float
    seed: int
    min_weight: float
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}

    def given_items(self, g: int) -> list[list[str]]:
        """Per case, the first g given item ids."""
        return [case.given[:g] for case in self.cases]

    def given_indices(self, g: int) -> list[list[int]]:
        """Per case, the columns (in `item_ids`) of the first g given items."""
        return [[self.item_index[item] for item in case.given[:g]] for case in self.cases]

    def target_indices(self) -> list[list[int]]:
        return [[self.item_index[item] for item in case.targets] for case in self.cases]

    def summary(self) -> dict[str, object]:
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "given": list(self.given),
            "min_weight": self.min_weight,
            "held_out_users": len(self.held_out),
            "cases": len(self.cases),
            "train_events": len(self.train),
            "items": len(self.item_ids),
            "targets": sum(len(case.targets) for case in self.cases),
        }


def cold_start_cases(
    events: pd.DataFrame,
    users: pd.DataFrame | None = None,
    fraction: float = 0.15,
    seed: int = 0,
    given: Sequence[int] = (0, 1, 3),
    min_weight: float = 1.0,
    items: pd.DataFrame | None = None,
    config: EdgeWeights = EdgeWeights(),
) -> ColdStartCases:
    """The cold-start protocol (issue 5): held-out users, each given 0, 1, 3 ... of their interactions.

    - `held_out_users_split(events, fraction, seed)` removes a seeded fraction of the users entirely; the
      returned `train` events and `users` frame no longer contain them.
    - A held-out user's relevant items are those with an undecayed total weight >= min_weight (the
      relevance notion of `evaluation_targets`), restricted to items with a training event (no model can
      rank an item it has never seen). They are ordered by the user's first event on the item (ties: the
      earlier event row), so "given" is what the user did first.
    - Only users with at least max(given) + 1 relevant items become cases. Each case's given list is its
      first max(given) relevant items; its targets are ALL its other relevant items, the same set for
      every g, so the rows g = 0, 1, 3 are measured on the same users against the same targets and differ
      only in what the model is told. Relevant items never given are never masked (at g = 0 the first
      max(given) items are neither targets nor masked: they are just not counted).
    - Device and attrs come from the users frame (device: else the user's most frequent event device).

    Deterministic: the same frames, fraction and seed give the same cases.
    """
    from graph_builders.heterogeneous import user_devices  # lazy: heterogeneous imports torch_geometric

    given = tuple(sorted(set(int(g) for g in given)))
    if not given or given[0] < 0:
        raise ValueError(f"given must be non-negative counts, got {given}")
    users = users if users is not None else pd.DataFrame({"user_id": [], "device": [], "attrs": []})
    train, held_events, held_out = held_out_users_split(events, fraction, seed)
    held_set = set(held_out)
    train_users = users[~users["user_id"].astype(object).isin(held_set)]
    train_items = set(train["item_id"].dropna())
    item_ids = [item for item in item_id_order(items, train) if item in train_items]

    relevant = aggregate_interactions(held_events, config.without_decay())
    relevant = relevant[(relevant["weight"] >= min_weight) & relevant["item_id"].isin(train_items)]
    # The first event of each (user, item) pair: its time, then its row position as the tie-break.
    first = pd.DataFrame(
        {
            "user_key": interaction_key(held_events).to_numpy(),
            "item_id": held_events["item_id"].astype(object).to_numpy(),
            "ts": _utc(held_events).to_numpy(),
            "row": np.arange(len(held_events)),
        }
    )
    first = first.sort_values(["ts", "row"], kind="stable").drop_duplicates(["user_key", "item_id"])
    ordered = relevant[["user_key", "item_id"]].merge(first, on=["user_key", "item_id"], how="left")
    ordered = ordered.sort_values(["user_key", "ts", "row"], kind="stable")

    device_frame = user_devices(held_events, users[users["user_id"].astype(object).isin(held_set)])
    devices = dict(zip(device_frame["user_key"], device_frame["device"]))
    attrs_column = users["attrs"] if "attrs" in users else pd.Series([None] * len(users), index=users.index)
    attrs = {user: cell for user, cell in zip(users["user_id"].astype(object), attrs_column) if user in held_set}
    need = given[-1]
    cases = []
    for user_key, user_items in ordered.groupby("user_key", sort=True)["item_id"]:
        sequence = user_items.tolist()
        if len(sequence) < need + 1:
            continue
        cell = attrs.get(user_key)
        cases.append(
            ColdStartCase(
                user_key=str(user_key),
                device=None if devices.get(user_key) is None else str(devices[user_key]),
                attrs=dict(cell) if isinstance(cell, dict) else {},
                given=sequence[:need],
                targets=sorted(sequence[need:]),
            )
        )
    return ColdStartCases(
        train=train,
        users=train_users,
        item_ids=item_ids,
        items=items,
        cases=cases,
        held_out=held_out,
        given=given,
        fraction=fraction,
        seed=seed,
        min_weight=min_weight,
    )
