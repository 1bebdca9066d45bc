"""The build commands: command lines that compose the run's Hydra config and build one node of it
ahead of a run (a run builds the same on first use). The builds themselves live in specexp/builds/
and never compose a config.

    specexp-distill [overrides]     a pair's distilled drafter   (specexp/builds/train_distilled_drafter.py)
    specexp-eagle [overrides]       a pair's feature drafter     (specexp/builds/train_feature_drafter.py)
    specexp-datastore [overrides]   a strategy's reply datastore (specexp/builds/build_datastore.py)
    python -m specexp.experiment.build_commands distill|eagle|datastore [overrides]   (the same, uninstalled)
"""
from __future__ import annotations

import logging
import sys

from hydra.utils import instantiate
from omegaconf import OmegaConf

from specexp.builds import train_distilled_drafter, train_feature_drafter
from specexp.builds.build_datastore import build_datastore
from specexp.experiment.config import compose


def build_cli(command: str, default_pair: str, step: str, doc: str | None) -> None:
    """The Hydra front end of a pair's build step (`specexp-distill`, `specexp-eagle`): compose the
    config from the command line (model_pair=`default_pair` unless given), check that the pair's
    `build` node is `step`, and run it."""
    overrides = sys.argv[1:]
    if any(a in ("-h", "--help") for a in overrides):
        print(doc)
        return
    if not any(o.startswith("model_pair=") for o in overrides):
        overrides = [f"model_pair={default_pair}", *overrides]
    cfg = compose(overrides)
    build = cfg.model_pair.get("build")
    if build is None or not str(build.get("_target_", "")).endswith(step):
        sys.exit(f"{command}: model_pair {cfg.model_pair.name!r} has no {step} build step")
    logging.basicConfig(level=logging.INFO)
    print(f"{command}: drafter ready at {instantiate(build)}")


def distill() -> None:
    """`specexp-distill`: builds the `model_pair`'s drafter through its `build` node."""
    build_cli("specexp-distill", "smollm2-135m__distilled", "distill_drafter", train_distilled_drafter.__doc__)


def eagle() -> None:
    """`specexp-eagle`: builds the `model_pair`'s feature drafter through its `build` node."""
    build_cli("specexp-eagle", "smollm2-135m__eagle", "build_feature_drafter", train_feature_drafter.__doc__)


def datastore() -> None:
    """`specexp-datastore [overrides]`: build the reply datastore of a pair's target ahead of a
    run, with the strategy's settings (the first run of a datastore strategy builds it too).
    Defaults: model_pair=smollm2-135m__prompt_lookup strategy=prompt_lookup_store; e.g.
    `specexp-datastore model_pair=smollm2-135m__eagle strategy=lookup_store_entropy
    strategy.proposer.datastore.replies=1200`."""
    overrides = sys.argv[1:]
    if any(a in ("-h", "--help") for a in overrides):
        print(datastore.__doc__)
        return
    defaults = {"model_pair": "smollm2-135m__prompt_lookup", "strategy": "prompt_lookup_store"}
    overrides = [f"{k}={v}" for k, v in defaults.items() if not any(o.startswith(f"{k}=") for o in overrides)] + overrides
    cfg = compose(overrides)
    node = (cfg.strategy.get("proposer") or {}).get("datastore")
    if node is None:
        sys.exit(f"specexp-datastore: strategy {cfg.strategy.get('name')!r} has no proposer.datastore; "
                 "use strategy=prompt_lookup_store, lookup_store_entropy or lookup_store_cost")
    store = instantiate(node)
    folder = store.dir or build_datastore(OmegaConf.to_container(cfg.model_pair.target, resolve=True), **store.build)
    print(f"specexp-datastore: the target's replies are at {folder}")


COMMANDS = {"distill": distill, "eagle": eagle, "datastore": datastore}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m specexp.experiment.build_commands {{{'|'.join(COMMANDS)}}} [overrides]")
    command = COMMANDS[sys.argv.pop(1)]
    command()
