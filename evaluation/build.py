"""The system the harness measures, by the name `editserve eval --method` takes: a served method
(editors.registry), the unedited model (`none`), the in-context reference (`ike`), or fine-tuning
(`ft`)."""

from __future__ import annotations

from editors.backbone import Backbone
from editors.registry import METHODS
from evaluation.edited_system import EditedSystem
from evaluation.ike import IkeSystem
from evaluation.systems import FineTuneSystem, System


def build(
    method: str,
    backbone: Backbone,
    *,
    batch_size: int = 32,
    layer: int | None = None,
    retrofit: bool = False,
    overrides: dict[str, str] | None = None,
    cache_dir=None,
) -> System:
    if retrofit and method not in METHODS:
        raise SystemExit(f"--retrofit applies to an editing method ({', '.join(METHODS)})")
    if method in ("none", "ike"):
        if layer is not None or overrides:
            raise SystemExit(f"--method {method} takes no --layer or --config")
        return System(backbone, batch_size) if method == "none" else IkeSystem(backbone, batch_size)
    if method in METHODS:
        return EditedSystem(backbone, method, batch_size, cache_dir, layer, retrofit, overrides)
    if method == "ft":
        kw = {
            k: type(v)(overrides[k])
            for k, v in {"epochs": 20, "lr": 1e-4, "train_batch": 32, "seed": 0}.items()
            if overrides and k in overrides
        }
        extra = set(overrides or {}) - set(kw)
        if extra:
            raise SystemExit(f"--method ft: unknown --config keys {sorted(extra)} (epochs, lr, train_batch, seed)")
        return FineTuneSystem(backbone, batch_size, layer, **kw)
    raise SystemExit(f"unknown method {method!r}")
