"""The one place that turns config nodes into objects (hydra.utils.instantiate)."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from specexp.length import LengthPolicy
from specexp.models import ModelSpec, Pair
from specexp.proposers.base import Proposer
from specexp.sampling import Sampling
from specexp.tasks.base import Task


def _spec(node) -> ModelSpec | None:
    if node is None or node.get("name") in (None, "???"):
        return None
    return ModelSpec(**OmegaConf.to_container(node, resolve=True))


def pair(cfg: DictConfig) -> Pair:
    """Build the pair if it is built locally (the tiny pair), then load the target and tokenizer;
    other models load when a strategy asks for them."""
    if cfg.get("build") is not None:
        instantiate(cfg.build)
    others = {k: _spec(v) for k, v in cfg.items()
              if k not in ("target", "build") and isinstance(v, DictConfig) and "name" in v}
    return Pair(_spec(cfg.target), others, dtype=cfg.dtype, device=cfg.device,
                trust_remote_code=cfg.trust_remote_code)


def strategy(cfg: DictConfig, loaded: Pair) -> tuple[Proposer | None, LengthPolicy | None]:
    """A strategy composes a proposer (who drafts) and a length policy (how long): both null for
    the autoregressive baseline."""
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
    return proposer.bind(loaded), policy.bind(loaded)


def task(cfg: DictConfig, tokenizer) -> Task:
    t = instantiate(cfg, _convert_="all")
    if not isinstance(t, Task):
        raise TypeError(f"dataset must build a specexp Task, got {type(t).__name__}")
    if hasattr(t, "set_tokenizer"):
        t.set_tokenizer(tokenizer)
    return t


def sampling(cfg: DictConfig) -> Sampling:
    return Sampling(**OmegaConf.to_container(cfg, resolve=True))
