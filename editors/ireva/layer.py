"""KeyValueAdaptor: the iReVa neurons that sit beside one MLP of the backbone."""
from __future__ import annotations

import torch
from torch import nn


class KeyValueAdaptor(nn.Module):
    """n key-value neurons; at inference only the best-matching live key may fire (max-pooling).

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
        self.register_buffer("values", torch.zeros(0, hidden, device=centre.device))
        # 0 for a live neuron, -inf for a withdrawn one: added to the scores before max-pooling.
        self.register_buffer("mask_bias", torch.zeros(0, device=centre.device))
        self.size = 0
        self.enabled = True
        self.last_fired: torch.Tensor | None = None

    # -- storage -----------------------------------------------------------------------------
    def _grow(self, needed: int) -> None:
        capacity = self.keys.shape[0]
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity, 64)  # doubling keeps inserts amortised O(1)
        for name in ("keys", "values"):
            old = getattr(self, name)
            buf = old.new_zeros(new, old.shape[1])
            buf[:capacity] = old
            setattr(self, name, buf)
        bias = self.mask_bias.new_full((new,), float("-inf"))
        bias[:capacity] = self.mask_bias
        self.mask_bias = bias

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> list[int]:
        n = keys.shape[0]
        self._grow(self.size + n)
        slots = list(range(self.size, self.size + n))
        self.keys[slots] = keys.to(self.keys)
        self.values[slots] = values.to(self.values)
        self.mask_bias[slots] = 0.0
        self.size += n
        return slots

    def set(self, slots: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys[slots] = keys.to(self.keys)
        self.values[slots] = values.to(self.values)

    def mask(self, slots: list[int]) -> None:
        self.mask_bias[slots] = float("-inf")

    def unmask(self, slots: list[int]) -> None:
        self.mask_bias[slots] = 0.0

    @property
    def live(self) -> int:
        return int(torch.isfinite(self.mask_bias[: self.size]).sum())

    # -- computation ---------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.float() - self.centre
        return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def activation(self, score: torch.Tensor) -> torch.Tensor:
        # ReLU-shaped, not GeLU: below the margin GeLU is negative and would leak into every prompt.
        return ((score - self.theta) / self.ramp).clamp(0.0, 1.0)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine of each input row with every live key; withdrawn keys score -inf."""
        n = self.size
        return self.normalise(x) @ self.keys[:n].T + self.mask_bias[:n]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, hidden) MLP inputs at the last position -> (delta to add, fired neuron or -1)."""
        best_score, best = self.scores(x).max(dim=-1)
        act = self.activation(best_score)
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
