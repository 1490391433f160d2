"""The editing methods the server knows, by the name clients use in `POST /edits {"method": ...}`: the
one place a method is named. Adding one: its package under editors/<name>/ and one line here."""

from __future__ import annotations

from editors.ireva.method import IREVA
from editors.method import Editor, Method, Tensors
from editors.serac.method import SERAC

METHODS: dict[str, Method] = {"ireva": IREVA, "serac": SERAC}

__all__ = ["METHODS", "Editor", "Method", "Tensors"]
