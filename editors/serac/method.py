"""How the server builds SERAC (registered in editors/registry.py)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from editors.method import Method
from editors.serac.adapter import default_adapter_dir, has_adapter, shared_adapter_dir
from editors.serac.config import SeracConfig
from editors.serac.model import SeracEditor

log = logging.getLogger(__name__)


def resolve_adapter(settings: Any, model: str | None = None) -> tuple[str | None, str]:
    """(adapter dir, where it came from). In order: `serac.adapter_dir` (EDITSERVE_SERAC__ADAPTER_DIR)
    if set -> "setting"; <data dir>/serac/adapter if `editserve train-serac` wrote one there -> "data
    dir"; <cache dir>/serac/<model>/adapter (`train-serac --shared`, which `make` runs at set-up) if
    present -> "shared"; else the data dir's path, where train-serac would write it, with source
    "none". `model` (the backbone's name) defaults to settings.model. `use_adapter=false` is applied
    by the editor, not here."""
    cfg = getattr(settings, "serac", None) or SeracConfig()
    if cfg.adapter_dir is not None:
        return cfg.adapter_dir, "setting"
    candidates = []
    if getattr(settings, "data_dir", None) is not None:
        candidates.append((default_adapter_dir(Path(settings.data_dir)), "data dir"))
    model = model or getattr(settings, "model", None)
    if getattr(settings, "cache_dir", None) is not None and model:
        candidates.append((shared_adapter_dir(settings.cache_dir, model), "shared"))
    for path, source in candidates:
        if has_adapter(path):
            return str(path), source
    return (str(candidates[0][0]) if candidates else None), "none"


def config_from(settings: Any, model: str | None = None) -> SeracConfig:
    """settings.serac if the server has that section, else the defaults, with `adapter_dir` resolved
    by `resolve_adapter` (setting > data dir > shared cache > none)."""
    cfg = dataclasses.replace(getattr(settings, "serac", None) or SeracConfig())
    cfg.adapter_dir = resolve_adapter(settings, model)[0]
    return cfg


def build(backbone, settings: Any, state: dict[str, torch.Tensor] | None) -> SeracEditor:
    cfg = config_from(settings, backbone.name)
    editor = SeracEditor(backbone, cfg)
    if not cfg.use_adapter:
        log.info("SERAC: adapter off (use_adapter=false), the counterfactual model is the prompted backbone")
    elif editor.adapter is not None:
        log.info("SERAC counterfactual adapter (%s): %s", resolve_adapter(settings, backbone.name)[1], cfg.adapter_dir)
    elif cfg.adapter_dir and not has_adapter(cfg.adapter_dir):
        log.info("SERAC: no adapter at %s, the counterfactual model is the prompted backbone", cfg.adapter_dir)
    return editor


def fingerprint(backbone, settings: Any) -> dict:
    # A blob holds the edit's prompt and target only, so nothing stored depends on the backbone, the
    # adapter or the scope model: a data dir keeps starting when any of them changes (trained,
    # switched off); only the counterfactual model's answers change.
    return {"blob": "prompt+target"}


def describe(editor: Any) -> dict:
    adapter = editor.adapter
    if adapter is None:
        return {"adapter": None}
    trained = {k: adapter.meta.get(k) for k in ("model", "records", "steps", "rank")}
    return {"adapter": {"dir": str(adapter.path), "trained": trained}}


SERAC = Method(config=SeracConfig, build=build, fingerprint=fingerprint, describe=describe)
