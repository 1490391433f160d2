"""Weight-only quantised linear layers: the fast backbone path on a CPU.

Decoding one token reads every weight once, so on a CPU its speed is the memory's: float32 weights of
the default model are ~540 MB a token, int4 ones ~70 MB. `quantise` swaps the decoder blocks' linear
layers for int4 (or int8) ones that keep the weights in groups of 32 inputs, the layout of the GGUF's
own blocks, and the output embedding for an int8 one. The matmuls (editors/kernels/) unpack a
group at a time and compute in float32, so a quantised layer gives the float32 matmul of its
dequantised weight up to the order of summation, and the packaged model (Q4_1 blocks, a Q8_0
embedding) answers as its float32 copy does. On a CPU with AMX, int4 matmuls of 2 rows or more
(prompts, batches) run on its tiles, still exact: x in three bfloat16 parts that sum to it.
Everything else (embeddings, norms, attention, the residual stream, iReVa's neurons, adapters'
low-rank terms and every hook) stays as it was.

int4: w = d q + m with q in 0..15, a scale d and a minimum m per group (GGUF Q4_1: its dequantised
weights pack back without loss). int8: w = d q with q in -127..127, a scale per group (GGUF Q8_0).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from editors import kernels

log = logging.getLogger(__name__)

MODES = ("none", "int8", "int4")
GROUP = 32  # inputs per scale (and minimum): GGUF's Q4_1 and Q8_0 blocks


def resolve(requested: str, device: torch.device) -> str:
    """The mode to run: `requested` by name, or "auto": int4 on a CPU where the kernels build (only
    the layers whose weights are exactly int4 groups: `quantise(lossless=True)`), none on a GPU (which
    reads bfloat16 weights fast enough, and whose int4 kernels need another packing)."""
    if requested == "auto":
        if device.type != "cpu":
            return "none"
        try:
            kernels.load()
        except RuntimeError as exc:  # no compiler (a slim image): float32, and the log says why
            log.warning("quant auto: float32 weights; %s", exc)
            return "none"
        return "int4"
    if requested not in MODES:
        raise ValueError(f"quant: {requested!r} is not one of auto, {', '.join(MODES)}")
    if requested != "none" and device.type != "cpu":
        raise ValueError(f"quant: {requested} runs on a CPU; on {device.type} use none (bfloat16 weights)")
    return requested


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantised in groups of GROUP inputs. `weight` gives it back
    dequantised (float32), for the few readers of a weight matrix; the forward pass never builds it."""

    codes: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        return weight.shape[1] % GROUP == 0

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantised(self) -> torch.Tensor:
        """The weight the codes stand for, float32 (out_features, in_features)."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantised()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self._groups(x.reshape(-1, shape[-1]).float()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    TILE = 16  # outputs a tile: the kernels' layout (editors/kernels/tiles.cpp), outputs in vector lanes

    @classmethod
    def _tiled(cls, t: torch.Tensor) -> torch.Tensor:
        """(outputs, groups, ...) -> (tiles, groups, ..., 16), outputs padded to whole tiles with zeros."""
        tiles = -(-t.shape[0] // cls.TILE)
        padded = t.new_zeros(tiles * cls.TILE, *t.shape[1:])
        padded[: t.shape[0]] = t
        return padded.reshape(tiles, cls.TILE, *t.shape[1:]).movedim(1, -1).contiguous()

    def _untiled(self, t: torch.Tensor) -> torch.Tensor:
        """_tiled's inverse: (outputs, groups, ...)."""
        t = t.movedim(-1, 1)
        return t.reshape(-1, *t.shape[2:])[: self.out_features]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantLinear):
    """Symmetric int8, one scale per group: q = round(w / d), d = max |w| / 127. Kept in tiles of 16
    outputs (editors/kernels/tiles.cpp): codes[t, g, j, h 16 + o] holds output o's code h 16 + j of
    group g, scales[t, g, o] its scale (outputs past out_features are zero)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight, bias)
        n, k = weight.shape
        groups = weight.detach().float().reshape(n, k // GROUP, GROUP)
        scales = (groups.abs().amax(-1) / 127).clamp_min(1e-12)
        codes = (groups / scales[..., None]).round().clamp(-127, 127).to(torch.int8)
        # (outputs, groups, h, j) -> (tiles, groups, j, h, 16 outputs)
        tiled = self._tiled(codes.reshape(n, k // GROUP, 2, GROUP // 2).transpose(2, 3))
        self.register_buffer("codes", tiled.reshape(*tiled.shape[:3], GROUP).contiguous())
        self.register_buffer("scales", self._tiled(scales))

    def _groups(self, x):
        return kernels.load().q8_mm(x, self.codes, self.scales, self.out_features)

    def dequantised(self) -> torch.Tensor:
        codes = self._untiled(self.codes.reshape(*self.codes.shape[:3], 2, self.TILE))  # (outputs, groups, j, h)
        w = codes.transpose(2, 3).float() * self._untiled(self.scales)[..., None, None]
        return w.reshape(self.out_features, self.in_features)


class Int4Linear(QuantLinear):
    """Asymmetric int4 per group: w = d q + m, m the group's minimum and d = (max - min) / 15 (Q4_1).
    Kept in tiles of 16 outputs, the kernel's layout (editors/kernels/tiles.cpp): for tile t and group g,
    codes[t, g, j, o] holds output o's code j in its low nibble and code j + 16 in its high one, and
    scales[t, g, o], minima[t, g, o] its scale and minimum (outputs past out_features are zero)."""

    minima: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight, bias)
        n, k = weight.shape
        groups = weight.detach().float().reshape(n, k // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scales = ((high - low) / 15).clamp_min(1e-12)
        q = ((groups - low[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.uint8)
        codes = q[..., : GROUP // 2] | (q[..., GROUP // 2 :] << 4)  # (outputs, groups, j)
        self.register_buffer("codes", self._tiled(codes))
        self.register_buffer("scales", self._tiled(scales))
        self.register_buffer("minima", self._tiled(low))

    def _groups(self, x):
        return kernels.load().q4_mm(x, self.codes, self.scales, self.minima, self.out_features)

    def dequantised(self) -> torch.Tensor:
        packed = self._untiled(self.codes)
        q = torch.cat([packed & 15, packed >> 4], -1).float()
        w = q * self._untiled(self.scales)[..., None] + self._untiled(self.minima)[..., None]
        return w.reshape(self.out_features, self.in_features)


class TiedInt8Head(Int8Linear):
    """The output embedding, int8, while its float32 matrix stays the input embedding's (`weight`:
    readers of the unembedding rows get the exact ones; the matmul reads the int8 copy)."""

    def __init__(self, head: nn.Linear):
        super().__init__(head.weight, head.bias)
        self._tied = head.weight

    @property
    def weight(self) -> torch.Tensor:
        return self._tied


def quantise(model: Any, mode: str, blocks: Any, lossless: bool = False) -> int:
    """Swap the linear layers of `blocks` (the decoder blocks) for `mode`'s, and the output embedding
    for an int8 one; returns how many layers were swapped. A layer whose inputs do not fill whole
    groups stays float32; with `lossless`, so does one whose weight does not pack back exactly (a GGUF's
    Q4_1 and Q8_0 blocks do: its answers stay the float32 ones)."""
    if mode == "none":
        return 0
    kernels.load()  # built now, or the error says why it cannot be
    make = Int4Linear if mode == "int4" else Int8Linear
    swapped, kept = 0, 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and QuantLinear.fits(child.weight):
                    layer = make(child.weight, child.bias)
                    if lossless and not torch.equal(layer.dequantised(), child.weight):
                        kept += 1
                        continue
                    setattr(parent, name, layer)
                    swapped += 1
    head = model.get_output_embeddings()
    if type(head) is nn.Linear and QuantLinear.fits(head.weight):
        tied = TiedInt8Head(head)
        if lossless and not torch.equal(tied.dequantised(), head.weight):
            kept += 1
        else:
            model.set_output_embeddings(tied)
            swapped += 1
    tiles = " (AMX tiles for 2 rows or more)" if mode == "int4" and kernels.load().tiles() else ""
    log.info("quantised %d linear layers to %s%s, output embedding int8", swapped, mode, tiles)
    if kept:
        log.info("kept %d linear layers float32: their weights are not exactly %s groups", kept, mode)
    return swapped
