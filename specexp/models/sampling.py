"""Turning logits into the distribution we sample from.

The same `Sampling` object processes the target's and the drafter's logits, so temperature,
top-k and top-p are applied identically on both sides (a pitfall of public code: filtering one
side only breaks losslessness).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 = sample from softmax(logits / T)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: keep the smallest set whose mass reaches p; 1.0 = off

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed distribution over the vocabulary, shape [..., V], float32.

        Greedy gives the one-hot of the argmax (the distribution greedy decoding samples from)."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # drop a token when the mass strictly before it already reaches top_p (the token that
            # crosses the threshold is kept, so at least one token always survives)
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits.softmax(-1)

    def pick(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One token per row of `probs` ([V] -> scalar, [n, V] -> [n])."""
        if self.greedy:
            return probs.argmax(-1)
        return sample(probs, generator)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if probs.dim() == 1:
        return torch.multinomial(probs, 1, generator=generator)[0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
