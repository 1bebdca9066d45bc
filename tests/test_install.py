"""An install without the checkout: the wheel holds every package and every config (shipped as
specexp/conf), and, installed into a throwaway venv, `specexp` composes and runs from /tmp."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, save_pair


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` (no build isolation: setuptools from this venv, no download)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, capture_output=True, text=True, timeout=300)
    (whl,) = out.glob("specexp-*.whl")
    return whl


def test_wheel_holds_every_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert configs and all(f"specexp/conf/{c}" in names for c in configs), \
        [c for c in configs if f"specexp/conf/{c}" not in names]
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "specexp").rglob("__init__.py"))
    assert all(f"{p}/__init__.py" in names for p in packages)
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "specexp").rglob("*.py"))
    assert [m for m in modules if m not in names] == []
    assert not any(n.startswith(("conf/", "tests/")) for n in names)  # nothing lands top-level
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "specexp = specexp.experiment.run:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_wheel_installs_and_runs_from_tmp(wheel, tmp_path):
    """A venv that reuses this one's dependencies (a .pth line, so torch is not downloaded again)
    but not its editable specexp; then `specexp --cfg job` and a debug=fast run from /tmp."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies only: .pth files there are not run
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, timeout=300)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    cwd = Path("/tmp")
    where = subprocess.check_output([str(venv / "bin" / "python"), "-c", "import specexp.experiment.config as c; print(c.CONF_DIR)"],
                                    text=True, cwd=cwd, env=env).strip()
    assert where.startswith(str(site)) and where.endswith("specexp/conf"), where
    job = subprocess.run([str(venv / "bin" / "specexp"), "--cfg", "job", "strategy=nasd"], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=300)
    assert job.returncode == 0, job.stderr
    assert "name: nasd" in job.stdout and "_target_: specexp.tasks.humaneval.HumanEval" in job.stdout
    pair = save_pair(tmp_path / "pair")
    run_dir = tmp_path / "run"
    run = subprocess.run([str(venv / "bin" / "specexp"), "debug=fast", "prompt=def add(a, b):",
                          "model_pair.build=null", f"model_pair.dir={pair}", "model_pair.name=test",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"status": "ok"' in (run_dir / "metrics.json").read_text()
