"""N-gram assisted speculative decoding (NASD; the n-gram drafter of romsto/Speculative-Decoding,
a close cousin of ANPD, Ou et al. 2024): the drafter is an n-gram store filled from the text
itself, no model.

The store counts, for every context of c = 1 .. n-1 tokens (k-grams for k in [2, n]), which token
followed it. It is filled with
  1. every k-gram of the prompt (at the start of a sample);
  2. every k-gram the generation adds (accepted drafts and the target's own tokens);
  3. the "filler": at each verified position the target's `filler_top_k` most likely tokens also
     count once after their context (the target's distribution teaches the store what it would
     have said there; top-k 1 is ANPD's rule, 3 romsto/Speculative-Decoding's default).
A draft is a chain: the next token after the longest known context (n-1 tokens first, then
shorter), the most frequent one (ties: the first seen). The draft stops where no context is known.

Lossless. The drafts are deterministic proposals (`Draft.probs = None`), so the decode loop
verifies them as one-hot drafts: greedy accepts exactly the prefix equal to the target's argmax;
sampling accepts draft d with probability p(d) and, on rejection, samples the residual
norm(max(0, p - onehot(d))) = p with d removed (specexp.core.verify). The emitted token then has
probability p(d) for d and (1 - p(d)) * p(x) / (1 - p(d)) = p(x) for every other x: the target's
own distribution.

How romsto/Speculative-Decoding's sampling is biased, and why this one is not: it draws x ~ p,
accepts the draft when x == d, and on a mismatch throws x away and draws a *fresh* sample from p
at that position. The fresh sample can be d again, so the emitted token is d with probability
p(d) + (1 - p(d)) p(d) > p(d) (the draft is over-weighted), and every other token x with
probability (1 - p(d)) p(x) < p(x). Keeping x (or, equivalently, sampling the residual without d,
as here) removes the bias. It also fills unknown contexts with a random token from the
unseeded global RNG (runs are not reproducible, and the guess is almost always rejected); here the
draft simply stops, and nothing in this proposer draws random numbers.
"""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.bigram import check_policy


class NGramStore:
    """Counts of the token that followed each context of 1 .. n-1 tokens."""

    def __init__(self, n: int = 3):
        if n < 2:
            raise ValueError(f"nasd: n must be >= 2 (contexts of n-1 tokens), got {n}")
        self.n = n
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}  # context -> {next token: count}

    def add(self, context: list[int], tokens: list[int]) -> None:
        """Count each of `tokens` once after every suffix (1 .. n-1 tokens) of `context`."""
        for c in range(1, min(self.n - 1, len(context)) + 1):
            seen = self.counts.setdefault(tuple(context[-c:]), {})
            for t in tokens:
                seen[t] = seen.get(t, 0) + 1

    def add_text(self, seq: list[int], start: int = 0) -> None:
        """Count every k-gram of `seq` that ends at a position >= `start`."""
        for i in range(max(start, 1), len(seq)):
            self.add(seq[max(0, i - self.n + 1): i], [seq[i]])

    def next_token(self, context: list[int]) -> tuple[int, int] | None:
        """(most frequent successor of the longest known suffix of `context`, that suffix's
        length), or None when no suffix was ever seen. Ties go to the token seen first (dicts keep
        insertion order and `max` returns the first maximum)."""
        for c in range(min(self.n - 1, len(context)), 0, -1):
            seen = self.counts.get(tuple(context[-c:]))
            if seen:
                return max(seen, key=seen.get), c
        return None


class NASD(Proposer):
    """The n-gram store as a proposer (see the module doc).

    n: the longest k-gram counted (contexts of n-1 tokens); filler_top_k: how many of the target's
    most likely tokens at each verified position are counted (0 or 1: only the emitted tokens)."""

    forwards = 0

    def __init__(self, n: int = 3, filler_top_k: int = 3):
        if filler_top_k < 0:
            raise ValueError(f"nasd: filler_top_k must be >= 0, got {filler_top_k}")
        self.n, self.filler_top_k = n, filler_top_k
        self.store = NGramStore(n)
        self.prompt: list[int] = []
        self.indexed = 0  # tokens of the decode sequence already counted
        self.started = False
        self.at = 0  # length of the sequence when the last draft was proposed
        self.filler: list[list[int]] = []  # the target's top-k ids per verified position, not yet counted

    def reset(self, prompt: torch.Tensor) -> None:
        self.store = NGramStore(self.n)
        self.prompt = prompt.tolist()
        self.indexed, self.started, self.at, self.filler = 0, False, 0, []

    def _update(self, seq: list[int]) -> None:
        """Count what the last round added: the new tokens of `seq`, then the filler."""
        if not self.started:  # an encoder-decoder sequence does not start with the prompt: count it apart
            self.started = True
            if seq[: len(self.prompt)] != self.prompt:
                self.store.add_text(self.prompt)
        self.store.add_text(seq, self.indexed)
        self.indexed = len(seq)
        for i, ids in enumerate(self.filler):  # row i: the position after seq[: at + i]
            end = self.at + i
            if end <= len(seq):
                self.store.add(seq[max(0, end - self.n + 1): end], ids)
        self.filler = []

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy | None, sampling: Sampling | None,
                generator: torch.Generator | None) -> Draft:
        check_policy(policy, "nasd")
        seq = tokens.tolist()
        self._update(seq)
        self.at = len(seq)
        ctx, out, recs = seq[-(self.n - 1):], [], []
        while len(out) < max_len:
            hit = self.store.next_token(ctx)
            if hit is None:  # an unknown context ends the draft
                break
            out.append(hit[0])
            ctx = (ctx + [hit[0]])[-(self.n - 1):]
            if self.records:
                recs.append({"position": len(out) - 1, "source": "ngram", "context": hit[1]})
        return Draft(torch.tensor(out, dtype=tokens.dtype, device=tokens.device), None, recs)

    def observe_target(self, logits: torch.Tensor, n_accepted: int) -> None:
        """The target's logits [k+1, V] of the round just verified: rows 0..n are the positions
        of the accepted drafts and of the target's own token; their top-k ids are the filler."""
        if self.filler_top_k > 1:
            k = min(self.filler_top_k, logits.shape[-1])
            self.filler = logits[: n_accepted + 1].topk(k, dim=-1).indices.tolist()
