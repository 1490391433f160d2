from __future__ import annotations

from editors.method import Method
from tests.toy_method.config import ToyConfig


def build(backbone, settings, state):
    from tests.toy_method.model import ToyEditor

    return ToyEditor(backbone, settings.toy)


def fingerprint(backbone, settings) -> dict:
    return {"model": backbone.name}


def describe(editor) -> dict:
    return {"edits": len(editor.edits), "marker": editor.config.marker}


TOY = Method(config=ToyConfig, build=build, fingerprint=fingerprint, describe=describe)
