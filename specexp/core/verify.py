"""Verification: given k draft tokens and the target's k+1 distributions, how many drafts are
accepted and which token the target adds. Both rules are lossless. A draft tree (specexp/core/tree.py)
is walked from the context to the longest accepted path (verify_tree).
"""
from __future__ import annotations

import torch

from specexp.core.tree import children
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


def verify_tree_greedy(tokens: list[int], parents: list[int], target_logits: torch.Tensor) -> tuple[list[int], int]:
    """A tree's greedy walk: from the context, descend into the child whose token is the target's
    argmax there (the first such child); stop where none is. Returns (the accepted path's nodes,
    the target's argmax after it). On a chain this is verify_greedy."""
    best = target_logits.argmax(-1).tolist()  # row 0: after the context; row 1 + i: after node i
    kids, path, row = children(parents), [], 0
    while (node := next((c for c in kids[row] if tokens[c] == best[row]), None)) is not None:
        path.append(node)
        row = node + 1
    return path, best[row]


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left of p once a draft from q was rejected; p itself where
    p == q up to rounding (the residual is then undefined, and p is right)."""
    r = (p - q).clamp_min(0)
    if float(r.sum()) <= 0:
        r = p
    return r / r.sum()


def verify_tree_sampling(
    tokens: list[int],
    parents: list[int],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[list[int], int]:
    """Lossless tree verification: multi-step speculative sampling (SpecInfer, Miao et al. 2024,
    Alg. 2 "VerifyStochastic"; Sequoia, Chen et al. 2024, Alg. 2, for children drawn without
    replacement), one node at a time from the context down.

    draft_probs q [n, V]: row i = the distribution node i was drawn from given its earlier
    siblings (None: every node deterministic, q_i = one-hot of its token); target_probs p [n+1, V]
    (row 0 after the context, row 1 + i after node i), both processed by the same `Sampling`.
    At a node with target distribution p, its children x_1, x_2, ... in order:
      accept x_i with probability min(1, p(x_i) / q_i(x_i)) (`accepts`: p(x_i) = 0 never passes)
        and continue at x_i with its own p;
      on rejection p <- norm(max(0, p - q_i)) and try the next child;
      when every child is rejected, emit a sample of the last p; at a leaf, a sample of its p.
    The rule covers the ways children are drawn, by what q_i is:
      independent draws from q (SpecInfer): q_i = q for every child;
      without replacement from q (Sequoia; specexp.core.tree.without_replacement): q_i = q with
        the earlier siblings removed, renormalised;
      deterministic (top-k expansion, EAGLE-2 / Sequoia): q_i = one-hot(x_i), so x_i is accepted
        with probability p(x_i) / (the mass left), and its residual sets p(x_i) = 0 and
        renormalises: together, a sample of p that descends where it lands on a child.
    At each node, whatever happened above it, the emitted token is distributed as p: accepting x_i
    gives min(p, q_i) and rejecting leaves mass sum(max(0, p - q_i)) for norm(max(0, p - q_i)),
    which sum to p (the chain's argument, Leviathan et al. 2023, applied once per child).

    One uniform per node, drawn up front (node i's test uses u[i]), then one final sample: a chain
    draws exactly what verify_sampling draws, so it gives the same tokens from the same generator."""
    n = len(tokens)
    if n == 0:
        return [], int(sample(target_probs[0], generator))
    tok = torch.tensor(tokens, device=target_probs.device)
    if draft_probs is None:  # one-hot q: q(x) = 1
        draft_probs = torch.nn.functional.one_hot(tok, target_probs.shape[-1]).to(target_probs.dtype)
    q_x = draft_probs[torch.arange(n, device=tok.device), tok]
    u = torch.rand(n, generator=generator, device=tok.device)
    kids, path, p = children(parents), [], target_probs[0]
    row = 0
    while kids[row]:
        for c in kids[row]:
            if bool(accepts(u[c], q_x[c], p[tokens[c]])):
                path.append(c)
                row, p = c + 1, target_probs[c + 1]
                break
            p = residual(p, draft_probs[c])
        else:  # every child rejected: the correction comes from what is left of p
            return path, int(sample(p, generator))
    return path, int(sample(p, generator))  # a leaf accepted: the bonus token


def verify_tree(tokens: torch.Tensor, parents: torch.Tensor | None, draft_probs, target_logits,
                sampling: Sampling, generator) -> tuple[list[int], int]:
    """(the accepted path's node indices, the target's own token). A chain (parents None) goes
    through `verify` unchanged: its path is its first n drafts."""
    if parents is None:
        n, nxt = verify(tokens, draft_probs, target_logits, sampling, generator)
        return list(range(n)), nxt
    if sampling.greedy:
        return verify_tree_greedy(tokens.tolist(), parents.tolist(), target_logits)
    return verify_tree_sampling(tokens.tolist(), parents.tolist(), draft_probs, sampling.probs(target_logits), generator)
