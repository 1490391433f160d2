"""llama.cpp on the same GGUF file, as the speed reference of `editserve bench serving --reference llamacpp`.

llama-cpp-python is a bench-only dependency (`make llamacpp` builds it from its PyPI sdist, ~10 min);
neither serving nor the tests need it. The reference is one stream in a closed loop, as one client of
the server: the same prompts in turn, greedy (top_k 1), the same token budget, the same thread count,
for the same seconds; tokens/s counts the completion tokens of the answers finished in the window,
prompt processing included, as a client's clock includes it. llama-cpp-python's high-level API decodes
one sequence at a time, so there is no batched llama.cpp row.
"""

from __future__ import annotations

import time
from pathlib import Path

INSTALL = "make llamacpp (builds llama-cpp-python from its PyPI sdist into .venv, ~10 min)"


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def gguf_of(model: str, cache_dir) -> Path:
    """The GGUF file a packaged model ships in: the one the server dequantises."""
    from editors.backbone import _PACKAGED, packaged_gguf

    if model not in _PACKAGED:
        raise SystemExit(f"--reference llamacpp: {model} is not a packaged GGUF model; llama.cpp needs its GGUF file")
    return packaged_gguf(model, cache_dir)


def run(gguf: Path, prompts: list[str], seconds: float, tokens: int, threads: int) -> dict:
    """One closed-loop stream for `seconds` (after one warm-up answer, not counted)."""
    if not available():
        raise SystemExit(f"--reference llamacpp: llama-cpp-python is not installed; {INSTALL}")
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False
    )

    def answer(prompt: str) -> int:
        out = llm(prompt, max_tokens=tokens, temperature=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0)
        return out["usage"]["completion_tokens"]

    answer(prompts[0])
    made, done, k, latencies = 0, 0, 0, []
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        n = answer(prompts[k % len(prompts)])
        k += 1
        latencies.append(time.perf_counter() - t0)
        if time.perf_counter() <= end:
            made, done = made + n, done + 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "how": f"llama-cpp-python {llama_cpp.__version__}, {gguf.name}, one stream, greedy, {threads} threads",
        "tokens_per_s": made / seconds,
        "requests_ok_in_window": done,
        "seconds": elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
    }
