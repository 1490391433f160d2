"""SeracEditor: edits kept in an explicit memory, a scope classifier over it, a counterfactual model.

Equation 1 of the paper: for a query x, the scope classifier finds the nearest live edit e* (cosine of
MiniLM embeddings of x and of e*'s prompt); if that similarity reaches the threshold the counterfactual
model answers, i.e. the backbone prompted with e* (and the trained LoRA adapter, when one is installed);
otherwise the base model answers. The backbone's weights are never changed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from pathlib import Path

import torch

from editors.backbone import Backbone, encode_target
from editors.serac.adapter import LoraHooks, has_adapter
from editors.serac.config import SeracConfig
from editors.serac.embedder import Embedder
from editors.serac.memory import EditMemory

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def shared_embedder(package: str, max_length: int) -> Embedder:
    """One embedder per process (≈ 4 s to load, 90 MB)."""
    return Embedder(package, max_length)


def _text_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _tensor_text(t: torch.Tensor) -> str:
    return bytes(t.to(torch.uint8).tolist()).decode("utf-8")


class SeracEditor:
    method = "serac"

    def __init__(self, backbone: Backbone, config: SeracConfig | None = None, embedder: Embedder | None = None):
        self.backbone, self.config = backbone, config or SeracConfig()
        cfg = self.config
        self.embedder = embedder or shared_embedder(cfg.embedder_package, cfg.embedder_max_length)
        self.memory = EditMemory(self.embedder.dim, cfg.initial_capacity)
        self.edits: dict[str, tuple[str, str]] = {}  # live edit id -> (prompt, target)
        self.adapter: LoraHooks | None = None
        if cfg.use_adapter and has_adapter(cfg.adapter_dir):
            try:
                adapter = LoraHooks(backbone.model, cfg.adapter_dir)
                trained_on = adapter.meta.get("model")
                if trained_on is not None and trained_on != backbone.name:
                    raise ValueError(f"it was trained on {trained_on}, this backbone is {backbone.name}")
                self.adapter = adapter
            except ValueError as exc:  # the prompted backbone still works: serve without the adapter
                log.error("SERAC adapter %s not used: %s", cfg.adapter_dir, exc)
        # An adapter answers best in the template it was trained with.
        self.template = (self.adapter.template if self.adapter is not None and self.adapter.template
                         else cfg.template)
        self.lock = threading.RLock()

    # -- the verbs shared by all editors ---------------------------------------------------------------
    def _check(self, prompt: str, target: str) -> None:
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty")
        if len(prompt) > self.config.max_prompt_chars:
            raise ValueError(f"prompt is {len(prompt)} characters, more than the cap of {self.config.max_prompt_chars}")
        if not target or not target.strip():
            raise ValueError("target is empty")
        n = len(encode_target(self.backbone.tokenizer, prompt, target))
        if n > self.config.max_target_tokens:
            raise ValueError(f"target is {n} tokens, more than the cap of {self.config.max_target_tokens}")

    def insert(self, edit_id: str, prompt: str, target: str) -> dict[str, torch.Tensor]:
        self._check(prompt, target)
        embedding = self.embedder([prompt])[0]
        with self.lock:
            if edit_id in self.memory:
                raise ValueError(f"edit {edit_id} is already live")
            self.memory.put(edit_id, embedding)
            self.edits[edit_id] = (prompt, target)
        return self.tensors(edit_id)

    def update(self, edit_id: str, prompt: str, target: str) -> dict[str, torch.Tensor]:
        self._check(prompt, target)
        if edit_id not in self.memory:
            raise KeyError(edit_id)
        embedding = self.embedder([prompt])[0]
        with self.lock:
            self.memory.put(edit_id, embedding)  # same slot: updated in place
            self.edits[edit_id] = (prompt, target)
        return self.tensors(edit_id)

    def load(self, edit_id: str, tensors: dict[str, torch.Tensor], prompt: str | None = None,
             target: str | None = None, withdrawn: bool = False) -> None:
        """Restore a persisted edit. The blob carries its prompt and target; prompt/target given here
        (the database row) take precedence. The stored embedding is used unless it has the wrong size
        for this embedder, in which case the prompt is embedded again. A withdrawn edit leaves no
        trace in the memory (an unrouted query already gets the base answer), so it is skipped."""
        if withdrawn:
            return
        prompt = prompt if prompt is not None else _tensor_text(tensors["prompt"])
        target = target if target is not None else _tensor_text(tensors["target"])
        embedding = tensors.get("embedding")
        stored_prompt = _tensor_text(tensors["prompt"]) if "prompt" in tensors else prompt
        if embedding is None or embedding.numel() != self.embedder.dim or stored_prompt != prompt:
            embedding = self.embedder([prompt])[0]
        with self.lock:
            self.memory.put(edit_id, embedding)
            self.edits[edit_id] = (prompt, target)

    def load_many(self, items: list[tuple[str, dict[str, torch.Tensor], bool]]) -> dict[str, Exception]:
        """load() each (edit id, tensors, withdrawn); returns the edits that failed, with the reason."""
        errors: dict[str, Exception] = {}
        for edit_id, tensors, withdrawn in items:
            try:
                self.load(edit_id, tensors, withdrawn=withdrawn)
            except Exception as exc:  # noqa: BLE001 - one bad blob must not stop the others
                errors[edit_id] = exc
        return errors

    def withdraw(self, edit_id: str) -> None:
        with self.lock:
            self.memory.remove(edit_id)
            del self.edits[edit_id]

    def discard(self, edit_id: str) -> None:
        """Withdrawing already leaves no trace; an edit not in the memory is left alone."""
        with self.lock:
            if edit_id in self.edits:
                self.withdraw(edit_id)

    def tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        with self.lock:
            prompt, target = self.edits[edit_id]
            return {"embedding": self.memory.embedding(edit_id).contiguous(), "prompt": _text_tensor(prompt),
                    "target": _text_tensor(target)}

    def neurons(self, edit_id: str) -> int:
        return 1 if edit_id in self.memory else 0

    def __len__(self) -> int:
        return len(self.memory)

    # -- scope classifier ------------------------------------------------------------------------------
    def nearest(self, query: str) -> tuple[str, float] | None:
        """The live edit whose prompt is most similar to the query, with the cosine; None if no edits."""
        if not len(self.memory):
            return None
        embedding = self.embedder([query])[0]
        with self.lock:
            return self.memory.nearest(embedding)

    def route(self, query: str) -> str | None:
        """The edit whose scope holds the query, or None for the base model. Free when memory is empty."""
        if not len(self.memory):
            return None
        found = self.nearest(query)
        if found is None or found[1] < self.config.threshold:
            return None
        return found[0]

    # -- counterfactual model --------------------------------------------------------------------------
    def counterfactual_prompt(self, edit_id: str, query: str) -> str:
        prompt, target = self.edits[edit_id]
        return self.template.format(prompt=prompt, target=target, query=query)

    @contextlib.contextmanager
    def counterfactual(self):
        """Inside this block the backbone is the counterfactual model (base + adapter, if trained)."""
        if self.adapter is None:
            yield
            return
        with self.adapter.active():
            yield
