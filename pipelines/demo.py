"""`recserve demo` (make demo): generated data -> embedded PostgreSQL -> trained models -> Serve on :8000.

Re-running reuses the loaded data and trained artifacts; `--fresh` rebuilds them.
"""

from __future__ import annotations

import json
import time

import requests

from pipelines import serving
from pipelines.loading import load_into_store
from pipelines.training import DEMO_MODELS, DEMO_OVERRIDES, train_model
from stores.artifacts import ArtifactStore
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import Settings


def run_demo(settings: Settings, fresh: bool = False, keep_serving: bool = True) -> int:
    started = time.perf_counter()
    store = EventStore(Database.from_settings(settings))
    store.migrate()
    if fresh or store.counts()["events"] == 0:
        print("== loading the generated games platform", flush=True)
        print(json.dumps(load_into_store("demo", settings, replace=True), indent=2), flush=True)
    artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
    for model in DEMO_MODELS:
        if fresh or artifacts.current_version(model) is None:
            print(f"== training {model}", flush=True)
            manifest = train_model(model, settings, DEMO_OVERRIDES.get(model))
            metrics = {k: round(v, 4) for k, v in manifest.metrics.items() if k in ("recall@20", "ndcg@20", "mrr@20")}
            print(f"   {model} {manifest.version}: {json.dumps(metrics)}", flush=True)
    print("== starting Ray Serve", flush=True)
    with serving.running(settings) as config:
        base = f"http://{config.http_options.host}:{config.http_options.port}"
        print(f"== serving on {base} after {time.perf_counter() - started:.0f} s; example requests:\n", flush=True)
        show_examples(base, store)
        if keep_serving:
            print(f"\nrecserve is up on {base} (OpenAPI: {base}/docs). Ctrl-C stops it.", flush=True)
            while True:
                time.sleep(3600)
    return 0


def show_examples(base: str, store: EventStore) -> None:
    user = store.events_frame().iloc[-1]["user_id"]
    catalogue = store.items_frame()
    items = catalogue["item_id"].head(3).tolist()
    provider = catalogue["provider"].dropna().iloc[0]
    examples = [
        ("GET", "/healthz", None),
        # Cold start: HGT places a new user from their device and attributes.
        ("POST", "/v1/recommend", {"user_id": "brand-new-user", "k": 3,
                                   "context": {"device": "console", "attributes": {"age_band": "18-24"}}}),
        ("POST", "/v1/similar_items", {"item_id": items[0], "k": 3}),
        # Free-text search over the catalogue's MiniLM vectors, filtered by tag.
        ("POST", "/v1/search", {"text": "space strategy with co-op", "k": 3}),
        ("POST", "/v1/search", {"text": "calm puzzles for the evening", "k": 3, "filters": {"badges": ["relaxing"]}}),
        ("POST", "/v1/provider_items", {"provider": provider, "user_id": user, "k": 3}),
        ("POST", "/v1/recommend", {"k": 3, "filters": {"category": "strategy"}}),
        # A live session: the play is stored, applied to TGN's memory, and TGN answers while it lasts.
        ("POST", "/v1/interactions", {"user_id": user, "item_id": items[0], "event_type": "play", "value": 95,
                                      "idempotency_key": f"demo-{int(time.time())}"}),
        ("GET", f"/v1/sessions/{user}", None),
        ("POST", "/v1/recommend", {"user_id": user, "k": 5}),
        # The same user through the attention-fusion ranker: each item reports every source's contribution.
        ("POST", "/v1/recommend", {"user_id": user, "k": 3, "strategy": "fusion"}),
        ("POST", "/v1/recommend/batch", {"requests": [{"user_id": user, "k": 2}, {"k": 2, "context": {"device": "mobile"}}]}),
        ("POST", "/v1/recommend", {"session_items": [*items[1:], "not-in-catalogue"], "k": 3}),
        ("POST", "/v1/recommend", {"k": 0}),
        ("GET", "/v1/status", None),
    ]
    for method, path, body in examples:
        response = requests.request(method, base + path, json=body, timeout=30)
        print(f"$ curl -X {method} {base}{path}" + (f" -H 'content-type: application/json' -d '{json.dumps(body)}'" if body else ""))
        print(f"  -> {response.status_code} {_short(response.json())}\n", flush=True)


def _short(value, limit: int = 900) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + " ..."
