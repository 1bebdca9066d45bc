"""Models and their caches: loading a target/drafter pair, and `CachedLM`, a causal LM that owns
its KV cache, feeds only the tokens the cache has not seen, rolls back rejected positions and
counts and times its forwards (`Seq2SeqLM`: the same for an encoder-decoder model; `cached_lm`
picks the one that fits).
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
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


@functools.lru_cache(maxsize=None)
def _takes_cache(cls) -> bool:
    fn = getattr(cls, "forward", None) or cls.__call__
    return "cache" in inspect.signature(fn).parameters


def cache_arg(module, cache) -> dict:
    """The KV cache as `module`'s forward takes it: `cache=` (transformers 5.x, where
    `past_key_values=` is deprecated and goes in 5.40), else `past_key_values=` (4.x)."""
    return {"cache" if _takes_cache(type(module)) else "past_key_values": cache}


def cache_of(out):
    """The updated KV cache of a model output (`cache` in 5.x, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class CachedLM:
    """A causal LM with its own KV cache. Invariant: the cache holds the first `length` tokens of
    the sequence being decoded; `forward` feeds the next tokens and extends it; `crop` rolls back.

    Counters since construction (all samples): `forwards` and `forward_seconds` (of which
    `prefills` / `prefill_seconds`: forwards from an empty cache), and `encoder_forwards` /
    `encoder_seconds` (encoder passes of an encoder-decoder model: 0 here). Seconds are wall time
    on CPU and CUDA event time on a GPU (recorded without synchronising, resolved when read)."""

    def __init__(self, model, vocab_size: int | None = None):
        self.model = model
        self.vocab_size = vocab_size  # pad/cut logits to this width (the target's), None = as is
        self.forwards = 0
        self.prefills = 0
        self.encoder_forwards = 0
        self._seconds = [0.0, 0.0, 0.0]  # [forwards, prefill forwards, encoder passes]
        self._events: list = []  # CUDA (start, end, slots) not yet added to _seconds
        self.reset()

    def _timed(self, slots: tuple[int, ...], fn, *args):
        """fn(*args), its time added to `_seconds[i]` for i in `slots`."""
        if args[0].device.type != "cuda":  # args[0]: the ids fed
            t0 = time.perf_counter()
            out = fn(*args)
            for i in slots:
                self._seconds[i] += time.perf_counter() - t0
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args)
        end.record()
        self._events.append((start, end, slots))
        return out

    def _resolve(self) -> list[float]:
        for start, end, slots in self._events:
            end.synchronize()
            for i in slots:
                self._seconds[i] += start.elapsed_time(end) / 1000.0
        self._events.clear()
        return self._seconds

    @property
    def forward_seconds(self) -> float:
        return self._resolve()[0]

    @property
    def prefill_seconds(self) -> float:
        return self._resolve()[1]

    @property
    def encoder_seconds(self) -> float:
        return self._resolve()[2]

    @property
    def max_positions(self) -> int | None:
        """The most positions the model reads (its config's position limit), None if it has none."""
        cfg = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(n := getattr(cfg, key, None), int) and n > 0:
                return n
        return None

    def positions_needed(self, n_prompt: int, max_new_tokens: int) -> int:
        """Positions a decode of `max_new_tokens` after `n_prompt` prompt tokens may read."""
        return n_prompt + max_new_tokens

    def reset(self) -> None:
        self.cache = None
        self.length = 0
        self.hidden = None  # last hidden states of the last forward's positions (only with keep_hidden)

    keep_hidden = False  # keep `hidden` (set by the decode loop when the proposer needs_features)

    def start(self, prompt: torch.Tensor) -> torch.Tensor:
        """Begin a sample: empty the cache and return the sequence decoding continues from (for a
        decoder-only model, the prompt itself; `Seq2SeqLM` encodes the prompt and returns the
        decoder's start token)."""
        self.reset()
        return prompt

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Feed ids [n] after the cached prefix; return float32 logits [keep or n, V] for the next
        token after each of the last `keep` fed positions."""
        prefill = self.length == 0
        logits = self._timed((0, 1) if prefill else (0,), self._step, ids, keep)
        self.length += ids.shape[0]
        self.forwards += 1
        self.prefills += prefill
        if self.vocab_size is not None and logits.shape[-1] != self.vocab_size:
            v = self.vocab_size
            if logits.shape[-1] > v:  # drafter head padded wider than the target's: ids >= V can't be drafted
                logits = logits[:, :v]
            else:
                logits = torch.nn.functional.pad(logits, (0, v - logits.shape[-1]), value=float("-inf"))
        return logits

    def _step(self, ids: torch.Tensor, keep: int | None) -> torch.Tensor:
        """The model call: feed ids [n] after the cache, update the cache, return float32 logits
        [keep or n, V'] (subclasses: other model kinds, e.g. encoder-decoder)."""
        if self.keep_hidden:  # a feature drafter asks (proposers/eagle.py): decoder, then the head on `keep` rows
            dec = self.model.get_decoder()
            out = dec(input_ids=ids[None], **cache_arg(dec, self.cache), use_cache=True)
            self.cache, self.hidden = cache_of(out), out.last_hidden_state[0]  # hidden: [n, H], every fed position
            return self.model.get_output_embeddings()(self.hidden[-(keep or ids.shape[0]):]).float()
        out = self.model(input_ids=ids[None], **cache_arg(self.model, self.cache), use_cache=True,
                         logits_to_keep=keep or 0)
        self.cache = cache_of(out)
        return out.logits[0].float()

    def crop(self, length: int) -> None:
        """Keep only the first `length` cached positions (drop rejected drafts)."""
        if length < self.length:
            self.cache.crop(length - self.length)  # negative = tokens to drop (old and new transformers)
            self.length = length


class SubsetHeadLM(CachedLM):
    """A drafter whose LM head scores only a subset of the vocabulary (`ids`, e.g. the tokens the
    target predicts most often; FR-Spec, Zhao et al. 2025): on a small drafter the full head is
    most of a forward's cost. The logits of all other ids are -inf, so drafts come from the subset
    and `q` is a proper distribution over it: verification stays exact (greedy or sampling)."""

    def __init__(self, model, ids: torch.Tensor, vocab_size: int | None = None):
        super().__init__(model, vocab_size)
        head = model.get_output_embeddings()
        self.width = head.weight.shape[0]  # the full head's width
        self.ids = ids.to(head.weight.device)
        self.weight = head.weight.detach()[self.ids]  # [N, hidden]: a copy of N rows
        self.bias = None if getattr(head, "bias", None) is None else head.bias.detach()[self.ids]

    def _step(self, ids: torch.Tensor, keep: int | None) -> torch.Tensor:
        dec = self.model.get_decoder()
        out = dec(input_ids=ids[None], **cache_arg(dec, self.cache), use_cache=True)
        self.cache = cache_of(out)
        h = out.last_hidden_state[0, -(keep or ids.shape[0]):]
        sub = torch.nn.functional.linear(h, self.weight, self.bias).float()
        logits = sub.new_full((h.shape[0], self.width), float("-inf"))
        logits[:, self.ids] = sub
        return logits


class Seq2SeqLM(CachedLM):
    """An encoder-decoder LM (T5, FLAN-T5, BART): `start(prompt)` runs the encoder once over the
    prompt and keeps its output; the sequence the loop decodes is the decoder's, which begins
    with the decoder start token. `forward`/`crop` feed and roll back the decoder's
    self-attention cache exactly as `CachedLM` does (the cross-attention cache, a function of the
    encoder output only, is computed on the first decoder forward and kept).

    `forwards` counts decoder forwards (one per draft step, review or verification, as for a
    causal LM); the encoder pass is counted in `encoder_forwards` and timed in `encoder_seconds`
    (the decode loop times `start`, so it is in the sample's wall time, on both sides)."""

    def __init__(self, model, vocab_size: int | None = None):
        self.encoder_out = None
        super().__init__(model, vocab_size=vocab_size)
        cfg, gen = model.config, getattr(model, "generation_config", None)
        start = next((s for s in (getattr(cfg, "decoder_start_token_id", None),
                                  getattr(gen, "decoder_start_token_id", None), cfg.pad_token_id) if s is not None), None)
        if start is None:
            raise ValueError(f"{type(model).__name__}: no decoder_start_token_id (nor pad_token_id) in the config")
        self.decoder_start = int(start)

    def positions_needed(self, n_prompt: int, max_new_tokens: int) -> int:
        """The encoder reads the prompt; the decoder its start token and the new tokens."""
        return max(n_prompt, 1 + max_new_tokens)

    def reset(self) -> None:
        super().reset()
        self.encoder_out = None

    @torch.inference_mode()
    def start(self, prompt: torch.Tensor) -> torch.Tensor:
        """Encode `prompt` [L] once; return the decoder's start sequence [1] (the start token)."""
        self.reset()
        self.encoder_out = self._timed((2,), self._encode, prompt)
        self.encoder_forwards += 1
        return torch.tensor([self.decoder_start], device=prompt.device, dtype=prompt.dtype)

    def _encode(self, prompt: torch.Tensor):
        return self.model.get_encoder()(input_ids=prompt[None], return_dict=True)

    def _step(self, ids: torch.Tensor, keep: int | None) -> torch.Tensor:
        if self.encoder_out is None:
            raise RuntimeError("Seq2SeqLM.forward before start(prompt): the encoder has not run")
        out = self.model(encoder_outputs=self.encoder_out, decoder_input_ids=ids[None],
                         **cache_arg(self.model, self.cache), use_cache=True)
        self.cache = cache_of(out)
        logits = out.logits[0]
        return (logits[-keep:] if keep else logits).float()


def cached_lm(model, vocab_size: int | None = None) -> CachedLM:
    """The cached wrapper that fits `model`: `Seq2SeqLM` for encoder-decoder models, `CachedLM`
    otherwise."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return Seq2SeqLM(model, vocab_size=vocab_size)
    return CachedLM(model, vocab_size=vocab_size)


def check_context(lms: dict[str, CachedLM], n_prompt: int, max_new_tokens: int, what: str = "the prompt") -> None:
    """Refuse a decode that would read past a model's position limit (its config's
    max_position_embeddings / n_positions), naming both numbers and the keys that fix it."""
    for role, lm in lms.items():
        need, limit = lm.positions_needed(n_prompt, max_new_tokens), lm.max_positions
        if limit is not None and need > limit:
            raise ValueError(
                f"{what} ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) needs {need} positions, but the "
                f"{role} model reads at most {limit} (its config's position limit): lower max_new_tokens, or set "
                f"dataset.max_prompt_tokens <= {max(0, limit - max_new_tokens)} (keeps the end of each prompt)")
