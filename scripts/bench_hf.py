"""The transformers side of scripts/bench.py: forward clocks on model objects, the rounds of
transformers' assisted generation, and its sampling and assistant settings."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

from specexp.models.sampling import Sampling


class ForwardClock:
    """Forwards of one model object and the wall time inside them (hooks around the top-level
    call). Layer-truncated models are shallow copies that share the target's hook tables, so each
    clock only counts calls of its own object. The first forward after `reset` is the prefill."""

    def __init__(self, model, sync: Callable[[], None]):
        self.model, self.sync = model, sync
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]
        self.reset()

    def reset(self) -> None:
        self.forwards, self.seconds, self.prefill_seconds, self._t0 = 0, 0.0, 0.0, None

    def _pre(self, module, *_):
        if module is self.model:
            self.sync()
            self._t0 = time.perf_counter()

    def _post(self, module, *_):
        if module is self.model and self._t0 is not None:
            self.sync()
            dt = time.perf_counter() - self._t0
            self.prefill_seconds += dt if self.forwards == 0 else 0.0
            self.seconds += dt
            self.forwards += 1
            self._t0 = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def counting_rounds(model):
    """Yields a list that fills with (drafted, accepted) per round of transformers' assisted
    generation on `model`: its candidate generator's `update_candidate_strategy(input_ids,
    scores, num_matches)` sees scores for the candidates plus one, and the matches kept."""
    rounds: list[tuple[int, int]] = []
    original = model._get_candidate_generator

    def wrapped(*args, **kwargs):
        gen = original(*args, **kwargs)
        update = gen.update_candidate_strategy

        def record(input_ids, scores, num_matches):
            rounds.append((int(scores.shape[1]) - 1, int(num_matches)))
            return update(input_ids, scores, num_matches)

        gen.update_candidate_strategy = record
        return gen

    model._get_candidate_generator = wrapped  # an instance attribute shadows the method
    try:
        yield rounds
    finally:
        del model._get_candidate_generator


def hf_sampling(s: Sampling) -> dict:
    if s.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": s.temperature, "top_k": 0, "top_p": 1.0}  # HF's default top_k is 50


def set_assistant(model, gamma: int) -> None:
    """transformers reads the assisted-generation settings from the assistant's generation_config."""
    gc = model.generation_config
    gc.num_assistant_tokens = gamma
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0  # 0 = off: always draft num_assistant_tokens
