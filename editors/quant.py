"""Weight-only quantised linear layers: the fast backbone path on a CPU.

Decoding one token reads every weight once, so on a CPU its speed is the memory's: float32 weights of
the default model are ~540 MB a token, int4 ones ~70 MB. `quantise` swaps the decoder blocks' linear
layers for int4 (or int8) ones that keep the weights packed and compute in bfloat16 with PyTorch's CPU
weight-only kernels, and the output embedding for an int8 one. Everything else (embeddings, norms,
attention, the residual stream, iReVa's neurons, adapters' low-rank terms and every hook) stays in
float32: each quantised layer takes and gives float32, so an edit acts as it does on the float32 model.

int4 is asymmetric with a scale and a minimum per group of 32 inputs: the layout of the GGUF's Q4_1
blocks, so the default model's dequantised weights are packed back without loss (only the groups'
scale and minimum are rounded to bfloat16). int8 is symmetric with a scale per output row.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("none", "int8", "int4")
GROUP = 32  # int4 inputs per scale and minimum: GGUF's Q4_1 block
_INNER_K_TILES = 2  # the int4 kernel's packing; k must divide by GROUP and by 16 * this


def resolve(requested: str, device: torch.device) -> str:
    """The mode to run: `requested` by name, or "auto": int4 on a CPU, none on a GPU (which reads
    bfloat16 weights fast enough, and whose int4 kernels need another packing)."""
    if requested == "auto":
        return "int4" if device.type == "cpu" else "none"
    if requested not in MODES:
        raise ValueError(f"quant: {requested!r} is not one of auto, {', '.join(MODES)}")
    if requested != "none" and device.type != "cpu":
        raise ValueError(f"quant: {requested} runs on a CPU; on {device.type} use none (bfloat16 weights)")
    return requested


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantised. `weight` gives it back dequantised (float32),
    for the few readers of a weight matrix; the forward pass never builds it."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self._matmul(x.reshape(-1, shape[-1]).to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantLinear):
    """Symmetric int8, one scale per output row."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight.shape[1], weight.shape[0], bias)
        w = weight.detach().float()
        # the kernel takes the scale in bfloat16: round it up first, so that no weight needs q > 127
        scale = (w.abs().amax(1) / 127 * (1 + 2**-7)).clamp_min(1e-12).to(torch.bfloat16)
        self.register_buffer("qweight", (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def _matmul(self, x):
        return torch._weight_int8pack_mm(x, self.qweight, self.scale)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]


class Int4Linear(QuantLinear):
    """Asymmetric int4 per group of GROUP inputs: w = (q - 8) * scale + zero, q in 0..15 (the kernel's
    form of Q4_1's w = q * d + m: scale = d, zero = m + 8 d)."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight.shape[1], weight.shape[0], bias)
        n, k = weight.shape
        groups = weight.detach().float().reshape(n, k // GROUP, GROUP)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp_min(1e-12)
        q = ((groups - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        zero = low + 8 * scale
        scales_and_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], -1).transpose(0, 1)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, _INNER_K_TILES))
        self.register_buffer("scales_and_zeros", scales_and_zeros.contiguous().to(torch.bfloat16))

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        n, k = weight.shape
        return k % GROUP == 0 and k % (16 * _INNER_K_TILES) == 0 and n % 16 == 0

    def _matmul(self, x):
        return torch._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_and_zeros)

    @property
    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)  # the kernel dequantises: one pass on I
        return self._matmul(eye).float().T.contiguous()


class TiedInt8Head(Int8Linear):
    """The output embedding, int8, while its float32 matrix stays the input embedding's (`weight`:
    readers of the unembedding rows get the exact ones; the matmul reads the int8 copy)."""

    def __init__(self, head: nn.Linear):
        super().__init__(head.weight, head.bias)
        self._tied = head.weight

    @property
    def weight(self) -> torch.Tensor:
        return self._tied


def quantise(model: Any, mode: str, blocks: Any) -> int:
    """Swap the linear layers of `blocks` (the decoder blocks) for `mode`'s, and the output embedding
    for an int8 one; returns how many layers were swapped. A layer the kernel cannot take (a shape
    off its tiles) stays float32."""
    if mode == "none":
        return 0
    make = Int4Linear if mode == "int4" else Int8Linear
    swapped = 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and (make is Int8Linear or Int4Linear.fits(child.weight)):
                    setattr(parent, name, make(child.weight, child.bias))
                    swapped += 1
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:
        model.set_output_embeddings(TiedInt8Head(head))
        swapped += 1
    log.info("quantised %d linear layers to %s (output embedding int8)", swapped, mode)
    return swapped
