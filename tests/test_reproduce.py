"""`specexp reproduce`: a tiny-pair run decodes again to the same tokens (greedy and seeded
sampling); a tampered token makes it fail; metrics.json records the commit and model hashes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, pair_overrides

from specexp.experiment import provenance


@pytest.mark.parametrize("sampling", ["greedy", pytest.param("sample", marks=pytest.mark.slow)])
def test_reproduce_then_tamper(random_pair_dir, run_specexp, sampling):
    _, run_dir = run_specexp("strategy=speculative", f"sampling={sampling}", "debug=fast", "dataset=jsonl",
                             f"dataset.path={ROOT / 'tests' / 'data' / 'prompts.jsonl'}", "dataset.category=kind",
                             *pair_overrides(random_pair_dir))
    metrics = run_dir / "metrics.json"
    m = json.loads(metrics.read_text())
    models = m["provenance"]["models"]
    assert set(models) == {"target", "drafter"} and len(models["target"]["sha256"]) == 64
    assert models["target"]["files"] >= 2  # weights and config (and the tokenizer's files)
    git = m["provenance"]["git"]
    assert git["version"] and (git["commit"] is None or len(git["commit"]) == 40)

    def reproduce(target):
        return subprocess.run([sys.executable, "-m", "specexp", "reproduce", str(target)], capture_output=True,
                              text=True, cwd=ROOT, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    ok = reproduce(run_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "config: recomposes identically" in ok.stdout and "2/2 samples identical" in ok.stdout
    assert "models: same files" in ok.stdout and "reproduced: identical tokens" in ok.stdout
    m["samples"][1]["tokens"][2] += 1  # tamper with one recorded token
    metrics.write_text(json.dumps(m))
    bad = reproduce(metrics)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"sample {m['samples'][1]['id']}: tokens differ at position 2" in bad.stdout
    assert "NOT reproduced: 1 sample(s) differ" in bad.stdout


def test_unreadable_run_exits_2(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "failed", "config": {}}))
    r = subprocess.run([sys.executable, "-m", "specexp", "reproduce", str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "only a finished run" in r.stderr


def test_model_identity_hashes_files_once(tmp_path, monkeypatch):
    from specexp.models.loading import ModelSpec

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "notes.md").write_text("not part of the model")
    ident = provenance.model_identity(ModelSpec(name=str(tmp_path)))

    files = {"config.json": hashlib.sha256(b"{}").hexdigest(), "model.safetensors": hashlib.sha256(b"abc").hexdigest()}
    expect = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
    assert ident == {"path": str(tmp_path), "sha256": expect, "files": 2}
    calls, sha256 = [], hashlib.sha256
    monkeypatch.setattr(provenance.hashlib, "sha256", lambda *a: calls.append(1) or sha256(*a))
    provenance.model_identity(ModelSpec(name=str(tmp_path)))
    assert len(calls) == 1  # the folder digest only: each file's hash came from the cache
    assert provenance.model_identity(ModelSpec(name="org/not-cached", revision="v1")) == {"hub": "org/not-cached",
                                                                                          "revision": "v1"}


def test_replay_puts_the_measured_costs_where_the_strategy_reads_them():
    """cost_aware's measured costs (metrics.json "measured") go to the strategy's top-level keys,
    which its length node reads, so the replayed run's policy gets them and measures nothing."""
    from conftest import compose
    from omegaconf import OmegaConf

    from specexp.experiment.rerun import replay_measured

    config = OmegaConf.to_container(compose(["strategy=cost_aware"]), resolve=False)
    config.pop("hydra", None)
    v = [1.0, 1.25, 1.25, 1.5, 1.5, 1.75, 2.0, 2.0, 2.5]
    lines = replay_measured(config, {"replay": {"verify_cost": v, "drafter_cost": 0.125}, "sources": {}})
    assert lines == [f"strategy.verify_cost={json.dumps(v)}", "strategy.drafter_cost=0.125"]
    length = OmegaConf.create(config).strategy.length
    assert list(length.verify_cost) == v and length.drafter_cost == 0.125
    assert replay_measured(config, None) == [] and replay_measured(config, {}) == []


def test_a_sampled_cost_aware_run_reproduces(random_pair_dir, run_specexp):
    """strategy=cost_aware under sampling measures its costs at start; the run records them
    (metrics.json "measured") and `specexp reproduce` gives them back, so the decode repeats token
    for token although the clock differs."""
    _, run_dir = run_specexp("strategy=cost_aware", "sampling=sample", "debug=fast", "dataset=jsonl",
                             f"dataset.path={ROOT / 'tests' / 'data' / 'prompts.jsonl'}",
                             "strategy.measure_repeats=2", *pair_overrides(random_pair_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    measured = m["measured"]
    assert measured["sources"] == {"verify_cost": "measured", "drafter_cost": "measured"}
    assert len(measured["replay"]["verify_cost"]) == m["config"]["strategy"]["max_len"] + 1
    ok = subprocess.run([sys.executable, "-m", "specexp", "reproduce", str(run_dir)], capture_output=True,
                        text=True, cwd=ROOT, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "strategy.verify_cost=[" in ok.stdout and "reproduced: identical tokens" in ok.stdout
