"""conf/experiment/: every file composes and pins what it says; the ones whose strategy, model
pair and dataset exist run end to end on the random pair with tiny limits (the real models are
hub downloads). Files that need configs still being written (the cascade strategy, the FLAN-T5
pair) are skipped with the missing file named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, ROOT, SHORT_RUN, compose
from specexp.experiment import run

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SHARED = ROOT.parent / "shared" / "data"
# What each dataset config reads offline (None: ships with a package).
DATA = {"humaneval": None, "xsum": SHARED / "xsum" / "test.jsonl", "gsm8k": SHARED / "gsm8k" / "test.jsonl",
        "gsm8k_csd": SHARED / "gsm8k" / "test.jsonl", "mmlu": SHARED / "mmlu", "mmlu_csd": SHARED / "mmlu",
        "wikitext": SHARED / "wikitext-2-raw" / "wiki.test.raw"}

# The published settings each file pins (dotted key -> value in the composed config).
PINNED = {
    "entropy_thesis_opt": {"model_pair.target.name": "facebook/opt-2.7b", "model_pair.drafter.name": "facebook/opt-125m",
                           "sampling.temperature": 0.0, "dataset.max_new_tokens": 100},
    "repro_gptneo_xsum": {"model_pair.target.name": "mia-llm/gpt-neo-1.3B-xsum-roya",
                          "model_pair.drafter.name": "mia-llm/gpt-neo-125m-xsum-roya", "dataset.limit": 10,
                          "dataset.max_new_tokens": 40, "strategy.name": "speculative", "strategy.gamma": 5,
                          "sampling.temperature": 0.0, "baseline": True,
                          "dataset.template": "Generate a short Summary for this article: {document}"},
    "repro_deepseek_humaneval": {"model_pair.target.name": "deepseek-ai/deepseek-coder-6.7b-base",
                                 "model_pair.drafter.name": "deepseek-ai/deepseek-coder-1.3b-base",
                                 "dataset.limit": 100, "dataset.max_new_tokens": 256, "strategy.gamma": 5,
                                 "sampling.temperature": 0.0, "baseline": True},
    "repro_opt_xsum": {"model_pair.target.name": "facebook/opt-2.7b", "dataset.limit": 10,
                       "dataset.max_new_tokens": 40, "strategy.gamma": 5},
    "csd_flan_t5_mmlu": {"strategy.name": "cascade_flan_t5", "model_pair.drafter2.name": "google/flan-t5-small",
                         "strategy.k_matrix": [[5, 14, 10], [0, 1, 10], [0, 0, 10]],
                         "strategy.lenience": 2},
    "csd_flan_t5_mmlu_prevwork": {"strategy.name": "cascade_flan_t5_prevwork", "strategy.k_matrix": [[5, 8, 10], [0, 1, 10], [0, 0, 10]],
                                  "strategy.lenience": 5},
    "csd_flan_t5_gsm8k": {"strategy.name": "cascade_flan_t5", "strategy.lenience": 2},
    "csd_llama7b_mmlu": {"strategy.name": "cascade_llama", "strategy.k_matrix": [[13, 10], [0, 10]], "strategy.lenience": 3,
                         "model_pair.drafter.name": "JackFram/llama-160m"},
    "csd_llama7b_gsm8k": {"strategy.name": "cascade_llama", "strategy.k_matrix": [[13, 10], [0, 10]], "strategy.lenience": 3},
}


def choices(name: str) -> dict[str, str]:
    """The `override /group: option` entries of an experiment's defaults list."""
    text = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text()) or {}
    out = {}
    for entry in text.get("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                if k.startswith("override /"):
                    out[k[len("override /"):]] = v
    return out


def missing_configs(name: str) -> list[str]:
    return [f"conf/{g}/{o}.yaml" for g, o in choices(name).items() if not (CONF / g / f"{o}.yaml").exists()]


def test_the_sources_published_settings_have_experiment_files():
    for name in ("entropy_thesis_opt", "repro_gptneo_xsum", "repro_deepseek_humaneval", "repro_opt_xsum",
                 "csd_flan_t5_mmlu", "csd_flan_t5_mmlu_prevwork", "csd_llama7b_mmlu", "csd_llama7b_gsm8k"):
        assert name in EXPERIMENTS
    for name in EXPERIMENTS:
        if name.startswith("csd_"):
            assert choices(name)["strategy"].startswith("cascade")  # the cascade presets (conf/strategy/cascade*.yaml)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_pins_its_setting(name):
    missing = missing_configs(name)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (being written)")
    cfg = compose([f"experiment={name}"])
    assert cfg.hydra.runtime.choices.experiment == name
    for group, option in choices(name).items():
        assert cfg.hydra.runtime.choices[group] == option
    for key, want in PINNED.get(name, {}).items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == want, f"{name}: {key} = {got!r}, expected {want!r}"
    if OmegaConf.select(cfg, "strategy.k_matrix") is not None:  # the cascade reads what is pinned
        used = OmegaConf.select(cfg, "strategy.proposer.k_matrix")
        assert used is not None, f"{name}: strategy.k_matrix is pinned but the cascade strategy does not read it"
        assert OmegaConf.to_container(used) == OmegaConf.to_container(cfg.strategy.k_matrix)
        assert OmegaConf.select(cfg, "strategy.proposer.lenience") == cfg.strategy.lenience


def smoke_overrides(cfg, pair_dir: Path, tmp_path: Path) -> list[str]:
    """Every model of the experiment's pair replaced by the random pair on disk (the target by
    its target, every drafter role by its drafter), tiny limits; a model-free bottom drafter's
    bigram table built from a small text instead of its corpus."""
    out = ["model_pair.build=null", "model_pair.name=smoke", "model_pair.dtype=float32", "model_pair.device=cpu"]
    for role, node in cfg.model_pair.items():
        if OmegaConf.is_dict(node) and "name" in node:
            out += [f"model_pair.{role}.name={pair_dir}/{'target' if role == 'target' else 'drafter'}",
                    f"model_pair.{role}.tokenizer=null"]
    if "corpus" in cfg.strategy:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("def add(a, b):\n    return a + b\n" * 50)
        out += [f"strategy.corpus={corpus}", "strategy.table=null"]
    return out + SHORT_RUN


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_end_to_end_on_the_random_pair(name, random_pair_dir, tmp_path):
    missing = missing_configs(name)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (being written)")
    data = DATA.get(choices(name).get("dataset", "humaneval"))
    if data is not None and not data.exists():
        pytest.skip(f"offline copy {data} is absent")
    run_dir = tmp_path / "run"
    want = compose([f"experiment={name}"])
    code = run.run_cli([f"experiment={name}", *smoke_overrides(want, random_pair_dir, tmp_path),
                        f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    # an experiment that is a sweep (hydra.mode: MULTIRUN, e.g. the study) writes one run per job
    sweep = str(want.hydra.get("mode")).endswith("MULTIRUN")
    paths = sorted((tmp_path / "sweep").glob("*/metrics.json")) if sweep else [run_dir / "metrics.json"]
    assert code == 0 and paths and all(p.exists() for p in paths)
    strategies = []
    for p in paths:
        m = json.loads(p.read_text())
        assert m["status"] == "ok", m.get("error")
        assert m["dataset"]["n_samples"] == 1 and m["model_pair"]["target"] == f"{random_pair_dir}/target"
        strategies.append(m["config"]["strategy"]["name"])
        if not sweep:
            assert ("speedup" in m) == bool(want.baseline and want.strategy.get("proposer") is not None)
    swept = str(want.hydra.sweeper.get("params", {}).get("strategy", "")) if sweep else ""
    assert strategies == (swept.split(",") if swept else [want.strategy.name])
