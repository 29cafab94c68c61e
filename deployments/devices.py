"""Where a model replica computes: the device its artifact is loaded onto."""

from __future__ import annotations

import ray
import torch


def replica_device() -> str:
    """cuda when Ray gave this replica a GPU share (deployments/app.py: `gpu_share`), else cpu."""
    return "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
