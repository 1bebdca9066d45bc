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

from specexp import provenance


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
    from specexp.models import ModelSpec

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
