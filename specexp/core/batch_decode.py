"""Batched decoding: B sequences in flight, autoregressive or speculative, each row lossless.

`generate_batch` decodes a list of prompts with at most `batch_size` of them in flight
(continuous batching: a finished row's slot takes the next prompt at the start of the next
round) and returns one `Generation` per prompt with the per-sample meaning of specexp.core.decode
(tokens, drafted/accepted/emitted per round, forwards, per-sequence wall time). It follows the
batch-1 loop (specexp/core/decode.py, the readable reference) step for step, per row.

The cache scheme is specexp/models/ragged_cache.py (`RaggedCache`): one DynamicCache for all rows, a
per-row mask of valid columns, holes allowed, per-row rollback by masking.

Cost: each batched forward is W wide, W = max over rows of (unseen + drafts); rows with less
feed pads. The cache holds up to 2x the longest row between compactions (attention over holes).

Draft lengths: each row has its own copy of the length policy; row b drafts
m_b = min(policy_b.begin(), budget_b - 1) tokens (per-row lengths, padded). The drafter model
drafts step by step for all rows still drafting (a row that stopped, by its policy, its EOS or
its m_b, is fed nothing and masked), so a round costs max_b(k_b) drafter forwards and one target
forward of width max_b(unseen_b + k_b). Model-free proposers (prompt lookup, bigram) propose per
row from that row's tokens (one copy per row).

Not supported with batch_size > 1 (refused with an error): token trees (a proposer with
`drafts_trees`, and any draft that carries parents), the cascade and other proposers with
models of their own besides the plain drafter, feature drafters (EAGLE), a drafter with a vocab
subset, proposers that overshoot the budget, encoder-decoder targets, beam search, and length
policies that carry state from one sample to the next (`LengthPolicy.carried_state`: AdaEDL with
per_sample=false, any policy under carry_length_state=true): at batch 1 a sample starts from the
state the one before it left, which rows decoded at the same time cannot.

Per-row metrics: `wall_time` = from the row's admission to the end of its last round (its
latency, sharing the machine with the other rows); `round_times` = the batched rounds it took
part in; forward counts = the batched forwards it took part in, their seconds = those forwards'
full times (shared with the other rows).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from specexp.core.decode import Generation, annotate, emit, rejected_drafts
from specexp.core.stopping import Stopper
from specexp.core.verify import verify
from specexp.length import Decision, DraftStep, LengthPolicy
from specexp.models.loading import sync
from specexp.models.ragged_cache import RaggedCache
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.drafter import DraftModel, _record


def check_batch_size(batch_size, n_samples: int | None = None) -> int:
    """A valid batch size for a dataset of `n_samples` (None: not known yet), else a ValueError
    naming the key and the fix."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (1 = one sample at a time), got {batch_size!r}")
    if n_samples is not None and batch_size > 1 and batch_size > n_samples:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n_samples} samples): "
                         f"set batch_size <= {n_samples}, or raise dataset.limit")
    return batch_size


# Why a proposer with models of its own cannot run batched (check_supported), by class name.
_UNBATCHED = {
    "LookupFirst": "the lookup-then-drafter strategies (lookup_entropy, lookup_store_entropy, lookup_store_cost: "
                   "LookupFirst) choose per round between a lookup and the drafter model, and a batch runs one "
                   "kind of proposer for all its rows",
    "Cascade": "the cascade (Cascade) runs a stack of drafter models of its own",
    "CrossTokenizerDrafter": "a drafter with another tokenizer (CrossTokenizerDrafter) runs its own model on "
                             "re-tokenized text",
}


def check_supported(proposer: Proposer | None, target_model) -> str:
    """'ar', 'drafter' (the batched drafter model) or 'model_free' (one proposer copy per row);
    raise for what batching does not support."""
    if getattr(getattr(target_model, "config", None), "is_encoder_decoder", False):
        raise ValueError("batch_size > 1 supports decoder-only targets only; use batch_size=1 for "
                         "an encoder-decoder target")
    if proposer is None:
        return "ar"
    name = type(proposer).__name__
    if getattr(proposer, "drafts_trees", False):
        raise ValueError(f"batch_size > 1 verifies chains of drafts only, and {name} drafts token trees "
                         "(strategy.proposer): use batch_size=1 for a tree strategy")
    if proposer.needs_features:
        raise ValueError(f"batch_size > 1 does not support the feature drafter ({name}); use batch_size=1")
    if getattr(proposer, "overshoots", False):
        raise ValueError(f"batch_size > 1 does not support {name} with drafts past the budget; use batch_size=1")
    if type(proposer) is DraftModel:
        if proposer.vocab:
            raise ValueError("batch_size > 1 does not support a drafter with a vocab subset "
                             "(strategy.proposer.vocab); set it to null or use batch_size=1")
        if getattr(proposer.lm.model.config, "is_encoder_decoder", False):
            raise ValueError("batch_size > 1 supports decoder-only drafters only; use batch_size=1")
        return "drafter"
    if getattr(proposer, "cached_models", None):
        why = _UNBATCHED.get(name, f"{name} runs models of its own")
        raise ValueError(f"batch_size > 1 supports the drafter model, prompt lookup, datastore, bigram and n-gram "
                         f"proposers; {why}: use batch_size=1")
    return "model_free"


@dataclass
class _Row:
    """One sequence in flight."""

    index: int  # position in the prompts list
    tokens: torch.Tensor  # prompt + output so far
    gen: torch.Generator | None
    policy: LengthPolicy | None
    proposer: Proposer | None  # model-free proposers: this row's own copy
    t_start: float
    out: Generation = field(default_factory=Generation)
    start: int = 0  # drafter: sequence length when this round's draft began (DraftModel._start)
    eos: set = field(default_factory=set)  # ids that end a draft (the Stopper's EOS ids)


def _copy(obj):
    """A per-row copy of a stateful policy / model-free proposer; models and tensors it holds
    through a CachedLM (e.g. the oracle's target) are shared, not copied."""
    memo = {}
    for v in vars(obj).values():
        for m in (v, getattr(v, "model", None)):
            if isinstance(m, torch.nn.Module):
                memo[id(m)] = m
    return copy.deepcopy(obj, memo)


def _count(out: Generation, role: str, seconds: float, prefill: bool) -> None:
    out.model_forwards[role] = out.model_forwards.get(role, 0) + 1
    out.model_forward_seconds[role] = out.model_forward_seconds.get(role, 0.0) + seconds
    out.model_prefills.setdefault(role, 0)
    out.model_prefill_seconds.setdefault(role, 0.0)
    if prefill:
        out.model_prefills[role] += 1
        out.model_prefill_seconds[role] += seconds


def _timed_forward(cache: RaggedCache, feeds, keep, rows: list[_Row], role: str, device) -> list[torch.Tensor]:
    prefill = [cache.length[b] == 0 and feeds[b] is not None for b in range(len(rows))]
    sync(device)
    t0 = time.perf_counter()
    logits = cache.forward(feeds, keep)
    sync(device)
    dt = time.perf_counter() - t0
    for b, row in enumerate(rows):
        if feeds[b] is not None:
            _count(row.out, role, dt, prefill[b])
    return logits


def _draft_model_round(dcache: RaggedCache, rows: list[_Row], max_lens: list[int], sampling: Sampling,
                       role: str, embed_limit: int | None, records: bool, device) -> list[Draft]:
    """DraftModel.propose for every row at once: step j feeds each row still drafting its unseen
    suffix (j = 0) or its last draft; the others are fed nothing. Per row, the same decisions and
    generator calls as the batch-1 drafter."""
    B = len(rows)
    outs, probs, recs = [[] for _ in rows], [[] for _ in rows], [[] for _ in rows]
    feeds: list[torch.Tensor | None] = [None] * B
    for b, row in enumerate(rows):
        row.start = row.tokens.shape[0]
        feed = row.tokens[dcache.length[b]:]
        if embed_limit is not None and int(feed.max()) >= embed_limit:
            max_lens[b] = 0  # an id the drafter cannot embed: no draft (as DraftModel.propose)
        if max_lens[b] > 0:
            feeds[b] = feed
    j = 0
    while any(f is not None for f in feeds):
        logits = _timed_forward(dcache, feeds, [int(f is not None) for f in feeds], rows, role, device)
        for b, row in enumerate(rows):
            if feeds[b] is None:
                continue
            feeds[b] = None
            lg = logits[b][-1]
            q = sampling.probs(lg)
            tok = sampling.pick(q, row.gen)
            step = DraftStep(j, lg, q, tok, row.tokens, outs[b], sampling.greedy)
            decision = row.policy.decide(step) if row.policy.needs_steps else Decision.CONTINUE
            if decision is Decision.STOP_BEFORE:
                continue
            outs[b].append(tok)
            probs[b].append(q)
            if records:
                recs[b].append(_record(step, row.policy))
            if decision is Decision.STOP_AFTER or (row.eos and int(tok) in row.eos):
                continue
            if len(outs[b]) < max_lens[b]:
                feeds[b] = tok.view(1)
        j += 1
    drafts = []
    for b, row in enumerate(rows):
        if not outs[b]:
            drafts.append(Draft(row.tokens.new_empty(0), None))
        else:
            drafts.append(Draft(torch.stack(outs[b]), None if sampling.greedy else torch.stack(probs[b]), recs[b]))
    return drafts


@dataclass
class _Caches:
    """The batch's caches: the target's, and the drafter model's when it drafts (kind "drafter")."""

    kind: str  # check_supported's: "ar", "drafter" or "model_free"
    target: RaggedCache
    drafter: RaggedCache | None = None
    role: str | None = None  # the drafter model's role ("drafter"), counted in its rows' forwards
    embed_limit: int | None = None  # ids the drafter can embed (DraftModel.embed_limit)

    def add_rows(self, n: int) -> None:
        for c in self.all():
            c.add_rows(n)

    def keep_rows(self, keep: list[int]) -> None:
        for c in self.all():
            c.keep_rows(keep)

    def compact(self) -> None:
        for c in self.all():
            c.compact()

    def all(self) -> list[RaggedCache]:
        return [self.target] + ([self.drafter] if self.drafter is not None else [])


def _caches(target_model, proposer: Proposer | None, kind: str) -> _Caches:
    if kind != "drafter":
        return _Caches(kind, RaggedCache(target_model))
    return _Caches(kind, RaggedCache(target_model), RaggedCache(proposer.lm.model, proposer.lm.vocab_size),
                   proposer.model, proposer.embed_limit)


@torch.inference_mode()
def generate_batch(
    target_model,
    prompts: list[torch.Tensor],
    max_new_tokens: int,
    sampling: Sampling,
    stopper: Stopper,
    proposer: Proposer | None = None,
    policy: LengthPolicy | None = None,
    generators: list[torch.Generator | None] | None = None,
    batch_size: int = 8,
    records: bool = False,
    progress=None,
) -> list[Generation]:
    """Decode every prompt [L_i] (token ids on the target's device), at most `batch_size` in
    flight, and return one Generation per prompt, in order. `proposer` and `policy` are the
    run's bound objects (templates: each row gets its own policy copy, reset as for a new sample;
    model-free proposers get one copy per row). `generators[i]` drives prompt i's sampling.
    `progress(n)` is called when n more prompts are done (e.g. a tqdm's update).

    The rounds follow specexp.core.decode.generate's steps, per row; between rounds each row's
    caches hold a prefix of its tokens (prompt + accepted output)."""
    kind = check_supported(proposer, target_model)
    check_policy(policy if proposer is not None else None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = prompts[0].device if prompts else torch.device("cpu")
    generators = generators or [None] * len(prompts)
    caches = _caches(target_model, proposer, kind)
    results: list[Generation | None] = [None] * len(prompts)
    rows: list[_Row] = []
    pending = list(range(len(prompts)))
    while rows or pending:
        # 0. Admit prompts into free slots (continuous batching).
        rows += _admit(pending, batch_size - len(rows), prompts, generators, policy, proposer, stopper, caches, device)
        t0 = time.perf_counter()
        # 1. Draft: row b at most min(policy_b.begin(), budget_b - 1) tokens.
        drafts = _draft(rows, proposer, caches, max_new_tokens, sampling, device)
        dtoks = [d.tokens if d is not None else r.tokens.new_empty(0) for r, d in zip(rows, drafts)]
        # 2. One target forward: each row its unseen suffix and its drafts, k_b + 1 distributions.
        feeds = [torch.cat([r.tokens[caches.target.length[b]:], dtoks[b]]) for b, r in enumerate(rows)]
        logits = _timed_forward(caches.target, feeds, [t.shape[0] + 1 for t in dtoks], rows, "target", device)
        # 3.-6. Per row: verify, roll back, emit, let its policy learn (_finish_round).
        finished = [b for b, row in enumerate(rows)
                    if _finish_round(row, b, drafts[b], dtoks[b], logits[b], caches, max_new_tokens, sampling,
                                     stopper, proposer is not None, records, device)]
        sync(device)
        now = time.perf_counter()
        for row in rows:
            row.out.round_times.append(now - t0)
        # 7. Finished rows leave the batch (and both caches).
        for b in finished:
            results[rows[b].index] = _finished(rows[b].out, now - rows[b].t_start, caches.role)
        if finished:
            keep = [b for b in range(len(rows)) if b not in finished]
            rows = [rows[b] for b in keep]
            caches.keep_rows(keep)
            if progress is not None:
                progress(len(finished))
        caches.compact()
    return results


def _admit(pending: list[int], free: int, prompts, generators, policy: LengthPolicy | None,
           proposer: Proposer | None, stopper: Stopper, caches: _Caches, device) -> list[_Row]:
    """Step 0: the next `free` pending prompts as new rows (taken from `pending`), each with its
    own policy copy started as for a new sample (and its own model-free proposer), its clock
    started; the caches get their rows."""
    new = []
    while len(new) < free and pending:
        i = pending.pop(0)
        sync(device)
        row = _Row(i, prompts[i], generators[i], _copy(policy) if policy is not None else None,
                   None, time.perf_counter())
        if row.policy is not None:
            row.policy.start_sample(carry=False)
        row.eos = stopper.eos
        if caches.kind == "model_free":
            row.proposer = _copy(proposer)
            row.proposer.eos = stopper.eos
            row.proposer.reset(prompts[i])
        new.append(row)
    if new:
        caches.add_rows(len(new))
    return new


def _draft(rows: list[_Row], proposer: Proposer | None, caches: _Caches, max_new_tokens: int,
           sampling: Sampling, device) -> list[Draft | None]:
    """Step 1: each row's draft, at most min(policy_b.begin(), budget_b - 1) tokens (None: the
    row drafts nothing this round)."""
    budgets = [max_new_tokens - len(r.out.tokens) for r in rows]
    max_lens = [min(r.policy.begin(), bud - 1) if (proposer is not None and bud > 1) else 0
                for r, bud in zip(rows, budgets)]
    if caches.kind == "drafter":
        return _draft_model_round(caches.drafter, rows, max_lens, sampling, caches.role, caches.embed_limit,
                                  proposer.records, device)
    if caches.kind == "model_free":
        drafts = [r.proposer.propose(r.tokens, m, r.policy, sampling, r.gen) if bud > 1 else None
                  for r, m, bud in zip(rows, max_lens, budgets)]
        if any(getattr(d, "parents", None) is not None for d in drafts):  # a tree proposer without `drafts_trees`
            raise ValueError(f"batch_size > 1 verifies chains of drafts only, and {type(proposer).__name__} drafted "
                             "a token tree (strategy.proposer): use batch_size=1 for a tree strategy")
        return drafts
    return [None] * len(rows)


def _finish_round(row: _Row, b: int, draft: Draft | None, dtok: torch.Tensor, logits: torch.Tensor,
                  caches: _Caches, max_new_tokens: int, sampling: Sampling, stopper: Stopper,
                  speculative: bool, records: bool, device) -> bool:
    """Steps 3-6 for row b, as specexp.core.decode.generate's round: verify its k drafts against
    its k + 1 `logits`, roll back the rejected ones, emit, let its policy learn. Whether the row
    is done (a stop, or its budget)."""
    k, out = dtok.shape[0], row.out
    # 3. Verify this row.
    n, nxt = verify(dtok, draft.probs if draft is not None else None, logits, sampling, row.gen)
    # 4. Roll back its rejected drafts in both caches.
    caches.target.drop_last(b, k - n)
    if caches.kind == "drafter":
        dcache = caches.drafter
        dcache.drop_last(b, dcache.length[b] - min(dcache.length[b], row.start + n))
    elif draft is not None:
        row.proposer.observe_target(logits, n)
        row.proposer.observe(n)
    # 5. Emit, stopping at the first EOS / stop string (as specexp.core.decode).
    drafts, verified = dtok.tolist(), n
    n, new, stopped = emit(out, drafts, n, nxt, stopper)
    row.tokens = torch.cat([row.tokens, torch.tensor(new, device=device, dtype=row.tokens.dtype)])
    # 6. The row's policy learns from its outcome.
    if speculative:
        row.policy.observe(k, n)
    if records and k and draft is not None:
        out.records.extend(annotate(draft.records, logits, n, len(out.drafted), sampling))
    out.log_round(k, n, rejected_drafts(drafts, verified, n))
    return stopped or len(out.tokens) >= max_new_tokens


def _finished(out: Generation, wall_time: float, role: str | None) -> Generation:
    """Step 7: a finished row's Generation completed: its latency (admission to its last round)
    and its per-role counters, every role that ran present (a batch runs no encoder)."""
    out.wall_time = wall_time
    out.target_forwards = out.model_forwards.get("target", 0)
    out.drafter_forwards = out.model_forwards.get(role, 0) if role else 0
    for r in (["target"] + ([role] if role else [])):
        out.model_forwards.setdefault(r, 0)
        out.model_forward_seconds.setdefault(r, 0.0)
        out.model_prefills.setdefault(r, 0)
        out.model_prefill_seconds.setdefault(r, 0.0)
        out.model_encoder_forwards[r], out.model_encoder_seconds[r] = 0, 0.0
    return out


# --------------------------------------------------------------------------------------------
# A dataset decoded in batches (the run's `batch_size > 1` path, called by run.decode_dataset)
# --------------------------------------------------------------------------------------------

def check_run(batch_size: int, proposer, target_model, search, carry_length_state: bool,
              policy: LengthPolicy | None = None, strategy: str | None = None) -> None:
    """Refuse, before any decode, a batched run of something batching does not support."""
    if batch_size == 1:
        return
    if search is not None:
        raise ValueError("batch_size > 1 does not support strategy=beam (its own decode loop); use batch_size=1")
    if carry_length_state:
        raise ValueError("carry_length_state=true carries the length policy's state from one sample to the next, "
                         "but with batch_size > 1 the samples run at the same time: set batch_size=1 or "
                         "carry_length_state=false")
    check_policy(policy, strategy)
    check_supported(proposer, target_model)


def check_policy(policy: LengthPolicy | None, strategy: str | None = None) -> None:
    """Refuse a length policy that carries state from one sample to the next (AdaEDL's lambda by
    default): at batch 1 a sample starts from the state the sample before it left, but batched
    rows run at the same time, so each row would start afresh and decode otherwise than at batch 1."""
    why = policy.carried_state(False) if policy is not None else None
    if why:
        name = f"strategy={strategy}" if strategy else type(policy).__name__
        raise ValueError(f"batch_size > 1 cannot run {name} as batch_size=1 does: {why}, or use batch_size=1 "
                         f"(batched samples run at the same time, so no sample can start from the state the one "
                         f"before it left)")


def decode_samples(target_model, prompts, max_new_tokens: int, sampling: Sampling, stopper: Stopper,
                   proposer, policy, *, batch_size: int, seed: int, repeats: int, warmup: int,
                   with_baseline: bool, records: bool, device) -> tuple[list, list, dict]:
    """The dataset decoded `repeats` times per mode, the modes alternating per repeat
    (autoregressive at batch 1, autoregressive at batch B, strategy at batch B; the first two
    with a baseline only). Returns the main mode's repeats (the strategy's, or autoregressive at
    B without a proposer) and the baseline's (autoregressive at B; [] without one), each
    reps[r][i] = repeat r of sample i (the run keeps each sample's median-time repeat), and the
    `batch` block of metrics.json."""
    from tqdm.auto import tqdm

    from specexp.core.decode import generate

    def gens_for():
        return [torch.Generator(device=device).manual_seed(seed + i) for i in range(len(prompts))]

    def batched(speculative: bool, ps=prompts, budget=max_new_tokens, bar=None):
        return generate_batch(target_model, ps, budget, sampling, stopper, proposer if speculative else None,
                              policy if speculative else None, gens_for()[: len(ps)], batch_size, records,
                              progress=bar.update if bar is not None else None)

    def batch_one_ar(bar):
        from specexp.models.cached_lm import cached_lm

        lm = cached_lm(target_model)
        out = []
        for p, g in zip(prompts, gens_for()):
            out.append(generate(lm, p, max_new_tokens, sampling, stopper, generator=g))
            bar.update(1)
        return out

    speculative = proposer is not None
    for _ in range(warmup):  # untimed: the batched shapes' first calls
        for spec in ([False, True] if with_baseline else [speculative]):
            batched(spec, prompts[:batch_size], min(16, max_new_tokens))
    modes = (["ar_batch1", "ar"] if with_baseline else []) + ["strategy" if speculative else "ar"]
    runs: dict[str, list[list[Generation]]] = {m: [] for m in modes}
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    with tqdm(total=repeats * len(modes) * len(prompts), desc=f"decoding in batches of {batch_size} (x{repeats})",
              unit="sample", leave=False) as bar:
        for _ in range(repeats):
            for m in modes:
                t0 = time.perf_counter()
                runs[m].append(batch_one_ar(bar) if m == "ar_batch1" else batched(m == "strategy", bar=bar))
                sync(device)
                seconds[m].append(time.perf_counter() - t0)

    main = "strategy" if speculative else "ar"
    label = {"ar_batch1": "autoregressive_batch1", "ar": "autoregressive", "strategy": "strategy"}
    tps = {m: sum(len(g.tokens) for g in runs[m][0]) / statistics.median(seconds[m]) for m in modes}
    info = {
        "batch_size": batch_size,
        "scheme": "continuous batching: a finished row's slot takes the next sample; rows independent, "
                  "ragged cache with per-row masks (docs/batching.md)",
        "estimator": "batch throughput = new tokens of all samples / wall time of the whole dataset's decode, "
                     f"median over {repeats} repeat(s); modes interleaved per repeat",
        "n_samples": len(prompts),
        "repeats": repeats,
        "wall_time_s": {label[m]: v for m, v in seconds.items()},  # per repeat
        "tokens_per_second": {label[m]: v for m, v in tps.items()},
        "speedup_vs_autoregressive_same_batch": (tps[main] / tps["ar"]) if with_baseline else None,
        "speedup_vs_autoregressive_batch1": (tps[main] / tps["ar_batch1"]) if with_baseline else None,
        "autoregressive_batch_vs_batch1": (tps["ar"] / tps["ar_batch1"]) if with_baseline else None,
        "outputs_identical_to_batch1_autoregressive": (
            sum(a.tokens == b.tokens for a, b in zip(runs["ar_batch1"][0], runs["ar"][0])) if with_baseline else None),
    }
    return runs[main], (runs["ar"] if with_baseline else []), info
