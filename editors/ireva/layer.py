"""KeyValueAdaptor: the iReVa neurons that sit beside one MLP of the backbone."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class KeyValueAdaptor(nn.Module):
    """n key-value neurons. Which neuron writes is decided outside the adaptor, per batch row, by the
    server's scope gate (`writes`): a row whose query lies in no edit's scope gets nothing. The
    activation a key would give is kept for retrofit, which still shapes keys against negatives.

    Keys are unit vectors compared with the MLP input after centring (subtracting `centre`, the mean
    MLP input of a calibration text) and L2 normalisation. Values carry their own calibrated scale.
    The adaptor acts on the last position of each forward call only.
    """

    # buffers (registered below, so that they follow the module's device)
    centre: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    live: torch.Tensor

    def __init__(self, hidden: int, centre: torch.Tensor, theta: float, ramp: float, alpha: float = 1.0):
        super().__init__()
        self.theta, self.ramp, self.alpha = theta, ramp, alpha
        self.register_buffer("centre", centre.detach().clone().float())
        self.register_buffer("keys", torch.zeros(0, hidden, device=centre.device))
        self.register_buffer("values", torch.zeros(0, hidden, device=centre.device))
        # True where the neuron holds a live edit (False: discarded or never used).
        self.register_buffer("live", torch.zeros(0, dtype=torch.bool, device=centre.device))
        self.size = 0
        self.enabled = True
        # (batch,) slot that writes at the last position of each row in the next forward calls, -1 for
        # none; None: nothing writes. Set by the generation loop from the scope decision.
        self.writes: torch.Tensor | None = None

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
        live = self.live.new_zeros(new)
        live[:capacity] = self.live
        self.live = live

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> list[int]:
        n, start = keys.shape[0], self.size
        self._grow(start + n)
        new = slice(start, start + n)  # a slice, not a list of slots: loading 10,000 edits adds up
        self.keys[new] = keys.to(self.keys)
        self.values[new] = values.to(self.values)
        self.live[new] = True
        self.size += n
        return list(range(start, start + n))

    def set(self, slots: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys[slots] = keys.to(self.keys)
        self.values[slots] = values.to(self.values)

    def mask(self, slots: list[int]) -> None:
        """Discard: the slot takes no further part (a withdrawn, replaced or never-stored neuron)."""
        self.live[slots] = False

    def live_mask(self) -> torch.Tensor:
        return self.live[: self.size]

    @property
    def live_count(self) -> int:
        return int(self.live_mask().sum())

    def slot_bytes(self) -> int:
        """Memory one neuron takes in the adaptor: every per-slot buffer's row."""
        return sum(
            buf[0].numel() * buf.element_size() if buf.dim() > 1 else buf.element_size()
            for buf in (self.keys, self.values, self.live)
        )

    # -- computation ---------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.float() - self.centre
        return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def activation(self, score: torch.Tensor) -> torch.Tensor:
        # ReLU-shaped, not GeLU: below the margin GeLU is negative and would leak into every prompt.
        return ((score - self.theta) / self.ramp).clamp(0.0, 1.0)

    @contextlib.contextmanager
    def writing(self, slots: torch.Tensor | None):
        """Inside the block, row r's last position gets neuron slots[r] (-1: none)."""
        was = self.writes
        self.writes = slots
        try:
            yield
        finally:
            self.writes = was

    @contextlib.contextmanager
    def disabled(self):
        """Inside the block the backbone is the unedited model, whatever `writes` says."""
        was = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = was

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """x: (batch, hidden) MLP inputs at the last position; slots: (batch,) -> delta to add."""
        safe = slots.clamp_min(0)
        on = (slots >= 0) & self.live[safe]
        return (self.alpha * on[:, None] * self.values[safe]).to(x.dtype)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        slots = self.writes
        if not self.enabled or slots is None or self.size == 0 or not bool((slots >= 0).any()):
            return None
        output = output.clone()
        output[:, -1, :] += self(args[0][:, -1, :], slots.to(output.device))
        return output

    # -- persistence ---------------------------------------------------------------------------
    def neuron_tensors(self, slots: list[int]) -> dict[str, torch.Tensor]:
        return {"keys": self.keys[slots].cpu().contiguous(), "values": self.values[slots].cpu().contiguous()}
