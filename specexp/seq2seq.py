"""Encoder-decoder models (T5, FLAN-T5, BART) in the decode loop.

`Seq2SeqLM` is the `CachedLM` of an encoder-decoder model: `start(prompt)` runs the encoder once
over the prompt and keeps its output; the sequence the loop decodes is then the decoder's, which
begins with the decoder start token. `forward`/`crop` feed and roll back the decoder's
self-attention cache exactly as `CachedLM` does for a causal LM (the cross-attention cache, a
function of the encoder output only, is computed on the first decoder forward and kept).

Forward counts: `forwards` counts decoder forwards (one per draft step, review or verification,
as for a causal LM); the one encoder pass per sample is counted apart, in `encoder_forwards`,
and its time is not in `forward_seconds` (the autoregressive baseline pays it too).
"""
from __future__ import annotations

import torch

from specexp.models import CachedLM


class Seq2SeqLM(CachedLM):
    """An encoder-decoder LM with its own decoder KV cache and the encoder output of the current
    sample. Invariant as in `CachedLM`: the cache holds the first `length` decoder tokens."""

    def __init__(self, model, vocab_size: int | None = None):
        self.encoder_forwards = 0  # encoder passes since construction (one per sample)
        self.encoder_out = None
        super().__init__(model, vocab_size=vocab_size)
        cfg = model.config
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None:
            gen = getattr(model, "generation_config", None)
            start = getattr(gen, "decoder_start_token_id", None)
        if start is None:
            start = cfg.pad_token_id
        if start is None:
            raise ValueError(f"{type(model).__name__}: no decoder_start_token_id (nor pad_token_id) in the config")
        self.decoder_start = int(start)

    def reset(self) -> None:
        super().reset()
        self.encoder_out = None

    @torch.inference_mode()
    def start(self, prompt: torch.Tensor) -> torch.Tensor:
        """Encode `prompt` [L] once; return the decoder's start sequence [1] (the start token)."""
        self.reset()
        self.encoder_out = self.model.get_encoder()(input_ids=prompt[None], return_dict=True)
        self.encoder_forwards += 1
        return torch.tensor([self.decoder_start], device=prompt.device, dtype=prompt.dtype)

    def _step(self, ids: torch.Tensor, keep: int | None) -> torch.Tensor:
        if self.encoder_out is None:
            raise RuntimeError("Seq2SeqLM.forward before start(prompt): the encoder has not run")
        out = self.model(encoder_outputs=self.encoder_out, decoder_input_ids=ids[None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        logits = out.logits[0]
        return (logits[-keep:] if keep else logits).float()
