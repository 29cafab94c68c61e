"""A synthetic games platform with planted structure: the `demo` dataset.

Everything is generated (no files are read), seeded and reproducible: the same arguments give
identical frames. Generation is vectorised with numpy; the only Python loops run over session
step positions (at most 60), catalogue rows (for text) and users (for attrs dicts).

The world:
- Catalogue: 8 genres (category), 40 studios (provider; each specialises in one or two related
  genres), 30 tags (badges; 2-5 per game, drawn by genre), a generated title ("Star Legion
  Tactics") and a description naming the game's genre, tags and studio, so text retrieval such as
  "space strategy with co-op" finds the right games. Popularity has a long tail. About 5% of the
  games are released in the last 2 days and have no events (content cold start).
- Users: a device (mostly mobile), attrs {age_band, country}, and a latent taste: a distribution
  over genres drawn around their device's genre mix (console players lean shooter/racing, mobile
  players casual/puzzle), plus tag preferences from those genres and personal noise.
- Sessions: each user has a heavy-tailed number of sessions spread over `days`, more than 30
  minutes apart. A session starts on a genre drawn from the user's taste and drifts, step by step,
  to related genres. Each step shows a game of the current genre (popular games and games with the
  user's favourite tags more often); events within a session are 5-120 s apart.
- Each step: an impression, then a click with probability rising with the user-game affinity, then
  a play (value = seconds, longer with affinity), sometimes a 1-5 rating (higher with affinity), a
  like, an add_to_cart, rarely a purchase (value = price). The event count lands within a few
  events of `events` (whole sessions are kept or dropped).

The planted structure is returned for tests and demos: users' attrs hold "taste_top_category" and
"taste_top_badges", items' attrs hold "popularity" (the generator's weight) and "price". These
keys are ground truth, not observable behaviour: models must not use them as features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stores.frames import Dataset

from .validation import events_frame, items_frame, users_frame

START = pd.Timestamp("2024-01-01", tz="UTC")  # fixed, not now(): the same seed gives the same frames
DAY = 86_400.0

CATEGORIES = ("strategy", "rpg", "puzzle", "shooter", "racing", "simulation", "casual", "sports")
CATEGORY_SHARE = (0.13, 0.12, 0.15, 0.12, 0.10, 0.10, 0.18, 0.10)
RELATED = {
    "strategy": ("rpg", "simulation", "shooter"),
    "rpg": ("strategy", "puzzle"),
    "puzzle": ("casual", "rpg"),
    "shooter": ("racing", "strategy"),
    "racing": ("sports", "shooter", "simulation"),
    "simulation": ("strategy", "casual", "racing"),
    "casual": ("puzzle", "simulation", "sports"),
    "sports": ("racing", "casual"),
}
DEVICES = ("ios", "android", "web", "console", "smart_tv")
DEVICE_SHARE = (0.34, 0.37, 0.13, 0.11, 0.05)
# Relative genre appetite per device, in CATEGORIES order.
DEVICE_TASTE = {
    "ios": (1.0, 1.0, 3.0, 0.6, 0.8, 1.2, 4.0, 0.8),
    "android": (1.0, 1.0, 2.5, 1.0, 1.0, 1.0, 4.0, 1.0),
    "web": (3.0, 2.0, 1.5, 0.5, 0.4, 2.0, 1.5, 0.5),
    "console": (0.8, 2.0, 0.3, 4.0, 3.0, 0.6, 0.3, 2.5),
    "smart_tv": (0.3, 0.5, 0.8, 1.0, 2.0, 0.5, 2.5, 3.0),
}
# Tag -> the genres it typically goes with, and words a title may borrow from it.
BADGES = {
    "co-op": (("shooter", "strategy", "rpg", "sports"), ("Allied", "Squad", "Twin")),
    "space": (("strategy", "shooter", "simulation"), ("Star", "Galaxy", "Nova", "Orbit")),
    "pixel-art": (("rpg", "puzzle", "casual"), ("Pixel", "Bit", "Retro")),
    "open-world": (("rpg", "racing", "simulation"), ("Wild", "Endless", "Frontier")),
    "multiplayer": (("shooter", "sports", "racing"), ("Arena", "Versus", "Clash")),
    "turn-based": (("strategy", "rpg", "puzzle"), ("Turn", "Tactical", "Chess")),
    "real-time": (("strategy", "shooter"), ("Rapid", "Live", "Blitz")),
    "fantasy": (("rpg", "strategy"), ("Dragon", "Rune", "Mystic", "Elven")),
    "sci-fi": (("shooter", "strategy", "rpg"), ("Cyber", "Quantum", "Neon")),
    "roguelike": (("rpg", "shooter"), ("Dungeon", "Cursed", "Endless")),
    "story-rich": (("rpg", "simulation"), ("Chronicle", "Fable", "Memory")),
    "match-3": (("puzzle", "casual"), ("Candy", "Gem", "Jewel")),
    "physics": (("puzzle", "simulation", "racing"), ("Gravity", "Momentum", "Newton")),
    "relaxing": (("casual", "puzzle", "simulation"), ("Calm", "Cozy", "Gentle")),
    "competitive": (("shooter", "sports", "racing"), ("Pro", "Ranked", "Elite")),
    "battle-royale": (("shooter",), ("Last", "Storm", "Drop")),
    "drift": (("racing",), ("Drift", "Turbo", "Nitro")),
    "arcade": (("racing", "casual", "sports"), ("Arcade", "Coin", "Flash")),
    "management": (("simulation", "sports", "strategy"), ("Boss", "Tycoon", "Chief")),
    "city-builder": (("simulation", "strategy"), ("Metro", "City", "Harbor")),
    "farming": (("simulation", "casual"), ("Harvest", "Meadow", "Barn")),
    "football": (("sports",), ("Goal", "Kickoff", "Striker")),
    "basketball": (("sports",), ("Hoop", "Dunk", "Court")),
    "zombies": (("shooter", "strategy"), ("Dead", "Undead", "Zombie")),
    "horror": (("shooter", "puzzle"), ("Dark", "Haunted", "Silent")),
    "tactics": (("strategy", "rpg"), ("Iron", "Legion", "Siege")),
    "card-game": (("strategy", "casual"), ("Card", "Deck", "Ace")),
    "word-game": (("puzzle", "casual"), ("Word", "Letter", "Scrabble")),
    "idle": (("casual", "simulation"), ("Idle", "Tiny", "Clicker")),
    "family-friendly": (("casual", "puzzle", "sports"), ("Happy", "Sunny", "Buddy")),
}
BADGE_NAMES = tuple(BADGES)
TITLE_NOUNS = ("Legion", "Kingdom", "Frontier", "Empire", "Valley", "Circuit", "Tower", "Island", "Quest", "Realm")
CATEGORY_NOUNS = {
    "strategy": ("Tactics", "Conquest", "Command", "Empires"),
    "rpg": ("Chronicles", "Legends", "Saga", "Odyssey"),
    "puzzle": ("Puzzles", "Blocks", "Riddles", "Logic"),
    "shooter": ("Strike", "Assault", "Warfare", "Ops"),
    "racing": ("Racing", "Rally", "Speedway", "GP"),
    "simulation": ("Simulator", "Tycoon", "Manager", "Life"),
    "casual": ("Mania", "Pop", "Dash", "Party"),
    "sports": ("League", "Cup", "Champions", "Stars"),
}
CATEGORY_PITCH = {
    "strategy": "Plan your moves, build an empire and outwit rival commanders.",
    "rpg": "Level up your heroes, gather loot and follow an epic story.",
    "puzzle": "Solve clever puzzles that get trickier with every level.",
    "shooter": "Aim fast, take cover and win intense firefights.",
    "racing": "Tune your car and race rivals across twisting tracks.",
    "simulation": "Run every detail of your own world and watch it grow.",
    "casual": "Quick, colourful fun you can play in short bursts.",
    "sports": "Lead your team to the title in fast-paced matches.",
}
PROVIDERS = (
    "Nebula Forge", "Pixel Harbor", "Iron Owl Games", "Blue Comet Studios", "Red Lantern Interactive",
    "Lucky Fox Labs", "Quantum Pike", "Silver Maple Games", "Moonlit Works", "Arcadia Bits",
    "Northwind Studios", "Copper Kettle Games", "Starfall Interactive", "Tiny Giant", "Velvet Rocket",
    "Granite Peak Games", "Sunny Side Studios", "Orbit Owl", "Crimson Gear", "Paper Crane Games",
    "Hollow Oak Studios", "Neon Koi", "Brightwater Games", "Lighthouse Labs", "Wandering Yak",
    "Golden Gate Games", "Kite & Key", "Polar Byte", "Echo Valley Studios", "Thunder Hare",
    "Jade Circuit", "Misty Isle Games", "Clockwork Finch", "Amber Wave Studios", "Rogue Comet",
    "Cobalt Bear", "Sprout Games", "Ironclad Joy", "Little Lantern", "Skyward Pixel",
)
AGE_BANDS = ("13-17", "18-24", "25-34", "35-44", "45+")
AGE_SHARE = (0.12, 0.30, 0.30, 0.17, 0.11)
COUNTRIES = ("US", "BR", "IN", "DE", "GB", "FR", "JP", "KR", "MX", "CA", "PL", "ID")
COUNTRY_SHARE = (0.24, 0.11, 0.12, 0.08, 0.08, 0.06, 0.07, 0.05, 0.06, 0.05, 0.04, 0.04)
PRICES = (0.99, 1.99, 4.99, 9.99, 19.99, 29.99, 59.99)
CATEGORY_PRICE_LEVEL = (3.5, 4.0, 1.0, 4.5, 4.0, 3.0, 0.8, 4.0)  # index into PRICES, per category
EVENT_ORDER = ("impression", "click", "play", "like", "rating", "add_to_cart", "purchase")

NEW_ITEM_SHARE = 0.05
NEW_ITEM_DAYS = 2.0
TASTE_CONCENTRATION = 3.0  # low: most users clearly prefer one or two genres
DRIFT_PROBABILITY = 0.2  # per step, the session's genre moves to a related one
TAG_WEIGHT = 1.5  # how strongly favourite tags steer which game of a genre is shown
CANDIDATES = 8  # games proposed by popularity per step, one kept by tag affinity
MAX_STEPS = 60
MIN_SESSION_GAP = 31 * 60.0  # seconds between one session's last event and the next's first
EVENTS_PER_STEP = 1.8  # rough mean, to size the session pool
OVERSUPPLY = 1.5  # the pool is larger than needed; whole sessions are then dropped to hit `events`


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray  # (items,) index into CATEGORIES
    provider: np.ndarray  # (items,) index into PROVIDERS
    badges: np.ndarray  # (items, 5) index into BADGE_NAMES, -1 = none
    popularity: np.ndarray  # (items,) sampling weight, 0 for new games
    price: np.ndarray
    is_new: np.ndarray


@dataclass(frozen=True)
class _Users:
    device: np.ndarray  # (users,) index into DEVICES
    taste: np.ndarray  # (users, categories), rows sum to 1
    tag_score: np.ndarray  # (users, badges) log preference, 0 = indifferent
    activity: np.ndarray  # (users,) relative number of sessions


@dataclass(frozen=True)
class _Log:
    """The kept events as parallel arrays; seconds count from START."""

    user: np.ndarray
    item: np.ndarray
    session: np.ndarray  # pool session index
    kind: np.ndarray  # index into EVENT_ORDER
    value: np.ndarray
    seconds: np.ndarray


def read_demo(
    data_dir: Path | None = None,
    users: int = 5000,
    items: int = 1000,
    events: int = 300_000,
    seed: int = 0,
    days: int = 60,
) -> Dataset:
    """Generate the demo platform. `data_dir` is unused: it keeps the common reader signature."""
    if min(users, items, events, days) < 1 or days <= NEW_ITEM_DAYS:
        raise ValueError("users, items and events must be positive and days > 2")
    rng = np.random.default_rng(seed)
    catalogue = _make_catalogue(rng, items)
    people = _make_users(rng, users)
    window = days * DAY

    session_user, session_len = _plan_sessions(rng, people, events)
    step_user = np.repeat(session_user, session_len)
    step_cat = _drift_focus(rng, people, catalogue, session_user, session_len)
    step_item = _show_games(rng, people, catalogue, step_user, step_cat)
    affinity = _affinity(people, catalogue, step_user, step_item)
    happened, values = _outcomes(rng, affinity, catalogue.price[step_item])

    step_index, type_index = np.nonzero(happened)  # row-major: steps in order, types in EVENT_ORDER
    step_session = np.repeat(np.arange(len(session_len)), session_len)
    event_session = step_session[step_index]
    offset = _offsets_in_session(rng, event_session)
    duration = np.zeros(len(session_len))
    np.maximum.at(duration, event_session, offset)
    per_session = np.bincount(event_session, minlength=len(session_len))

    kept = _keep_sessions(rng, session_user, duration, per_session, events, window)
    start = _schedule(rng, session_user, duration, kept, window)
    keep = kept[event_session]
    log = _Log(
        user=step_user[step_index][keep],
        item=step_item[step_index][keep],
        session=event_session[keep],
        kind=type_index[keep],
        value=values[step_index, type_index][keep],
        seconds=(start[event_session] + offset)[keep],
    )
    return Dataset(
        name="demo",
        events=_events_frame(people, catalogue, log),
        items=_items_frame(rng, catalogue, log, window),
        users=_users_frame(rng, people, log, window),
        source=f"synthetic: pipelines.datasets.demo seed={seed} users={users} items={items} "
        f"events={events} days={days}",
    )


# --------------------------------------------------------------------------------------------
# The world


def _category_matrix() -> np.ndarray:
    """(categories, badges) 1 where a tag typically goes with a genre."""
    matrix = np.zeros((len(CATEGORIES), len(BADGE_NAMES)))
    for b, (categories, _) in enumerate(BADGES.values()):
        matrix[[CATEGORIES.index(c) for c in categories], b] = 1.0
    return matrix


def _choose_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One index per row, drawn with probability proportional to that row's weights."""
    cumulative = np.cumsum(weights, axis=1)
    draw = rng.random(len(weights))[:, None] * cumulative[:, -1:]
    return (cumulative > draw).argmax(axis=1)


def _make_catalogue(rng: np.random.Generator, n: int) -> _Catalogue:
    category = rng.choice(len(CATEGORIES), size=n, p=CATEGORY_SHARE)
    provider = _choose_rows(rng, _provider_weights(rng)[category])
    # Tags: Gumbel top-k draws 5 distinct tags weighted by genre fit; each game keeps its first 2-5.
    tag_weight = _category_matrix()[category] + 0.05
    keys = np.log(tag_weight) + rng.gumbel(size=tag_weight.shape)
    badges = np.argsort(-keys, axis=1)[:, :5]
    badges[np.arange(5)[None, :] >= rng.integers(2, 6, size=n)[:, None]] = -1
    level = np.asarray(CATEGORY_PRICE_LEVEL)[category] + rng.normal(0.0, 1.0, size=n)
    price = np.asarray(PRICES)[np.clip(np.round(level), 0, len(PRICES) - 1).astype(int)]
    is_new = np.zeros(n, dtype=bool)
    is_new[rng.choice(n, size=max(1, round(NEW_ITEM_SHARE * n)), replace=False)] = True
    popularity = np.where(is_new, 0.0, rng.lognormal(0.0, 1.2, size=n))
    return _Catalogue(category, provider, badges, popularity, price, is_new)


def _provider_weights(rng: np.random.Generator) -> np.ndarray:
    """(categories, providers): studio size where the studio makes that genre, else 0."""
    weights = np.zeros((len(CATEGORIES), len(PROVIDERS)))
    size = rng.lognormal(0.0, 0.7, size=len(PROVIDERS))
    for p in range(len(PROVIDERS)):
        primary = CATEGORIES[p % len(CATEGORIES)]  # every genre gets five specialists
        weights[CATEGORIES.index(primary), p] = size[p]
        if rng.random() < 0.5:
            secondary = RELATED[primary][rng.integers(len(RELATED[primary]))]
            weights[CATEGORIES.index(secondary), p] = 0.5 * size[p]
    return weights


def _make_users(rng: np.random.Generator, n: int) -> _Users:
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARE)
    appetite = np.array([DEVICE_TASTE[d] for d in DEVICES])
    appetite = appetite / appetite.sum(axis=1, keepdims=True)
    # Per-user Dirichlet draw around the device's genre mix: the device sets the mean, the low
    # concentration makes individual users peaky and different from each other.
    taste = rng.gamma(TASTE_CONCENTRATION * appetite[device])
    taste = np.maximum(taste / taste.sum(axis=1, keepdims=True), 1e-3)
    taste /= taste.sum(axis=1, keepdims=True)
    by_genre = _category_matrix()
    by_genre /= by_genre.sum(axis=1, keepdims=True)
    personal = rng.gamma(0.3, size=(n, len(BADGE_NAMES))) + 1e-3
    tags = 0.6 * taste @ by_genre + 0.4 * personal / personal.sum(axis=1, keepdims=True)
    tag_score = np.log(tags * len(BADGE_NAMES)).astype(np.float32)
    activity = rng.lognormal(0.0, 1.0, size=n)
    return _Users(device, taste, tag_score, activity)


# --------------------------------------------------------------------------------------------
# Behaviour


def _plan_sessions(rng: np.random.Generator, people: _Users, events: int) -> tuple[np.ndarray, np.ndarray]:
    """A pool of sessions (user, number of steps), larger than `events` needs."""
    steps_needed = OVERSUPPLY * events / EVENTS_PER_STEP
    mean_steps = 7.0  # roughly the mean of the length distribution below
    count = int(np.ceil(steps_needed / mean_steps)) + 1
    length = np.clip(np.round(rng.lognormal(np.log(5.0), 0.8, size=count)), 1, MAX_STEPS).astype(np.int64)
    user = rng.choice(len(people.activity), size=count, p=people.activity / people.activity.sum())
    return user, length


def _drift_focus(
    rng: np.random.Generator, people: _Users, catalogue: _Catalogue, session_user: np.ndarray, session_len: np.ndarray
) -> np.ndarray:
    """The genre in focus at each step: drawn from taste, then drifting to related genres."""
    available = np.bincount(catalogue.category, weights=catalogue.popularity, minlength=len(CATEGORIES)) > 0
    taste = people.taste * available
    related = np.array([[float(c in RELATED[a]) for c in CATEGORIES] for a in CATEGORIES]) * available
    first = np.cumsum(session_len) - session_len
    focus = np.empty(session_len.sum(), dtype=np.int64)
    focus[first] = _choose_rows(rng, taste[session_user])
    for k in range(1, int(session_len.max())):
        live = np.flatnonzero(session_len > k)
        at = first[live] + k
        focus[at] = focus[at - 1]
        # Drift towards related genres the user also likes, with a floor so any related one can come.
        weights = related[focus[at - 1]] * (taste[session_user[live]] + 0.05)
        move = (rng.random(len(live)) < DRIFT_PROBABILITY) & (weights.sum(axis=1) > 0)
        focus[at[move]] = _choose_rows(rng, weights[move])
    return focus


def _tag_affinity(people: _Users, catalogue: _Catalogue, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Mean of the user's tag scores over the game's tags (any matching shapes of user and item)."""
    tags = catalogue.badges[item]
    has = tags >= 0
    scores = people.tag_score[user[..., None], np.where(has, tags, 0)]
    return (scores * has).sum(axis=-1) / has.sum(axis=-1)


def _show_games(
    rng: np.random.Generator, people: _Users, catalogue: _Catalogue, step_user: np.ndarray, step_cat: np.ndarray
) -> np.ndarray:
    """The game shown at each step: one of the focus genre, by popularity and the user's tags.

    Sampling-importance-resampling: CANDIDATES games are drawn by popularity within the genre, then
    one is kept with probability proportional to exp(TAG_WEIGHT * tag affinity) (Gumbel-max), so no
    users x items matrix is ever built.
    """
    order = np.argsort(catalogue.category, kind="stable")
    cumulative = np.cumsum(catalogue.popularity[order])
    edges = np.searchsorted(catalogue.category[order], np.arange(len(CATEGORIES) + 1))
    below = np.concatenate([[0.0], cumulative])[edges]  # popularity mass before each genre block
    low, high = below[step_cat][:, None], below[step_cat + 1][:, None]
    target = np.minimum(low + rng.random((len(step_cat), CANDIDATES)) * (high - low), np.nextafter(high, 0))
    candidates = order[np.searchsorted(cumulative, target, side="right")]
    keys = TAG_WEIGHT * _tag_affinity(people, catalogue, step_user[:, None], candidates)
    keep = np.argmax(keys + rng.gumbel(size=keys.shape), axis=1)
    return candidates[np.arange(len(candidates)), keep]


def _affinity(people: _Users, catalogue: _Catalogue, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Standardised user-game affinity: genre taste plus tag affinity."""
    raw = np.log(people.taste[user, catalogue.category[item]] * len(CATEGORIES))
    raw = raw + _tag_affinity(people, catalogue, user, item)
    return (raw - raw.mean()) / raw.std()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _outcomes(rng: np.random.Generator, z: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps, EVENT_ORDER) masks of what happened at each step, and the event values."""
    n = len(z)
    roll = rng.random((n, len(EVENT_ORDER)))
    click = roll[:, 1] < _sigmoid(-0.2 + 1.2 * z)
    play = click & (roll[:, 2] < _sigmoid(0.8 + 0.8 * z))
    like = click & (roll[:, 3] < _sigmoid(-2.8 + 1.0 * z))
    rating = play & (roll[:, 4] < 0.12)
    cart = click & (roll[:, 5] < _sigmoid(-3.2 + 0.6 * z))
    purchase = cart & (roll[:, 6] < _sigmoid(0.8 * z))
    happened = np.column_stack([np.ones(n, dtype=bool), click, play, like, rating, cart, purchase])

    values = np.full((n, len(EVENT_ORDER)), np.nan)
    values[:, 2] = np.round(np.clip(rng.lognormal(np.log(480.0) + 0.6 * z, 0.9), 5, 6 * 3600))
    values[:, 4] = np.clip(np.round(3.2 + 1.1 * z + rng.normal(0.0, 0.8, size=n)), 1, 5)
    values[:, 6] = price
    return happened, values


def _offsets_in_session(rng: np.random.Generator, session: np.ndarray) -> np.ndarray:
    """Seconds from the session's first event; consecutive events 5-120 s apart."""
    gap = np.clip(rng.lognormal(np.log(25.0), 0.7, size=len(session)), 5.0, 120.0)
    first = np.r_[True, session[1:] != session[:-1]]
    gap[first] = 0.0
    total = np.cumsum(gap)
    return total - total[np.flatnonzero(first)][np.cumsum(first) - 1]


def _keep_sessions(
    rng: np.random.Generator,
    session_user: np.ndarray,
    duration: np.ndarray,
    per_session: np.ndarray,
    events: int,
    window: float,
) -> np.ndarray:
    """Which pool sessions to keep: those that fit their user's time budget, then a random subset
    whose events just reach `events`."""
    # A user's sessions plus the gaps between them must fit in the window.
    order = np.lexsort((np.arange(len(session_user)), session_user))
    used = _grouped_cumsum(duration[order] + MIN_SESSION_GAP, session_user[order])
    fits = np.empty(len(order), dtype=bool)
    fits[order] = used <= window
    shuffled = rng.permutation(np.flatnonzero(fits))
    total = np.cumsum(per_session[shuffled])
    kept = np.zeros(len(session_user), dtype=bool)
    kept[shuffled[: np.searchsorted(total, events) + 1]] = True
    return kept


def _grouped_cumsum(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at each new value of `group` (which must be sorted)."""
    total = np.cumsum(values)
    starts = np.r_[True, group[1:] != group[:-1]]
    before = (total - values)[np.flatnonzero(starts)]
    return total - before[np.cumsum(starts) - 1]


def _schedule(
    rng: np.random.Generator, session_user: np.ndarray, duration: np.ndarray, kept: np.ndarray, window: float
) -> np.ndarray:
    """Session start times (seconds into the window), more than 30 minutes apart per user.

    Random placement of non-overlapping intervals: each user's free time (window minus their
    sessions and minimum gaps) is cut at sorted uniform points, and session j starts at its point
    plus the length of the sessions and gaps before it.
    """
    index = np.flatnonzero(kept)
    user, length = session_user[index], duration[index] + MIN_SESSION_GAP
    busy = np.bincount(user, weights=length, minlength=session_user.max() + 1)
    point = rng.random(len(index)) * (window + MIN_SESSION_GAP - busy[user])
    order = np.lexsort((point, user))
    before = _grouped_cumsum(length[order], user[order]) - length[order]
    start = np.full(len(session_user), np.nan)
    start[index[order]] = point[order] + before
    return start


# --------------------------------------------------------------------------------------------
# Frames


def _timestamps(seconds: np.ndarray) -> pd.DatetimeIndex:
    """Seconds from START to UTC timestamps, to the millisecond."""
    return START + pd.to_timedelta(np.round(seconds * 1000).astype(np.int64), unit="ms")


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _events_frame(people: _Users, catalogue: _Catalogue, log: _Log) -> pd.DataFrame:
    order = np.lexsort((log.kind, log.seconds))  # by time; the funnel order breaks ties
    session_start = np.full(log.session.max() + 1, np.inf)
    np.minimum.at(session_start, log.session, log.seconds)
    # Session ids s0, s1, ... in order of their start.
    rank = np.argsort(np.argsort(session_start, kind="stable"), kind="stable")
    user = log.user[order]
    return events_frame(
        user_id=_ids("u", len(people.device))[user],
        item_id=_ids("g", len(catalogue.category))[log.item[order]],
        session_id=_ids("s", len(rank))[rank[log.session[order]]],
        event_type=np.asarray(EVENT_ORDER, dtype=object)[log.kind[order]],
        value=log.value[order],
        device=np.asarray(DEVICES, dtype=object)[people.device[user]],
        ts=_timestamps(log.seconds[order]),
    )


def _first_seconds(index: np.ndarray, seconds: np.ndarray, n: int) -> np.ndarray:
    """The first event time per id (inf where an id has no events)."""
    first = np.full(n, np.inf)
    np.minimum.at(first, index, seconds)
    return first


def _created(rng: np.random.Generator, planned: np.ndarray, first: np.ndarray, slack: float) -> np.ndarray:
    """The planned creation time, or up to `slack` seconds before the first event if that is earlier."""
    return np.minimum(planned, first - rng.random(len(planned)) * slack)


def _items_frame(rng: np.random.Generator, catalogue: _Catalogue, log: _Log, window: float) -> pd.DataFrame:
    n = len(catalogue.category)
    categories = [CATEGORIES[c] for c in catalogue.category]
    providers = [PROVIDERS[p] for p in catalogue.provider]
    badges = [[BADGE_NAMES[b] for b in row if b >= 0] for row in catalogue.badges]
    titles = _titles(rng, categories, badges)
    new_from = window - NEW_ITEM_DAYS * DAY
    # New games are released in the last 2 days; the others at a planned time in the window or the
    # same span before it, moved earlier if the game is played before then.
    planned = np.where(
        catalogue.is_new, rng.uniform(new_from, window, size=n), rng.uniform(-window, new_from, size=n)
    )
    created = _created(rng, planned, _first_seconds(log.item, log.seconds, n), DAY)
    return items_frame(
        item_id=_ids("g", n),
        title=titles,
        description=[_describe(t, c, b, p) for t, c, b, p in zip(titles, categories, badges, providers)],
        provider=providers,
        category=categories,
        badges=badges,
        attrs=[
            {"price": float(price), "popularity": round(float(pop), 4)}
            for price, pop in zip(catalogue.price, catalogue.popularity)
        ],
        created_at=_timestamps(created),
    )


def _titles(rng: np.random.Generator, categories: list[str], badges: list[list[str]]) -> list[str]:
    """'<tag word> <noun> <genre word>', with a sequel number when a title repeats."""
    titles = []
    for category, tags in zip(categories, badges):
        words = BADGES[tags[0]][1]
        nouns = CATEGORY_NOUNS[category]
        titles.append(
            f"{words[rng.integers(len(words))]} {TITLE_NOUNS[rng.integers(len(TITLE_NOUNS))]} "
            f"{nouns[rng.integers(len(nouns))]}"
        )
    sequel = pd.Series(titles).groupby(titles).cumcount().to_numpy()
    return [t if s == 0 else f"{t} {s + 1}" for t, s in zip(titles, sequel)]


def _describe(title: str, category: str, badges: list[str], provider: str) -> str:
    """E.g. 'Star Legion Tactics is a space strategy game by Nebula Forge with co-op and sci-fi.'"""
    rest = " and ".join([", ".join(badges[1:-1]), badges[-1]] if len(badges) > 2 else badges[1:])
    article = "an" if badges[0][0] in "aeiou" else "a"
    return (
        f"{title} is {article} {badges[0]} {category} game by {provider} with {rest}. {CATEGORY_PITCH[category]}"
    )


def _users_frame(rng: np.random.Generator, people: _Users, log: _Log, window: float) -> pd.DataFrame:
    n = len(people.device)
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_SHARE)
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_SHARE)
    top_category = people.taste.argmax(axis=1)
    top_tags = np.argsort(-people.tag_score, axis=1)[:, :3]
    attrs = [
        {
            "age_band": AGE_BANDS[a],
            "country": COUNTRIES[c],
            "taste_top_category": CATEGORIES[t],
            "taste_top_badges": [BADGE_NAMES[b] for b in tags],
        }
        for a, c, t, tags in zip(age, country, top_category, top_tags)
    ]
    # Sign-ups spread over half a year before the window and through it, never after a first event.
    planned = rng.uniform(-180 * DAY, window, size=n)
    created = _created(rng, planned, _first_seconds(log.user, log.seconds, n), 3600.0)
    return users_frame(
        user_id=_ids("u", n),
        device=np.asarray(DEVICES, dtype=object)[people.device],
        attrs=attrs,
        created_at=_timestamps(created),
    )
