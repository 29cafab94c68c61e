"""A/B assignment between the cascade and fusion strategies.

A user's arm is a salted hash of their id: stable across requests, replicas and restarts, and
independent between experiments (a new salt reshuffles everyone). Raising `fusion_share` only moves
users from cascade to fusion, never back, because a user's bucket does not change.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Arm = Literal["cascade", "fusion"]
OVERRIDE_ARM = "override"  # requests that forced a strategy: kept out of the experiment's arms


class ABSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fusion_share: float = Field(default=0.0, ge=0, le=1, description="share of users served by fusion")
    salt: str = Field(default="recserve-ab-1", min_length=1, description="change it to draw a new assignment")


def bucket(salt: str, unit: str) -> float:
    """Where `unit` falls in [0, 1), uniformly, for this salt."""
    digest = hashlib.blake2b(f"{salt}:{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(settings: ABSettings, unit: str) -> Arm:
    """The arm of a user (or an anonymous session): fusion for the lowest `fusion_share` of buckets."""
    return "fusion" if bucket(settings.salt, unit) < settings.fusion_share else "cascade"
