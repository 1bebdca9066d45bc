"""Baselines, not methods: a random length (`RandomGamma`) and the greedy oracle (`Oracle`, an
upper bound that asks the target itself)."""
from __future__ import annotations

import random

import torch

from specexp.length.base import Decision, DraftStep, LengthPolicy
from specexp.models import token_entropy


class RandomGamma(LengthPolicy):
    """A draft length drawn uniformly from [min_gamma, max_gamma] each round, from its own seeded
    generator (never the sampling generator, so the output distribution is untouched). `reset`
    re-seeds: every sample sees the same sequence of lengths unless state is carried."""

    def __init__(self, min_gamma: int = 1, max_gamma: int = 8, seed: int = 0):
        if not 1 <= min_gamma <= max_gamma:
            raise ValueError(f"need 1 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        super().__init__(max_len=max_gamma)
        self.min_gamma, self.max_gamma, self.seed = min_gamma, max_gamma, seed
        self.reset()

    def begin(self) -> int:
        return self._rng.randint(self.min_gamma, self.max_gamma)

    def reset(self) -> None:
        self._rng = random.Random(self.seed)


class Oracle(LengthPolicy):
    """UPPER BOUND, not a method: drafts exactly the tokens the target will accept (greedy
    decoding only). Before each draft token it runs the target itself (its own KV cache, not
    counted in the run's target forwards) and stops before the first token the target's argmax
    disagrees with, or at `max_len`. It only chooses the length; the tokens are the drafter's."""

    needs_steps = True
    greedy_only = True  # the target's argmax is the oracle: under sampling there is none

    def __init__(self, max_len: int = 10):
        super().__init__(max_len=max_len)
        self.lm = None
        self._seq: torch.Tensor | None = None  # the tokens in the oracle's cache

    def bind(self, pair) -> "Oracle":
        from specexp.models.cached_lm import CachedLM

        self.lm = CachedLM(pair.target, vocab_size=getattr(pair, "vocab_size", None))
        self._seq = None
        return self

    def decide(self, step: DraftStep) -> Decision:
        if self.lm is None:
            raise RuntimeError("the oracle length policy needs the target model: call bind(pair) first")
        if token_entropy.is_greedy(step) is False or step.prefix is None:
            raise ValueError("the oracle length policy supports greedy decoding with a model drafter only "
                             "(sampling=greedy)")
        drafted = list(step.drafted or [])[: step.position]
        seq = torch.cat([step.prefix, torch.stack(drafted).to(step.prefix)]) if drafted else step.prefix
        best = int(self._next_logits(seq).argmax())
        return Decision.CONTINUE if best == int(step.token) else Decision.STOP_BEFORE

    def _next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """The target's logits for the token after `seq`, reusing the cache's common prefix."""
        n = 0
        if self._seq is not None:
            m = min(self._seq.shape[0], seq.shape[0], self.lm.length)
            same = (self._seq[:m] == seq[:m]).int()
            n = int(same.cumprod(0).sum()) if m else 0
        n = min(n, seq.shape[0] - 1)  # always feed at least the last token
        if self.lm.length > n:
            self.lm.crop(n)
        logits = self.lm.forward(seq[self.lm.length:], keep=1)[-1]
        self._seq = seq
        return logits

    def reset(self) -> None:
        if self.lm is not None:
            self.lm.reset()
        self._seq = None
