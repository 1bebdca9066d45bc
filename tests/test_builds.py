"""specexp/builds/build_cache.py: a build runs once per parameter set, lands whole, and cleans up after a
killed one."""
from __future__ import annotations

import json

import pytest

from specexp.builds.build_cache import build_once


def _build(calls):
    def build(tmp):
        calls.append(tmp)
        (tmp / "model.safetensors").write_bytes(b"w")
        return {"params": {"a": 1}}
    return build


def test_build_runs_once_per_params_and_replaces_a_stale_build(tmp_path):
    calls = []
    out = tmp_path / "drafter"
    assert build_once(out, {"a": 1}, _build(calls)) == str(out.resolve())
    assert build_once(out, {"a": 1}, _build(calls)) == str(out.resolve())
    assert len(calls) == 1 and json.loads((out / "build.json").read_text()) == {"params": {"a": 1}}
    build_once(out, {"a": 2}, lambda tmp: {**_build(calls)(tmp), "params": {"a": 2}})
    assert len(calls) == 2 and json.loads((out / "build.json").read_text())["params"] == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".drafter.lock", "drafter"]


def test_a_killed_builds_temporary_folder_is_removed_and_a_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "drafter"
    stale = tmp_path / ".drafter.tmp-abc123"  # what a SIGKILLed build leaves behind
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")

    def fails(tmp):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        build_once(out, {"a": 1}, fails)
    assert not out.exists() and not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".drafter.lock"]


def test_a_folder_that_is_not_a_build_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my files")
    with pytest.raises(FileExistsError, match="not a build"):
        build_once(out, {"a": 1}, _build([]))
    assert (out / "notes.txt").read_text() == "my files"


def test_the_build_commands_are_entry_points_of_the_experiment_layer(monkeypatch, capsys):
    """`specexp-distill`, `specexp-eagle`, `specexp-datastore` resolve to specexp/experiment/build_commands.py
    (builders never compose a config); --help prints the build's recipe; a pair without the
    command's build step is refused by name."""
    import importlib
    import sys
    import tomllib
    from pathlib import Path

    from specexp.builds import train_distilled_drafter, train_feature_drafter
    from specexp.experiment import build_commands

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    for name, fn in (("specexp-distill", "distill"), ("specexp-eagle", "eagle"), ("specexp-datastore", "datastore")):
        module, attr = scripts[name].split(":")
        assert (module, attr) == ("specexp.experiment.build_commands", fn)
        assert callable(getattr(importlib.import_module(module), attr))
    for command, builder in ((build_commands.distill, train_distilled_drafter), (build_commands.eagle, train_feature_drafter)):
        monkeypatch.setattr(sys, "argv", ["cmd", "--help"])
        command()
        assert capsys.readouterr().out.strip() == builder.__doc__.strip()
    monkeypatch.setattr(sys, "argv", ["specexp-eagle", "model_pair=tiny"])
    with pytest.raises(SystemExit, match="specexp-eagle: model_pair 'tiny' has no build_feature_drafter build step"):
        build_commands.eagle()
