"""The `specexp` CLI as a user runs it: metrics.json contract, sweeps, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose, pair_overrides, save_pair

FAST = ["dataset.limit=2", "dataset.max_new_tokens=12", "warmup=1"]


def load(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_run_writes_the_metrics_contract(run_specexp, random_pair_dir):
    proc, run_dir = run_specexp(*pair_overrides(random_pair_dir), *FAST, "strategy.gamma=3")
    m = load(run_dir)
    assert (run_dir / ".hydra" / "config.yaml").exists()  # metrics.json sits beside .hydra/
    assert m["status"] == "ok" and m["schema_version"] == 1
    assert "strategy.gamma=3" in m["overrides"] and m["config"]["strategy"]["gamma"] == 3
    assert {"torch", "transformers", "specexp", "device_name"} <= set(m["environment"])
    assert m["n_samples"] == 2 and len(m["samples"]) == 2
    assert m["all_match_baseline"] is True and m["n_matches_baseline"] == 2
    s = m["samples"][0]
    assert s["id"] == "HumanEval/0" and s["new_tokens"] == len(s["tokens"]) <= 12
    assert all(k <= 3 for k in s["draft_lengths"])
    assert s["drafted"] == sum(s["draft_lengths"]) and s["matches_baseline"] is True
    # aggregates are consistent with the per-sample records
    assert m["new_tokens"] == sum(x["new_tokens"] for x in m["samples"])
    assert m["drafted_tokens"] == sum(x["drafted"] for x in m["samples"])
    assert m["target_forwards"] == sum(x["target_forwards"] for x in m["samples"])
    assert m["mean_accepted_length"] == pytest.approx(m["new_tokens"] / m["target_forwards"])
    assert sum(m["accept_counts"]) == m["target_forwards"]  # one histogram entry per round
    assert m["acceptance_rate"] == pytest.approx(m["accepted_tokens"] / m["drafted_tokens"])
    sp = m["speedup"]
    assert sp["estimator"] == "throughput_ratio" and "median" not in sp and "mean" not in sp
    # throughput ratio = (strategy tokens / s) / (baseline tokens / s), totals over the samples
    assert sp["throughput_ratio"] == pytest.approx(
        (m["new_tokens"] / m["wall_time_s"]) / (m["baseline"]["new_tokens"] / m["baseline"]["wall_time_s"]))
    assert sp["ci_low"] <= sp["throughput_ratio"] <= sp["ci_high"]
    assert len(sp["per_token"]["per_sample"]) == 2 and sp["wall_time_ratio_matched"]["n"] == 2
    assert m["timing"]["repeats"] == 1 and m["timing"]["torch_threads"] >= 1
    assert m["baseline"]["mean_accepted_length"] == 1.0 and m["baseline"]["drafted_tokens"] == 0
    for key in ("mean", "p50", "p90", "p99"):
        assert m["latency_ms_per_token"][key] > 0
    assert "metrics:" not in proc.stdout or str(run_dir) in proc.stdout


def test_summary_and_sampling_override(run_specexp, random_pair_dir):
    proc, run_dir = run_specexp(*pair_overrides(random_pair_dir), *FAST, "sampling.temperature=0.7",
                                "sampling.top_k=20", "summary=true")
    m = load(run_dir)
    assert m["sampling"] == {"temperature": 0.7, "top_k": 20, "top_p": 1.0}
    # the override reached the decode: greedy speculative output always equals the baseline's
    # (test_run_writes_the_metrics_contract); sampled outputs of this random pair do not
    assert m["n_matches_baseline"] < m["n_samples"]
    assert "tokens/s" in proc.stdout and "speedup" in proc.stdout and str(run_dir) in proc.stdout


def test_repeats_interleaved_median_time(run_specexp, random_pair_dir):
    """timing.repeats=3: every sample decoded 3 times per mode; its time is the median of the 3,
    the repeats emitted the same tokens (greedy), load average and spread recorded."""
    proc, run_dir = run_specexp(*pair_overrides(random_pair_dir), *FAST, "timing.repeats=3", "summary=true")
    m = load(run_dir)
    t = m["timing"]
    assert t["repeats"] == 3 and t["n_repeat_mismatch"] == 0 and len(t["loadavg_before"]) == 3
    for s in m["samples"]:
        for side, key in (("repeats", "wall_time_s"), ("baseline_repeats", "baseline_wall_time_s")):
            times = s[side]["wall_times_s"]
            assert len(times) == 3 and s[side]["identical"] is True
            assert s[key] == pytest.approx(sorted(times)[1])  # the median of three
            assert s[side]["spread"] == pytest.approx((max(times) - min(times)) / sorted(times)[1])
    assert m["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in m["samples"]))
    assert "3 repeat(s) per sample" in proc.stdout and "throughput ratio" in proc.stdout
    # the order of the modes is counterbalanced: the baseline first when sample + repeat is even
    for i, s in enumerate(m["samples"]):
        assert s["repeats"]["order"] == ["BS" if (i + r) % 2 == 0 else "SB" for r in range(3)]


def test_autoregressive_strategy_has_no_drafter(run_specexp, random_pair_dir):
    _, run_dir = run_specexp(*pair_overrides(random_pair_dir), *FAST, "strategy=autoregressive",
                             "model_pair.drafter.name=/does/not/exist")  # never loaded
    m = load(run_dir)
    assert m["status"] == "ok" and m["drafted_tokens"] == 0 and m["drafter_forwards"] == 0
    assert "speedup" not in m and m["mean_accepted_length"] == 1.0


def test_multirun_sweeps_gamma(run_specexp, random_pair_dir, tmp_path):
    run_specexp(*pair_overrides(random_pair_dir), *FAST, "strategy.gamma=1,2", multirun=True)
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    gammas = sorted(json.loads(p.read_text())["config"]["strategy"]["gamma"] for p in runs)
    assert gammas == [1, 2]
    for p in runs:  # each job decoded with its own gamma, not just recorded it
        m = json.loads(p.read_text())
        lengths = [k for s in m["samples"] for k in s["draft_lengths"]]
        assert max(lengths) == m["config"]["strategy"]["gamma"], (p, lengths)


def test_console_script_is_installed(random_pair_dir, tmp_path):
    exe = shutil.which("specexp", path=str(Path(sys.executable).parent))
    assert exe, "the `specexp` console script is not installed next to this python"
    proc = subprocess.run([exe, *pair_overrides(random_pair_dir), *FAST, "summary=false",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert load(tmp_path)["status"] == "ok"


# ---- bad input: a clear error, and never a partial result passed off as one ----------------

def _fails(run_specexp, *overrides) -> tuple[str, Path]:
    proc, run_dir = run_specexp(*overrides, *FAST, check=False)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr, run_dir


def test_unknown_model_path(run_specexp, random_pair_dir):
    err, run_dir = _fails(run_specexp, *pair_overrides(random_pair_dir), "model_pair.target.name=/no/such/model")
    assert "/no/such/model" in err and "could not load" in err
    m = load(run_dir)
    assert m["status"] == "failed" and "/no/such/model" in m["error"] and "tokens_per_second" not in m


def test_drafter_with_another_tokenizer(run_specexp, random_pair_dir, tmp_path):
    other = save_pair(tmp_path / "other", vocab_size=280)
    """Under greedy decoding such a drafter drafts through text (tests/test_cross_tokenizer.py);
    sampling needs its probability of each target token, which it does not have: refused."""
    err, run_dir = _fails(run_specexp, *pair_overrides(random_pair_dir),
                          f"model_pair.drafter.name={other / 'drafter'}", "sampling=sample")
    assert "another tokenizer" in err and "sampling=greedy" in err
    assert load(run_dir)["status"] == "failed"


def test_config_key_that_does_not_exist(run_specexp, random_pair_dir):
    err, _ = _fails(run_specexp, *pair_overrides(random_pair_dir), "strategy.gamm=3")
    assert "gamm" in err
    err, _ = _fails(run_specexp, *pair_overrides(random_pair_dir), "sampling.temprature=0.5")
    assert "temprature" in err


def test_bad_values(run_specexp, random_pair_dir):
    err, run_dir = _fails(run_specexp, *pair_overrides(random_pair_dir), "strategy.gamma=0")
    assert "gamma must be >= 1" in err and load(run_dir)["status"] == "failed"
    err, _ = _fails(run_specexp, *pair_overrides(random_pair_dir), "sampling.top_p=1.5")
    assert "top_p" in err


def test_empty_dataset(run_specexp, random_pair_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err, run_dir = _fails(run_specexp, *pair_overrides(random_pair_dir), "dataset.source=path", f"dataset.path={empty}")
    assert "no samples" in err
    assert load(run_dir)["status"] == "failed"


def test_every_shipped_model_pair_composes():
    for f in sorted((ROOT / "conf" / "model_pair").glob("*.yaml")):
        if f.stem == "hf":  # the user's own pair: named after its models (tests/test_own_pair.py)
            continue
        cfg = compose([f"model_pair={f.stem}"])
        assert cfg.model_pair.target.name and cfg.model_pair.name == f.stem


def test_default_run_on_the_trained_pair(run_specexp, trained_pair_dir):
    """`specexp` with no arguments: the embedded default, offline (the pair is already built by
    the fixture, so this is the 'later runs' path)."""
    proc, run_dir = run_specexp()
    m = load(run_dir)
    assert m["status"] == "ok" and m["model_pair"]["name"] == "tiny" and m["dataset"]["name"] == "humaneval"
    assert m["all_match_baseline"] is True
    assert m["mean_accepted_length"] > 1.5
    assert "speedup" in proc.stdout and "tokens/s" in proc.stdout


# ---- A/A: two jobs of the same config compared sample by sample ----------------------------

def aa_sweep(run_specexp, overrides, tmp_path):
    """`specexp -m strategy.gamma=4,4`: Hydra keeps both jobs (it does not merge duplicates);
    then `specexp-report --stats --reference run=0`."""
    from specexp.report import cli

    run_specexp(*overrides, "strategy.gamma=4,4", multirun=True)
    sweep = tmp_path / "sweep"
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1"]
    assert cli.main([str(sweep), "--stats", "--reference", "run=0"]) == 0
    import pandas as pd

    st = pd.read_csv(sweep / "report" / "stats.csv")
    assert st["run"].astype(str).tolist() == ["1"] and st.loc[0, "reference"].startswith("0 (")
    assert st.loc[0, "timing"] == "each run over its own baseline"
    return st.loc[0]


def test_a_a_sweep_is_compared_sample_by_sample(run_specexp, random_pair_dir, tmp_path):
    row = aa_sweep(run_specexp, [*pair_overrides(random_pair_dir), "dataset.limit=4", "dataset.max_new_tokens=8",
                                 "summary=false"], tmp_path)
    assert row["n_samples"] == 4 and row["ci_low"] <= row["speedup"] <= row["ci_high"]


@pytest.mark.slow
def test_a_a_on_the_tiny_pair_finds_no_difference(run_specexp, trained_pair_dir, tmp_path):
    """The issue's A/A proof: the same config twice, 10 samples, 3 interleaved repeats: the CI
    contains 1 and the verdict is "no detectable difference" (a 5% false-positive rate by design)."""
    row = aa_sweep(run_specexp, ["dataset.limit=10", "timing.repeats=3", "summary=false"], tmp_path)
    assert row["ci_low"] <= 1.0 <= row["ci_high"]
    assert row["verdict"] == "no detectable difference"


@pytest.fixture
def transformers_log():
    """The records transformers' loggers emit meanwhile (its root logger does not propagate, and
    its once-only warnings are forgotten first, so one emitted earlier in this process counts)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_decoding_touches_no_deprecated_cache_name(transformers_log):
    """The KV cache is taken from a model output by its current name (`cache` in transformers 5,
    where `past_key_values` is a deprecated alias that logs a warning): a decode with the tiny
    models, and a forward without a cache (the feature drafter's training step), log nothing."""
    from conftest import random_model
    from specexp.core.decode import generate
    from specexp.builds.train_feature_drafter import init_feature_drafter
    from specexp.models.cached_lm import cache_of, cached_lm
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper

    import torch

    for arch in ("llama", "gpt2"):
        model = random_model(arch, 300, 64, 2, seed=0)
        out = generate(cached_lm(model), torch.tensor([5, 6, 7]), 6, Sampling(), Stopper())
        assert len(out.tokens) == 6
        assert cache_of(model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)) is None
    drafter = init_feature_drafter(random_model("llama", 300, 64, 2, seed=0))
    pred, cache = drafter(torch.zeros(1, 3, 64), torch.zeros(1, 3, 64))  # use_cache=False, as training calls it
    assert pred.shape == (1, 3, 64) and cache is None
    assert [r.getMessage() for r in transformers_log if "deprecated" in r.getMessage()] == []
