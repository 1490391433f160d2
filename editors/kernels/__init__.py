"""The float32 weight-only matmuls of editors/quant.py (tiles.cpp) and the decoding step's attention of
editors/decoder.py (attend.cpp), compiled for this CPU on first use.

torch builds them with the system's C++ compiler and ninja, and keeps the build under
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions): a few tens of seconds once, a load after.
`make` builds them at set-up, so a server's start does not wait for the compiler.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

SOURCES = [Path(__file__).with_name(name) for name in ("qmm.cpp", "tiles.cpp", "attend.cpp")]


@functools.cache
def load() -> Any:
    """The compiled module (q4_mm, q8_mm, decode_attend, tiles). Raises RuntimeError saying why it cannot be built."""
    try:
        import ninja  # the pip package: its binary need not be on PATH

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    except ImportError:
        pass
    from torch.utils.cpp_extension import load as build

    try:
        return build(
            "editserve_qmm",
            [str(source) for source in SOURCES],
            # built where it runs: this CPU's vector instructions (AVX-512 or the compiler's own)
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as exc:  # the compiler's own message says what is missing
        raise RuntimeError(f"the quantised kernels (editors/kernels/*.cpp) could not be built: {exc}") from exc
