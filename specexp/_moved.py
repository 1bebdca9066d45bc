"""The module paths of specexp 0.1, before its modules moved into subpackages, kept working for
one release (they are removed in 0.3): `import specexp.sweep` or a config's
`_target_: specexp.sweep.SweepSummary` load the module's new home and warn (FutureWarning) with
the path to write instead. Installed by specexp/__init__.py; no other module imports it."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3"

# old module -> its new home
MOVED = {
    "specexp.analysis": "specexp.report.token_records",
    "specexp.batch": "specexp.core.batch_decode",
    "specexp.beam": "specexp.core.beam_search",
    "specexp.benchmark": "specexp.report.bench_analysis",
    "specexp.build": "specexp.experiment.instantiate",
    "specexp.builds": "specexp.builds.build_cache",
    "specexp.categories": "specexp.report.categories",
    "specexp.collect": "specexp.report.collect_runs",
    "specexp.compare": "specexp.report.paired",
    "specexp.config": "specexp.experiment.config",
    "specexp.console": "specexp.experiment.console",
    "specexp.corpus": "specexp.builds.corpus",
    "specexp.costs": "specexp.report.forward_costs",
    "specexp.datastore": "specexp.builds.build_datastore",
    "specexp.decode": "specexp.core.decode",
    "specexp.distill": "specexp.builds.train_distilled_drafter",
    "specexp.dotted": "specexp.dotted_keys",
    "specexp.eagle": "specexp.builds.train_feature_drafter",
    "specexp.entropy": "specexp.models.token_entropy",
    "specexp.fetch": "specexp.models.fetch",
    "specexp.gpu_pin": "specexp.experiment.gpu_pin",
    "specexp.length_cost": "specexp.length.cost_aware",
    "specexp.lm": "specexp.models.cached_lm",
    "specexp.markup": "specexp.report.rendering",
    "specexp.models": "specexp.models.loading",
    "specexp.per_sample": "specexp.report.per_sample",
    "specexp.plots": "specexp.report.plots",
    "specexp.prompting": "specexp.models.prompt_ids",
    "specexp.proposers.datastore": "specexp.proposers.retrieval",
    "specexp.proposers.eagle": "specexp.proposers.feature_drafter",
    "specexp.provenance": "specexp.experiment.provenance",
    "specexp.ragged": "specexp.models.ragged_cache",
    "specexp.record": "specexp.experiment.metrics_json",
    "specexp.replies": "specexp.builds.target_replies",
    "specexp.report": "specexp.report.cli",
    "specexp.repro_estimators": "specexp.report.paper_estimators",
    "specexp.reproduce": "specexp.experiment.rerun",
    "specexp.run": "specexp.experiment.run",
    "specexp.sampling": "specexp.models.sampling",
    "specexp.show": "specexp.experiment.watch",
    "specexp.stopping": "specexp.core.stopping",
    "specexp.study": "specexp.report.study",
    "specexp.sweep": "specexp.experiment.sweep_callbacks",
    "specexp.tables": "specexp.report.tables",
    "specexp.tasks._sandbox_child": "specexp.tasks.sandbox.child",
    "specexp.tasks.isolation": "specexp.tasks.sandbox.isolation",
    "specexp.tasks.loading": "specexp.tasks.dataset_sources",
    "specexp.tasks.prompt": "specexp.tasks.typed_prompts",
    "specexp.tasks.sandbox": "specexp.tasks.sandbox.judge",
    "specexp.tiny": "specexp.builds.train_tiny_pair",
    "specexp.training": "specexp.builds.training_utils",
    "specexp.validate": "specexp.experiment.validate",
    "specexp.verify": "specexp.core.verify",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} moved to {new}: write {new} (the old path is removed in specexp {REMOVED_IN})",
                  FutureWarning, stacklevel=stacklevel)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import specexp.<old>` gives the module at its new path (the same object), with a warning."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED and name not in sys.modules:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        _warn(spec.name, MOVED[spec.name], stacklevel=4)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())


def package_getattr(package: str):
    """A module `__getattr__` for a package that took the name of an old module (specexp.models,
    specexp.builds, specexp.report, specexp.tasks.sandbox): the old module's names still resolve."""

    def __getattr__(name: str):
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule: no warning
            return importlib.import_module(f"{package}.{name}")
        new = MOVED[package]
        module = importlib.import_module(new)
        if name.startswith("__") or not hasattr(module, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        _warn(f"{package}.{name}", f"{new}.{name}", stacklevel=3)
        return getattr(module, name)

    return __getattr__
