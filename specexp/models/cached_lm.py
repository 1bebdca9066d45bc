"""`CachedLM`: a causal LM that owns its KV cache, feeds only the tokens the cache has not seen,
rolls back rejected positions, and counts and times its forwards. `SubsetHeadLM`: the same with an
LM head over a vocabulary subset; `Seq2SeqLM`: the same for an encoder-decoder model;
`cached_lm` picks the one that fits. Loading the models is specexp.models.loading."""
from __future__ import annotations

import functools
import inspect
import time

import torch

from specexp.models.loading import mapped_cuda_devices, sync


@functools.lru_cache(maxsize=None)
def _takes_cache(cls) -> bool:
    fn = getattr(cls, "forward", None) or cls.__call__
    return "cache" in inspect.signature(fn).parameters


def cache_arg(module, cache) -> dict:
    """The KV cache as `module`'s forward takes it: `cache=` (transformers 5.x, where
    `past_key_values=` is deprecated and goes in 5.40), else `past_key_values=` (4.x)."""
    return {"cache" if _takes_cache(type(module)) else "past_key_values": cache}


def cache_of(out):
    """The updated KV cache of a model output: `cache` where the output has that field
    (transformers 5.x; None when the forward kept no cache), else `past_key_values` (4.x, and
    outputs that still declare the old name). On a 5.x output `past_key_values` is a deprecated
    alias that logs a warning, so it is never read there."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


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
        self._spans_gpus = len(mapped_cuda_devices(model)) > 1  # a device-mapped model over several GPUs: timed by the clock
        self.reset()

    def _timed(self, slots: tuple[int, ...], fn, *args):
        """fn(*args), its time added to `_seconds[i]` for i in `slots`."""
        if args[0].device.type != "cuda" or self._spans_gpus:  # args[0]: the ids fed
            if self._spans_gpus:  # a device map over several GPUs: one device's events miss the others' work
                sync(args[0].device)
            t0 = time.perf_counter()
            out = fn(*args)
            if self._spans_gpus:
                sync(args[0].device)
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
    def forward(self, ids: torch.Tensor, keep: int | None = None, tree: torch.Tensor | None = None,
                tree_cached: int = 0) -> torch.Tensor:
        """Feed ids [n] after the cached prefix; return float32 logits [keep or n, V] for the next
        token after each of the last `keep` fed positions. With `tree` (parent indices of a token
        tree, specexp/core/tree.py, whose first `tree_cached` nodes are the last cached positions
        and whose other nodes are the last ids fed), each node sees what precedes the tree and its
        own ancestors only, at position (the tree's first position + its depth)."""
        prefill = self.length == 0
        if tree is None:
            logits = self._timed((0, 1) if prefill else (0,), self._step, ids, keep)
        else:
            logits = self._timed((0, 1) if prefill else (0,), self._tree_step, ids, keep, tree, tree_cached)
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

    def _step(self, ids: torch.Tensor, keep: int | None, **tree) -> torch.Tensor:
        """The model call: feed ids [n] after the cache, update the cache, return float32 logits
        [keep or n, V'] (subclasses: other model kinds, e.g. encoder-decoder). `tree`: a token
        tree's attention_mask and position_ids (_tree_step)."""
        if self.keep_hidden:  # a feature drafter or Medusa asks: decoder, then the head on `keep` rows
            dec = self.model.get_decoder()
            out = dec(input_ids=ids[None], **cache_arg(dec, self.cache), use_cache=True, **tree)
            # hidden: [n, H], every fed position (a device-mapped model leaves it on its last layer's device)
            self.cache, self.hidden = cache_of(out), out.last_hidden_state[0].to(ids.device)
            return self.model.get_output_embeddings()(self.hidden[-(keep or ids.shape[0]):]).float().to(ids.device)
        out = self.model(input_ids=ids[None], **cache_arg(self.model, self.cache), use_cache=True,
                         logits_to_keep=keep or 0, **tree)
        self.cache = cache_of(out)
        return out.logits[0].float().to(ids.device)  # a no-op but for a device map (accelerate returns it there too)

    def _tree_step(self, ids: torch.Tensor, keep: int | None, parents: torch.Tensor, cached: int) -> torch.Tensor:
        """`_step` over ids whose last m = len(parents) form a tree: an additive 4D mask (0 where a
        query sees a key, the dtype's minimum elsewhere) and depth-based position ids. Transformers
        (4.56+, masking_utils) passes a 4D mask through as it is, and both the eager path (which adds
        it to the scores) and sdpa (which takes a float mask as additive) read it the same way; a
        boolean mask would be added as 0/1 on the eager path, hence float in the model's dtype."""
        if type(self)._step is not CachedLM._step:
            raise ValueError(f"token trees need a plain decoder-only model ({type(self).__name__} cannot verify a "
                             "tree): use a chain proposer for this pair")
        dtype = next(self.model.parameters()).dtype
        n_context = ids.shape[0] - (parents.shape[0] - cached)
        mask, positions = tree_attention(parents.tolist(), self.length, n_context, dtype, ids.device, cached)
        return self._step(ids, keep, attention_mask=mask, position_ids=positions)

    def crop(self, length: int) -> None:
        """Keep only the first `length` cached positions (drop rejected drafts)."""
        if length < self.length:
            self.cache.crop(length - self.length)  # negative = tokens to drop (old and new transformers)
            self.length = length

    @torch.inference_mode()
    def keep_path(self, start: int, kept: list[int]) -> None:
        """Keep the first `start` cached positions and then the positions `kept` (increasing, each
        >= start: a tree's accepted path), gathered into place right after the prefix; drop the
        rest. A contiguous `kept` (a chain's accepted drafts) is a plain `crop`."""
        m = len(kept)
        if kept != list(range(start, start + m)):
            idx = torch.tensor(kept, device=self.cache_tensors()[0][0].device)
            for keys, values in self.cache_tensors():  # [B, heads, L, D]; the right side is a copy
                keys[..., start:start + m, :] = keys[..., idx, :]
                values[..., start:start + m, :] = values[..., idx, :]
        self.crop(start + m)

    def cache_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer of a plain DynamicCache (a gather needs every position kept:
        a sliding-window layer that forgets positions cannot keep a tree's path)."""
        layers = getattr(self.cache, "layers", None)
        if layers is None or any(hasattr(layer, "sliding_window") or not hasattr(layer, "keys") for layer in layers):
            raise ValueError(f"token trees need a DynamicCache of full-attention layers, got {type(self.cache).__name__}"
                             ": use a chain proposer for this model")
        return [(layer.keys, layer.values) for layer in layers]


def tree_attention(parents: list[int], n_cached: int, n_context: int, dtype: torch.dtype,
                   device, tree_cached: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive attention mask [1, 1, q, n_cached + q] and position ids [1, q] of a forward
    feeding q = `n_context` sequence tokens, then the nodes of a tree (parents[i] < i; -1: a
    child of the token before the tree) after `n_cached` cached positions, the last `tree_cached`
    of which are the tree's first nodes (fed by an earlier forward; then n_context is 0).
      a context token sees the cache and the context up to itself (causal);
      a node sees everything before the tree, its ancestors and itself;
      a node's position is the tree's first position plus its depth (siblings share a position)."""
    if tree_cached and n_context:
        raise ValueError("a forward that extends a cached tree feeds tree nodes only")
    n, q = len(parents), n_context + len(parents) - tree_cached
    start = n_cached + n_context - tree_cached  # the tree's first position
    anc = torch.zeros(n, n, dtype=torch.bool)  # anc[i, j]: node j is node i or one of its ancestors
    depth = [0] * n
    for i, parent in enumerate(parents):  # topological order: a node's ancestors are set before it
        if parent >= 0:
            anc[i], depth[i] = anc[parent], depth[parent] + 1
        anc[i, i] = True
    see = torch.zeros(q, n_cached + q, dtype=torch.bool)
    see[:, :start] = True
    see[:n_context, n_cached:start] = torch.ones(n_context, n_context, dtype=torch.bool).tril()
    see[n_context:, start:] = anc[tree_cached:]
    mask = torch.zeros(see.shape, dtype=dtype).masked_fill(~see, torch.finfo(dtype).min)
    positions = list(range(n_cached, start)) + [start + d for d in depth[tree_cached:]]
    return mask[None, None].to(device), torch.tensor([positions], device=device)


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
    from specexp.models.prompt_ids import room

    for role, lm in lms.items():
        need, limit = lm.positions_needed(n_prompt, max_new_tokens), lm.max_positions
        if limit is not None and need > limit:
            fits = room(lm, max_new_tokens)
            fix = (f"lower max_new_tokens, or set dataset.max_prompt_tokens <= {fits} or auto (cuts each prompt "
                   f"to fit; dataset.truncate picks the part kept)" if fits else
                   "lower max_new_tokens: with this many new tokens not even a one-token prompt fits")
            raise ValueError(f"{what} ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) needs {need} positions, "
                             f"but the {role} model reads at most {limit} (its config's position limit): {fix}")
