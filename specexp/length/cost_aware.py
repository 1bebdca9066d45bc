"""A length policy that drafts while drafting pays, by the verification cost measured on this
machine (the stopping rule of SpecDec++, Huang et al. 2024, arXiv 2405.19715, with the cost of
verification as a function of the draft length instead of a constant).

Why: Leviathan et al.'s formula assumes verifying k drafts costs one target forward. On a GPU it
nearly does; on a CPU it does not (scripts/verify_cost.py: SmolLM2-135M on 2 cores, 3 tokens cost
1.24 one-token forwards, 4 tokens 1.61), so the draft length that pays depends on where the
machine's cost steps are, and on how likely the drafts are to be accepted.

The rule, per drafted token (the math):
- a_j: the estimated acceptance probability of draft j, from the drafter's top probability at
  that position (softmax at T=1 under greedy, where it is the drafted token's; the sampling
  distribution under sampling). Never the drawn token's own probability under sampling: a rule
  that drops a drawn token for its own value drafts tokens that are no longer distributed as q,
  and verification would stop being exact (the lossless suite's chi-square caught it). The
  estimate is calibrated online: 10 bins of that probability, each a Beta posterior over
  acceptance whose prior mean is the bin's centre (weight `prior`); after each round, drafts 1..n
  count as accepted and draft n+1 as rejected in their bins (later drafts tell nothing). Under
  greedy decoding a declined token teaches too: when every draft before it was accepted, the
  target's own token at its position (in the next round's text) says whether it would have been.
- P_i = a_1 ... a_i, the chance drafts 1..i are all accepted, so k drafts emit in expectation
  E(k) = 1 + P_1 + ... + P_k tokens at a cost C(k) = v(k+1) + k c: v(w) a target forward over w
  tokens, relative to one token; c a drafter forward, relative to the same.
- The long-run rate is what counts (renewal reward: tokens per cost over the whole decode), so
  a round should maximise E(k) - lam C(k), lam the rate (Dinkelbach): lam is the sample's tokens
  per cost so far (each round's verification and every drafter forward it ran, the one whose
  token was declined included), from a prior of `prior_rounds` autoregressive rounds (rate 1).
- Before drafting token i (its drafter forward already paid), stop unless some k >= i, assuming
  tokens after i are accepted with a_i each, has E(k) - lam C(k) above stopping now. So a draft
  starts only when its first token is likely enough to pay for the wider forward, and a cost step
  (4 tokens on the CPU above) is crossed only when the drafts behind it are likely.
- Exploration: a rule that never drafts never learns that its drafter is better than its
  probabilities say (an under-confident drafter would lock it into autoregressive decoding), so
  after `explore` rounds in a row without a draft it drafts one token regardless (a decision that
  does not look at the token: exact under sampling too).

`verify_cost`: the list [v(1) = 1, v(2), ..., v(max_len + 1)] (scripts/verify_cost.py prints it),
or null: measured at bind on the pair's target (`measure_verify_cost`: interleaved widths after a
context, the median ratio over the repeats), then made monotone (`monotone_cost`: verifying more
tokens never costs less; a noisy CPU measures drafting 4 as cheaper than 3 otherwise).
`drafter_cost`: c, or null: measured at bind (`measure_drafter_cost`: the pair's "drafter" model's
one-token forward over the target's, interleaved, median over the repeats; `drafter_cost_init`
when the pair has no such model or it cannot be timed alone, e.g. a feature drafter).

Reproducible: the costs are fixed at bind, so the decisions depend on the drafts, the acceptance
and the config only, never on the clock while decoding. `measured()` gives the costs used as plain
data; a run given them back (strategy.verify_cost=[...], strategy.drafter_cost=...) measures
nothing and decides identically (`specexp reproduce` passes them back from metrics.json).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

from specexp.length import Decision, DraftStep, LengthPolicy
from specexp.models import token_entropy


@torch.inference_mode()
def measure_verify_cost(target, widths: int | list[int], context: int = 64, repeats: int = 5,
                        vocab_size: int | None = None, tree: bool = False) -> tuple[list[float], float]:
    """([v(w) for w in 1..widths, or for w in the list widths (1 added, sorted)], seconds of a
    one-token forward): the target's forward over w tokens after `context` cached tokens, relative
    to a one-token forward in the same repeat (the widths alternate within each repeat, so a load
    change hits them all); the median over `repeats` (one warm-up repeat first, dropped). `tree`:
    the w tokens are one context token and a tree of w - 1 nodes (all its children), fed through
    the tree path, 4D mask included (what a token tree's verification costs)."""
    from specexp.models.cached_lm import cached_lm
    from specexp.models.loading import sync

    lm = cached_lm(target, vocab_size=vocab_size)
    device = next(target.parameters()).device
    n_vocab = vocab_size or target.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, n_vocab, (n,), generator=gen).to(device)  # noqa: E731
    base = lm.start(ids(context))
    lm.forward(base, keep=1)
    length = lm.length
    ws = list(range(1, widths + 1)) if isinstance(widths, int) else sorted({1, *widths})
    times: dict[int, list[float]] = {w: [] for w in ws}
    for r in range(repeats + 1):
        for w in ws:
            x = ids(w)
            star = torch.full((w - 1,), -1, device=device) if tree and w > 1 else None
            sync(device)
            t = time.perf_counter()
            lm.forward(x, keep=w, tree=star)
            sync(device)
            if r:
                times[w].append(time.perf_counter() - t)
            lm.crop(length)
    one = times[1]
    return [statistics.median(t / o for t, o in zip(times[w], one)) for w in ws], statistics.median(one)


@torch.inference_mode()
def forward_step(lm, n_vocab: int, width: int = 1, tree: bool = False, context: int = 64, seed: int = 0):
    """A forward to time: `lm` (a CachedLM) reads `context` random tokens once; each call of the
    returned step feeds it `width` more random tokens (with `tree`, as `width` sibling nodes
    under the context's last token, through the tree path) and crops back."""
    device = next(lm.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    lm.forward(lm.start(torch.randint(0, n_vocab, (context,), generator=gen).to(device)), keep=1)
    length, siblings = lm.length, torch.full((width,), -1) if tree else None

    def step():
        lm.forward(torch.randint(0, n_vocab, (width,), generator=gen).to(device), keep=width, tree=siblings)
        lm.crop(length)

    return step


@torch.inference_mode()
def relative_cost(target, step: Callable[[], object], context: int = 64, repeats: int = 5,
                  vocab_size: int | None = None) -> float:
    """c: the time of `step()` over the target's one-token forward after `context` cached tokens
    (forward_step), the two alternating within each repeat; the median ratio over `repeats` (one
    warm-up repeat first, dropped). `step` leaves whatever it fed as it found it (it is called
    repeats + 1 times)."""
    from specexp.models.cached_lm import cached_lm
    from specexp.models.loading import sync

    device = next(target.parameters()).device
    n_vocab = vocab_size or target.get_input_embeddings().weight.shape[0]
    one_token, ratios = forward_step(cached_lm(target, vocab_size=vocab_size), n_vocab, context=context), []
    for r in range(repeats + 1):
        t = []
        for run in (one_token, step):
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            t.append(time.perf_counter() - t0)
        if r:
            ratios.append(t[1] / t[0])
    return statistics.median(ratios)


def measure_drafter_cost(target, drafter, context: int = 64, repeats: int = 5, vocab_size: int | None = None) -> float:
    """c: the drafter's one-token forward over the target's, both after `context` cached tokens
    (relative_cost)."""
    from specexp.models.cached_lm import cached_lm

    n_vocab = min(m.get_input_embeddings().weight.shape[0] for m in (target, drafter))
    step = forward_step(cached_lm(drafter), n_vocab, context=context, seed=1)
    return relative_cost(target, step, context, repeats, vocab_size)


def monotone_cost(ratios: list[float]) -> list[float]:
    """The measured verification costs [v(1), v(2), ...] made non-decreasing in the width (a wider
    forward never costs less; timing noise says otherwise, e.g. [1.0, 1.375, 1.121, 1.643]) by
    isotonic regression, the least-squares non-decreasing fit (pool adjacent violators, Barlow et
    al. 1972; scipy.optimize.isotonic_regression), then scaled so that v(1) = 1 again."""
    from scipy.optimize import isotonic_regression

    fit = [float(x) for x in isotonic_regression(ratios, increasing=True).x]
    return [1.0] + [x / fit[0] for x in fit[1:]]


EDGE_TOL = 1e-6  # a probability this close below a bin edge counts in the bin above (calibration_bin)


def calibration_bin(p: float, bins: int) -> int:
    """The calibration bin of a drafter probability p: bin b holds [b/bins, (b+1)/bins), and p = 1
    the top bin. A value on an edge falls in the bin above it, and so does one up to EDGE_TOL below
    an edge: a float32 softmax meaning an edge value (0.9) comes out a few ulps either side of it
    depending on the CPU, and both sides must land in the same bin. Clamped to [0, bins - 1]."""
    return min(max(math.floor((p + EDGE_TOL) * bins), 0), bins - 1)


class CostAware(LengthPolicy):
    """Draft while the expected tokens pay for the measured cost of verifying them (module
    docstring). max_len: longest draft; verify_cost: [v(1) = 1, ..., v(max_len + 1)] or null
    (measured at bind, made monotone); drafter_cost: c or null
    (measured at bind; `drafter_cost_init` when it cannot be); prior: the calibration bins' prior
    weight; prior_rounds: the rate's prior weight in autoregressive rounds; calibrate: false uses
    the drafter's probability as is; explore: after this many rounds in a row without a draft,
    draft one token (0: never); measure_context, measure_repeats: how bind measures the costs."""

    needs_steps = True
    BINS = 10

    def __init__(self, max_len: int = 8, verify_cost: list[float] | None = None, drafter_cost: float | None = None,
                 drafter_cost_init: float = 0.1, prior: float = 4.0, prior_rounds: float = 4.0,
                 calibrate: bool = True, explore: int = 8, measure_context: int = 64, measure_repeats: int = 5):
        super().__init__(max_len=max_len)
        if max_len < 1:
            raise ValueError(f"cost_aware: max_len must be >= 1, got {max_len}")
        if verify_cost is not None:
            verify_cost = [float(v) for v in verify_cost]
            if len(verify_cost) < max_len + 1 or verify_cost[0] != 1.0 or min(verify_cost) <= 0:
                raise ValueError(f"cost_aware: verify_cost needs max_len + 1 = {max_len + 1} positive entries starting "
                                 f"with 1.0 (v(w) for w = 1..max_len + 1), got {verify_cost}; set "
                                 "strategy.verify_cost=null to measure it at start")
        for key, v in (("drafter_cost", drafter_cost), ("drafter_cost_init", drafter_cost_init)):
            if v is not None and v < 0:
                raise ValueError(f"cost_aware: {key} must be >= 0, got {v}")
        if explore < 0:
            raise ValueError(f"cost_aware: explore must be >= 0 rounds (0: never), got {explore}")
        if prior <= 0 or prior_rounds <= 0:
            raise ValueError(f"cost_aware: prior and prior_rounds must be > 0, got {prior}, {prior_rounds}")
        self.verify_cost, self.drafter_cost, self.drafter_cost_init = verify_cost, drafter_cost, drafter_cost_init
        self.prior, self.prior_rounds, self.calibrate, self.explore = prior, prior_rounds, calibrate, explore
        self.measure_context, self.measure_repeats = measure_context, measure_repeats
        self.one_token_seconds: float | None = None  # the target's one-token forward at bind (verify_cost=null)
        self.raw_verify_cost: list[float] | None = None  # the medians measured at bind, before monotone_cost
        self.sources = {"verify_cost": "config" if verify_cost is not None else None,
                        "drafter_cost": "config" if drafter_cost is not None else None}
        self.reset()

    def bind(self, pair) -> "CostAware":
        """Measure the costs the config leaves null, once: from here on they are fixed."""
        vocab_size = getattr(pair, "vocab_size", None)
        if self.verify_cost is None:
            self.raw_verify_cost, self.one_token_seconds = measure_verify_cost(
                pair.target, self.max_len + 1, self.measure_context, self.measure_repeats, vocab_size)
            self.verify_cost = monotone_cost(self.raw_verify_cost)
            self.sources["verify_cost"] = "measured"
        if self.drafter_cost is None:
            self.drafter_cost, self.sources["drafter_cost"] = self.drafter_cost_init, "drafter_cost_init"
            try:
                drafter = pair.get("drafter")
            except (KeyError, ValueError, AttributeError):  # no drafter model in the pair
                drafter = None
            if isinstance(drafter, torch.nn.Module):
                try:
                    self.drafter_cost = measure_drafter_cost(pair.target, drafter, self.measure_context,
                                                             self.measure_repeats, vocab_size)
                    self.sources["drafter_cost"] = "measured"
                except (TypeError, ValueError, RuntimeError, IndexError):  # a model that needs more than ids
                    pass  # (a feature drafter reads the target's hidden states): drafter_cost_init
        return self

    def measured(self) -> dict:
        """The costs that steer this policy's decisions, as plain data (JSON). "replay": the config
        keys that, given back (strategy.verify_cost=[...] strategy.drafter_cost=...), make a run
        measure nothing and decide identically; "sources": where each came from (measured, config,
        drafter_cost_init); "raw_verify_cost": the medians measured before monotone_cost."""
        return {"replay": {"verify_cost": list(self.v()), "drafter_cost": self.c()},
                "sources": dict(self.sources), "raw_verify_cost": self.raw_verify_cost}

    # ------------------------------------------------------------------------ the estimates
    def acceptance(self, p: float) -> float:
        """The calibrated acceptance estimate of a draft the drafter gives probability p."""
        if not self.calibrate:
            return p
        b = calibration_bin(p, self.BINS)
        centre = (b + 0.5) / self.BINS
        return (self.hits[b] + self.prior * centre) / (self.trials[b] + self.prior)

    def c(self) -> float:
        """The drafter's forward relative to a one-token target forward (fixed at bind)."""
        return self.drafter_cost if self.drafter_cost is not None else self.drafter_cost_init

    def v(self) -> list[float]:
        if self.verify_cost is None:
            raise RuntimeError("cost_aware: call bind(pair) first (it measures the verification cost), or set "
                               "strategy.verify_cost")
        return self.verify_cost

    # ------------------------------------------------------------------------ the rule
    def begin(self) -> int:
        self.round_p: list[float] = []  # this round's drafted tokens: the drafter's probabilities
        self.expected, self.reach = 1.0, 1.0  # E(i) and P_i of the drafts so far
        self.decided = 0  # decide calls this round: one drafter forward each
        return self.max_len

    def decide(self, step: DraftStep) -> Decision:
        self.decided += 1
        p = float(token_entropy.step_probs(step, None).max())  # never the drawn token's own probability (below)
        greedy = token_entropy.is_greedy(step) is not False and step.prefix is not None
        if self.declined is not None and step.prefix is not None and step.prefix.shape[0] > self.declined[0]:
            at, token, q = self.declined  # last time's declined token: the target has decided its position
            self.count(q, int(step.prefix[at]) == token)
            self.declined = None
        a, i, lam, c, v = self.acceptance(p), step.position, self.rate(), self.c(), self.v()
        stop = self.expected - lam * v[i]
        gain, e, reach = stop, self.expected, self.reach
        for k in range(i + 1, self.max_len + 1):  # draft tokens i+1..k (1-based): forwards k - i more at most
            reach *= a
            e += reach
            gain = max(gain, e - lam * (v[k] + (k - i) * c))
        if gain <= stop and not (i == 0 and self.explore and self.idle >= self.explore):
            if greedy and self.calibrate:  # learn from it once the target has passed this position
                self.declined = (step.prefix.shape[0] + i, int(step.token), p)
            return Decision.STOP_BEFORE
        self.round_p.append(p)
        self.reach *= a
        self.expected += self.reach
        return Decision.CONTINUE

    def rate(self) -> float:
        """lam: tokens per unit cost over this sample's rounds, after `prior_rounds` at rate 1."""
        return (self.prior_rounds + self.tokens) / (self.prior_rounds + self.spent)

    def observe(self, drafted: int, accepted: int) -> None:
        self.idle = 0 if drafted else self.idle + 1  # rounds in a row without a draft
        self.tokens += accepted + 1
        self.spent += self.v()[min(drafted, self.max_len)] + self.decided * self.c()  # stopped-before forwards too
        self.decided = 0
        if len(self.round_p) == drafted:  # the drafts this policy decided (not a lookup's round)
            for j, p in enumerate(self.round_p[: accepted + 1]):
                self.count(p, j < accepted)
        if accepted < drafted:  # a draft before the declined token was rejected: its position is not the one
            self.declined = None
        self.round_p = []

    def count(self, p: float, accepted: bool) -> None:
        b = calibration_bin(p, self.BINS)
        self.trials[b] += 1
        self.hits[b] += accepted

    def reset(self) -> None:
        self.hits = [0.0] * self.BINS
        self.trials = [0.0] * self.BINS
        self.tokens, self.spent, self.idle = 0.0, 0.0, 0
        self.declined: tuple[int, int, float] | None = None  # (index, token, p) of a declined greedy draft
        self.begin()
