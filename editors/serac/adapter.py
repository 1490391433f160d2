"""The trained counterfactual adapter (a peft LoRA), applied to the shared backbone through hooks.

`editserve train-serac` saves a peft adapter (adapter_config.json + adapter_model.safetensors). At
serving time the backbone is shared with iReVa and the base path, so instead of wrapping its layers the
adapter adds its low-rank update through forward hooks that exist only inside `active()`: outside it the
backbone is exactly the base model and pays nothing.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
META = "serac_train.json"  # written by train-serac beside the weights: the template and what it learned from


def default_adapter_dir(data_dir: Path | str) -> Path:
    """Where `editserve train-serac` puts a data dir's own adapter."""
    return Path(data_dir).expanduser() / "serac" / "adapter"


# The training recipe of the shared adapter (evaluation/training/serac.py), named in its directory so
# that set-up trains anew where the recipe changed; the Makefile's ADAPTER path names it too.
# r2: chat turns (the edit in a system turn) beside the one-line answers.
RECIPE = "r2"


def shared_adapter_dir(cache_dir: Path | str, model: str) -> Path:
    """Machine-wide adapter for one backbone (`train-serac --shared`), used by data dirs that have none."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.split(":")[-1])
    return Path(cache_dir).expanduser() / "serac" / slug / f"adapter-{RECIPE}"


def has_adapter(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / CONFIG).exists() and (Path(path) / WEIGHTS).exists()


class LoraHooks:
    def __init__(self, model: nn.Module, path: str | Path):
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / CONFIG).read_text())
        unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if cfg.get(k)]
        if cfg.get("peft_type", "LORA") != "LORA" or unsupported:
            raise ValueError(
                f"adapter {path}: only plain LoRA is supported (found {cfg.get('peft_type')}, {unsupported})"
            )
        r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
        self.scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        self.path, self.config = path, cfg
        meta = path / META  # written by train-serac: the template the adapter learned
        self.meta: dict = json.loads(meta.read_text()) if meta.exists() else {}
        self.template: str | None = self.meta.get("template")
        weights = load_file(str(path / WEIGHTS))
        modules = dict(model.named_modules())
        device = next(model.parameters()).device
        self.pairs: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        for key, a in weights.items():
            if not key.endswith("lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
            if name not in modules:
                raise ValueError(f"adapter {path} names {name!r}, which the backbone lacks")
            b = weights[key.replace("lora_A", "lora_B")]
            module = modules[name]
            shape = (getattr(module, "in_features", a.shape[1]), getattr(module, "out_features", b.shape[0]))
            if shape != (a.shape[1], b.shape[0]):
                raise ValueError(f"adapter {path} does not fit {name} of this backbone (another model?)")
            self.pairs.append((modules[name], a.float().to(device), (b.float() * self.scale).to(device)))
        if not self.pairs:
            raise ValueError(f"adapter {path} holds no LoRA weights")

    @staticmethod
    def _hook(a: torch.Tensor, b: torch.Tensor):
        def hook(module, args, output):
            x = args[0]
            return output + ((x.to(a.dtype) @ a.T) @ b.T).to(output.dtype)

        return hook

    @contextlib.contextmanager
    def active(self):
        handles = [m.register_forward_hook(self._hook(a, b)) for m, a, b in self.pairs]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
