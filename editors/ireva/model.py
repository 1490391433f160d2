"""IrevaEditor: turns (prompt, target) edits into KeyValueAdaptor neurons and back."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editors.backbone import Backbone, encode_prompt, encode_target, final_norm, keeps_text, mlp_of
from editors.calibration import CALIBRATION_TEXTS
from editors.ireva.config import IrevaConfig
from editors.ireva.layer import KeyValueAdaptor
from editors.ireva.steering import NeuronSteering, old_tokens, possessive_ids
from editors.statement import opening_ids


@dataclass
class Capture:
    """One forward pass of prompt + target with the adaptor off."""

    mlp_inputs: torch.Tensor  # (T, hidden) input of the adaptor's MLP at every position
    final_hidden: torch.Tensor  # (T, hidden) residual stream entering the final norm
    logits: torch.Tensor  # (K, vocab) the unedited model's logits at the last K positions (K = logits_kept)


class IrevaEditor:
    method = "ireva"

    def __init__(self, backbone: Backbone, config: IrevaConfig | None = None, centre: torch.Tensor | None = None):
        self.backbone, self.config = backbone, config or IrevaConfig()
        model = backbone.model
        self.lock = threading.RLock()  # one edit at a time; generation takes it too
        self._value_dirs: dict[int, torch.Tensor] = {}
        self.layer = self.config.layer % backbone.num_layers
        self.is_top_layer = self.layer == backbone.num_layers - 1
        self.mlp = mlp_of(model, self.layer)
        self.model_norm = final_norm(model)  # hooked to see the final hidden state
        # Neurons are built in float32 whatever the weights' dtype: a half-precision backbone (a GPU)
        # gets float32 copies of the two parts the construction computes with.
        self.norm, self.unembed = self.model_norm, model.get_output_embeddings()
        if self.unembed.weight.dtype != torch.float32:
            self.norm, self.unembed = copy.deepcopy(self.norm).float(), copy.deepcopy(self.unembed).float()
        self.mean_row = self.unembed.weight.mean(0)
        if centre is None:
            centre = self._calibration_centre()
        cfg = self.config
        self.adaptor = KeyValueAdaptor(
            self.mean_row.shape[0], centre.to(backbone.device), cfg.theta, cfg.ramp, cfg.alpha
        )
        self._handle = self.mlp.register_forward_hook(self.adaptor.hook)
        self.slots: dict[str, list[int]] = {}  # live edit id -> adaptor slots, in target-token order
        self.targets: dict[str, list[int]] = {}  # live edit id -> its target token ids
        self.facts: dict[str, tuple[str, str]] = {}  # live edit id -> (prompt, target)
        self.olds: dict[str, list[int]] = {}  # live edit id -> first tokens of the fact it replaces (read once)
        self.possessive = possessive_ids(backbone.tokenizer)  # banned right after an agent an edit states

    # -- forward passes ------------------------------------------------------------------------------
    def capture(self, ids: list[int], logits_kept: int = 0) -> Capture:
        """`logits_kept`: the last positions whose logits are wanted (0: none; the output embedding is a
        fifth of a forward pass per position, and an insert reads it at the target's positions only)."""
        seen: dict[str, torch.Tensor] = {}
        h1 = self.mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("mlp", a[0][0].detach()))
        h2 = self.model_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0].detach()))
        adaptor = getattr(self, "adaptor", None)  # absent while the centre is being computed
        # The switch is model-wide, so it is made under the lock that generation holds too.
        with self.lock, adaptor.disabled() if adaptor is not None else contextlib.nullcontext():
            try:
                with torch.no_grad():
                    out = self.backbone.model(
                        torch.tensor([ids], device=self.backbone.device),
                        use_cache=False,
                        logits_to_keep=max(1, logits_kept),
                    )
            finally:
                h1.remove()
                h2.remove()
        return Capture(seen["mlp"].float(), seen["final"].float(), out.logits[0].float())

    def _calibration_centre(self) -> torch.Tensor:
        rows = []
        for text in CALIBRATION_TEXTS:
            ids = encode_prompt(self.backbone.tokenizer, text)
            rows.append(self.capture(ids).mlp_inputs[1:])  # position 0 is an attention sink outlier
        return torch.cat(rows).mean(0)

    def logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.norm(final_hidden)).float()

    # -- neuron construction -------------------------------------------------------------------------
    def value_direction(self, token: int) -> torch.Tensor:
        """Unit direction that, added in large amounts, makes `token` the top prediction.

        Tied embeddings share a large common direction, so the raw row rarely wins; the row minus the
        mean row wins for ~93% of tokens, and a few Adam steps on the direction alone fix the rest."""
        cached = self._value_dirs.get(token)
        if cached is not None:
            return cached
        with torch.no_grad():
            v = (self.unembed.weight[token] - self.mean_row).float()
            wins = self.logits(v[None] * 1e3)[0].argmax().item() == token
        for _ in range(8):
            if wins:
                break
            # Optimise against the strongest rivals only (a full-vocabulary step costs a pass over the
            # output embedding), then check against the whole vocabulary and widen the rivals if needed.
            v = self._outrank(v, token)
            with torch.no_grad():
                wins = self.logits(v[None] * 1e3)[0].argmax().item() == token
        v = v / v.norm()
        if len(self._value_dirs) < 8192:  # bounded: at most 19 MB for a 576-wide model
            self._value_dirs[token] = v
        return v

    def _outrank(self, v: torch.Tensor, token: int, steps: int = 30) -> torch.Tensor:
        with torch.no_grad():
            rivals = self.logits(v[None] * 1e3)[0].topk(512).indices
        rivals = torch.cat([torch.tensor([token], device=rivals.device), rivals[rivals != token]])
        rows = self.unembed.weight[rivals]
        v = v.clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=0.05)
        target = torch.zeros(1, dtype=torch.long, device=v.device)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy((self.norm(v[None]) @ rows.T).float(), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return v.detach()

    def calibrate_scale(
        self, hidden: torch.Tensor, base_logits: torch.Tensor, direction: torch.Tensor, token: int
    ) -> float:
        """Smallest scale s for which `token` leads every other token by `logit_margin` when s * direction
        is added to `hidden` (the residual entering the final norm; exact for the top layer, a first-order
        stand-in for lower ones). Where no scale reaches the margin, 90% of the lead reachable is asked.

        RMSNorm and LayerNorm map h + s * v into the span of norm(h), norm(v) and norm(0) (the bias), so
        the logits for any s mix three logit vectors: the unedited ones (`base_logits`, from the capture),
        the direction's and the bias's. One pass through the output embedding serves the whole search."""
        top = self.config.max_scale
        with torch.no_grad():
            if not hasattr(self, "_bias_logits"):  # norm(0) is the norm's bias: the same for every edit
                self._bias_logits = self.logits(torch.zeros_like(hidden)[None])[0]
            anchors = torch.stack([hidden, top * direction, torch.zeros_like(hidden)])
            to_basis = torch.linalg.pinv(self.norm(anchors).float())
            basis_logits = torch.stack([base_logits, self.logits(anchors[1:2])[0], self._bias_logits])
            # Only tokens near the top of some basis vector can lead a mix of them; the answer is
            # checked against the whole vocabulary below.
            rivals = torch.unique(
                torch.cat(
                    [basis_logits.topk(64, dim=-1).indices.flatten(), torch.tensor([token], device=hidden.device)]
                )
            )
            mine_at = int((rivals == token).nonzero()[0])

            def lead(scales: torch.Tensor, columns: torch.Tensor, me: int) -> torch.Tensor:
                normed = self.norm(hidden[None] + scales[:, None] * direction[None]).float()
                logits = (normed @ to_basis) @ basis_logits[:, columns]
                mine = logits[:, me].clone()
                logits[:, me] = float("-inf")
                return mine - logits.max(-1).values

            def search(columns: torch.Tensor, me: int) -> float:
                grid = torch.cat([torch.zeros(1), torch.logspace(0, torch.log10(torch.tensor(top)), 48)]).to(hidden)
                leads = lead(grid, columns, me)
                wanted = min(self.config.logit_margin, 0.9 * leads[-1].item())
                if wanted <= 0:  # the direction cannot make the token win here: push nothing else up
                    return 0.0
                ok = (leads >= wanted).nonzero()
                i = int(ok[0])
                if i == 0:
                    return 0.0
                fine = torch.linspace(grid[i - 1].item(), grid[i].item(), 65, device=hidden.device)[1:]
                return fine[int((lead(fine, columns, me) >= wanted).nonzero()[0])].item()

            scale = search(rivals, mine_at)
            everyone = torch.arange(basis_logits.shape[1], device=hidden.device)
            wanted = min(self.config.logit_margin, 0.9 * lead(torch.tensor([top]).to(hidden), everyone, token).item())
            if lead(torch.tensor([scale]).to(hidden), everyone, token).item() < wanted - 1e-3:
                scale = search(everyone, token)  # a rival outside the short list: search them all
            return scale

    def build_neurons(self, prompt: str, target: str, retrofit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One neuron per target token (appendix 9.5): the key is the MLP input at the prefix that
        precedes the token, the value pushes that token to the top."""
        tok = self.backbone.tokenizer
        p_ids, t_ids = encode_prompt(tok, prompt), encode_target(tok, prompt, target)
        # A bare space (a target of control characters alone) steering.old_tokens cannot tell from the
        # old answer's tokens
        if not t_ids or not keeps_text(tok, target):
            raise ValueError("target tokenises to nothing")
        if len(t_ids) > self.config.max_target_tokens:
            raise ValueError(f"target is {len(t_ids)} tokens, more than the cap of {self.config.max_target_tokens}")
        cap = self.capture(p_ids + t_ids[:-1], logits_kept=len(t_ids))
        positions = [len(p_ids) - 1 + i for i in range(len(t_ids))]
        keys = self.adaptor.normalise(cap.mlp_inputs[positions])
        columns = []
        for pos, token in zip(positions, t_ids):
            d = self.value_direction(token)
            logits = cap.logits[pos - positions[0]]  # the kept rows are the target's positions
            columns.append(self.calibrate_scale(cap.final_hidden[pos], logits, d, token) * d)
        values = torch.stack(columns)
        if retrofit:
            keys, values = self.retrofit(
                keys,
                values,
                cap.mlp_inputs[positions],
                cap.final_hidden[positions],
                torch.tensor(t_ids, device=keys.device),
            )
        return keys, values

    def negatives(self) -> torch.Tensor:
        """Out-of-scope inputs for L_irr (appendix 9.4): the calibration text's positions, which
        stand in for the paper's generated questions, plus the keys of other live edits."""
        if not hasattr(self, "_calibration_inputs"):
            rows = [self.capture(encode_prompt(self.backbone.tokenizer, t)).mlp_inputs[1:] for t in CALIBRATION_TEXTS]
            self._calibration_inputs = self.adaptor.normalise(torch.cat(rows))
        n = self.adaptor.size
        live = self.adaptor.live_mask().nonzero().flatten()
        if len(live) > 256:  # a fixed-size sample keeps retrofit cost flat as edits accumulate
            live = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(n))[:256].to(live.device)]
        return torch.cat([self._calibration_inputs, self.adaptor.keys[live]])  # copies 256 keys, not all

    def retrofit(self, keys, values, inputs, final_hidden, tokens):
        """Adam on the new neurons only: L_edit + a * L_rec + b * L_irr (section 4.2), no max-pooling.

        The output is computed from the residual entering the final norm plus the neuron's output,
        exact for the top layer and a first-order stand-in for lower ones, so a step costs no pass
        through the transformer."""
        cfg, adaptor = self.config, self.adaptor
        own = adaptor.normalise(inputs)
        negatives = self.negatives()
        # L_edit's softmax over the tokens that can compete (the top of the unedited logits and of the
        # initial edited ones, at any of the positions) instead of the whole vocabulary: a step then
        # costs ~1% of a pass through the output embedding, and the tokens left out hold no mass.
        with torch.no_grad():
            rivals = torch.unique(
                torch.cat(
                    [
                        self.logits(final_hidden).topk(256, dim=-1).indices.flatten(),
                        self.logits(final_hidden + values).topk(256, dim=-1).indices.flatten(),
                        tokens,
                    ]
                )
            )
        rows = self.unembed.weight[rivals].detach()
        bias = None if getattr(self.unembed, "bias", None) is None else self.unembed.bias[rivals].detach()
        wanted = torch.searchsorted(rivals, tokens)
        k, v = keys.clone().requires_grad_(True), values.clone().requires_grad_(True)
        # Keys are unit vectors and values are hundreds long: one step size cannot suit both, so the
        # value's is relative to its length.
        value_lr = cfg.retrofit_lr * float(values.norm(dim=-1).mean().clamp_min(1.0))
        opt = torch.optim.Adam([{"params": [k], "lr": cfg.retrofit_lr}, {"params": [v], "lr": value_lr}])
        with torch.enable_grad():
            for _ in range(cfg.retrofit_steps):
                unit = k / k.norm(dim=-1, keepdim=True)
                act = adaptor.activation((own * unit).sum(-1))
                l_edit = F.cross_entropy(
                    F.linear(self.norm(final_hidden + act[:, None] * v), rows, bias).float(), wanted
                )
                l_rec = ((keys - unit) * own).sum(-1).pow(2).mean()
                l_irr = F.relu(negatives @ unit.T - adaptor.theta).mean()
                loss = l_edit + cfg.rec_weight * l_rec + cfg.irr_weight * l_irr
                opt.zero_grad()
                loss.backward()
                opt.step()
        k = k.detach()
        return k / k.norm(dim=-1, keepdim=True), v.detach()

    # -- the verbs shared by all editors (editors/registry.py) ----------------------------------------
    name = "ireva"
    supports_retrofit = True
    answer_line_only = False
    shares_backbone = True

    def insert(self, edit_id: str, prompt: str, target: str, retrofit: bool = False) -> dict[str, torch.Tensor]:
        keys, values = self.build_neurons(prompt, target, retrofit)
        with self.lock:
            self._place(edit_id, keys, values, self._target_ids(prompt, target), (prompt, target))
        return self.tensors(edit_id)

    def update(self, edit_id: str, prompt: str, target: str, retrofit: bool = False) -> dict[str, torch.Tensor]:
        keys, values = self.build_neurons(prompt, target, retrofit)
        with self.lock:
            self.olds.pop(edit_id, None)
            old = self.slots[edit_id]
            if len(old) == len(keys):
                self.adaptor.set(old, keys, values)  # same token count: retrain in place
                self.targets[edit_id] = self._target_ids(prompt, target)
                self.facts[edit_id] = (prompt, target)
            else:
                self.withdraw(edit_id)
                self._place(edit_id, keys, values, self._target_ids(prompt, target), (prompt, target))
        return self.tensors(edit_id)

    def load_many(self, items: list[tuple[str, str, str, dict[str, torch.Tensor]]]) -> dict[str, Exception]:
        """Restore many (edit id, prompt, target, tensors) at once, as a start does: the adaptor grows
        once instead of once per edit. Returns the edits whose tensors do not fit, with the reason."""
        hidden = self.adaptor.keys.shape[1]
        errors: dict[str, Exception] = {}
        good = []
        for edit_id, prompt, target, tensors in items:
            keys, values = tensors.get("keys"), tensors.get("values")
            targets = self._target_ids(prompt, target)
            if (
                keys is None
                or values is None
                or keys.dim() != 2
                or keys.shape != values.shape
                or keys.shape[1] != hidden
                or len(keys) != len(targets)
            ):
                errors[edit_id] = ValueError(
                    f"expected keys and values of shape ({len(targets)}, {hidden}), got "
                    f"{None if keys is None else tuple(keys.shape)} and "
                    f"{None if values is None else tuple(values.shape)}"
                )
            else:
                good.append((edit_id, keys, values, targets))
                self.facts[edit_id] = (prompt, target)
        if not good:
            return errors
        with self.lock:
            for edit_id, *_ in good:
                if edit_id in self.slots:  # reinstating (a rollback): drop the copy it replaces
                    self.withdraw(edit_id)
            slots = self.adaptor.add(torch.cat([k for _, k, _, _ in good]), torch.cat([v for _, _, v, _ in good]))
            for edit_id, keys, _, targets in good:
                mine, slots = slots[: len(keys)], slots[len(keys) :]
                self.slots[edit_id], self.targets[edit_id] = mine, targets
        return errors

    def withdraw(self, edit_id: str) -> None:
        """The edit's neurons stop writing for good (the scope index keeps the withdrawn edit's
        prompt, so its queries get the unedited answer rather than another edit's)."""
        with self.lock:
            slots = self.slots.pop(edit_id, None)
            self.targets.pop(edit_id, None)
            self.facts.pop(edit_id, None)
            self.olds.pop(edit_id, None)
            if slots:
                self.adaptor.mask(slots)

    def tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        return self.adaptor.neuron_tensors(self.slots[edit_id])

    def neurons(self, edit_id: str) -> int:
        return len(self.slots.get(edit_id, ()))

    def state(self) -> dict[str, torch.Tensor]:
        return {"centre": self.adaptor.centre}

    def reads(self, edit_id: str, ids: list[int], query: str, chat: bool = False) -> list[int]:
        return ids  # the neurons act on the query itself

    def context(self):
        return contextlib.nullcontext()

    def steer(self, edit_ids: Sequence[str | None], questions: Sequence[str | None] | None = None) -> NeuronSteering:
        return NeuronSteering(self, edit_ids, questions)

    def old(self, edit_id: str) -> list[int]:
        """The first tokens of the fact the edit replaced (steering.old_tokens), read the first time an
        answer in its scope needs them: six unedited forward passes, which an insert need not pay."""
        with self.lock:
            if edit_id not in self.olds and edit_id in self.facts:
                self.olds[edit_id] = old_tokens(self, *self.facts[edit_id])
            return self.olds.get(edit_id, [])

    def opening(self, edit_id: str, question: str) -> list[int] | None:
        """The tokens a chat answer to `question` opens with in this edit's scope (editors/statement.py)."""
        fact = self.facts.get(edit_id)
        return None if fact is None else opening_ids(self.backbone.tokenizer, *fact, question)

    def _target_ids(self, prompt: str, target: str) -> list[int]:
        return encode_target(self.backbone.tokenizer, prompt, target)

    def _place(self, edit_id: str, keys, values, targets: list[int], fact: tuple[str, str]) -> None:
        self.slots[edit_id], self.targets[edit_id] = self.adaptor.add(keys, values), targets
        self.facts[edit_id] = fact

    def close(self) -> None:
        """Take the adaptor out of the backbone (the backbone is as it was loaded)."""
        self._handle.remove()
