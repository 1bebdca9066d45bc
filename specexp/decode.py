"""The decode loop: one function for autoregressive and speculative decoding (autoregressive is
the special case with no proposer, i.e. a draft of length 0 every round). Batch size 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from specexp.length import LengthPolicy
from specexp.models import CachedLM
from specexp.proposers.base import Proposer
from specexp.sampling import Sampling
from specexp.stopping import Stopper
from specexp.verify import verify


@dataclass
class Generation:
    """What one sample's decode produced and cost."""

    tokens: list[int] = field(default_factory=list)  # new tokens (stop token included, prompt excluded)
    wall_time: float = 0.0  # seconds, device synchronised
    drafted: list[int] = field(default_factory=list)  # per round: draft length k
    accepted: list[int] = field(default_factory=list)  # per round: accepted drafts n (<= k)
    round_times: list[float] = field(default_factory=list)  # per round: seconds
    emitted: list[int] = field(default_factory=list)  # per round: tokens kept (n + 1, less when cut at a stop)
    target_forwards: int = 0
    drafter_forwards: int = 0
    model_forwards: dict[str, int] = field(default_factory=dict)  # per model role ("target", "drafter", ...)
    model_forward_seconds: dict[str, float] = field(default_factory=dict)  # per role: time in its forwards
    model_prefills: dict[str, int] = field(default_factory=dict)  # per role: forwards from an empty cache
    model_prefill_seconds: dict[str, float] = field(default_factory=dict)  # per role: time in those
    records: list[dict] = field(default_factory=list)  # per drafted token (optional analysis records)
    rejected: list[list[int]] = field(default_factory=list)  # per round: the drafts after the accepted ones


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    target: CachedLM,
    prompt: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling,
    stopper: Stopper,
    proposer: Proposer | None = None,
    policy: LengthPolicy | None = None,
    generator: torch.Generator | None = None,
    records: bool = False,
) -> Generation:
    """Decode at most `max_new_tokens` after `prompt` [L] (token ids on the target's device).
    With `records`, each drafted token's record (from the proposer) gets the target's entropy at
    its position and whether it was accepted.

    Invariant between rounds: `tokens` is prompt + accepted output; each model's cache holds a
    prefix of it, and every forward feeds exactly the suffix its cache has not seen."""
    device = prompt.device
    out = Generation()
    tokens = target.start(prompt)  # decoder-only: the prompt; encoder-decoder: the decoder start token
    if proposer is not None:
        proposer.reset(prompt)
    fwd0_t, fwd0_d = target.forwards, (proposer.forwards if proposer else 0)
    lms = {"target": target, **(getattr(proposer, "cached_models", None) or {})}  # role -> CachedLM
    lm0 = {r: (m.forwards, m.forward_seconds, m.prefills, m.prefill_seconds) for r, m in lms.items()}
    n_prompt = tokens.shape[0]
    _sync(device)
    t_start = time.perf_counter()
    while (budget := max_new_tokens - len(out.tokens)) > 0:
        t0 = time.perf_counter()
        # 1. Draft at most budget - 1 tokens: drafts plus the target's own token never overshoot.
        draft = None
        if proposer is not None and budget > 1:
            draft = proposer.propose(tokens, min(policy.begin(), budget - 1), policy, sampling, generator)
        draft_tokens = draft.tokens if draft is not None else tokens.new_empty(0)
        draft_probs = draft.probs if draft is not None else None
        k = draft_tokens.shape[0]
        # 2. One target forward over its unseen suffix and the drafts: k+1 next-token distributions.
        logits = target.forward(torch.cat([tokens[target.length:], draft_tokens]), keep=k + 1)
        # 3. Verify: n drafts accepted, then the target's own token (correction or bonus).
        n, nxt = verify(draft_tokens, draft_probs, logits, sampling, generator)
        if records and k:
            out.records.extend(_annotate(draft.records, logits, n, len(out.drafted)))
        # 4. Roll back the rejected drafts in both caches; let the policy learn from the outcome.
        target.crop(tokens.shape[0] + n)
        if draft is not None:
            proposer.observe(n)
            if k:
                policy.observe(k, n)
        # 5. Emit, stopping at the first EOS / stop string among the new tokens.
        drafts = draft_tokens.tolist()
        new = drafts[:n] + [nxt]
        start = len(out.tokens)
        out.tokens.extend(new)
        cut = stopper.first_stop(out.tokens, start)
        if cut is not None:
            del out.tokens[cut + 1:]
        kept = len(out.tokens) - start
        tokens = torch.cat([tokens, torch.tensor(out.tokens[start:], device=device, dtype=tokens.dtype)])
        _sync(device)
        out.round_times.append(time.perf_counter() - t0)
        out.drafted.append(k)
        out.accepted.append(n)
        out.emitted.append(kept)
        out.rejected.append(drafts[n:])
        if cut is not None:
            break
    out.wall_time = time.perf_counter() - t_start
    out.target_forwards = target.forwards - fwd0_t
    out.drafter_forwards = (proposer.forwards - fwd0_d) if proposer else 0
    out.model_forwards = {r: m.forwards - lm0[r][0] for r, m in lms.items()}
    out.model_forward_seconds = {r: m.forward_seconds - lm0[r][1] for r, m in lms.items()}
    out.model_prefills = {r: m.prefills - lm0[r][2] for r, m in lms.items()}
    out.model_prefill_seconds = {r: m.prefill_seconds - lm0[r][3] for r, m in lms.items()}
    assert tokens.shape[0] == n_prompt + len(out.tokens)
    return out


def _annotate(recs: list[dict], target_logits: torch.Tensor, n: int, round_index: int) -> list[dict]:
    """Complete the proposer's per-token records with the target's side (Shannon entropy in nats
    of the target's softmax at temperature 1) and the outcome."""
    logp = target_logits[: len(recs)].log_softmax(-1)
    h = (-(logp.exp() * logp).nan_to_num().sum(-1)).tolist()
    return [{**r, "round": round_index, "target_entropy": h[i], "accepted": i < n} for i, r in enumerate(recs)]
