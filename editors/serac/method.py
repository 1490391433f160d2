"""How the server builds SERAC (editors/registry.py calls these)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import torch

from editors.serac.adapter import has_adapter
from editors.serac.config import SeracConfig
from editors.serac.model import SeracEditor
from editors.serac.train import default_adapter_dir, shared_adapter_dir

log = logging.getLogger(__name__)


def config_from(settings: Any) -> SeracConfig:
    """settings.serac if the server has that section, else the defaults. Unless configured, the
    adapter is <data dir>/serac/adapter if `editserve train-serac` wrote one there, else the shared one
    (`train-serac --shared`) in <cache dir>/serac/<model>/adapter, else none."""
    cfg = dataclasses.replace(getattr(settings, "serac", None) or SeracConfig())
    if cfg.adapter_dir is None:
        candidates = []
        if getattr(settings, "data_dir", None) is not None:
            candidates.append(default_adapter_dir(Path(settings.data_dir)))
        if getattr(settings, "cache_dir", None) is not None and getattr(settings, "model", None):
            candidates.append(shared_adapter_dir(settings.cache_dir, settings.model))
        found = [c for c in candidates if has_adapter(c)]
        cfg.adapter_dir = str(found[0] if found else candidates[0]) if candidates else None
    return cfg


def build(backbone, settings: Any, state: dict[str, torch.Tensor] | None) -> SeracEditor:
    cfg = config_from(settings)
    editor = SeracEditor(backbone, cfg)
    if editor.adapter is not None:
        log.info("SERAC counterfactual adapter: %s", cfg.adapter_dir)
    elif cfg.use_adapter and cfg.adapter_dir and not has_adapter(cfg.adapter_dir):
        log.info("SERAC: no adapter at %s, the counterfactual model is the prompted backbone", cfg.adapter_dir)
    return editor


def state(editor: SeracEditor) -> dict[str, torch.Tensor]:
    return {}  # each blob carries its prompt, target and embedding; nothing is shared


def fingerprint(backbone, settings: Any) -> dict:
    # Stored embeddings come from this embedder (a blob from another one is re-embedded on load).
    cfg = config_from(settings)
    try:
        version = importlib.metadata.version(cfg.embedder_package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"embedder": f"{cfg.embedder_package}=={version}"}
