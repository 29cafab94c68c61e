"""POST /v1/interactions end to end: stored in PostgreSQL AND applied to TGN's memory and sessions before
the 201, next to the no-op floor (ingress -> one deployment, nothing stored) in the same run, interleaved.

    .venv/bin/python -m benchmarks.interactions_latency [--namespace demo] [--requests 300]

Needs a namespace with trained popularity and TGN artifacts (`make demo` makes them). Each request is one
click of a known user on a catalogue item, with a fresh idempotency key; it WRITES that many events to the
namespace. Rows: 1 client (one request after another) and 8 client threads. `updated` is the share of
responses that said `memory_updated: true`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.serving_latency import config_copy, print_ratio_rows, timed_run
from pipelines import serving
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--port", type=int, default=8012)
    args = parser.parse_args()
    settings = get_settings()
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    store = EventStore(Database.from_settings(settings))
    users = store.events_frame()["user_id"].dropna().unique().tolist()
    items = store.items_frame()["item_id"].tolist()
    rng = random.Random(0)

    def bodies(n: int) -> list[dict]:
        return [{"user_id": rng.choice(users), "item_id": rng.choice(items), "event_type": "click",
                 "ts": datetime.now(UTC).isoformat(), "idempotency_key": uuid.uuid4().hex} for _ in range(n)]

    scratch = tempfile.TemporaryDirectory()
    try:
        serving.start(settings, config_copy(Path(scratch.name)), http_port=args.port)
        base = f"http://127.0.0.1:{args.port}"
        urls = {"recserve": f"{base}/v1/interactions", "no-op floor": f"{base}/noop/v1/interactions"}
        timed_run(urls, bodies(30), 1, flag="memory_updated")  # warm-up
        print(f"POST /v1/interactions, one click per request, namespace {settings.namespace}; {args.requests} "
              "requests per app per row, interleaved\n")
        print("| clients | app | p50 ms | p99 ms | mean ms | p50 ratio | p99 ratio | updated |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for clients in (1, 8):
            samples, flags = timed_run(urls, bodies(args.requests), clients, flag="memory_updated")
            print_ratio_rows(str(clients), samples, flags)
    finally:
        serving.stop()
        scratch.cleanup()


if __name__ == "__main__":
    main()
