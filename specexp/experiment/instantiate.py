"""The one place that turns config nodes into objects (hydra.utils.instantiate)."""
from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from specexp.builds.build_bigram import build_bigram
from specexp.builds.build_datastore import build_datastore
from specexp.experiment.config import TARGET_MISSING
from specexp.length import LengthPolicy
from specexp.models.loading import ModelSpec, Pair, Placement
from specexp.models.sampling import Sampling
from specexp.proposers.base import Proposer
from specexp.proposers.bigram import Bigram
from specexp.proposers.retrieval import Datastore
from specexp.tasks.base import Task


def _spec(node) -> ModelSpec | None:
    if node is None or node.get("name") in (None, "???"):
        return None
    return ModelSpec(**OmegaConf.to_container(node, resolve=True))


def pair(cfg: DictConfig) -> Pair:
    """Build the pair if it is built locally (the tiny pair), then read every model's tokenizer;
    the models load when they are first used (the target by the run, the others when a strategy
    asks for them)."""
    if OmegaConf.is_missing(cfg.target, "name") or cfg.target.get("name") is None:
        raise ValueError(TARGET_MISSING)
    if cfg.get("build") is not None:
        instantiate(cfg.build)
    others = {k: _spec(v) for k, v in cfg.items()
              if k not in ("target", "build") and isinstance(v, DictConfig) and "name" in v}
    placement = Placement(*(OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                            for v in (cfg.get("device_map"), cfg.get("max_memory"), cfg.get("offload_folder"))))
    return Pair(_spec(cfg.target), others, dtype=cfg.dtype, device=cfg.device,
                trust_remote_code=cfg.trust_remote_code, placement=placement)


def strategy(cfg: DictConfig, loaded: Pair) -> tuple[Proposer | None, LengthPolicy | None]:
    """A strategy composes a proposer (who drafts) and a length policy (how long): both null for
    the autoregressive baseline. Built by `strategy_objects`, then bound to the loaded models."""
    proposer, policy = strategy_objects(cfg)
    if proposer is None:
        return None, None
    return provide_builds(proposer, loaded).bind(loaded), policy.bind(loaded)


def provide_builds(proposer: Proposer, loaded) -> Proposer:
    """Build what a proposer reads and was not given, for the pair's target, before it is bound
    (proposers never import a builder): every `Datastore` with no folder (dir null) gets the
    folder of the target's replies (specexp.builds.build_datastore, cached), every `Bigram` with no
    table gets the table counted with the target's tokenizer (specexp.builds.build_bigram, cached),
    wherever they sit (a PromptLookup's fill or datastore, a LookupFirst's lookup, a cascade's
    bottom). Returns `proposer`, the same object."""
    for part in _parts(proposer, set()):
        if isinstance(part, Datastore) and part.table is None and not part.dir:
            part.dir = build_datastore(loaded.specs["target"], **part.build)
        elif isinstance(part, Bigram) and part.table is None and not part.table_path:
            spec = getattr(loaded, "specs", {}).get("target")
            name = (spec.tokenizer or spec.name) if spec is not None else None
            part.table_path = str(build_bigram(loaded.tokenizer, tokenizer_name=name, **part.source))
    return proposer


def _parts(obj, seen: set[int]):
    """`obj` and the proposers and datastores it holds (attributes, lists, dicts), each once."""
    if not isinstance(obj, (list, tuple, dict, Proposer, Datastore)) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (Proposer, Datastore)):
        yield obj
        obj = getattr(obj, "__dict__", {})
    for v in (obj.values() if isinstance(obj, dict) else obj):
        yield from _parts(v, seen)


def strategy_objects(cfg: DictConfig) -> tuple[Proposer | None, LengthPolicy | None]:
    """The strategy's proposer and length policy, not yet bound to models (their constructors are
    light: specexp.experiment.validate builds them before any model loads, to run their checks)."""
    if cfg.get("proposer") is None:
        return None, None
    if cfg.get("length") is None:
        raise ValueError(f"strategy {cfg.get('name')!r} has a proposer but no length policy (strategy.length)")
    proposer = instantiate(cfg.proposer, _convert_="all")
    policy = instantiate(cfg.length, _convert_="all")
    if not isinstance(proposer, Proposer):
        raise TypeError(f"strategy.proposer must build a specexp Proposer, got {type(proposer).__name__}")
    if not isinstance(policy, LengthPolicy):
        raise TypeError(f"strategy.length must build a specexp LengthPolicy, got {type(policy).__name__}")
    return proposer, policy


def task(cfg: DictConfig, tokenizer) -> Task:
    """The dataset's Task (`tokenizer` None: not attached, as specexp.experiment.validate builds it)."""
    t = instantiate_literal(cfg)
    if not isinstance(t, Task):
        raise TypeError(f"dataset must build a specexp Task, got {type(t).__name__}")
    if tokenizer is not None and hasattr(t, "set_tokenizer"):
        t.set_tokenizer(tokenizer)
    return t


def instantiate_literal(cfg: DictConfig):
    """`instantiate(cfg, _convert_="all")` with every value resolved exactly once. Hydra's
    instantiate resolves the node, writes the results back and resolves them again, so a text
    that holds `${` once resolved (`prompt='${oc.env:HOME}'`, JavaScript's `${name}`) would be
    read as an interpolation; here it stays as typed. Nested `_target_` nodes are built too."""
    def build(x):
        if isinstance(x, list):
            return [build(v) for v in x]
        if not isinstance(x, dict):
            return x
        x = {k: build(v) for k, v in x.items() if k not in ("_convert_", "_recursive_", "_partial_")}
        if "_target_" not in x:
            return x
        target = x.pop("_target_")
        try:
            return get_object(target)(**x)
        except Exception as err:  # the same wrapping as Hydra's, so callers see one kind of error
            raise InstantiationException(f"Error in call to target '{target}':\n{err!r}") from err

    return build(OmegaConf.to_container(cfg, resolve=True))


def sampling(cfg: DictConfig) -> Sampling:
    return Sampling(**OmegaConf.to_container(cfg, resolve=True))
