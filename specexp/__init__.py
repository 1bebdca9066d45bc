"""specexp: speculative-decoding experiments (README.md). The folders are the architecture; each
subpackage's `__init__` says what it is and what it may import, and tests/test_architecture.py
checks those contracts (import-linter, `[tool.importlinter]` in pyproject.toml). From the top:

    experiment/  the `specexp` Hydra app: config schema and check, instantiation, the run, metrics.json,
                 sweeps, the console, reruns, provenance, the build commands
    report/      `specexp-report`: runs collected, tables, paired statistics, the study, plots (no torch)
    builds/      what the project builds and caches: the tiny pair, drafters, the datastore, corpora
    core/        the decode loops (one sequence, a batch, beam search) and verification
    proposers/   who drafts: a drafter model, prompt lookup, retrieval, cascades, the feature drafter
    length/      how many tokens to draft: every draft-length policy
    models/      loading and fetching models, a model that owns its KV cache, distributions, prompts
    tasks/       datasets, prompts, stopping strings' owners and scoring; tasks/sandbox/ runs code
    stats.py     statistics of speed (no torch);  dotted_keys.py  nested keys ("speedup.ci_low")
"""
__version__ = "0.2.0"

from specexp import _moved

_moved.install()  # the module paths of 0.1 keep working, with a warning, until 0.3
