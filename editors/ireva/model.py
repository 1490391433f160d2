"""IrevaEditor: turns (prompt, target) edits into KeyValueAdaptor neurons and back."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editors.backbone import Backbone, encode_prompt, encode_target, final_norm, mlp_of
from editors.calibration import CALIBRATION_TEXTS
from editors.ireva.config import IrevaConfig
from editors.ireva.layer import KeyValueAdaptor


@dataclass
class Capture:
    """One forward pass of prompt + target with the adaptor off."""

    mlp_inputs: torch.Tensor  # (T, hidden) input of the adaptor's MLP at every position
    final_hidden: torch.Tensor  # (T, hidden) residual stream entering the final norm


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
        self.norm = final_norm(model)
        self.unembed = model.get_output_embeddings()
        self.mean_row = self.unembed.weight.mean(0)
        if centre is None:
            centre = self._calibration_centre()
        cfg = self.config
        self.adaptor = KeyValueAdaptor(self.mean_row.shape[0], centre.to(backbone.device), cfg.theta, cfg.ramp, cfg.alpha)
        self._handle = self.mlp.register_forward_hook(self.adaptor.hook)
        self.slots: dict[str, list[int]] = {}  # edit id -> adaptor slots, in target-token order
        self.owner: list[str] = []  # adaptor slot -> edit id

    # -- forward passes ------------------------------------------------------------------------------
    def capture(self, ids: list[int]) -> Capture:
        seen: dict[str, torch.Tensor] = {}
        h1 = self.mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("mlp", a[0][0].detach()))
        h2 = self.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0].detach()))
        adaptor = getattr(self, "adaptor", None)  # absent while the centre is being computed
        # The switch is model-wide, so it is made under the lock that generation holds too.
        with self.lock:
            was = adaptor is not None and adaptor.enabled
            if adaptor is not None:
                adaptor.enabled = False
            try:
                with torch.no_grad():
                    self.backbone.model(torch.tensor([ids], device=self.backbone.device), use_cache=False)
            finally:
                if adaptor is not None:
                    adaptor.enabled = was
                h1.remove()
                h2.remove()
        return Capture(seen["mlp"].float(), seen["final"].float())

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
        if not wins:
            v = v.clone().requires_grad_(True)
            opt = torch.optim.Adam([v], lr=0.05)
            target = torch.tensor([token], device=v.device)
            with torch.enable_grad():
                for _ in range(20):
                    loss = F.cross_entropy(self.logits(v[None]), target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            v = v.detach()
        v = v / v.norm()
        self._value_dirs[token] = v
        return v

    def calibrate_scale(self, hidden: torch.Tensor, direction: torch.Tensor, token: int) -> float:
        """Smallest scale s for which `token` leads every other token by `logit_margin` when s * direction
        is added to `hidden` (the residual entering the final norm; exact for the top layer, a first-order
        stand-in for lower ones)."""
        margin, top = self.config.logit_margin, self.config.max_scale

        def lead(s: torch.Tensor) -> torch.Tensor:  # margin of `token` for each scale in s
            logits = self.logits(hidden[None] + s[:, None] * direction[None])
            mine = logits[:, token].clone()
            logits[:, token] = float("-inf")
            return mine - logits.max(-1).values

        with torch.no_grad():
            grid = torch.cat([torch.zeros(1), torch.logspace(0, torch.log10(torch.tensor(top)), 24)]).to(hidden)
            ok = (lead(grid) >= margin).nonzero()
            if len(ok) == 0:
                return top
            i = int(ok[0])
            if i == 0:
                return 0.0
            lo, hi = grid[i - 1].item(), grid[i].item()
            for _ in range(4):  # refine between the two grid points, 8 candidates a round
                cand = torch.linspace(lo, hi, 10, device=hidden.device)[1:-1]
                good = (lead(cand) >= margin).nonzero()
                if len(good):
                    hi = cand[int(good[0])].item()
                    lo = cand[int(good[0]) - 1].item() if int(good[0]) > 0 else lo
                else:
                    lo = cand[-1].item()
            return hi

    def build_neurons(self, prompt: str, target: str, retrofit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One neuron per target token (appendix 9.5): the key is the MLP input at the prefix that
        precedes the token, the value pushes that token to the top."""
        tok = self.backbone.tokenizer
        p_ids, t_ids = encode_prompt(tok, prompt), encode_target(tok, prompt, target)
        if not t_ids:
            raise ValueError("target tokenises to nothing")
        if len(t_ids) > self.config.max_target_tokens:
            raise ValueError(f"target is {len(t_ids)} tokens, more than the cap of {self.config.max_target_tokens}")
        cap = self.capture(p_ids + t_ids[:-1])
        positions = [len(p_ids) - 1 + i for i in range(len(t_ids))]
        keys = self.adaptor.normalise(cap.mlp_inputs[positions])
        values = []
        for pos, token in zip(positions, t_ids):
            d = self.value_direction(token)
            values.append(self.calibrate_scale(cap.final_hidden[pos], d, token) * d)
        values = torch.stack(values)
        if retrofit:
            keys, values = self.retrofit(keys, values, cap.mlp_inputs[positions], cap.final_hidden[positions],
                                         torch.tensor(t_ids, device=keys.device))
        return keys, values

    def negatives(self) -> torch.Tensor:
        """Out-of-scope inputs for L_irr (appendix 9.4): the calibration text's positions, which
        stand in for the paper's generated questions, plus the keys of other live edits."""
        if not hasattr(self, "_calibration_inputs"):
            rows = [self.capture(encode_prompt(self.backbone.tokenizer, t)).mlp_inputs[1:] for t in CALIBRATION_TEXTS]
            self._calibration_inputs = self.adaptor.normalise(torch.cat(rows))
        n = self.adaptor.size
        live = torch.isfinite(self.adaptor.mask_bias[:n])
        others = self.adaptor.keys[:n][live]
        if len(others) > 256:  # a fixed-size sample keeps retrofit cost flat as edits accumulate
            others = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(n))[:256]]
        return torch.cat([self._calibration_inputs, others])

    def retrofit(self, keys, values, inputs, final_hidden, tokens):
        """Adam on the new neurons only: L_edit + a * L_rec + b * L_irr (section 4.2), no max-pooling.

        The output is computed from the residual entering the final norm plus the neuron's output,
        exact for the top layer and a first-order stand-in for lower ones, so a step costs no pass
        through the transformer."""
        cfg, adaptor = self.config, self.adaptor
        own = adaptor.normalise(inputs)
        negatives = self.negatives()
        k, v = keys.clone().requires_grad_(True), values.clone().requires_grad_(True)
        # Keys are unit vectors and values are hundreds long: one step size cannot suit both, so the
        # value's is relative to its length.
        value_lr = cfg.retrofit_lr * float(values.norm(dim=-1).mean().clamp_min(1.0))
        opt = torch.optim.Adam([{"params": [k], "lr": cfg.retrofit_lr}, {"params": [v], "lr": value_lr}])
        with torch.enable_grad():
            for _ in range(cfg.retrofit_steps):
                unit = k / k.norm(dim=-1, keepdim=True)
                act = adaptor.activation((own * unit).sum(-1))
                l_edit = F.cross_entropy(self.logits(final_hidden + act[:, None] * v), tokens)
                l_rec = ((keys - unit) * own).sum(-1).pow(2).mean()
                l_irr = F.relu(negatives @ unit.T - adaptor.theta).mean()
                loss = l_edit + cfg.rec_weight * l_rec + cfg.irr_weight * l_irr
                opt.zero_grad()
                loss.backward()
                opt.step()
        k = k.detach()
        return k / k.norm(dim=-1, keepdim=True), v.detach()

    # -- the verbs shared by all editors ---------------------------------------------------------------
    def insert(self, edit_id: str, prompt: str, target: str, retrofit: bool = False) -> dict[str, torch.Tensor]:
        keys, values = self.build_neurons(prompt, target, retrofit)
        with self.lock:
            self._place(edit_id, keys, values)
        return self.tensors(edit_id)

    def update(self, edit_id: str, prompt: str, target: str, retrofit: bool = False) -> dict[str, torch.Tensor]:
        keys, values = self.build_neurons(prompt, target, retrofit)
        with self.lock:
            old = self.slots[edit_id]
            if len(old) == len(keys):
                self.adaptor.set(old, keys, values)  # same token count: retrain in place
            else:
                self.adaptor.mask(old)
                del self.slots[edit_id]
                self._place(edit_id, keys, values)
        return self.tensors(edit_id)

    def load(self, edit_id: str, tensors: dict[str, torch.Tensor]) -> None:
        with self.lock:
            self._place(edit_id, tensors["keys"], tensors["values"])

    def withdraw(self, edit_id: str) -> None:
        with self.lock:
            self.adaptor.mask(self.slots.pop(edit_id))

    def tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        return self.adaptor.neuron_tensors(self.slots[edit_id])

    def neurons(self, edit_id: str) -> int:
        return len(self.slots.get(edit_id, ()))

    def _place(self, edit_id: str, keys: torch.Tensor, values: torch.Tensor) -> None:
        slots = self.adaptor.add(keys, values)
        self.slots[edit_id] = slots
        self.owner.extend([edit_id] * len(slots))

    def close(self) -> None:
        """Take the adaptor out of the backbone (the backbone is as it was loaded)."""
        self._handle.remove()

    def fired_edit(self, row: int = 0) -> str | None:
        """The edit whose neuron fired on the last position of the latest forward call, if any."""
        fired = self.adaptor.last_fired
        if fired is None or int(fired[row]) < 0:
            return None
        return self.owner[int(fired[row])]
