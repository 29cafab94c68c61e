"""Versioned model artifacts on disk: `<root>/<namespace>/<model>/<version>/` plus a `current` pointer.

A version is written to a temporary folder and renamed into place, and `current` is replaced
atomically, so a reader never sees a half-written artifact or a torn pointer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
CURRENT = "current"


class Manifest(BaseModel):
    model: str
    version: str
    namespace: str
    created_at: datetime
    data_window: dict[str, Any] = Field(default_factory=dict, description="first/last event and counts trained on")
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict, description="offline metrics on the held-out split")
    item_count: int = 0
    user_count: int = 0


class ArtifactNotFound(FileNotFoundError):
    pass


class ArtifactStore:
    def __init__(self, root: Path, namespace: str):
        self.root, self.namespace = Path(root), namespace

    def model_dir(self, model: str) -> Path:
        return self.root / self.namespace / model

    def new_version_name(self) -> str:
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)

    def publish(self, model: str, build: Any, manifest_fields: dict[str, Any], make_current: bool = True) -> Manifest:
        """Write a new version: `build(folder)` saves the files; the manifest is added; then rename.

        `manifest_fields` are the Manifest fields other than model/version/namespace/created_at.
        """
        version = self.new_version_name()
        model_dir = self.model_dir(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f".{version}.tmp"
        staging.mkdir()
        try:
            build(staging)
            manifest = Manifest(
                model=model, version=version, namespace=self.namespace, created_at=datetime.now(UTC), **manifest_fields
            )
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            staging.rename(model_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if make_current:
            self.set_current(model, version)
        return manifest

    def set_current(self, model: str, version: str) -> None:
        if not (self.model_dir(model) / version / MANIFEST).exists():
            raise ArtifactNotFound(f"{model} has no version {version!r} in {self.model_dir(model)}")
        pointer = self.model_dir(model) / CURRENT
        tmp = pointer.with_name(f".{CURRENT}.{secrets.token_hex(4)}")
        tmp.write_text(version)
        os.replace(tmp, pointer)

    def current_version(self, model: str) -> str | None:
        pointer = self.model_dir(model) / CURRENT
        return pointer.read_text().strip() if pointer.exists() else None

    def resolve(self, model: str, version: str | None = None) -> Path:
        """The folder of `version`, or of the current one when version is None or 'current'."""
        if version in (None, CURRENT):
            version = self.current_version(model)
            if version is None:
                raise ArtifactNotFound(f"no trained {model} artifact in {self.model_dir(model)}")
        path = self.model_dir(model) / version
        if not (path / MANIFEST).exists():
            raise ArtifactNotFound(f"{model} has no version {version!r} in {self.model_dir(model)}")
        return path

    def manifest(self, model: str, version: str | None = None) -> Manifest:
        return Manifest.model_validate_json((self.resolve(model, version) / MANIFEST).read_text())

    def versions(self, model: str) -> list[str]:
        model_dir = self.model_dir(model)
        if not model_dir.exists():
            return []
        return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and (p / MANIFEST).exists())


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
