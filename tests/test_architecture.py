"""The folders are the architecture: the import contracts hold (import-linter, pyproject.toml),
the package is a handful of top-level modules and its layers, every layer says what it may
import, and the module paths of specexp 0.1 still load (with a warning) until 0.3."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra.utils import get_class, get_method

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "specexp"
LAYERS = {"experiment", "report", "builds", "core", "proposers", "length", "models", "tasks"}
TOP_MODULES = {"__init__.py", "__main__.py", "_moved.py", "stats.py", "dotted_keys.py"}


def test_import_contracts_hold():
    """Every contract of pyproject.toml's [tool.importlinter] is kept (layers, report without
    torch, proposers without builders, the sandbox alone, no cycles)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "broken" in out.stdout, out.stdout


def test_a_new_import_across_a_layer_breaks_a_contract(tmp_path):
    """The contracts are live: a copy of the package where a proposer imports a builder, and the
    report layer imports torch, fails lint-imports, naming both."""
    import shutil
    shutil.copytree(PACKAGE, tmp_path / "specexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "specexp" / "proposers" / "lookup.py", "a") as fh:
        fh.write("\nfrom specexp.builds import corpus  # noqa\n")
    with open(tmp_path / "specexp" / "report" / "tables.py", "a") as fh:
        fh.write("\nimport torch  # noqa\n")
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                          "from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0
    assert "specexp.proposers.lookup -> specexp.builds.corpus" in out.stdout, out.stdout
    assert "specexp.report.tables -> torch" in out.stdout, out.stdout


def test_the_package_is_its_layers():
    """specexp/ holds a handful of top-level modules and one folder per layer, and each layer's
    __init__ says what it is and what it may import."""
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_MODULES
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == LAYERS
    for layer in [*LAYERS, "tasks/sandbox"]:
        doc = importlib.import_module("specexp." + layer.replace("/", ".")).__doc__ or ""
        assert "May import" in doc, f"specexp/{layer}/__init__.py must say what it may import"


def test_the_readme_draws_every_layer():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    for layer in LAYERS:
        assert f"  {layer}/" in layout, layer


OLD_TARGETS = ["specexp.sweep.SweepSummary", "specexp.length_cost.CostAware", "specexp.beam.BeamSearch",
               "specexp.tasks.prompt.PromptTask", "specexp.gpu_pin.PinGPU"]


@pytest.mark.parametrize("target", OLD_TARGETS)
def test_old_target_paths_load_with_a_warning(target):
    """A `_target_` of 0.1 in a user's YAML resolves to the same class, and warns with the new path."""
    old_module = target.rsplit(".", 1)[0]
    sys.modules.pop(old_module, None)
    with pytest.warns(FutureWarning, match=r"moved to specexp\.\w+\.\w+"):
        cls = get_class(target)
    from specexp._moved import MOVED
    new = importlib.import_module(MOVED[old_module])
    assert cls is getattr(new, target.rsplit(".", 1)[1])


def test_old_module_names_and_package_attributes():
    """`import specexp.run` and `specexp.models.load_model` (now packages' modules) still work;
    a submodule of a package that took an old module's name loads without a warning."""
    sys.modules.pop("specexp.run", None)
    with pytest.warns(FutureWarning, match="specexp.experiment.run"):
        old = importlib.import_module("specexp.run")
    assert old is importlib.import_module("specexp.experiment.run")
    with pytest.warns(FutureWarning, match="specexp.models.loading.load_model"):
        fn = get_method("specexp.models.load_model")
    from specexp.models.loading import load_model
    assert fn is load_model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from specexp.models import sampling  # noqa: F401  (a real submodule: no warning)


def test_every_old_path_has_a_new_home():
    from specexp._moved import MOVED
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is both moved and present"
