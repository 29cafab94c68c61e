"""The vector store on both backends: the embedded engine (qdrant-edge) and the server API (qdrant-client,
answered here by its local mode, which takes the same calls a Qdrant server does)."""

import multiprocessing
import socket
import time

import numpy as np
import pytest
from qdrant_client import QdrantClient

from stores.settings import Settings
from stores.vector_backends import EmbeddedBackend, ServerBackend
from stores.vectors import VectorSet, VectorStore, VectorStoreUnavailable, point_id


# Local mode warns that it ignores payload indexes; the server builds them.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")


@pytest.fixture(params=["embedded", "server-api"])
def store(request, tmp_path):
    if request.param == "embedded":
        backend = EmbeddedBackend(tmp_path / "vectors")
    else:
        backend = ServerBackend(QdrantClient(location=":memory:"))
    with VectorStore(backend) as vector_store:
        yield vector_store


def vectors(n: int, dim: int = 8, seed: int = 0, prefix: str = "i") -> VectorSet:
    rng = np.random.default_rng(seed)
    return VectorSet([f"{prefix}{j}" for j in range(n)], rng.normal(size=(n, dim)).astype(np.float32))


def sync(store, version, **sets):
    return store.sync_version("demo", "lightgcn", version, sets, progress=False)


def collections(store) -> set[str]:
    return set(store.backend.collections())


def test_sync_then_get_vector_round_trips(store):
    items = vectors(50)
    [summary] = sync(store, "v1", items=items)
    assert (summary.count, summary.version, summary.collection) == (50, "v1", "demo__lightgcn__items")
    for j in (0, 17, 49):
        np.testing.assert_array_equal(store.get_vector("demo", "lightgcn", "items", items.ids[j]), items.vectors[j])
    assert store.get_vector("demo", "lightgcn", "items", "unknown") is None
    assert store.get_vector("demo", "lightgcn", "users", "i0") is None  # nothing synced for users
    assert store.current_version("demo", "lightgcn", "items") == "v1"
    assert store.count("demo", "lightgcn", "items") == 50
    assert store.count("demo", "hgt", "items") == 0


def test_search_ranks_by_dot_product_and_filters(store):
    items = vectors(300, dim=16)
    payloads = [
        {"category": f"c{j % 3}", "provider": f"p{j % 7}", "badges": [f"b{j % 5}", f"b{j % 11}"]} for j in range(300)
    ]
    sync(store, "v1", items=VectorSet(items.ids, items.vectors, payloads))
    query = np.random.default_rng(1).normal(size=16).astype(np.float32)
    scores = items.vectors @ query
    best = list(np.argsort(-scores))

    hits = store.search("demo", "lightgcn", "items", query, k=10)
    assert [i for i, _ in hits] == [items.ids[j] for j in best[:10]]
    np.testing.assert_allclose([s for _, s in hits], scores[best[:10]], rtol=1e-5)

    excluded = [items.ids[j] for j in best[:3]]
    hits = store.search("demo", "lightgcn", "items", query, k=5, exclude_ids=excluded)
    assert [i for i, _ in hits] == [items.ids[j] for j in best[3:8]]

    def expected(keep):
        return [items.ids[j] for j in best if keep(payloads[j])][:10]

    hits = store.search("demo", "lightgcn", "items", query, k=10, category="c1", provider="p2")
    assert [i for i, _ in hits] == expected(lambda p: p["category"] == "c1" and p["provider"] == "p2")
    hits = store.search("demo", "lightgcn", "items", query, k=10, badges=["b4", "b10"])
    assert [i for i, _ in hits] == expected(lambda p: {"b4", "b10"} & set(p["badges"]))
    assert store.search("demo", "lightgcn", "items", query, k=10, category="none") == []
    assert store.search("demo", "hgt", "items", query, k=5) == []


def test_new_version_switches_every_kind_and_keeps_only_the_previous(store):
    sync(store, "v1", users=vectors(30, prefix="u"), items=vectors(40))
    sync(store, "v2", users=vectors(20, seed=1, prefix="u"), items=vectors(40, seed=1))
    assert {store.current_version("demo", "lightgcn", kind) for kind in ("users", "items")} == {"v2"}
    assert store.get_vector("demo", "lightgcn", "users", "u25") is None
    assert store.count("demo", "lightgcn", "users") == 20
    # A replica still pinned to v1 reads v1 until it is rolled forward.
    assert store.count("demo", "lightgcn", "users", version="v1") == 30

    sync(store, "v3", users=vectors(10, seed=2, prefix="u"), items=vectors(40, seed=2))
    assert collections(store) == {f"demo__lightgcn__{kind}__{v}" for kind in ("users", "items") for v in ("v2", "v3")}
    with pytest.raises(ValueError, match="already current"):
        sync(store, "v3", users=vectors(10, prefix="u"))

    store.delete("demo", "lightgcn")
    assert store.current_version("demo", "lightgcn", "users") is None
    assert collections(store) == set()


def test_a_failed_sync_leaves_the_current_version_alone(store):
    sync(store, "v1", items=vectors(10))
    broken = VectorSet(["a", "b"], np.ones((2, 8), dtype=np.float32))
    object.__setattr__(broken, "ids", ["a", "b", "c"])  # passes validation, then fails half-way through the upload
    with pytest.raises(ValueError):
        sync(store, "v2", items=broken)
    assert store.current_version("demo", "lightgcn", "items") == "v1"
    assert collections(store) == {"demo__lightgcn__items__v1"}


def test_bad_vector_sets_are_refused():
    ids = ["a", "b", "c", "d", "e"]
    matrix = np.zeros((5, 4))
    with pytest.raises(ValueError, match="4 ids but 5 vectors"):
        VectorSet(ids[:4], matrix)
    with pytest.raises(ValueError, match="5 ids but 2 payloads"):
        VectorSet(ids, matrix, payloads=[{}, {}])
    with pytest.raises(ValueError, match="duplicate"):
        VectorSet(["a"] * 5, matrix)
    with pytest.raises(ValueError, match="2-D"):
        VectorSet(ids, np.zeros(5))


def test_point_ids_are_stable_uuids():
    assert point_id("item-1") == point_id("item-1") != point_id("item-2")
    assert len(point_id("x")) == 36


def _read_while_switching(root: str, sizes: dict[str, int], stop, seen, failures) -> None:
    """A reader in its own process: every search must see one whole version, never a mix or a partial set."""
    with VectorStore(EmbeddedBackend(root)) as reader:
        query = np.ones(8, dtype=np.float32)
        while not stop.is_set():
            hits = reader.search("demo", "lightgcn", "items", query, k=10_000)
            if not hits:
                continue
            versions = {item_id.split("-")[0] for item_id, _ in hits}
            version = next(iter(versions))
            if len(versions) != 1 or len(hits) != sizes[version]:
                failures.append(f"{len(hits)} hits from {sorted(versions)}")
            if not seen or seen[-1] != version:
                seen.append(version)


def _wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the reader did not catch up"
        time.sleep(0.01)


def test_alias_switch_leaves_every_reader_on_a_complete_version(tmp_path):
    sizes = {f"v{n}": 500 + 250 * n for n in range(1, 7)}
    writer = VectorStore(EmbeddedBackend(tmp_path / "vectors"))
    sync(writer, "v1", items=vectors(sizes["v1"], prefix="v1-"))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        stop, seen, failures = manager.Event(), manager.list(), manager.list()
        reader = context.Process(target=_read_while_switching, args=(str(tmp_path / "vectors"), sizes, stop, seen, failures))
        reader.start()
        try:
            for n in range(2, 7):
                _wait_until(lambda: len(seen) and seen[-1] == f"v{n - 1}")  # the reader is on the previous version
                version = f"v{n}"
                sync(writer, version, items=vectors(sizes[version], seed=n, prefix=f"{version}-"))
            _wait_until(lambda: seen[-1] == "v6")
        finally:
            stop.set()
            reader.join(60)
        assert reader.exitcode == 0
        assert list(failures) == []
        assert list(seen) == list(sizes)  # it followed every switch, in order
    writer.close()


def test_an_unreachable_server_is_reported_as_unavailable():
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(qdrant_url=f"http://127.0.0.1:{port}")
    with VectorStore.from_settings(settings) as store:
        with pytest.raises(VectorStoreUnavailable):
            store.check()
        with pytest.raises(VectorStoreUnavailable):
            store.search("demo", "content", "items", np.ones(4), k=3)


def test_the_embedded_store_is_the_default(tmp_path):
    with VectorStore.from_settings(Settings(state_dir=tmp_path, qdrant_url=None)) as store:
        sync(store, "v1", items=vectors(5))
    assert (tmp_path / "vectors" / "aliases.json").exists()
    with VectorStore.from_settings(Settings(state_dir=tmp_path, qdrant_url=None)) as reopened:
        assert reopened.count("demo", "lightgcn", "items") == 5
