"""User and item vectors whose dot product is the score: what an embedding model serves with, what
evaluation ranks with, and what is synced to the vector store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

EMBEDDINGS_FILE = "embeddings.pt"


@dataclass
class UserItemEmbeddings:
    users: Tensor  # [U, d]
    items: Tensor  # [I, d]

    def scores(self, user_indices: Tensor) -> Tensor:
        """[len(user_indices), I] dot-product scores; usable as a full-ranking `score_fn`."""
        return self.users[user_indices.to(self.users.device)] @ self.items.T

    def to(self, device: str | torch.device) -> UserItemEmbeddings:
        return UserItemEmbeddings(self.users.to(device), self.items.to(device))

    def save(self, folder: Path) -> None:
        torch.save({"users": self.users, "items": self.items}, folder / EMBEDDINGS_FILE)

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> UserItemEmbeddings:
        state = torch.load(folder / EMBEDDINGS_FILE, map_location=device, weights_only=True)
        return cls(state["users"], state["items"])
