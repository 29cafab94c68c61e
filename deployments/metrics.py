"""The project's own Prometheus metrics, exported through Ray's metrics port (names get a `ray_` prefix).

Create them inside a replica (its __init__), never at import time.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "recserve_recommend_requests",
            description="Recommendation requests by strategy, A/B arm and the source that served them.",
            tag_keys=("strategy", "arm", "source"),
        )
        self.stage_latency = Histogram(
            "recserve_stage_latency_ms",
            description="Latency of each model stage as seen by the ingress.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage", "arm"),
        )
        self.fallthroughs = Counter(
            "recserve_fallthroughs",
            description="Cascade stages that passed the request on, by stage and reason.",
            tag_keys=("stage", "reason", "arm"),
        )
        # cache: "results" (per-user recommendation pages), "seen" (per-user seen items, for
        # exclude_seen), "catalog" (items enriched from the in-memory snapshot; a miss is a DB lookup).
        self.cache_hits = Counter(
            "recserve_cache_hits", description="Cache hits by cache and A/B arm.", tag_keys=("cache", "arm")
        )
        self.cache_misses = Counter(
            "recserve_cache_misses", description="Cache misses by cache and A/B arm.", tag_keys=("cache", "arm")
        )
        self.fusion_share = Gauge(
            "recserve_ab_fusion_share", description="The configured share of users in the fusion arm."
        )
        self.catalog_items = Gauge(
            "recserve_catalog_snapshot_items", description="Items in the ingress's in-memory catalogue snapshot."
        )
        self.events_ingested = Counter(
            "recserve_events_ingested", description="Events stored (duplicates excluded).", tag_keys=("event_type",)
        )
        self.events_rejected = Counter(
            "recserve_events_rejected", description="Events refused, by reason.", tag_keys=("reason",)
        )
        # call: "observe" (stored events into TGN's live memory) or "end_session"; outcome: "applied",
        # "not_applied" (TGN answered that it has not got them yet), "error" or "timeout". What was
        # not applied is stored all the same, and TGN catches up from PostgreSQL.
        self.tgn_updates = Counter(
            "recserve_tgn_updates",
            description="Live updates the ingress sent to TGN, by call and outcome.",
            tag_keys=("call", "outcome"),
        )

        # /v1/similar_items, /v1/provider_items and /v1/search: one count per model asked. outcome: "served",
        # "not_found" (unknown item or provider), "not_loaded", "unhealthy", "error" or "timeout"; a
        # failure is followed by the next model's attempt (HGT, then content or popularity).
        self.lookups = Counter(
            "recserve_lookups",
            description="Model calls of the similar-items, provider-items and search endpoints, by endpoint, model and outcome.",
            tag_keys=("endpoint", "source", "outcome"),
        )
        self.lookup_latency = Histogram(
            "recserve_lookup_latency_ms",
            description="Latency of each model call of the similar-items, provider-items and search endpoints.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("endpoint", "source"),
        )

    def count_cache(self, cache: str, arm: str, hits: int, misses: int) -> None:
        tags = {"cache": cache, "arm": arm}
        if hits:
            self.cache_hits.inc(hits, tags=tags)
        if misses:
            self.cache_misses.inc(misses, tags=tags)


class ModelMetrics:
    def __init__(self) -> None:
        self.version = Gauge(
            "recserve_model_version_info",
            description="1 for the artifact version a model replica serves.",
            tag_keys=("model", "version"),
        )
