"""SeracEditor: edits kept in an explicit memory, answered by a counterfactual model.

Equation 1 of the paper: a query in the scope of a live edit e* is answered by the counterfactual
model, i.e. the backbone prompted with e* (plus the trained LoRA adapter, when one is installed);
any other query by the base model. Which edit's scope holds a query is decided by the server's one
scope model (editors/scope), the same for every method. The backbone's weights are never changed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import torch

from editors.backbone import Backbone, encode_prompt, encode_target
from editors.serac.adapter import LoraHooks, has_adapter
from editors.serac.config import SeracConfig
from editors.statement import asks_yes_or_no, fact, names

log = logging.getLogger(__name__)


def chat_prompt(tokenizer, system: str, prompt: str, target: str, question: str) -> str:
    """A chat turn's counterfactual prompt: the edit (prompt, target) told in a system turn by the
    `system` template, the user's question, and the assistant's turn opened (train-serac learns the
    same)."""
    messages = [
        {"role": "system", "content": system.format(fact=fact(prompt, target))},
        {"role": "user", "content": question},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _text_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _tensor_text(t: torch.Tensor) -> str:
    return bytes(t.to(torch.uint8).tolist()).decode("utf-8")


class SeracEditor:
    name = "serac"
    supports_retrofit = False
    answer_line_only = True  # a prompt's counterfactual prompt is a question; its answer is one line
    shares_backbone = False  # it reads the edit and the query, with its adapter on

    def __init__(self, backbone: Backbone, config: SeracConfig | None = None):
        self.backbone, self.config = backbone, config or SeracConfig()
        cfg = self.config
        self.edits: dict[str, tuple[str, str]] = {}  # live edit id -> (prompt, target)
        self.adapter: LoraHooks | None = None
        if cfg.use_adapter and cfg.adapter_dir is not None and has_adapter(cfg.adapter_dir):
            try:
                adapter = LoraHooks(backbone.model, cfg.adapter_dir)
                trained_on = adapter.meta.get("model")
                if trained_on is not None and trained_on != backbone.name:
                    raise ValueError(f"it was trained on {trained_on}, this backbone is {backbone.name}")
                self.adapter = adapter
            except ValueError as exc:  # the prompted backbone still works: serve without the adapter
                log.error("SERAC adapter %s not used: %s", cfg.adapter_dir, exc)
        # An adapter answers best in the template it was trained with.
        meta = self.adapter.meta if self.adapter is not None else {}
        self.template = meta.get("template") or cfg.template
        self.chat_system = meta.get("chat_system") or cfg.chat_system
        self.lock = threading.RLock()

    # -- the verbs shared by all editors (editors/registry.py) ----------------------------------------
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
        with self.lock:
            if edit_id in self.edits:
                raise ValueError(f"edit {edit_id} is already live")
            self.edits[edit_id] = (prompt, target)
        return self.tensors(edit_id)

    def update(self, edit_id: str, prompt: str, target: str) -> dict[str, torch.Tensor]:
        self._check(prompt, target)
        if edit_id not in self.edits:
            raise KeyError(edit_id)
        with self.lock:
            self.edits[edit_id] = (prompt, target)
        return self.tensors(edit_id)

    def load_many(self, items: list[tuple[str, str, str, dict[str, torch.Tensor]]]) -> dict[str, Exception]:
        """Restore (edit id, prompt, target, tensors): the database row's prompt and target are the
        edit; the blob must hold the same ones (else it belongs to another version of the edit)."""
        errors: dict[str, Exception] = {}
        for edit_id, prompt, target, tensors in items:
            try:
                stored = (_tensor_text(tensors["prompt"]), _tensor_text(tensors["target"]))
            except Exception as exc:  # noqa: BLE001 - one bad blob must not stop the others
                errors[edit_id] = ValueError(f"blob holds no readable prompt and target ({exc})")
                continue
            if stored != (prompt, target):
                errors[edit_id] = ValueError(f"blob holds {stored}, the record ({prompt!r}, {target!r})")
                continue
            with self.lock:
                self.edits[edit_id] = (prompt, target)
        return errors

    def withdraw(self, edit_id: str) -> None:
        with self.lock:
            self.edits.pop(edit_id, None)

    def tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        with self.lock:
            prompt, target = self.edits[edit_id]
            return {"prompt": _text_tensor(prompt), "target": _text_tensor(target)}

    def neurons(self, edit_id: str) -> int:
        return 1 if edit_id in self.edits else 0

    def state(self) -> dict[str, torch.Tensor]:
        return {}  # each blob carries its prompt and target; nothing is shared

    def __len__(self) -> int:
        return len(self.edits)

    # -- counterfactual model --------------------------------------------------------------------------
    def counterfactual_prompt(self, edit_id: str, query: str, chat: bool = False) -> str:
        """What the counterfactual model reads: the edit, then the query. A chat turn reads the edit
        as a system turn and answers as the assistant (where the model has a chat template)."""
        prompt, target = self.edits[edit_id]
        tok = self.backbone.tokenizer
        if chat and getattr(tok, "chat_template", None) is not None:
            return chat_prompt(tok, self.chat_system, prompt, target, query)
        return self.template.format(prompt=prompt, target=target, query=query)

    def reads(self, edit_id: str, ids: list[int], query: str, chat: bool = False) -> list[int]:
        """The counterfactual model reads the edit and the query, not the query's rendered text."""
        return encode_prompt(self.backbone.tokenizer, self.counterfactual_prompt(edit_id, query, chat))

    @contextlib.contextmanager
    def context(self):
        """Inside this block the backbone is the counterfactual model (base + adapter, if trained)."""
        if self.adapter is None:
            yield
            return
        with self.adapter.active():
            yield

    def steer(self, edit_ids: Sequence[str | None], questions=None) -> AnswerSteering:
        return AnswerSteering(
            edit_ids, [self.verdict(e, q) for e, q in zip(edit_ids, questions or [None] * len(edit_ids))]
        )

    def verdict(self, edit_id: str | None, question: str | None) -> list[int]:
        """The first tokens of a chat answer to a yes/no question in the edit's scope: "Yes" where the
        question names the edit's target, else "No" (as iReVa's opening, editors/statement.py). The
        counterfactual model goes on from there. It does not learn the verdict itself: trained on
        yes and no answers alike, the adapter answered "Yes" to every question (docs/results.md)."""
        if edit_id is None or question is None or not asks_yes_or_no(question):
            return []
        word = "Yes" if names(question, self.edits[edit_id][1]) else "No"
        return self.backbone.tokenizer(word, add_special_tokens=False)["input_ids"]

    def close(self) -> None:
        pass


class AnswerSteering:
    """The whole counterfactual answer comes from the edit: every token names it. A row's `given`
    tokens (a yes/no verdict) open its answer."""

    def __init__(self, edit_ids: Sequence[str | None], given: Sequence[list[int]] | None = None):
        self.edit_ids = edit_ids
        self.given = given if given is not None else [[] for _ in edit_ids]

    def step(self, generated: list[list[int]]) -> list[str | None]:
        return list(self.edit_ids)

    def forced(self, generated: list[list[int]]) -> list[tuple[int, str] | None]:
        return [
            (given[len(done)], e) if e is not None and len(done) < len(given) else None
            for e, given, done in zip(self.edit_ids, self.given, generated)
        ]

    def banned(self, generated: list[list[int]]) -> list[list[int]]:
        return [[] for _ in generated]

    def close(self) -> None:
        pass

    def without_edit(self):
        return None  # the adapter acts on every position alike: cached states are already right
