"""How the server builds SERAC (editors/registry.py calls these)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import torch

from editors.serac.adapter import has_adapter
from editors.serac.config import SeracConfig
from editors.serac.model import SeracEditor
from editors.serac.train import META, default_adapter_dir, shared_adapter_dir

log = logging.getLogger(__name__)


PACKAGED_ADAPTERS = Path(__file__).resolve().parent / "adapters"  # shipped as package data


def packaged_adapter_dir(model: str | None) -> Path | None:
    """The adapter shipped in editors/serac/adapters/ that was trained on this backbone (its
    serac_train.json "model" equals the backbone's name, e.g. "packaged:smollm2-135m-instruct"), if any."""
    if not model or not PACKAGED_ADAPTERS.is_dir():
        return None
    for path in sorted(PACKAGED_ADAPTERS.iterdir()):
        meta = path / META
        if has_adapter(path) and meta.exists() and json.loads(meta.read_text()).get("model") == model:
            return path
    return None


def resolve_adapter(settings: Any, model: str | None = None) -> tuple[str | None, str]:
    """(adapter dir, where it came from). In order: `serac.adapter_dir` (EDITSERVE_SERAC__ADAPTER_DIR)
    if set -> "setting"; <data dir>/serac/adapter if `editserve train-serac` wrote one there -> "data
    dir"; <cache dir>/serac/<model>/adapter (`train-serac --shared`) if present -> "shared"; the adapter
    shipped with the package for this backbone -> "packaged"; else the data dir's path, where train-serac
    would write it, with source "none". `model` (the backbone's name) defaults to settings.model.
    `use_adapter=false` is applied by the editor, not here."""
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
    packaged = packaged_adapter_dir(model)
    if packaged is not None:
        return str(packaged), "packaged"
    return (str(candidates[0][0]) if candidates else None), "none"


def config_from(settings: Any, model: str | None = None) -> SeracConfig:
    """settings.serac if the server has that section, else the defaults, with `adapter_dir` resolved
    by `resolve_adapter` (setting > data dir > shared cache > packaged for this backbone > none)."""
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


def state(editor: SeracEditor) -> dict[str, torch.Tensor]:
    return {}  # each blob carries its prompt, target and embedding; nothing is shared


def fingerprint(backbone, settings: Any) -> dict:
    # Stored embeddings come from this embedder (a blob from another one is re-embedded on load).
    # The adapter is deliberately not part of it: a blob holds only prompt, target and embedding, so a
    # data dir keeps starting when the adapter changes (trained, shipped, switched off); only the
    # counterfactual model's answers change.
    cfg = config_from(settings, backbone.name)
    try:
        version = importlib.metadata.version(cfg.embedder_package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"embedder": f"{cfg.embedder_package}=={version}"}
