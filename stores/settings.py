"""Typed configuration: the one source of truth for where state lives.

Every value can be set from the environment (`RECSERVE_*`, plus the conventional `DATABASE_URL`
and `QDRANT_URL`); the README lists them all.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSERVE_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "RECSERVE_DATABASE_URL"),
        description="PostgreSQL DSN. Unset: an embedded PostgreSQL under state_dir/postgres.",
    )
    qdrant_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("QDRANT_URL", "RECSERVE_QDRANT_URL"),
        description="Qdrant server URL. Unset: Qdrant's local mode under state_dir/qdrant (one process at a time).",
    )
    qdrant_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("QDRANT_API_KEY", "RECSERVE_QDRANT_API_KEY"),
        description="API key for the Qdrant server; ignored in local mode.",
    )
    namespace: str = Field(
        default="demo",
        description="PostgreSQL schema (and artifact folder) of one dataset; each dataset loads into its own.",
    )
    state_dir: Path = Field(default=REPO_ROOT / ".state", description="Embedded database and other local state.")
    artifacts_dir: Path = Field(default=REPO_ROOT / "artifacts", description="Versioned model artifacts.")
    data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data", description="Public datasets.")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="HTTP bodies above this get 413.")
    metrics_port: int = Field(default=9464, description="Ray's Prometheus export port (recserve serve).")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin endpoints (train, load). Unset: those endpoints answer 403.",
    )
    db_pool_max: int = Field(default=8, ge=1, le=64, description="Connections per process pool.")
    serve_fast_path: bool = Field(
        default=True,
        description="recserve serve: Ray Serve runs user code and handle routing on each replica's event loop, and "
        "deployment handles call over gRPC (pipelines/serving.py, SERVE_FAST_PATH_ENV).",
    )

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        # The namespace becomes a schema name in SQL, so it is whitelisted rather than quoted.
        if not _NAMESPACE.match(value):
            raise ValueError("namespace must match [a-z][a-z0-9_]{0,40}")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def namespace_for(dataset: str) -> str:
    """The schema name a dataset loads into by default: 'ml-100k' -> 'ml_100k'."""
    return re.sub(r"[^a-z0-9_]", "_", dataset.lower())
