"""The decode loop: one function for autoregressive and speculative decoding (autoregressive is
the special case with no proposer, i.e. a draft of length 0 every round). A draft is a chain or a
token tree (Draft.parents; specexp/core/tree.py): a chain is the tree with one child per node, and
a tree's accepted path then goes on as a chain's accepted drafts. Batch size 1;
specexp/core/batch_decode.py runs the same steps for B rows at once (sharing `emit` and `Generation.log_round`).

Counting convention for a round cut by a stop (EOS or stop string): `accepted` counts the drafts
emitted before the stop token, so every round emits `accepted + 1` tokens. Drafts after the stop
are never emitted and never counted; an accepted draft that IS the stop token counts as the
round's own token, not as an accepted draft, as transformers does (4.38: `n_matches -= 1` on a
trailing EOS; 5.x: `n_matches = len(valid_tokens) - 1` after cutting at the EOS). The length
policy observes the same count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from specexp.core import tree
from specexp.core.stopping import Stopper
from specexp.core.verify import verify_tree
from specexp.length import LengthPolicy
from specexp.models import token_entropy as entropy
from specexp.models.cached_lm import CachedLM, check_context
from specexp.models.loading import sync
from specexp.models.sampling import Sampling
from specexp.proposers.base import Proposer


@dataclass
class Generation:
    """What one sample's decode produced and cost. Times and counts cover the whole sample,
    `start`/`reset` included (an encoder-decoder model's encoder pass runs there)."""

    tokens: list[int] = field(default_factory=list)  # new tokens (stop token included, prompt excluded)
    wall_time: float = 0.0  # seconds, device synchronised
    drafted: list[int] = field(default_factory=list)  # per round: draft length k
    accepted: list[int] = field(default_factory=list)  # per round: drafts emitted as accepted (module docstring)
    round_times: list[float] = field(default_factory=list)  # per round: seconds
    emitted: list[int] = field(default_factory=list)  # per round: tokens kept (accepted + 1)
    target_forwards: int = 0
    drafter_forwards: int = 0
    model_forwards: dict[str, int] = field(default_factory=dict)  # per model role ("target", "drafter", ...)
    model_forward_seconds: dict[str, float] = field(default_factory=dict)  # per role: time in its forwards
    model_prefills: dict[str, int] = field(default_factory=dict)  # per role: forwards from an empty cache
    model_prefill_seconds: dict[str, float] = field(default_factory=dict)  # per role: time in those
    records: list[dict] = field(default_factory=list)  # per drafted token (optional analysis records)
    rejected: list[list[int]] = field(default_factory=list)  # per round: the drafts the target rejected (rejected_drafts)
    model_encoder_forwards: dict[str, int] = field(default_factory=dict)  # per role: encoder passes (seq2seq)
    model_encoder_seconds: dict[str, float] = field(default_factory=dict)  # per role: time in those
    start_time: float = 0.0  # seconds before the first round: target.start + proposer.reset (encoders)
    # Per round that drafted a token tree (Draft.parents given; nothing for chain strategies):
    # its nodes, its depth (levels), the accepted path's length as verified (before a stop's
    # cut), and the path's nodes' ranks among their siblings (0: the drafter's most likely; None
    # unless the proposer orders siblings by its probability: `ranks_siblings`).
    tree_nodes: list[int] = field(default_factory=list)
    tree_depth: list[int] = field(default_factory=list)
    tree_path: list[int] = field(default_factory=list)
    tree_ranks: list[list[int] | None] = field(default_factory=list)

    def log_round(self, k: int, n: int, rejected: list[int]) -> None:
        """A round's counts: k drafted, n emitted as accepted (so n + 1 emitted), the drafts the
        target rejected (`rejected_drafts`)."""
        self.drafted.append(k)
        self.accepted.append(n)
        self.emitted.append(n + 1)
        self.rejected.append(rejected)

    def log_tree(self, parents: list[int], path: list[int], ranked: bool) -> None:
        """A tree round's shape and outcome (the `tree` block of metrics.json): `parents` of its
        nodes, the accepted `path` (node indices, as verified), and whether sibling order is the
        drafter's probability order (then a node's rank = its place among its siblings)."""
        depth = tree_depths(parents)
        self.tree_nodes.append(len(parents))
        self.tree_depth.append(max(depth, default=0))
        self.tree_path.append(len(path))
        kids = tree.children(parents)
        self.tree_ranks.append([kids[parents[i] + 1].index(i) for i in path] if ranked else None)


def tree_depths(parents: list[int]) -> list[int]:
    """Each node's level, 1 for a child of the context (parents in topological order)."""
    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    return depth


def emit(out: Generation, drafts: list[int], n: int, nxt: int, stopper: Stopper) -> tuple[int, list[int], bool]:
    """Step 5 of a round: append the n accepted drafts and the target's token `nxt` to out.tokens,
    cut after the first EOS / stop string among them. Returns (n' = the drafts emitted before the
    stop, so the round emitted n' + 1 tokens; the tokens emitted; whether the sample stopped)."""
    start = len(out.tokens)
    out.tokens.extend(drafts[:n] + [nxt])
    cut = stopper.first_stop(out.tokens, start)
    if cut is not None:
        del out.tokens[cut + 1:]
    return len(out.tokens) - start - 1, out.tokens[start:], cut is not None


def rejected_drafts(drafts: list[int], verified: int, emitted: int) -> list[int]:
    """The drafts the target rejected in a round where it accepted the first `verified` drafts and
    `emitted` of them were emitted before the round's own token (emit's n'): the drafts after the
    accepted ones. When a stop among the accepted drafts ended the round (emitted < verified: the
    stop token was a draft the target accepted), nothing was rejected: the drafts after the stop
    are cut, not rejected."""
    return drafts[verified:] if emitted == verified else []


def _counters(lm: CachedLM) -> tuple:
    return lm.forwards, lm.forward_seconds, lm.prefills, lm.prefill_seconds, lm.encoder_forwards, lm.encoder_seconds


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
    lms = {"target": target, **(getattr(proposer, "cached_models", None) or {})}  # role -> CachedLM
    check_context(lms, prompt.shape[0], max_new_tokens)  # never read past a model's position limit
    before = {r: _counters(m) for r, m in lms.items()}
    fwd0_t, fwd0_d = target.forwards, (proposer.forwards if proposer else 0)
    sync(device)
    t_start = time.perf_counter()
    # 0. Start the sample (timed: an encoder-decoder target or drafter runs its encoder here).
    tokens = target.start(prompt)  # decoder-only: the prompt; encoder-decoder: the decoder start token
    target.keep_hidden = bool(proposer is not None and proposer.needs_features)  # feature drafters (EAGLE)
    if proposer is not None:
        proposer.eos = stopper.eos  # a drafter stops drafting after one of these
        proposer.reset(prompt)
    n_prompt = tokens.shape[0]
    sync(device)
    out.start_time = time.perf_counter() - t_start
    while (budget := max_new_tokens - len(out.tokens)) > 0:
        t0 = time.perf_counter()
        # 1. Draft at most budget - 1 tokens: drafts plus the target's own token never overshoot.
        draft = None
        if proposer is not None and (budget > 1 or getattr(proposer, "overshoots", False)):  # cascade compat=original
            draft = proposer.propose(tokens, min(policy.begin(), budget - 1), policy, sampling, generator)
        draft_tokens = draft.tokens if draft is not None else tokens.new_empty(0)
        draft_probs = draft.probs if draft is not None else None
        parents = getattr(draft, "parents", None)  # a tree's parent indices; None = a chain
        k = draft_tokens.shape[0]
        # 2. One target forward over its unseen suffix and the drafts: k+1 next-token distributions
        #    (row 1 + i after draft i; in a tree each draft sees only its ancestors).
        logits = tree.forward(target, tokens[target.length:], draft_tokens, parents)
        # 3. Verify: the accepted drafts (a chain: the first n; a tree: a root-to-node path), then
        #    the target's own token (correction or bonus).
        path, nxt = verify_tree(draft_tokens, parents, draft_probs, logits, sampling, generator)
        n = len(path)
        if parents is not None:  # the tree's shape and the accepted path, for metrics.json's tree block
            out.log_tree(parents.tolist(), path, bool(getattr(proposer, "ranks_siblings", False)))
        # 4. Roll back the rejected drafts in both caches (a tree: keep the path's entries).
        tree.keep_path(target, tokens.shape[0], path)
        if parents is not None:  # from here on a tree is a chain whose first n drafts are the path
            on_path = set(path)
            order = path + [i for i in range(k) if i not in on_path]
            draft_tokens, logits = draft_tokens[order], logits[[0] + [i + 1 for i in order]]
            if target.keep_hidden:  # the hidden states likewise: the context's rows, then the nodes' in that order
                target.hidden = torch.cat([target.hidden[:-k], target.hidden[-k:][order]])
        if draft is not None:
            proposer.observe_target(logits, n)  # the target's side of the round (n-gram filler)
            if target.keep_hidden:  # feature drafters: the target's hidden states of the kept tokens
                proposer.observe_features(target.hidden[: target.hidden.shape[0] - (k - n)])
            proposer.observe(n)
        # 5. Emit, stopping at the first EOS / stop string among the new tokens; a cut leaves
        #    n = the drafts emitted before the stop token (module docstring).
        drafts, verified = draft_tokens.tolist(), n
        n, new, stopped = emit(out, drafts, n, nxt, stopper)
        tokens = torch.cat([tokens, torch.tensor(new, device=device, dtype=tokens.dtype)])
        # 6. Let the policy learn from the outcome (every round, as transformers' schedule does,
        #    even one with no draft: drafted 0).
        if proposer is not None:
            policy.observe(k, n)
        if records and k:
            out.records.extend(annotate(draft.records, logits, n, len(out.drafted), sampling))
        sync(device)
        out.round_times.append(time.perf_counter() - t0)
        out.log_round(k, n, rejected_drafts(drafts, verified, n))
        if stopped:
            break
    out.wall_time = time.perf_counter() - t_start
    out.target_forwards = target.forwards - fwd0_t
    out.drafter_forwards = (proposer.forwards - fwd0_d) if proposer else 0
    for r, m in lms.items():
        f, fs, p, ps, e, es = (a - b for a, b in zip(_counters(m), before[r]))
        out.model_forwards[r], out.model_forward_seconds[r] = f, fs
        out.model_prefills[r], out.model_prefill_seconds[r] = p, ps
        out.model_encoder_forwards[r], out.model_encoder_seconds[r] = e, es
    assert tokens.shape[0] == n_prompt + len(out.tokens)
    return out


def annotate(recs: list[dict], target_logits: torch.Tensor, n: int, round_index: int, sampling: Sampling) -> list[dict]:
    """Complete the proposer's per-token records with the target's side and the outcome. The
    target's entropy (Shannon, nats) is of the distribution it verifies with, as the drafter's
    (specexp.models.token_entropy.step_probs): the sampling distribution, or softmax at T=1 under greedy; the
    T=1 entropy is recorded too."""
    logits = target_logits[: len(recs)]
    h1 = entropy.of_logits(logits).tolist()
    h = h1 if sampling.greedy else entropy.shannon(sampling.probs(logits)).tolist()
    return [{**r, "round": round_index, "target_entropy": h[i], "target_entropy_t1": h1[i], "accepted": i < n}
            for i, r in enumerate(recs)]
