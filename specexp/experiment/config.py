"""Typed schemas of the run config, registered with Hydra's ConfigStore as `specexp_schema`.
`conf/config.yaml` starts from it, so an override of a key that does not exist fails loudly.
A `+key` override adds a key even to a schema, so specexp.experiment.validate checks the composed config
against these dataclasses again, and the groups whose keys depend on the chosen class (dataset,
strategy) against that class's arguments, before any model loads."""
from __future__ import annotations

import importlib.resources
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from specexp.models.loading import ModelSpec
from specexp.models.sampling import Sampling
from specexp.report.pair_names import TARGET_MISSING, pair_name, short_model_name  # noqa: F401  (registers ${specexp_pair_name:}; shared with the report)

# The configs: the repository's top-level conf/ in a checkout (an editable install), else the copy
# shipped inside the package as specexp/conf (a wheel or `pip install .`; see setup.py).
_CHECKOUT = Path(__file__).resolve().parents[2]
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
    device_map: Any = None  # the target's layers: null = whole on `device`; auto | balanced | sequential | {module: device}
    max_memory: Any = None  # with device_map: {0: 20GiB, cpu: 60GiB}; null = what each device has free
    offload_folder: Optional[str] = None  # with device_map: where layers placed on "disk" go


@dataclass
class TimingConfig:
    """How samples are timed (specexp/experiment/metrics_json.py, specexp/stats.py)."""

    repeats: int = 1  # decodes per sample and mode, modes interleaved (ABAB); a sample's time = their median
    spread_warning: float = 0.25  # warn when the repeats' median relative spread (max-min)/median exceeds this
    # sample until it knows: decode `pilot` samples, then as many as Stein's two-stage rule says the
    # speedup's 95% CI half-width on the log scale needs to fall below target_ci (e.g. 0.05), at most
    # dataset.limit; null = off (every sample of the dataset is decoded)
    target_ci: Optional[float] = None
    pilot: int = 4  # first-stage samples of target_ci (>= 2)


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
    batch_size: int = 1  # samples decoded together (specexp/core/batch_decode.py, docs/batching.md); 1 = one at a time
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


# --------------------------------------------------------------------------------------------
# The command line as Hydra reads it (`specexp`, `specexp console`)
# --------------------------------------------------------------------------------------------

def hydra_quote(text: str) -> str:
    """`text` as a quoted value of Hydra's override grammar that reads back as exactly `text`:
    backslashes before a quote or at the end are doubled, quotes and `${` escaped."""
    text = re.sub(r"(\\*)(\$\{)", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)\Z", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def cli_overrides(args: list[str]) -> list[str]:
    """The command line as Hydra gets it: `prompt=TEXT` takes TEXT literally (Hydra's grammar would
    read `a, b` as a sweep and `${x}` as an interpolation) unless it is already in quotes, and it
    selects dataset=prompt unless a dataset= override is given. The overrides in the environment
    variable SPECEXP_OVERRIDES (shell words) go last, so they win: a recipe written for large models
    runs as a smoke test on the tiny pair (docs/testing.md); Hydra records them with the rest."""
    extra = shlex.split(os.environ.get("SPECEXP_OVERRIDES", ""))
    if extra:
        print(f"specexp: SPECEXP_OVERRIDES appends {' '.join(extra)}", file=sys.stderr)
    # after the last override already there: Hydra's parser takes no override after a flag's value (--cfg job)
    at = max((i + 1 for i, a in enumerate(args) if "=" in a and not a.startswith("-")), default=0)
    out = []
    for a in [*args[:at], *extra, *args[at:]]:
        if a.startswith("prompt="):
            v = a[len("prompt="):]
            if not (len(v) >= 2 and v[0] == v[-1] and v[0] in "'\""):
                a = "prompt=" + hydra_quote(v)
        out.append(a)
    if any(a.startswith("prompt=") for a in out) and not any(a.split("=")[0].lstrip("+~") == "dataset" for a in out):
        out.append("dataset=prompt")
    return out
