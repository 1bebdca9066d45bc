"""The config check (specexp/experiment/validate.py) and inputs taken as documented: unknown keys (`+key`
typos too), type and range errors that name the key, incompatible choices, all before any model
loads; `prompt=` taken literally; a missing local model path; a zero token budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import CONF, compose, pair_overrides
from specexp.experiment import instantiate
from specexp.models import loading as models
from specexp.experiment import run
from specexp.experiment import validate
from specexp.experiment.config import register
from specexp.models.loading import ModelSpec


def composed(overrides: list[str]):
    """The run config as the job gets it (no `hydra` node)."""
    cfg = compose(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def problems(overrides: list[str]) -> str:
    with pytest.raises(validate.ConfigError) as err:
        validate.check(composed(overrides))
    return str(err.value)


SHORT = ["dataset.limit=1", "dataset.max_new_tokens=4", "dataset.max_prompt_tokens=16"]  # one short HumanEval sample


def run_once(pair_dir: Path, run_dir: Path, *overrides: str) -> tuple[int, dict]:
    """`specexp <overrides>` in this process on the random pair; (exit code, metrics.json)."""
    code = run.run_cli([*pair_overrides(pair_dir), "warmup=0", "summary=false", *overrides,
                        f"hydra.run.dir={run_dir}"])
    return code, json.loads((run_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------
# Item 5: config errors before work starts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("+foo=1", "foo: unknown key; the top level (RunConfig) takes: baseline,"),
    ("+strategy.gamam=8", "strategy.gamam: unknown key (did you mean strategy.gamma?)"),
    ("+model_pair.target.revison=main", "model_pair.target.revison: unknown key (did you mean model_pair.target.revision?)"),
    ("+dataset.limt=3", "dataset.limt: unknown key (did you mean dataset.limit?)"),
    ("+sampling.temprature=0.5", "sampling.temprature: unknown key (did you mean sampling.temperature?)"),
    ("+strategy.length.gama=3", "strategy.length.gama: unknown key (did you mean strategy.length.gamma?)"),
])
def test_unknown_keys_fail_including_plus_typos(override, message):
    assert message in problems([override])


@pytest.mark.parametrize("overrides, message", [
    (["strategy.gamma=abc"], "strategy.gamma: expected an integer, got 'abc' (argument gamma of specexp.length.Fixed)"),
    (["strategy.gamma=2.5"], "strategy.gamma: expected an integer, got 2.5"),
    (["strategy.gamma=0"], "strategy.gamma: gamma must be >= 1, got 0 (specexp.length.Fixed)"),
    (["strategy=entropy_static", "strategy.tau=abc"], "strategy.tau: expected a number, got 'abc'"),
    (["dataset.limit=0"], "dataset.limit: dataset.limit must be >= 1 or null, got 0"),
    (["sampling.top_p=0"], "sampling.top_p: sampling.top_p must be in (0, 1], got 0.0"),
    (["dataset.max_new_tokens=0"], "dataset.max_new_tokens: expected an integer >= 1, got 0"),
    (["max_new_tokens=0"], "max_new_tokens: expected an integer >= 1, got 0"),
    (["strategy=oracle", "sampling=sample"], "the Oracle length policy supports greedy decoding only: use sampling=greedy"),
    (["prompt=hello"], "prompt: prompt= runs the prompt dataset, but the config selects dataset"),
])
def test_type_range_and_choice_errors_name_the_key(overrides, message):
    assert message in problems(overrides)


# What a dataset needs before it can run (the check rightly refuses it without).
REQUIRED = {"dataset=prompt": ["prompt=hello"], "dataset=jsonl": ["dataset.path=rows.jsonl"]}


def test_every_shipped_config_passes_the_check():
    """No false alarms: every strategy, dataset, model pair and experiment of conf/ passes."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in ("strategy", "dataset", "model_pair", "experiment"):
            for f in sorted((CONF / group).glob("*.yaml")):
                choice = f"{group}={f.stem}"
                validate.check(hcompose("config", overrides=[choice, *REQUIRED.get(choice, [])]))


@pytest.mark.parametrize("override, message", [
    ("strategy.gamma=2.5", "strategy.gamma: expected an integer, got 2.5"),
    ("+strategy.gamam=8", "strategy.gamam: unknown key"),
    ("+foo=1", "foo: unknown key"),
])
def test_config_errors_fail_the_run_before_any_model_loads(random_pair_dir, tmp_path, fresh_cache, override, message):
    code, m = run_once(random_pair_dir, tmp_path / "run", *SHORT, override)
    assert code == 1 and m["status"] == "failed"
    assert m["error"].startswith("ConfigError: invalid config (nothing was run)") and message in m["error"]
    assert fresh_cache["models"] == 0


def test_oracle_with_sampling_fails_before_any_model_loads(random_pair_dir, tmp_path, fresh_cache):
    code, m = run_once(random_pair_dir, tmp_path / "run", *SHORT, "strategy=oracle", "sampling=sample")
    assert code == 1 and "supports greedy decoding only" in m["error"]
    assert fresh_cache["models"] == 0


def test_beam_with_sampling_fails_before_any_model_loads(random_pair_dir, tmp_path, fresh_cache):
    """Beam search is deterministic: the config check refuses sampling before both models load."""
    message = "strategy=beam sampling (temperature 1.0): beam search is deterministic: use sampling=greedy"
    assert message in problems(["strategy=beam", "sampling=sample"])
    code, m = run_once(random_pair_dir, tmp_path / "run", *SHORT, "strategy=beam", "sampling=sample")
    assert code == 1 and m["error"].startswith("ConfigError: invalid config (nothing was run)")
    assert message in m["error"]
    assert fresh_cache["models"] == 0


def _tree_strategies() -> list[str]:
    """Every shipped strategy whose proposer drafts token trees (its class's `drafts_trees`)."""
    from hydra.utils import get_object

    out = []
    for f in sorted((CONF / "strategy").glob("*.yaml")):
        target = (compose([f"strategy={f.stem}"]).strategy.get("proposer") or {}).get("_target_")
        if target and getattr(get_object(target), "drafts_trees", False):
            out.append(f.stem)
    return out


TREES = _tree_strategies()


def test_tree_strategies_are_found():
    assert "tree" in TREES


@pytest.mark.parametrize("name", TREES)
def test_tree_strategy_on_an_encoder_decoder_pair_fails_before_any_model_loads(tmp_path, fresh_cache, name):
    """Token trees need decoder-only models: a T5 pair is refused by the config check, naming the
    key, from the models' config.json (a local pair) or the model's name (a hub pair not
    downloaded yet), before any model loads; batching is refused there too."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2)
    for role in ("target", "drafter"):
        T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5" / role)
    code, m = run_once(tmp_path / "t5", tmp_path / "run", *SHORT, f"strategy={name}")
    assert code == 1 and m["error"].startswith("ConfigError: invalid config (nothing was run)")
    assert "model_pair.target: strategy=" in m["error"] and "decoder-only" in m["error"]
    assert fresh_cache["models"] == 0
    hub = problems([f"strategy={name}", "model_pair=flan-t5-xxl__base_small"])
    assert "model_pair.target:" in hub and "'google/flan-t5-xxl' is an encoder-decoder model" in hub
    assert "batch_size: strategy=" in problems([f"strategy={name}", "batch_size=2"])


# --------------------------------------------------------------------------------------------
# Item 6: inputs taken as documented
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["${oc.env:HOME}/notes", "const s = `${name}`;", "a, b \\${x} 'q' [1]"])
def test_prompt_is_literal(text):
    cfg = composed(run.cli_overrides([f"prompt={text}"]))
    validate.check(cfg)
    assert instantiate.task(cfg.dataset, None).text == text


def test_prompt_with_dollar_brace_runs(random_pair_dir, tmp_path, capsys):
    code, m = run_once(random_pair_dir, tmp_path / "run", "max_new_tokens=4",
                       *run.cli_overrides(["prompt=const s = `${name}`;"]))
    assert code == 0 and m["status"] == "ok"
    assert "const s = `${name}`;" in capsys.readouterr().out  # the run shows the prompt as typed


def test_missing_local_model_path_is_named(random_pair_dir, tmp_path, fresh_cache):
    with pytest.raises(ValueError, match="no such directory: /nonexistent/model"):
        models.load_model(ModelSpec(name="/nonexistent/model"), dtype=None, device="cpu")
    code, m = run_once(random_pair_dir, tmp_path / "run", *SHORT, "model_pair.target.name=/nonexistent/model")
    assert code == 1 and "no such directory: /nonexistent/model" in m["error"] and "hub id" not in m["error"].split(
        "no such directory")[0]


def test_dataset_max_new_tokens_zero_is_rejected_like_the_top_level_key(random_pair_dir, tmp_path, fresh_cache):
    for key in ("dataset.max_new_tokens", "max_new_tokens"):
        code, m = run_once(random_pair_dir, tmp_path / key, "dataset.limit=1", f"{key}=0")
        assert code == 1 and f"{key}: expected an integer >= 1, got 0" in m["error"]
    assert fresh_cache["models"] == 0
