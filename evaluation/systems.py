"""The methods under evaluation, behind one small interface the harness drives.

Every system answers teacher-forced cases and greedy generations with its edits active. `none` is the
unedited backbone; `ireva` and `serac` are the editor classes the server uses, fed one edit at a time
through their `insert`; `ft` is the iReVa paper's fine-tuning baseline (appendix 9.7.1).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from editors.backbone import Backbone, encode_prompt, encode_target, mlp_of, padded, transformer_blocks
from evaluation.datasets import Record
from evaluation.teacher_forcing import greedy, shared_next_tokens

# per record: the (predicted, expected) token of each teacher-forced case
PerRecord = list[list[tuple[int, int]]]


@dataclass
class CaseSet:
    """Teacher-forced cases of (query, target) pairs, flattened, with the pair each case belongs to."""

    queries: list[str]
    targets: list[str]
    seqs: list[list[int]] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    target_ids: list[list[int]] = field(default_factory=list)

    @classmethod
    def build(cls, tokenizer, queries: list[str], targets: list[str]) -> CaseSet:
        """Cases in pair order, token order within a pair (the order shared_next_tokens returns)."""
        cs = cls(list(queries), list(targets))
        for q, t in zip(queries, targets):
            cs._append(encode_prompt(tokenizer, q), encode_target(tokenizer, q, t))
        return cs

    def _append(self, p_ids: list[int], t_ids: list[int]) -> None:
        """One more pair: a case per target token, the prompt plus the target tokens before it."""
        k = len(self.prompt_ids)
        self.prompt_ids.append(p_ids)
        self.target_ids.append(t_ids)
        for i, y in enumerate(t_ids):
            self.seqs.append(p_ids + t_ids[:i])
            self.expected.append(y)
            self.owner.append(k)

    def plain(
        self, backbone: Backbone, batch_size: int = 32, progress: str | None = None, capture: nn.Module | None = None
    ):
        """Predictions of a plain causal LM (no last-position adaptor), one forward per pair."""
        return shared_next_tokens(backbone, self.prompt_ids, self.target_ids, batch_size, progress, capture)

    def group(self, preds) -> PerRecord:
        out: PerRecord = [[] for _ in self.queries]
        for k, p, y in zip(self.owner, preds, self.expected):
            out[k].append((int(p), y))
        return out

    def cases_of(self, k: int) -> list[int]:
        if getattr(self, "_index", None) is None or len(self._index_n) != len(self.owner):
            index: dict[int, list[int]] = {}
            for i, o in enumerate(self.owner):
                index.setdefault(o, []).append(i)
            self._index, self._index_n = index, list(self.owner)
        return self._index.get(k, [])

    def subset(self, ks: list[int]) -> CaseSet:
        """The pairs ks (already tokenised) as a case set of their own."""
        sub = CaseSet([self.queries[k] for k in ks], [self.targets[k] for k in ks])
        for k in ks:
            sub._append(self.prompt_ids[k], self.target_ids[k])
        return sub


def set_config(config, overrides: dict[str, str]):
    """Apply --config key=value pairs to a config dataclass, cast to each field's type."""
    names = {f.name: f for f in fields(config)}
    for key, raw in overrides.items():
        if key not in names:
            raise SystemExit(
                f"--config {key}: {type(config).__name__} has no field {key!r}; fields: {', '.join(sorted(names))}"
            )
        current = getattr(config, key)
        if raw.lower() in ("none", "null"):
            value = None
        elif isinstance(current, bool):
            value = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            value = int(raw)
        elif isinstance(current, float):
            value = float(raw)
        else:
            value = raw
        setattr(config, key, value)
    return config


class System:
    """The unedited backbone, and the interface every method under evaluation offers. A withdrawable
    system also answers predict_withdrawn and predict_one (the harness measures rs/con with them)."""

    name = "none"
    withdrawable = False

    def __init__(self, backbone: Backbone, batch_size: int = 32):
        self.backbone, self.batch_size = backbone, batch_size
        self.rejected: dict[int, str] = {}  # record index -> why the editor refused the edit
        self.ids: list[str] = []  # record index -> edit id
        self.subjects: dict[str, str] = {}  # edit id -> its record's subject (every inserted edit)
        # per case of the last predict(): the edit that acted on it (None: none); None: not known
        self.last_fired_owner: list[str | None] | None = None
        self.decide_seconds: list[float] = []  # scope decision time per query, for methods that decide

    def describe(self) -> dict:
        return {}

    def insert_all(self, records: list[Record]) -> float:
        """Insert every edit, one after another. Returns seconds spent inserting."""
        return 0.0

    # `owners` (predict, generate, chat): the measured record each pair or query is about, where it is
    # about one (IKE states that record's edit in context); None: about none (NQ questions).
    def predict(
        self, cs: CaseSet, base: PerRecord, progress: str | None = None, owners: list[int] | None = None
    ) -> PerRecord:
        return base

    def generate(
        self,
        queries: list[str],
        budgets: list[int],
        base: list[list[int]] | None = None,
        progress: str | None = None,
        owners: list[int] | None = None,
    ) -> list[list[int]]:
        if base is not None:
            return base
        prompts = [encode_prompt(self.backbone.tokenizer, q) for q in queries]
        return greedy(self.backbone, prompts, budgets, batch_size=self.batch_size, progress=progress)

    def chat(self, questions: list[str], budgets: list[int], owners: list[int] | None = None) -> list[str]:
        """The text of the answer to each question asked as one chat turn (the model's own template)."""
        tok = self.backbone.tokenizer
        texts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions
        ]
        return [tok.decode(g) for g in self.generate(texts, budgets)]

    def predict_withdrawn(self, k: int, cs: CaseSet, base: PerRecord) -> PerRecord | None:
        """Record k's cases with edit k withdrawn and the others active (None: edit k was refused)."""
        raise NotImplementedError

    def predict_one(self, k: int, cs: CaseSet) -> list[tuple[int, int]]:
        """Record k's cases predicted on their own (a batch of one record), edits active."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Replay(nn.Module):
    """Stands in for the frozen blocks below the fine-tuned layer: returns their cached output."""

    def __init__(self):
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class _Pass(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class FineTuneSystem(System):
    """FT (iReVa paper, appendix 9.7.1): fine-tune the MLP of one layer on all edits at once — 20 epochs,
    lr 1e-4, batch 32 (the paper's settings for GPT2-XL layer 46 of 48; default here layer -2, the same
    relative depth). Loss: cross-entropy of every target token given the prompt and the target prefix
    (the appendix 9.5 decomposition in one sequence). Adam. The MLP's weights are copied before training
    and restored by close(), so the backbone leaves the run as it came.

    Blocks below the layer are frozen, so their output is computed once per sequence and replayed during
    training (checked against the full forward on the first batch; the full forward is used if they
    differ)."""

    name = "ft"

    def __init__(
        self,
        backbone: Backbone,
        batch_size: int = 32,
        layer: int | None = None,
        epochs: int = 20,
        lr: float = 1e-4,
        train_batch: int = 32,
        seed: int = 0,
    ):
        super().__init__(backbone, batch_size)
        self.layer = (-2 if layer is None else layer) % backbone.num_layers
        self.epochs, self.lr, self.train_batch, self.seed = epochs, lr, train_batch, seed
        self.mlp = mlp_of(backbone.model, self.layer)
        self.saved = {k: v.detach().clone() for k, v in self.mlp.state_dict().items()}
        self.losses: list[float] = []
        self.replayed = False

    def describe(self) -> dict:
        return {
            "layer_index": self.layer,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch": self.train_batch,
            "params": sum(p.numel() for p in self.mlp.parameters()),
            "replayed_lower_blocks": self.replayed,
            "loss_first_epoch": self.losses[0] if self.losses else None,
            "loss_last_epoch": self.losses[-1] if self.losses else None,
        }

    @torch.no_grad()
    def _lower_outputs(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Hidden states entering block `layer` for each sequence (right padding keeps them exact)."""
        blocks = transformer_blocks(self.backbone.model)
        seen = {}
        handle = blocks[self.layer].register_forward_pre_hook(lambda m, a, kw=None: seen.__setitem__("h", a[0]))
        out: list[torch.Tensor] = [None] * len(seqs)  # type: ignore[list-item]
        try:
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
            for s in tqdm(range(0, len(order), 32), desc="ft cache lower blocks", leave=False):
                idx = order[s : s + 32]
                ids, mask = self._padded([seqs[i] for i in idx])
                model = self.backbone.model
                if hasattr(model, "model"):
                    model.model(input_ids=ids, attention_mask=mask, use_cache=False)
                else:
                    model(input_ids=ids, attention_mask=mask)
                for row, i in enumerate(idx):
                    out[i] = seen["h"][row, : len(seqs[i])].clone()
        finally:
            handle.remove()
        return out

    def _padded(self, chunk: list[list[int]]):
        # right padding, as FT was measured: each row at positions 0.., the lower blocks' outputs replayed
        return padded(chunk, self.backbone.tokenizer.pad_token_id, self.backbone.device, left=False)

    def _loss(self, batch: list[int], seqs, starts, lower, replay: _Replay | None) -> torch.Tensor:
        ids, mask = self._padded([seqs[i] for i in batch])
        labels = torch.full_like(ids, -100)
        for row, i in enumerate(batch):
            labels[row, starts[i] : len(seqs[i])] = ids[row, starts[i] : len(seqs[i])]
        if replay is not None:
            width = ids.shape[1]
            h = torch.zeros(len(batch), width, lower[batch[0]].shape[-1], device=ids.device)
            for row, i in enumerate(batch):
                h[row, : len(seqs[i])] = lower[i]
            replay.hidden = h
        logits = self.backbone.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    @contextlib.contextmanager
    def _replaying(self):
        blocks = transformer_blocks(self.backbone.model)
        originals = [blocks[i] for i in range(self.layer)]
        replay = _Replay()
        for i in range(self.layer):
            blocks[i] = replay if i == 0 else _Pass()
        try:
            yield replay
        finally:
            for i, b in enumerate(originals):
                blocks[i] = b

    def insert_all(self, records: list[Record]) -> float:
        t0 = time.perf_counter()
        tok = self.backbone.tokenizer
        seqs, starts = [], []
        for r in records:
            p, t = encode_prompt(tok, r.prompt), encode_target(tok, r.prompt, r.target)
            seqs.append(p + t)
            starts.append(len(p))
        rng = random.Random(self.seed)
        params = list(self.mlp.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        lower = self._lower_outputs(seqs) if self.layer > 0 else None
        try:
            use_replay = False
            if lower is not None:  # check the replay against the full forward on one batch
                probe = list(range(min(len(seqs), self.train_batch)))
                with torch.no_grad():
                    full = self._loss(probe, seqs, starts, lower, None)
                    with self._replaying() as replay:
                        fast = self._loss(probe, seqs, starts, lower, replay)
                use_replay = bool(torch.allclose(full, fast, rtol=1e-4, atol=1e-4))
            self.replayed = use_replay
            order = list(range(len(seqs)))
            with self._replaying() if use_replay else contextlib.nullcontext() as replay:
                for _ in tqdm(range(self.epochs), desc="ft epochs", leave=False):
                    rng.shuffle(order)
                    total, count = 0.0, 0
                    for s in range(0, len(order), self.train_batch):
                        batch = order[s : s + self.train_batch]
                        loss = self._loss(batch, seqs, starts, lower, replay)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        total, count = total + loss.item() * len(batch), count + len(batch)
                    self.losses.append(total / max(count, 1))
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        return time.perf_counter() - t0

    def predict(self, cs: CaseSet, base: PerRecord, progress: str | None = None, owners=None) -> PerRecord:
        return cs.group(cs.plain(self.backbone, self.batch_size, progress)[0])

    def generate(self, queries, budgets, base=None, progress=None, owners=None):
        prompts = [encode_prompt(self.backbone.tokenizer, q) for q in queries]
        return greedy(self.backbone, prompts, budgets, batch_size=self.batch_size, progress=progress)

    def close(self) -> None:
        with torch.no_grad():
            self.mlp.load_state_dict(self.saved)
