"""An editor that remembers each edit's prompt and target, answers a query in an edit's scope with the
plain backbone, and names the edit on every token of that answer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import torch

from tests.toy_method.config import ToyConfig


def _text(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


class Attributing:
    def __init__(self, edit_ids: Sequence[str | None]):
        self.edit_ids = list(edit_ids)

    def step(self, generated: list[list[int]]) -> list[str | None]:
        return list(self.edit_ids)

    def forced(self, generated: list[list[int]]) -> list[tuple[int, str] | None]:
        return [None] * len(generated)

    def banned(self, generated: list[list[int]]) -> list[list[int]]:
        return [[] for _ in generated]

    def close(self) -> None:
        pass

    def without_edit(self):
        return None


class ToyEditor:
    name = "toy"
    supports_retrofit = False
    answer_line_only = False
    shares_backbone = True

    def __init__(self, backbone, config: ToyConfig):
        self.backbone, self.config = backbone, config
        self.lock = threading.RLock()
        self.edits: dict[str, tuple[str, str]] = {}

    def insert(self, edit_id: str, prompt: str, target: str) -> dict[str, torch.Tensor]:
        if not target.strip():
            raise ValueError("target: must not be empty")
        with self.lock:
            self.edits[edit_id] = (prompt, target)
        return self.tensors(edit_id)

    def update(self, edit_id: str, prompt: str, target: str) -> dict[str, torch.Tensor]:
        return self.insert(edit_id, prompt, target)

    def withdraw(self, edit_id: str) -> None:
        with self.lock:
            self.edits.pop(edit_id, None)

    def load_many(self, items) -> dict[str, Exception]:
        with self.lock:
            for edit_id, prompt, target, _tensors in items:
                self.edits[edit_id] = (prompt, target)
        return {}

    def tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        prompt, target = self.edits[edit_id]
        return {"prompt": _text(prompt), "target": _text(target)}

    def neurons(self, edit_id: str) -> int:
        return 1 if edit_id in self.edits else 0

    def state(self) -> dict[str, torch.Tensor]:
        return {"marker": _text(self.config.marker)}

    def close(self) -> None:
        pass

    def reads(self, edit_id: str, ids: list[int], query: str, chat: bool = False) -> list[int]:
        return ids

    def context(self):
        return contextlib.nullcontext()

    def steer(self, edit_ids: Sequence[str | None], questions=None) -> Attributing:
        return Attributing(edit_ids)
