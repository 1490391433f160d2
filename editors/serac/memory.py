"""EditMemory: the live index of edit embeddings, searched by one matrix product."""
from __future__ import annotations

import torch


class EditMemory:
    """Unit embeddings in a preallocated (capacity, dim) matrix that doubles when full.

    Each edit owns one row (its slot): update rewrites the row in place, withdraw masks it (the row is
    not reused, so slots stay in insertion order). Withdrawn and unused rows score -inf. Among exactly
    equal scores (the same prompt edited twice) the later-inserted edit wins."""

    def __init__(self, dim: int, capacity: int = 64):
        self.dim = dim
        self.matrix = torch.zeros(capacity, dim)
        self.bias = torch.full((capacity,), float("-inf"))  # 0 for live rows
        self.size = 0  # rows ever used (high-water mark)
        self.slot: dict[str, int] = {}
        self.owner: list[str | None] = []

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self.slot

    def _grow(self, needed: int) -> None:
        capacity = self.matrix.shape[0]
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity)
        matrix = self.matrix.new_zeros(new, self.dim)
        matrix[:capacity] = self.matrix
        bias = self.bias.new_full((new,), float("-inf"))
        bias[:capacity] = self.bias
        self.matrix, self.bias = matrix, bias

    def put(self, edit_id: str, embedding: torch.Tensor) -> int:
        """Insert or overwrite the edit's row; returns its slot."""
        embedding = embedding.detach().float().reshape(-1).cpu()
        if embedding.shape[0] != self.dim:
            raise ValueError(f"embedding has {embedding.shape[0]} dimensions, the memory {self.dim}")
        slot = self.slot.get(edit_id)
        if slot is None:
            self._grow(self.size + 1)
            slot = self.size
            self.size += 1
            self.owner.append(None)
            self.slot[edit_id] = slot
            self.owner[slot] = edit_id
        norm = float(embedding.norm())
        if abs(norm - 1.0) > 1e-5:  # stored rows are unit vectors already: keep them bit for bit
            embedding = embedding / max(norm, 1e-12)
        self.matrix[slot] = embedding
        self.bias[slot] = 0.0
        return slot

    def remove(self, edit_id: str) -> None:
        slot = self.slot.pop(edit_id)
        self.bias[slot] = float("-inf")
        self.matrix[slot] = 0.0
        self.owner[slot] = None

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(q, size) cosine of each query with every used row; dead rows score -inf."""
        return queries.float() @ self.matrix[: self.size].T + self.bias[: self.size]

    def nearest(self, query: torch.Tensor) -> tuple[str, float] | None:
        if not self.slot:
            return None
        scores = self.scores(query.reshape(1, -1))[0]
        flipped = int(scores.flip(0).argmax())
        slot = self.size - 1 - flipped
        return self.owner[slot], float(scores[slot])

    def embedding(self, edit_id: str) -> torch.Tensor:
        return self.matrix[self.slot[edit_id]].clone()
