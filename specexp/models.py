"""Models: where their weights come from (`resolve_source`), loading a target/drafter pair
(`load_model`, `load_tokenizer`, `Pair`), devices and dtypes. The LM wrapper that owns a KV cache
(`CachedLM`) is specexp.lm."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Models loaded by this process, keyed by (name, gguf_file, revision, dtype, device): the jobs of a
# sweep that run in one process (Hydra's basic launcher) load each model once.
_MODEL_CACHE: dict[tuple, Any] = {}
LOAD_COUNT = {"models": 0}


@dataclass
class ModelSpec:
    name: str = "???"  # hub id or local directory (or the directory holding `gguf_file`)
    gguf_file: str | None = None  # a GGUF file inside `name`, loaded through transformers' gguf support
    revision: str | None = None  # hub revision (branch, tag or commit)
    tokenizer: str | None = None  # tokenizer id/path when it differs from `name`
    local: str | None = None  # an offline copy (a .gguf file or a model directory) for when the hub can't serve `name`
    source: str = "auto"  # auto: `name` if local or in the hub cache, else `local` if present, else download `name`
    #                       hub: always `name`; local: always `local`  (see resolve_source)
    layers: int | None = None  # keep only the first N decoder layers (a layer-truncated self-drafter; shares weights)


def _in_hub_cache(name: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    return isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)


def resolve_source(spec: ModelSpec) -> ModelSpec:
    """Where the weights come from: the one place that decides. Returns a spec whose `name` (and
    `gguf_file`) load directly, with `source` set to "hub" or "local". No network access here.

    source=auto picks, in order: `name` when it is a local path or already in the Hugging Face
    cache; then the offline copy `local` when it exists; else `name` from the hub (a download).
    A `local` path ending in .gguf loads as `gguf_file` inside its folder."""
    if spec.source not in ("auto", "hub", "local"):
        raise ValueError(f"model source must be auto, hub or local, got {spec.source!r}")
    local = Path(spec.local).expanduser() if spec.local else None
    name_is_path = Path(spec.name).expanduser().exists()
    use_local = spec.source == "local" or (spec.source == "auto" and local is not None and local.exists()
                                           and not name_is_path and not _in_hub_cache(spec.name, spec.revision))
    if use_local and local is not None:
        if not local.exists():
            raise FileNotFoundError(_missing(spec, None))
        if local.suffix == ".gguf":
            return replace(spec, name=str(local.parent), gguf_file=local.name, revision=None, source="local")
        return replace(spec, name=str(local), gguf_file=None, revision=None, source="local")
    if spec.source == "local" and not name_is_path:
        raise FileNotFoundError(f"model source=local but neither `local` ({spec.local!r}) nor `name` "
                                f"({spec.name!r}) is a local path")
    return replace(spec, source="local" if name_is_path else "hub")


def looks_like_path(name: str) -> bool:
    """A name only a local path can have (hub ids are `org/name`, never absolute or relative)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def _missing(spec: ModelSpec, err: Exception | None) -> str:
    hub = f"{spec.name!r} from the hub" + (f" ({type(err).__name__}: {err})" if err else "")
    return (f"no weights for this model: could not load {hub}, and its offline copy "
            f"{spec.local!r} does not exist. Fetch the offline copy with `specexp-fetch` "
            "(see README: Real model offline), or give a local path.")


def describe(spec: ModelSpec) -> str:
    """A resolved spec as one string for the metrics (what was actually loaded)."""
    where = f"{spec.name}/{spec.gguf_file}" if spec.gguf_file else spec.name
    return where + (f"@{spec.revision}" if spec.revision else "") + (f"[:{spec.layers} layers]" if spec.layers else "")


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so that a timer read after it covers the queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model_pair.device={device!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # full precision on CPU; bf16 where the GPU supports it, else fp16
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16") from None


def _load_error(what: str, spec: ModelSpec, err: Exception) -> ValueError:
    if spec.local and spec.source == "hub":  # the offline copy was missing (or source=hub): name both
        return ValueError(_missing(spec, err))
    if looks_like_path(spec.name) and not Path(spec.name).expanduser().exists():
        return ValueError(f"could not load {what} {spec.name!r}: no such directory: {spec.name} (a name starting "
                          "with /, ./, ../ or ~ is a local path; a hub id looks like org/name)")
    where = "local directory" if Path(spec.name).expanduser().exists() else "hub id (not a local path)"
    return ValueError(
        f"could not load {what} {spec.name!r} as a {where}"
        f"{' with gguf_file=' + repr(spec.gguf_file) if spec.gguf_file else ''}: {type(err).__name__}: {err}. "
        "Check the name, or give a local path; without network access hub ids cannot be downloaded."
    )


def load_model(spec: ModelSpec, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
    """A causal LM (or an encoder-decoder LM such as T5, when its config says so) in eval mode on
    `device`, loaded once per process. `spec` is resolved first (resolve_source); with `layers`,
    the first layers of the full model, sharing its weights."""
    spec = resolve_source(spec)  # idempotent: a resolved spec resolves to itself
    if spec.layers:
        full = load_model(replace(spec, layers=None), dtype, device, trust_remote_code)
        return truncate_layers(full, spec.layers)
    key = (spec.name, spec.gguf_file, spec.revision, str(dtype), str(device))
    if key not in _MODEL_CACHE:
        try:
            model = _auto_class(spec, trust_remote_code).from_pretrained(
                spec.name, gguf_file=spec.gguf_file, revision=spec.revision, dtype=dtype,
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError, EnvironmentError) as err:
            raise _load_error("model", spec, err) from err
        _MODEL_CACHE[key] = model.to(device).eval()
        LOAD_COUNT["models"] += 1
        log.info("loaded %s (%.1fM parameters) on %s", spec.name, n_params(model) / 1e6, device)
    return _MODEL_CACHE[key]


def _auto_class(spec: ModelSpec, trust_remote_code: bool):
    """AutoModelForSeq2SeqLM for encoder-decoder configs (T5, BART), else AutoModelForCausalLM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(spec.name, gguf_file=spec.gguf_file, revision=spec.revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, EnvironmentError):
        return AutoModelForCausalLM  # let the model load itself report the error
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def load_tokenizer(spec: ModelSpec, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    spec = resolve_source(spec)
    name = spec.tokenizer or spec.name
    try:
        return AutoTokenizer.from_pretrained(
            name, gguf_file=None if spec.tokenizer else spec.gguf_file, revision=spec.revision,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, EnvironmentError) as err:
        raise _load_error("tokenizer", spec, err) from err


def truncate_layers(model, n: int):
    """The first `n` decoder layers of a decoder-only `model`, then its final norm and LM head: a
    self-drafter (early exit) that shares every tensor with `model` (no copy, no extra memory).
    Works for models whose decoder keeps its blocks in `.layers` (Llama, Mistral, Qwen, Gemma...)."""
    import copy

    decoder = model.get_decoder()
    blocks = getattr(decoder, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"layers=N needs a decoder with a `.layers` list; {type(model).__name__} has none")
    if not 1 <= n <= len(blocks):
        raise ValueError(f"layers={n} but the model has {len(blocks)} decoder layers")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n]
    short_decoder = copy.copy(decoder)  # shallow: the same parameters; own module table and config
    short_decoder._modules = dict(decoder._modules)
    short_decoder.layers = torch.nn.ModuleList(list(blocks)[:n])
    short_decoder.config = config
    short = copy.copy(model)
    short._modules = dict(model._modules)
    short.config = config
    for name, child in model.named_children():
        if child is decoder:
            setattr(short, name, short_decoder)
    return short


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_vocab(target_tok, drafter_tok, target_name: str, drafter_name: str) -> None:
    """Speculative decoding compares token ids: both models must share one tokenizer."""
    if target_tok.get_vocab() != drafter_tok.get_vocab():
        raise ValueError(
            f"target {target_name!r} and drafter {drafter_name!r} have different tokenizers "
            f"({len(target_tok)} vs {len(drafter_tok)} tokens, or the same size with other ids); "
            "speculative decoding needs a drafter that shares the target's vocabulary"
        )


class Pair:
    """The loaded target and tokenizer, plus the other models of the pair by role ("drafter", ...),
    loaded on first use so that a strategy without a drafter never loads one."""

    def __init__(self, target: ModelSpec, others: dict[str, ModelSpec | None] | None = None,
                 dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.trust_remote_code = trust_remote_code
        self.specs = {role: (resolve_source(s) if s is not None else None)
                      for role, s in {"target": target, **(others or {})}.items()}  # as loaded (metrics)
        target = self.specs["target"]
        self.tokenizer = load_tokenizer(target, trust_remote_code)
        self.target = load_model(target, self.dtype, self.device, trust_remote_code)
        self._models = {"target": self.target}

    @property
    def vocab_size(self) -> int:  # the target's logit width: every distribution is over these ids
        return self.target.get_output_embeddings().weight.shape[0]

    def get(self, role: str):
        """The model playing `role` (e.g. "drafter"), loaded once and checked against the target's
        tokenizer."""
        if role not in self._models:
            spec = self.specs.get(role)
            if spec is None:
                raise ValueError(f"the strategy needs a {role!r} model but model_pair has none "
                                 f"(it has: {', '.join(k for k, v in self.specs.items() if v)})")
            target = self.specs["target"]
            if (spec.tokenizer or spec.name, spec.gguf_file) != (target.tokenizer or target.name, target.gguf_file):
                check_same_vocab(self.tokenizer, load_tokenizer(spec, self.trust_remote_code), target.name, spec.name)
            self._models[role] = load_model(spec, self.dtype, self.device, self.trust_remote_code)
        return self._models[role]

    @property
    def drafter(self):
        return self.get("drafter")
