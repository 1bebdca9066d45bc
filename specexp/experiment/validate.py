"""The config check: right after Hydra composes the run config and before any model loads
(specexp.experiment.run.run calls `check`), every mistake in it fails with its key and what was expected.

  1. keys      every key exists: groups with a schema (specexp/experiment/config.py dataclasses: the top
               level, model_pair, sampling, timing) take their fields; a `_target_` node takes
               its class's keyword arguments; a strategy's free parameters (gamma, tau, ...) must
               be read by something (its proposer or length policy through `${..gamma}`).
               `+strategy.gamam=8` and `+foo=1` therefore fail as `strategy.gamma=x` typos do.
  2. types     each `_target_` argument has the type its class annotates (int, float, bool, str,
               or those | None), named by the key the user sets (`strategy.gamma`, not the
               `strategy.length.gamma` it feeds)
  3. budgets   `max_new_tokens` and `dataset.max_new_tokens` are integers >= 1
  4. ranges    the light objects are built without models (instantiate.strategy_objects, instantiate.task,
               instantiate.sampling): their constructors' own range checks run now
  5. choices   the choices fit together: a greedy-only length policy (the oracle) or beam
               search under sampling, `prompt=` with another dataset
  6. tokenizers  a drafter with another tokenizer than the target's drafts through text
               (proposers/cross_tokenizer.py): only a model drafter (DraftModel, LookupFirst)
               under greedy decoding can; the rest is refused here, from the tokenizers alone
  7. trees     a proposer that drafts token trees (`drafts_trees`: strategy=tree) needs batch_size 1
               and decoder-only models: an encoder-decoder pair (T5) is refused here, from the
               models' config.json alone

Errors are collected and raised together as one ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

# Keys of a `_target_` node that are Hydra's own, not arguments of the target.
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}
# Keys every strategy has; the others are its free parameters.
STRATEGY_KEYS = {"name", "proposer", "length", "search"}  # search: a decode of its own (strategy=beam)
# An interpolation's key: `${..gamma}`, `${strategy.gamma}`, `${oc.select:..x,1}`.
INTERPOLATION = re.compile(r"\$\{(?:oc\.select:)?(\.*[A-Za-z_][\w.]*)")


class ConfigError(ValueError):
    """A mistake in the run config, found before any work started; names the key and the fix."""


def check(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of `cfg` (a composed run config, no `hydra` node)."""
    errors = unknown_keys(cfg) + argument_types(cfg) + budgets(cfg)
    if not errors:  # the constructors' range checks assume the types are right
        errors = build_light(cfg)
    if not errors:
        errors = choices(cfg) + tokenizers(cfg) + trees(cfg)
    if errors:
        raise ConfigError("invalid config (nothing was run):\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------------------------
# 1. Keys
# --------------------------------------------------------------------------------------------

def unknown_keys(cfg: DictConfig) -> list[str]:
    errors: list[str] = []
    read = interpolated_keys(cfg)
    _walk_keys(cfg, "", read, errors)
    return errors


def _walk_keys(node: DictConfig, path: str, read: set[str], errors: list[str]) -> None:
    kind, allowed = _allowed_keys(node, path)
    if path == "strategy":  # free parameters: known when something reads them
        free = [k for k in node.keys() if k not in STRATEGY_KEYS]
        allowed = STRATEGY_KEYS | {k for k in free if f"strategy.{k}" in read
                                   or any(r.startswith(f"strategy.{k}.") for r in read)}
        kind = (f"strategy {node.get('name')!r} (a free parameter is one its proposer or length policy "
                "reads, as ${..gamma})")
    for key in node.keys():
        key = str(key)
        if allowed is not None and key not in allowed:
            errors.append(_unknown(_join(path, key), key, allowed, kind))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() \
                and not child._is_interpolation():
            _walk_keys(child, _join(path, key), read, errors)


def _allowed_keys(node: DictConfig, path: str) -> tuple[str, set[str] | None]:
    """What `node` accepts: (a description, the key set), or (.., None) when anything goes."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        return (f"{path or 'the top level'} ({schema.__name__})", {f.name for f in dataclasses.fields(schema)})
    if "_target_" in node:
        try:
            params, open_ended = target_params(str(node._get_node("_target_")._value()))
        except Exception:  # an unimportable target is reported by build_light, with its error
            return "", None
        return f"{node._get_node('_target_')._value()}", None if open_ended else set(params) | HYDRA_KEYS
    return "", None


def _unknown(full: str, key: str, allowed: set[str], kind: str) -> str:
    near = difflib.get_close_matches(key, sorted(allowed - HYDRA_KEYS), n=1)
    hint = f" (did you mean {full.rsplit('.', 1)[0] + '.' if '.' in full else ''}{near[0]}?)" if near else ""
    return f"{full}: unknown key{hint}; {kind} takes: {', '.join(sorted(allowed - HYDRA_KEYS))}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def interpolated_keys(cfg: DictConfig) -> set[str]:
    """Every absolute key some value of `cfg` reads through an interpolation."""
    out: set[str] = set()

    def visit(x: Any, path: list[str]) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                visit(v, [*path, str(k)])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                visit(v, [*path, str(i)])
        elif isinstance(x, str):
            for ref in INTERPOLATION.findall(x):
                out.add(_absolute(ref, path))

    visit(OmegaConf.to_container(cfg, resolve=False), [])
    return out


def _absolute(ref: str, path: list[str]) -> str:
    """`..gamma` read by the value at strategy.length.gamma -> strategy.gamma (OmegaConf's rule:
    one dot is the value's own node, each further dot one level up)."""
    dots = len(ref) - len(ref.lstrip("."))
    if dots == 0:
        return ref
    base = path[: len(path) - dots]
    return ".".join([*base, ref[dots:]])


def target_params(target: str) -> tuple[dict[str, Any], bool]:
    """The keyword arguments `target` (a class or function) accepts, name -> type hint, and
    whether it takes any keyword at all. For a class, the `__init__`s along its MRO while each
    passes `**kw` on (`EntropyStatic(tau, **kw)` also takes `_ThesisRule`'s and
    `EntropyPolicy`'s arguments); the chain ends at `object`, which takes none."""
    obj = get_object(target)
    if isinstance(obj, type):
        fns = [c.__dict__["__init__"] for c in obj.__mro__ if c is not object and "__init__" in c.__dict__]
    else:
        fns = [obj]
    params: dict[str, Any] = {}
    for fn in fns:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not evaluate: no type check for it
            hints = {}
        passes_on = False
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                passes_on = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                params.setdefault(p.name, hints.get(p.name, Any))
        if not passes_on:
            return params, False
    return params, not isinstance(obj, type)  # a function's **kw takes anything


# --------------------------------------------------------------------------------------------
# 2. Types of `_target_` arguments
# --------------------------------------------------------------------------------------------

def argument_types(cfg: DictConfig) -> list[str]:
    errors: list[str] = []
    for path, node in target_nodes(cfg):
        try:
            params, _ = target_params(str(node._get_node("_target_")._value()))
        except Exception:
            continue  # reported by build_light
        raw = OmegaConf.to_container(node, resolve=False)
        for key, hint in params.items():
            if key not in node:
                continue
            try:
                value = node[key]
            except Exception as err:  # a broken interpolation
                errors.append(f"{user_key(path, key, raw[key])}: cannot resolve {raw[key]!r} ({err})")
                continue
            if OmegaConf.is_config(value):
                continue
            want = expected(value, hint)
            if want:
                errors.append(f"{user_key(path, key, raw[key])}: expected {want}, got {value!r} "
                              f"(argument {key} of {node._get_node('_target_')._value()})")
    return errors


def target_nodes(node: Any, path: str = ""):
    """(path, node) of every `_target_` node under `node`, outermost first."""
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            yield from target_nodes(node._get_node(key), _join(path, str(key)))
    elif isinstance(node, ListConfig) and not node._is_none() and not node._is_interpolation():
        for i in range(len(node)):
            yield from target_nodes(node._get_node(i), _join(path, str(i)))


def proposer_classes(cfg: DictConfig):
    """(path, node, class) of every `_target_` node of the strategy's proposer, outermost first;
    a target that does not import is skipped here (build_light reports it)."""
    for path, node in target_nodes(cfg.strategy.get("proposer"), "strategy.proposer"):
        try:
            yield path, node, get_object(str(node._get_node("_target_")._value()))
        except Exception:
            continue


def user_key(path: str, key: str, raw: Any) -> str:
    """The key the user sets for argument `key` of the node at `path`: the key an interpolation
    reads (`strategy.length.gamma: ${..gamma}` -> strategy.gamma), else the argument's own."""
    if isinstance(raw, str):
        m = re.fullmatch(r"\$\{(\.*[A-Za-z_][\w.]*)\}", raw)
        if m:
            return _absolute(m.group(1), [*path.split("."), key] if path else [key])
    return _join(path, key)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def expected(value: Any, hint: Any) -> str | None:
    """What `hint` wants when `value` does not fit it (None when it fits, or when `hint` is not
    built from int, float, bool, str and None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if any(o not in _NAMES and o is not type(None) for o in options):
            return None
        if any(expected(value, o) is None for o in options):
            return None
        return " or ".join(_NAMES.get(o, "null") for o in options)
    if hint is type(None):
        return None if value is None else "null"
    if hint not in _NAMES:
        return None
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}[hint]
    return None if ok else _NAMES[hint]


# --------------------------------------------------------------------------------------------
# 3. Budgets
# --------------------------------------------------------------------------------------------

def budgets(cfg: DictConfig) -> list[str]:
    """A token budget must allow at least one token (0 would measure nothing and still say ok)."""
    errors = []
    for key in ("max_new_tokens", "dataset.max_new_tokens"):
        value = OmegaConf.select(cfg, key, default=None)
        if key == "max_new_tokens" and value is None:
            continue  # null: the dataset's budget applies
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            errors.append(f"{key}: expected an integer >= 1, got {value!r}")
    return errors


# --------------------------------------------------------------------------------------------
# 4. Ranges: the light objects, built without models
# --------------------------------------------------------------------------------------------

def build_light(cfg: DictConfig) -> list[str]:
    from specexp.experiment import instantiate

    errors = []
    for path, make in (("strategy", lambda: instantiate.strategy_objects(cfg.strategy)),
                       ("dataset", lambda: instantiate.task(cfg.dataset, None)),
                       ("sampling", lambda: instantiate.sampling(cfg.sampling))):
        try:
            make()
        except Exception as err:
            errors.append(_labelled(cfg, path, err))
    return errors


def _labelled(cfg: DictConfig, path: str, err: Exception) -> str:
    """A constructor's error, under the key it is about: the first argument of the failing
    `_target_` node named in the message (`gamma must be >= 1` -> strategy.gamma)."""
    cause = err
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).split("\n")[-1] if isinstance(cause, InstantiationException) else str(cause)
    target = re.search(r"target '([\w.]+)'", str(err))
    for node_path, node in list(target_nodes(cfg.get(path), path)) or [(path, cfg.get(path))]:
        what = str(node._get_node("_target_")._value()) if "_target_" in node else path
        if target and not _same_target(what, target.group(1)):
            continue
        raw = OmegaConf.to_container(node, resolve=False)
        named = sorted((m.start(), k) for k in raw if k not in HYDRA_KEYS
                       for m in [re.search(rf"\b{re.escape(str(k))}\b", text)] if m)
        if named:
            k = named[0][1]
            return f"{user_key(node_path, k, raw[k])}: {text} ({what})"
    return f"{path}: {type(cause).__name__}: {text}"


def _same_target(configured: str, reported: str) -> bool:
    """Whether Hydra's error about `reported` (the class's own module path, e.g.
    specexp.length.base.Fixed) is about the node naming `configured` (the path the config uses,
    e.g. specexp.length.Fixed, which re-exports it)."""
    if configured == reported:
        return True
    try:
        return get_object(configured) is get_object(reported)
    except Exception:  # an unimportable name is not the one that failed
        return False


# --------------------------------------------------------------------------------------------
# 5. Choices that do not fit together
# --------------------------------------------------------------------------------------------

def choices(cfg: DictConfig) -> list[str]:
    from specexp.experiment import instantiate
    from specexp.tasks.typed_prompts import PromptTask

    errors = []
    _, policy = instantiate.strategy_objects(cfg.strategy)
    if getattr(policy, "greedy_only", False) and float(cfg.sampling.temperature) > 0:
        errors.append(f"strategy={cfg.strategy.get('name')} sampling (temperature {cfg.sampling.temperature}): "
                      f"the {type(policy).__name__} length policy supports greedy decoding only: use sampling=greedy")
    if cfg.strategy.get("search") is not None and not instantiate.sampling(cfg.sampling).greedy:
        # a search of its own (strategy=beam) keeps the most likely hypotheses: there is nothing to sample
        errors.append(f"strategy={cfg.strategy.get('name')} sampling (temperature {cfg.sampling.temperature}): "
                      "beam search is deterministic: use sampling=greedy")
    if cfg.get("prompt") is not None:
        target = OmegaConf.select(cfg, "dataset._target_", default=None)
        cls = get_object(target) if target else None
        if not (isinstance(cls, type) and issubclass(cls, PromptTask)):
            errors.append(f"prompt: prompt= runs the prompt dataset, but the config selects dataset {target!r}: "
                          "drop the dataset= override (or use dataset=prompt)")
    return errors


# --------------------------------------------------------------------------------------------
# 6. Tokenizers: what cannot draft through text with a drafter of another tokenizer
# --------------------------------------------------------------------------------------------

def tokenizers(cfg: DictConfig) -> list[str]:
    """A drafter whose tokenizer is not the target's drafts through text (greedy only). Refused
    here, from the tokenizers (no weights): sampling, a draft vocabulary subset, the oracle length
    policy, analysis records, batching, and every proposer other than a model drafter (the
    cascade, the feature drafter...), which compare token ids. A tokenizer that is not on this
    machine yet (a pair still to be built or downloaded) is not checked here: the run checks it
    when it loads the pair, still before any weights."""
    from specexp.length.baselines import Oracle
    from specexp.proposers import FeatureDrafter, LookupFirst
    from specexp.proposers.drafter import DraftModel

    errors: list[str] = []
    name = cfg.strategy.get("name")
    for path, node, cls in proposer_classes(cfg):
        # model drafters bridge; a feature drafter reads the target's hidden states, so it cannot
        bridges = (isinstance(cls, type) and issubclass(cls, (DraftModel, LookupFirst))
                   and not issubclass(cls, FeatureDrafter))
        roles = ([node.get("model", "drafter")] if bridges else
                 [r for r in (node.get("drafters") or [node.get("model")]) if isinstance(r, str)])
        for role in roles:
            other = _other_tokenizer(cfg.model_pair, role)
            if other is None:
                continue
            who = f"the {role} {other!r} has another tokenizer than the target"
            if not bridges:
                errors.append(f"strategy={name}: {cls.__name__} compares the {role}'s token ids with the target's, but "
                              f"{who}: use a {role} with the target's tokenizer (model_pair.{role}.name), or "
                              "strategy=speculative, which drafts through text (greedy decoding)")
                continue
            if float(cfg.sampling.temperature) > 0:
                errors.append(f"sampling (temperature {cfg.sampling.temperature}): {who}, so it drafts through text, "
                              "and sampling needs the drafter's probability of each drafted target token, which a "
                              "drafter over another vocabulary does not have: use sampling=greedy (the output is then "
                              f"exactly the target's greedy output), or a {role} with the target's tokenizer")
            if node.get("vocab"):
                key = user_key(path, "vocab", OmegaConf.to_container(node, resolve=False).get("vocab"))
                errors.append(f"{key}: a draft vocabulary subset is a set of the target's token ids, but {who}: "
                              f"set {key}=null")
            length = cfg.strategy.get("length")
            if length is not None and "_target_" in length and _is(length._target_, Oracle):
                errors.append(f"strategy.length: the {Oracle.__name__} length policy replays the target on the "
                              f"drafted tokens, but {who} (its tokens are not the target's): use another length "
                              "policy, e.g. strategy=speculative")
            if cfg.get("records"):
                errors.append(f"records: analysis records pair each drafted token with the target's at its position, "
                              f"but {who} (it drafts other tokens than the target verifies): set records=false")
            if int(cfg.get("batch_size", 1)) > 1:
                errors.append(f"batch_size: batched decoding runs a drafter with the target's tokenizer only, and "
                              f"{who}: use batch_size=1")
    return errors


# --------------------------------------------------------------------------------------------
# 7. Trees: what a token-tree proposer cannot run on
# --------------------------------------------------------------------------------------------

def trees(cfg: DictConfig) -> list[str]:
    """A proposer drafting token trees (its class sets `drafts_trees`) is verified in one forward
    with a tree attention mask over a decoder-only model's KV cache, one sample at a time: refuse
    batch_size > 1, and a target or drafting model that is encoder-decoder (read from its local
    config.json; a model not on this machine yet is checked when it loads, still before decoding)."""
    errors: list[str] = []
    name = cfg.strategy.get("name")
    for path, node, cls in proposer_classes(cfg):
        if not getattr(cls, "drafts_trees", False):
            continue
        if int(cfg.get("batch_size", 1)) > 1:
            errors.append(f"batch_size: strategy={name} drafts token trees ({cls.__name__}), and batched decoding "
                          "verifies chains only: use batch_size=1")
        model = node.get("model")
        roles = ["target"] + ([model] if isinstance(model, str) and model != "target" else [])
        for role in roles:
            if _encoder_decoder(cfg.model_pair, role):
                errors.append(f"model_pair.{role}: strategy={name} drafts token trees ({cls.__name__}), which need "
                              f"decoder-only models, but the {role} {cfg.model_pair[role].name!r} is an encoder-decoder "
                              "model: use a chain strategy (e.g. strategy=speculative) with this pair")
    return errors


def _encoder_decoder(pair: DictConfig, role: str) -> bool:
    """Whether `role`'s model is encoder-decoder: by its config.json on this machine (a local folder
    or the Hugging Face cache), else by the name of a hub model not downloaded yet (the T5, BART and
    Pegasus families); a GGUF file is decoder-only."""
    from transformers import AutoConfig

    from specexp.models.loading import ModelSpec, resolve_source

    node = pair.get(role)
    if not isinstance(node, DictConfig) or OmegaConf.is_missing(node, "name") or node.get("name") in (None, "???"):
        return False
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    try:
        spec = resolve_source(ModelSpec(**{k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                                           if k in fields}))
        if spec.gguf_file:
            return False
    except Exception:
        return False
    try:
        config = AutoConfig.from_pretrained(spec.name, revision=spec.revision, local_files_only=True,
                                            trust_remote_code=bool(pair.get("trust_remote_code", False)))
    except Exception:  # not on this machine yet: its name tells the families that are encoder-decoder
        return spec.source == "hub" and re.search(r"(?<![a-z0-9])(m?t5|ul2|bart|pegasus)(?![a-z0-9])",
                                                  spec.name.lower()) is not None
    return bool(getattr(config, "is_encoder_decoder", False))


def _is(target: str, cls: type) -> bool:
    try:
        obj = get_object(str(target))
    except Exception:
        return False
    return isinstance(obj, type) and issubclass(obj, cls)


def _other_tokenizer(pair: DictConfig, role: str) -> str | None:
    """The name of `role`'s model when its tokenizer is not the target's; None when it is, when
    the pair has no such model, or when a tokenizer is not on this machine (not checked here)."""
    from specexp.models.loading import ModelSpec, resolve_source

    def spec(key: str):
        node = pair.get(key)
        if not isinstance(node, DictConfig) or OmegaConf.is_missing(node, "name") or node.get("name") in (None, "???"):
            return None
        fields = {f.name for f in dataclasses.fields(ModelSpec)}
        try:
            return resolve_source(ModelSpec(**{k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                                               if k in fields}))
        except Exception:
            return None

    target, other = spec("target"), spec(role)
    if target is None or other is None or role == "target":
        return None
    if (other.tokenizer or other.name, other.gguf_file) == (target.tokenizer or target.name, target.gguf_file):
        return None
    trust = bool(pair.get("trust_remote_code", False))
    a, b = (_local_vocab(s.tokenizer or s.name, None if s.tokenizer else s.gguf_file, s.revision, trust)
            for s in (target, other))
    return other.name if a is not None and b is not None and a != b else None


@functools.lru_cache(maxsize=16)
def _local_vocab(name: str, gguf_file: str | None, revision: str | None, trust_remote_code: bool) -> dict | None:
    """The token -> id table of a tokenizer when it is on this machine (a local folder or the
    Hugging Face cache: no download during the check), else None."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file, revision=revision, local_files_only=True,
                                             trust_remote_code=trust_remote_code).get_vocab()
    except Exception:
        return None
