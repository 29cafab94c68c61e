"""The Serve application: one deployment per model, composed by the ingress.

`serve deploy serve_config.yaml` calls `build_app(args)`; `app` is the same with default args.
GPU shares are resolved here against the cluster (not written as `num_gpus` in the config file), so
the same file comes up on a CPU-only machine instead of waiting forever for a GPU.
"""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.content import ContentDeployment
from deployments.hgt import HGTDeployment
from deployments.ingress import Ingress, IngressConfig
from deployments.lightgcn import LightGCNDeployment
from deployments.popularity import PopularityDeployment
from deployments.tgn import TGNDeployment
from stores.settings import get_settings

MODEL_DEPLOYMENTS = {
    "tgn": TGNDeployment,
    "hgt": HGTDeployment,
    "lightgcn": LightGCNDeployment,
    "content": ContentDeployment,
    "popularity": PopularityDeployment,
}


class ModelPlacement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    num_cpus: float = Field(default=0.5, ge=0)
    gpu_share: float = Field(default=0.0, ge=0, le=1, description="fraction of a GPU when the cluster has one")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str | None = Field(default=None, description="dataset namespace; default RECSERVE_NAMESPACE")
    models: dict[str, ModelPlacement] = Field(default_factory=lambda: {m: ModelPlacement() for m in MODEL_DEPLOYMENTS})
    ingress: dict[str, Any] = Field(default_factory=dict, description="IngressConfig fields")


def actor_options(placement: ModelPlacement, cluster_gpus: float) -> dict[str, float]:
    """Ray actor resources for a model: its GPU share only where the cluster has GPUs."""
    return {"num_cpus": placement.num_cpus, "num_gpus": placement.gpu_share if cluster_gpus > 0 else 0.0}


def cluster_gpu_count() -> float:
    return ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0


def build_app(args: dict[str, Any] | None = None) -> Application:
    parsed = AppArgs.model_validate(args or {})
    settings = get_settings()
    namespace = parsed.namespace or settings.namespace
    unknown = set(parsed.models) - set(MODEL_DEPLOYMENTS)
    if unknown:
        raise ValueError(f"unknown models in args.models: {sorted(unknown)}; known: {sorted(MODEL_DEPLOYMENTS)}")
    gpus = cluster_gpu_count()
    handles = {
        name: MODEL_DEPLOYMENTS[name]
        .options(ray_actor_options=actor_options(placement, gpus))
        .bind(namespace, str(settings.artifacts_dir))
        for name, placement in parsed.models.items()
        if placement.enabled
    }
    ingress_config = IngressConfig.model_validate({"namespace": namespace, **parsed.ingress})
    return Ingress.bind(handles, ingress_config.model_dump())


app = build_app()
