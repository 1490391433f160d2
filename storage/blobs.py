"""Neuron tensors as safetensors files, written so that a crash never leaves a half-written blob
under a name the database points at: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        final = self.path(name)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind, and gets its space back
            raise
        self._fsync_dir()  # the rename itself must be durable before the DB row refers to it

    def read(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(name)))

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
