"""Verification: given k draft tokens and the target's k+1 distributions, how many drafts are
accepted and which token the target adds. Both rules are lossless.
"""
from __future__ import annotations

import torch

from specexp.models.sampling import Sampling, sample


def verify_greedy(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """draft [k], target_logits [k+1, V] -> (n accepted, next token).

    Accept exactly the longest prefix of the draft that equals the target's argmax; the next
    token is the target's argmax right after it (the correction, or the bonus when all pass)."""
    best = target_logits.argmax(-1)  # [k+1]
    k = draft.shape[0]
    n = int(torch.cumprod((draft == best[:k]).int(), 0).sum()) if k else 0
    return n, int(best[n])


def accepts(u: torch.Tensor, q_x: torch.Tensor, p_x: torch.Tensor) -> torch.Tensor:
    """Which drafts pass the ratio test: u < p(x) / q(x), written u * q(x) < p(x) (no division
    by q). u is uniform on [0, 1) (torch.rand), so P(accept) = min(1, p/q) exactly: a draft the
    target rules out (p(x) = 0) is never accepted, not even at the draw u = 0.0 (which a `<=`
    comparison would accept), and one with p(x) >= q(x) > 0 always is (u * q < q <= p)."""
    return u * q_x < p_x


def verify_sampling(
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023).

    draft [k]; draft_probs q [k, V] (None: deterministic proposals, q = one-hot of the draft);
    target_probs p [k+1, V], both already processed by the same `Sampling`.
      accept draft x_i with probability min(1, p_i(x_i) / q_i(x_i));
      at the first rejection i, emit a sample of norm(max(0, p_i - q_i)) and stop;
      when all k pass, emit a bonus sample of p_k.
    The emitted tokens are then distributed exactly as the target's own samples."""
    k = draft.shape[0]
    if k == 0:
        return 0, int(sample(target_probs[0], generator))
    idx = torch.arange(k, device=draft.device)
    p_x = target_probs[idx, draft]
    if draft_probs is None:  # one-hot q: q(x) = 1
        draft_probs = torch.nn.functional.one_hot(draft, target_probs.shape[-1]).to(target_probs.dtype)
    q_x = draft_probs[idx, draft]
    u = torch.rand(k, generator=generator, device=draft.device)
    rejected = ~accepts(u, q_x, p_x)
    if not bool(rejected.any()):
        return k, int(sample(target_probs[k], generator))
    n = int(rejected.int().argmax())
    residual = (target_probs[n] - draft_probs[n]).clamp_min(0)
    if float(residual.sum()) <= 0:  # p_n == q_n up to rounding: the residual is undefined, p is right
        residual = target_probs[n]
    return n, int(sample(residual / residual.sum(), generator))


def verify(draft, draft_probs, target_logits, sampling: Sampling, generator) -> tuple[int, int]:
    if sampling.greedy:
        return verify_greedy(draft, target_logits)
    return verify_sampling(draft, draft_probs, sampling.probs(target_logits), generator)
