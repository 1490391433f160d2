"""Caches in the data dir that make a start fast; each can be stale, torn or missing without losing
anything (the blobs and rows stay the source of truth), and is written whole or not at all.

- The pack: reading 10,000 small blobs one by one takes seconds, so one safetensors file holds copies
  of many blobs, each under its blob's name. Blob names are never reused, so a pack entry is valid
  exactly when a row still names that blob.
- The scope vectors: the scope model's embedding of every edit prompt, tagged with its fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

PACK_FILE = "pack.safetensors"
SCOPE_FILE = "scope-vectors.safetensors"


def _temp_beside(final: Path) -> Path:
    return final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")  # servers may share the dir


def write_pack(data_dir: Path, records: list, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Replace the pack with these records' tensors (record id -> tensors).

    Tensors of the same name, dtype and trailing shape are stacked into one (10,000 edits make a few
    large tensors, quick to load, not 20,000 small ones); the safetensors metadata says which rows of
    which stack each blob's tensor is."""
    stacks: dict[str, list[torch.Tensor]] = {}
    index: dict[str, dict[str, list]] = {}
    filled: dict[str, int] = {}  # rows stacked so far under each key
    for r in records:
        blob_tensors = tensors.get(r.id)
        if not isinstance(blob_tensors, dict):
            continue
        entry = index[r.blob] = {}
        for name, t in blob_tensors.items():
            t = t.detach().cpu()
            key = f"{name}|{str(t.dtype).removeprefix('torch.')}|{'x'.join(map(str, t.shape[1:]))}|{t.dim()}"
            flat = t.reshape(1) if t.dim() == 0 else t
            start = filled.get(key, 0)
            stacks.setdefault(key, []).append(flat)
            filled[key] = start + len(flat)
            entry[name] = [key, start, start + len(flat), list(t.shape)]
    final = Path(data_dir) / PACK_FILE
    tmp = _temp_beside(final)
    save_file(
        {key: torch.cat(rows).contiguous() for key, rows in stacks.items()},
        str(tmp),
        metadata={"index": json.dumps(index)},
    )
    os.replace(tmp, final)  # readers see the old pack or the new one, never half of one


def read_pack(data_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Blob name -> its tensors, for every blob the pack holds ({} without a readable pack)."""
    path = Path(data_dir) / PACK_FILE
    if not path.exists():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            index = json.loads(f.metadata()["index"])
            stacks = {key: f.get_tensor(key) for key in f.keys()}
        return {
            blob: {name: stacks[key][start:end].reshape(shape) for name, (key, start, end, shape) in entry.items()}
            for blob, entry in index.items()
        }
    except Exception as exc:  # noqa: BLE001 - a torn or foreign pack only costs time
        log.warning("pack %s is unreadable (%s); reading every blob", path, exc)
        return {}


def read_scope_vectors(data_dir: Path, fingerprint: str) -> dict[str, torch.Tensor]:
    """The embeddings saved by write_scope_vectors (prompt -> vector), if the scope model with this
    fingerprint made them."""
    path = Path(data_dir) / SCOPE_FILE
    if not path.exists():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if meta.get("fingerprint") != fingerprint:
                return {}
            return dict(zip(json.loads(meta["prompts"]), f.get_tensor("vectors")))
    except Exception as exc:  # noqa: BLE001 - a torn cache only costs time
        log.warning("scope vectors %s are unreadable (%s); embedding every prompt", path, exc)
        return {}


def write_scope_vectors(data_dir: Path, fingerprint: str, vectors: dict[str, torch.Tensor]) -> None:
    final = Path(data_dir) / SCOPE_FILE
    tmp = _temp_beside(final)
    prompts = list(vectors)
    stacked = torch.stack([vectors[p] for p in prompts]) if prompts else torch.zeros(0, 1)
    save_file(
        {"vectors": stacked.contiguous()},
        str(tmp),
        metadata={"fingerprint": fingerprint, "prompts": json.dumps(prompts)},
    )
    os.replace(tmp, final)
