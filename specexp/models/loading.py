"""Models: where their weights come from (`resolve_source`), loading a target/drafter pair
(`load_model`, `load_tokenizer`, `Pair`), devices and dtypes. The LM wrapper that owns a KV cache
(`CachedLM`) is specexp.models.cached_lm."""
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


@dataclass(frozen=True)
class Placement:
    """Where a model's layers go (accelerate's big-model inference through transformers'
    from_pretrained). `device_map` None: the whole model on the pair's `device`; "auto",
    "balanced", "balanced_low_0", "sequential" or a {module name: device} dict: layers spread
    over the GPUs, the CPU and `offload_folder` on disk, within `max_memory` per device."""

    device_map: Any = None  # None | "auto" | "balanced" | "balanced_low_0" | "sequential" | {module: 0 / "cpu" / "disk"}
    max_memory: Any = None  # {device: "10GiB", "cpu": "30GiB"}; None = what each device has free
    offload_folder: str | None = None  # where layers placed on "disk" are written (needed when any are)

    def key(self) -> tuple:
        """Hashable, for the model cache."""
        return tuple(repr(sorted((str(k), v) for k, v in x.items()) if isinstance(x, dict) else x)
                     for x in (self.device_map, self.max_memory, self.offload_folder))


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
    spec = split_gguf(spec)
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


def split_gguf(spec: ModelSpec) -> ModelSpec:
    """A `name` that is a .gguf file loads as `gguf_file` inside its folder (transformers takes
    the two apart)."""
    path = Path(spec.name).expanduser()
    if spec.gguf_file is None and path.suffix == ".gguf" and path.is_file():
        return replace(spec, name=str(path.parent), gguf_file=path.name)
    return spec


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


# CUDA devices that a model loaded with a device map spans besides the pair's device: `sync` waits
# for them too (a forward's last layers may run on another GPU than its first).
_MAPPED_CUDA: set[torch.device] = set()


def mapped_cuda_devices(model) -> set[torch.device]:
    """The CUDA devices a model loaded with a device map (accelerate) runs its layers on; empty
    for a model without one."""
    where = getattr(model, "hf_device_map", None) or {}
    return {torch.device(f"cuda:{d}" if isinstance(d, int) else str(d)) for d in where.values()
            if isinstance(d, int) or str(d).startswith("cuda")}


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so that a timer read after it covers the queued work, and for
    every other GPU a device-mapped model runs on."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for other in _MAPPED_CUDA - {device}:
        torch.cuda.synchronize(other)


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


def load_model(spec: ModelSpec, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
               placement: Placement | None = None):
    """A causal LM (or an encoder-decoder LM such as T5, when its config says so) in eval mode on
    `device`, loaded once per process. `spec` is resolved first (resolve_source); with `layers`,
    the first layers of the full model, sharing its weights. With a device map (`placement`),
    accelerate places the layers (GPUs, CPU, disk) and moves the inputs of each layer to its
    device: the model is not moved to `device`, and its outputs come back where its inputs were."""
    spec = resolve_source(spec)  # idempotent: a resolved spec resolves to itself
    placement = placement or Placement()
    if spec.layers:
        full = load_model(replace(spec, layers=None), dtype, device, trust_remote_code, placement)
        return truncate_layers(full, spec.layers)
    key = (spec.name, spec.gguf_file, spec.revision, str(dtype), str(device), placement.key())
    if key not in _MODEL_CACHE:
        mapped = placement.device_map is not None
        extra = ({"device_map": _plain(placement.device_map), "max_memory": _plain(placement.max_memory),
                  "offload_folder": placement.offload_folder} if mapped else {})
        try:
            model = _auto_class(spec, trust_remote_code).from_pretrained(
                spec.name, gguf_file=spec.gguf_file, revision=spec.revision, dtype=dtype,
                trust_remote_code=trust_remote_code, **extra,
            )
        except (OSError, ValueError, EnvironmentError) as err:
            raise _load_error("model", spec, err) from err
        if mapped:
            _MAPPED_CUDA.update(mapped_cuda_devices(model))
            log.info("placed %s by device map: %s", spec.name, _summary(getattr(model, "hf_device_map", {})))
        _MODEL_CACHE[key] = (model if mapped else model.to(device)).eval()
        LOAD_COUNT["models"] += 1
        log.info("loaded %s (%.1fM parameters) on %s", spec.name, n_params(model) / 1e6,
                 "its device map" if mapped else device)
    return _MODEL_CACHE[key]


def _plain(x):
    """A config value as from_pretrained takes it: dicts with int GPU indices ("0" from YAML keys too)."""
    if isinstance(x, dict) or hasattr(x, "items"):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _plain(v) for k, v in x.items()}
    return x


def _summary(device_map: dict) -> str:
    """How many modules a device map puts where, e.g. "cuda:0 x12, cpu x3, disk x2"."""
    counts: dict[str, int] = {}
    for d in device_map.values():
        counts[str(d)] = counts.get(str(d), 0) + 1
    return ", ".join(f"{d} x{n}" for d, n in counts.items())


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


def tokenizer_mismatch(target_tok, other_tok, target_name: str, other_name: str, role: str = "drafter") -> ValueError:
    """The error for a model whose tokenizer is not the target's: it names both tokenizers and the
    ways out (speculative decoding compares token ids, so a drafter must share the target's vocabulary)."""
    return ValueError(
        f"the target {target_name!r} ({len(target_tok)} tokens) and the {role} {other_name!r} "
        f"({len(other_tok)} tokens) have different tokenizers{' (the same size, other ids)' if len(target_tok) == len(other_tok) else ''}, "
        f"and this strategy compares token ids. Choose a {role} with the target's tokenizer "
        f"(model_pair.{role}.name), or a drafter that drafts through text: the default `speculative` strategy "
        "does so under greedy decoding (sampling=greedy)")


def check_same_vocab(target_tok, drafter_tok, target_name: str, drafter_name: str) -> None:
    """Speculative decoding compares token ids: both models must share one tokenizer."""
    if target_tok.get_vocab() != drafter_tok.get_vocab():
        raise tokenizer_mismatch(target_tok, drafter_tok, target_name, drafter_name)


class Pair:
    """The target's tokenizer, then the models of the pair by role ("target", "drafter", ...), each
    loaded on first use: a strategy without a drafter never loads one (nor its tokenizer). A role's
    tokenizer is compared with the target's before that role's weights or the target's load
    (`shares_tokenizer`, `get`: the strategy asks for its drafter before the target's weights), so a
    drafter with another vocabulary shows before a large target loads; specexp.experiment.validate refuses a
    strategy that cannot draft across tokenizers before the pair is even built."""

    def __init__(self, target: ModelSpec, others: dict[str, ModelSpec | None] | None = None,
                 dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                 placement: Placement | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.trust_remote_code = trust_remote_code
        self.placement = placement or Placement()  # the target's device map (big-model inference), if any
        self.specs = {role: (resolve_source(s) if s is not None else None)
                      for role, s in {"target": target, **(others or {})}.items()}  # as loaded (metrics)
        self._tokenizers: dict[str, Any] = {}
        self._shares: dict[str, bool] = {}
        self._models: dict[str, Any] = {}
        self.tokenizer = self.tokenizer_of("target")

    def _spec(self, role: str) -> ModelSpec:
        spec = self.specs.get(role)
        if spec is None:
            raise ValueError(f"the strategy needs a {role!r} model but model_pair has none "
                             f"(it has: {', '.join(k for k, v in self.specs.items() if v)})")
        return spec

    def tokenizer_of(self, role: str):
        """The tokenizer of the model playing `role`, loaded once ("target": `pair.tokenizer`)."""
        if role not in self._tokenizers:
            self._tokenizers[role] = load_tokenizer(self._spec(role), self.trust_remote_code)
        return self._tokenizers[role]

    def shares_tokenizer(self, role: str) -> bool:
        """Whether `role`'s tokenizer is the target's (the same token -> id table): from the
        tokenizers alone, no weights load."""
        if role not in self._shares:
            spec, target = self._spec(role), self.specs["target"]
            same_files = (spec.tokenizer or spec.name, spec.gguf_file) == (target.tokenizer or target.name, target.gguf_file)
            self._shares[role] = same_files or self.tokenizer_of(role).get_vocab() == self.tokenizer.get_vocab()
        return self._shares[role]

    @property
    def target(self):
        """The target model, loaded on first use (after every tokenizer check)."""
        return self.get("target")

    @property
    def vocab_size(self) -> int:  # the target's logit width: every distribution is over these ids
        return self.target.get_output_embeddings().weight.shape[0]

    def get(self, role: str, other_tokenizer: bool = False):
        """The model playing `role` (e.g. "drafter"), loaded once. A model whose tokenizer is not
        the target's is refused (ValueError naming both and the way out, before its weights or the
        target's load) unless `other_tokenizer`: the caller maps between the vocabularies itself
        (e.g. through text)."""
        spec = self._spec(role)
        if not other_tokenizer and not self.shares_tokenizer(role):
            raise tokenizer_mismatch(self.tokenizer, self.tokenizer_of(role), self.specs["target"].name, spec.name, role)
        if role not in self._models:
            placement = self.placement if role == "target" else Placement()
            self._models[role] = load_model(spec, self.dtype, self.device, self.trust_remote_code, placement)
        return self._models[role]

    @property
    def drafter(self):
        return self.get("drafter")
