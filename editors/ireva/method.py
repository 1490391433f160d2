"""How the server builds iReVa (registered in editors/registry.py)."""

from __future__ import annotations

from typing import Any

from editors.backbone import Backbone
from editors.ireva.config import IrevaConfig
from editors.method import Method, Tensors


def build(backbone: Backbone, settings: Any, state: Tensors | None):
    from editors.ireva.model import IrevaEditor

    return IrevaEditor(backbone, settings.ireva, centre=None if state is None else state["centre"])


def fingerprint(backbone: Backbone, settings: Any) -> dict:
    # The keys are MLP inputs of one layer, centred on that layer's mean: both must stay the same.
    return {"model": backbone.name, "layer": settings.ireva.layer % backbone.num_layers}


def describe(editor: Any) -> dict:
    return {"neurons": int(editor.adaptor.live_count)}


IREVA = Method(config=IrevaConfig, build=build, fingerprint=fingerprint, describe=describe)
