"""Typed schemas of the run config, registered with Hydra's ConfigStore as `specexp_schema`.
`conf/config.yaml` starts from it, so an override of a key that does not exist fails loudly.
A `+key` override adds a key even to a schema, so specexp.validate checks the composed config
against these dataclasses again, and the groups whose keys depend on the chosen class (dataset,
strategy) against that class's arguments, before any model loads."""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from specexp.models import ModelSpec
from specexp.sampling import Sampling

# The configs: the repository's top-level conf/ in a checkout (an editable install), else the copy
# shipped inside the package as specexp/conf (a wheel or `pip install .`; see setup.py).
_CHECKOUT = Path(__file__).resolve().parents[1]
CONF_DIR = str(_CHECKOUT / "conf" if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf" / "config.yaml").is_file()
               else importlib.resources.files("specexp") / "conf")


@dataclass
class ModelPairConfig:
    name: str = "???"  # a short label used in reports
    dir: Optional[str] = None  # local folder of a built pair (tiny), else null
    build: Any = None  # a `_target_` called before loading (builds the tiny pair), else null
    target: ModelSpec = field(default_factory=ModelSpec)
    drafter: Optional[ModelSpec] = field(default_factory=ModelSpec)
    drafter2: Optional[ModelSpec] = field(default_factory=ModelSpec)  # further drafters (cascades, large to
    drafter3: Optional[ModelSpec] = field(default_factory=ModelSpec)  # small); name ??? = absent
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False  # allow the hub repo's own modelling code


@dataclass
class TimingConfig:
    """How samples are timed (specexp/record.py, specexp/stats.py)."""

    repeats: int = 1  # decodes per sample and mode, modes interleaved (ABAB); a sample's time = their median
    spread_warning: float = 0.25  # warn when the repeats' median relative spread (max-min)/median exceeds this


@dataclass
class RunConfig:
    model_pair: ModelPairConfig = field(default_factory=ModelPairConfig)
    dataset: Any = None  # a Task: `_target_` + its arguments (conf/dataset/)
    strategy: Any = None  # name, proposer (`_target_` or null), length (`_target_` or null), parameters
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    baseline: bool = True
    warmup: int = 1
    carry_length_state: bool = False
    records: bool = False
    resume: bool = True
    metrics_file: str = "metrics.json"
    summary: bool = True
    prompt: Optional[str] = None  # one prompt: selects dataset=prompt (conf/dataset/prompt.yaml)
    max_new_tokens: Optional[int] = None  # when set, the generation budget of any dataset
    batch_size: int = 1  # samples decoded together (specexp/batch.py, docs/batching.md); 1 = one at a time
    timing: TimingConfig = field(default_factory=TimingConfig)  # repeats per sample, spread warning


def register() -> None:
    ConfigStore.instance().store(name="specexp_schema", node=RunConfig)


def compose(overrides: list[str]):
    """The run config `specexp <overrides>` would compose (not checked, not run): for scripts and
    builders that take one node of it (a pair's build, a strategy)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)
