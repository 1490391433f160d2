"""KeyValueAdaptor: the iReVa neurons that sit beside one MLP of the backbone."""
from __future__ import annotations

import torch
from torch import nn


# A live key beats a withdrawn one with the same score (the same prompt inserted again).
WITHDRAWN_BIAS = -1e-4
# Keys are screened in half precision (a 32k x 576 float32 matrix-vector product per generated token
# is ~5% of a SmolLM2-135M step on a CPU; half is ~3x cheaper) and the keys that may win are then
# scored exactly. A half-precision cosine of unit vectors is within ~1e-3 of the exact one; the
# slack leaves a wide margin, so the winner is the one exact scoring of every key would pick.
SCREEN_SLACK = 0.02


class KeyValueAdaptor(nn.Module):
    """n key-value neurons; at inference only the best-matching key may fire (max-pooling), and only
    if it is live: a withdrawn key still wins its own prompts, on which nothing fires.

    Keys are unit vectors compared with the MLP input after centring (subtracting `centre`, the mean
    MLP input of a calibration text) and L2 normalisation: a cosine, so a key's norm cannot make it win.
    Values carry their own calibrated scale. The adaptor acts on the last position of each forward
    call only, and records which neuron fired there (`last_fired`, -1 for none) for traceability.
    """

    def __init__(self, hidden: int, centre: torch.Tensor, theta: float, ramp: float, alpha: float = 1.0):
        super().__init__()
        self.theta, self.ramp, self.alpha = theta, ramp, alpha
        self.register_buffer("centre", centre.detach().clone().float())
        self.register_buffer("keys", torch.zeros(0, hidden, device=centre.device))
        self.register_buffer("keys_half", torch.zeros(0, hidden, dtype=torch.float16, device=centre.device))
        self.register_buffer("values", torch.zeros(0, hidden, device=centre.device))
        # Added to the scores before max-pooling: 0 for a live neuron, WITHDRAWN_BIAS for a withdrawn one
        # (its key still competes, see retire()), -inf for a discarded or unused slot.
        self.register_buffer("mask_bias", torch.zeros(0, device=centre.device))
        # True where the neuron may not write (withdrawn, discarded or unused).
        self.register_buffer("silent", torch.zeros(0, dtype=torch.bool, device=centre.device))
        self.size = 0
        self.enabled = True
        self.last_fired: torch.Tensor | None = None

    # -- storage -----------------------------------------------------------------------------
    def _grow(self, needed: int) -> None:
        capacity = self.keys.shape[0]
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity, 64)  # doubling keeps inserts amortised O(1)
        for name in ("keys", "keys_half", "values"):
            old = getattr(self, name)
            buf = old.new_zeros(new, old.shape[1])
            buf[:capacity] = old
            setattr(self, name, buf)
        bias = self.mask_bias.new_full((new,), float("-inf"))
        bias[:capacity] = self.mask_bias
        self.mask_bias = bias
        silent = self.silent.new_ones(new)
        silent[:capacity] = self.silent
        self.silent = silent

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> list[int]:
        n, start = keys.shape[0], self.size
        self._grow(start + n)
        new = slice(start, start + n)  # a slice, not a list of slots: loading 10,000 edits adds up
        self.keys[new] = keys.to(self.keys)
        self.keys_half[new] = self.keys[new].half()
        self.values[new] = values.to(self.values)
        self.mask_bias[new] = 0.0
        self.silent[new] = False
        self.size += n
        return list(range(start, start + n))

    def set(self, slots: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys[slots] = keys.to(self.keys)
        self.keys_half[slots] = self.keys[slots].half()
        self.values[slots] = values.to(self.values)

    def retire(self, slots: list[int]) -> None:
        """Withdraw: the neuron writes nothing, but its key keeps competing in max-pooling. A prompt
        closest to a withdrawn key then gets the base model's answer, as before the edit, instead of
        the answer of whichever other edit's key is runner-up."""
        self.mask_bias[slots] = WITHDRAWN_BIAS
        self.silent[slots] = True

    def mask(self, slots: list[int]) -> None:
        """Discard: the slot takes no further part (a replaced or never-stored neuron)."""
        self.mask_bias[slots] = float("-inf")
        self.silent[slots] = True

    def live_mask(self) -> torch.Tensor:
        return ~self.silent[: self.size]

    @property
    def live(self) -> int:
        return int(self.live_mask().sum())

    # -- computation ---------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.float() - self.centre
        return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def activation(self, score: torch.Tensor) -> torch.Tensor:
        # ReLU-shaped, not GeLU: below the margin GeLU is negative and would leak into every prompt.
        return ((score - self.theta) / self.ramp).clamp(0.0, 1.0)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine of each input row with every key (withdrawn ones a hair lower, discarded ones -inf)."""
        n = self.size
        return self.normalise(x) @ self.keys[:n].T + self.mask_bias[:n]

    def best_match(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, slot) of the best key for each row: `scores(x).max(-1)` (up to float rounding, which
        can only decide between keys whose scores are equal to ~1e-7) wherever the score can clear
        theta; elsewhere the score is only known to be below theta - SCREEN_SLACK."""
        n = self.size
        unit = self.normalise(x)
        screen = (unit.to(self.keys_half.dtype) @ self.keys_half[:n].T).float() + self.mask_bias[:n]
        best_score, best = screen.max(dim=-1)
        for row in (best_score >= self.theta - SCREEN_SLACK).nonzero().flatten().tolist():
            near = (screen[row] >= best_score[row] - 2 * SCREEN_SLACK).nonzero().flatten()
            exact = unit[row] @ self.keys[near].T + self.mask_bias[near]
            score, j = exact.max(dim=0)  # first among equals, as a max over all slots would pick
            best_score[row], best[row] = score, near[j]
        return best_score, best

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, hidden) MLP inputs at the last position -> (delta to add, fired neuron or -1)."""
        best_score, best = self.best_match(x)
        act = self.activation(best_score).masked_fill(self.silent[best], 0.0)
        delta = self.alpha * act[:, None] * self.values[best]
        fired = torch.where(act > 0, best, torch.full_like(best, -1))
        return delta.to(x.dtype), fired

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        self.last_fired = None
        if not self.enabled or self.size == 0:
            return None
        delta, fired = self(args[0][:, -1, :])
        self.last_fired = fired
        output = output.clone()
        output[:, -1, :] += delta
        return output

    # -- persistence ---------------------------------------------------------------------------
    def neuron_tensors(self, slots: list[int]) -> dict[str, torch.Tensor]:
        return {"keys": self.keys[slots].cpu().contiguous(), "values": self.values[slots].cpu().contiguous()}
