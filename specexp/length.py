"""Draft-length policies: how many tokens to draft. A policy looks at the drafter's distribution
token by token (`decide`), and learns from how many drafts were accepted (`observe`).

A new rule is a subclass here (or in the user's own module) plus a YAML file naming it with
`_target_`; it never touches the proposer that produces the tokens.

Rules here (conf/strategy/<name>.yaml, docs/strategies.md): Fixed (speculative), RandomGamma,
Oracle (an upper bound), transformers' Heuristic / HeuristicTransient / Confidence, the Entropy
Drafting thesis' EntropyStatic / EntropyMovingAverage / EntropyCumulative (checked after
drafting), the entropy-based framework's EntropyAbsolute / EntropyRelative / EntropyWindow /
EntropyAdaptive / EntropyCombined (checked before drafting), AdaEDL (before) and SVIP (after).
Entropies are in nats, measured as specexp.entropy describes. The cost-aware rule (drafts while
it pays for the measured cost of verification) is its own module, specexp/length_cost.py.
"""
from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

import torch

from specexp import entropy


class Decision(enum.Enum):
    CONTINUE = 0  # draft this token and keep going
    STOP_BEFORE = 1  # do not draft this token; the round's draft ends before it
    STOP_AFTER = 2  # draft this token, then end the round's draft (it triggered the stop)


@dataclass
class DraftStep:
    """What a policy sees before a token is added to the draft."""

    position: int  # 0-based index of this token in the current draft
    logits: torch.Tensor  # the drafter's raw logits for this position [V] (before temperature)
    probs: torch.Tensor | None  # the distribution the token is sampled from (one-hot under greedy); None for model-free drafters
    token: int | torch.Tensor  # the token that would be drafted
    prefix: torch.Tensor | None = None  # the sequence before this round's draft [L] (prompt + output)
    drafted: list | None = None  # the tokens drafted earlier in this round (0-d tensors)
    greedy: bool | None = None  # greedy decoding (probs one-hot); None: unknown, inferred from probs


class LengthPolicy:
    """Base: draft up to `max_len` tokens, never stop early. Subclasses override `decide`
    (per token) and/or `begin`/`observe` (per round)."""

    needs_steps = False  # True if `decide` must be called for every drafted token
    greedy_only = False  # True if the policy works under greedy decoding only (specexp.validate checks it)

    def __init__(self, max_len: int = 10):
        if max_len < 0:
            raise ValueError(f"max draft length must be >= 0, got {max_len}")
        self.max_len = max_len

    def bind(self, pair) -> "LengthPolicy":
        """Attach the loaded models, for policies that need them (e.g. an oracle); returns self."""
        return self

    def begin(self) -> int:
        """Called at the start of each round: the most tokens this round may draft."""
        return self.max_len

    def decide(self, step: DraftStep) -> Decision:
        return Decision.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        """Called after every round of a speculative decode with its draft length and accepted
        count (specexp.decode's convention: drafts emitted before a stop). `drafted` may be 0: a
        round whose budget left room for the target's token only, or a rule that stopped first."""

    def reset(self) -> None:
        """Restore the initial state. Called before each sample unless the run carries length state
        across samples (through `start_sample`)."""

    def start_sample(self, carry: bool = False) -> None:
        """Called before each sample: resets, unless `carry` (the run's carry_length_state).
        Policies that must reset at every sample regardless override this."""
        if not carry:
            self.reset()


class Fixed(LengthPolicy):
    """Classic speculative decoding: always draft `gamma` tokens (Leviathan et al. 2023)."""

    def __init__(self, gamma: int = 4):
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        super().__init__(max_len=gamma)
        self.gamma = gamma


# ---------------------------------------------------------------------------------------------
# Baselines: random and oracle lengths
# ---------------------------------------------------------------------------------------------


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
        from specexp.models import CachedLM

        self.lm = CachedLM(pair.target, vocab_size=getattr(pair, "vocab_size", None))
        self._seq = None
        return self

    def decide(self, step: DraftStep) -> Decision:
        if self.lm is None:
            raise RuntimeError("the oracle length policy needs the target model: call bind(pair) first")
        if entropy.is_greedy(step) is False or step.prefix is None:
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


# ---------------------------------------------------------------------------------------------
# transformers' schedules (generation/candidate_generator.py, stopping_criteria.py)
# ---------------------------------------------------------------------------------------------


class Heuristic(LengthPolicy):
    """transformers' `num_assistant_tokens_schedule="heuristic"`: start at `start` tokens; after
    each round draft 2 more if the round's matches equal `rule`'s reference, otherwise 1 fewer (at
    least 1). transformers updates after every round, also one with no draft (a budget of one
    token) and counts an accepted EOS draft as no match (specexp.decode's convention, which this
    policy observes). `rule`:
      drafted    +2 iff matches == drafts of this round (transformers 5.x:
                 `num_matches == len(scores[0]) - 1`; a round with no draft gives +2)
      scheduled  +2 iff matches == the scheduled number (transformers 4.x:
                 `num_matches == int(self.num_assistant_tokens)`; a round capped by the budget,
                 or with no draft, gives -1)
    transformers keeps the value across generate() calls of one assistant; here it is reset per
    sample unless the run sets carry_length_state=true (which is what matches transformers)."""

    RULES = ("drafted", "scheduled")

    def __init__(self, start: int = 5, max_len: int | None = None, rule: str = "drafted"):
        if start < 1:
            raise ValueError(f"start must be >= 1, got {start}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 or null, got {max_len}")
        if rule not in self.RULES:
            raise ValueError(f"heuristic rule must be one of {', '.join(self.RULES)}, got {rule!r}")
        super().__init__(max_len=max_len if max_len is not None else 2**31 - 1)
        self.start, self.cap, self.rule = start, max_len, rule
        self.reset()

    def begin(self) -> int:
        return self.current if self.cap is None else min(self.current, self.cap)

    def observe(self, drafted: int, accepted: int) -> None:
        if accepted == (drafted if self.rule == "drafted" else self.current):
            self.current += 2
        else:
            self.current = max(1, self.current - 1)

    def reset(self) -> None:
        self.current = self.start


class HeuristicTransient(Heuristic):
    """transformers' "heuristic_transient": the heuristic schedule, reset to `start` at every
    sample even when the run carries length state."""

    def start_sample(self, carry: bool = False) -> None:
        self.reset()


class Confidence(LengthPolicy):
    """transformers' assistant confidence threshold (`assistant_confidence_threshold`, default 0.4,
    with `num_assistant_tokens` 20): a stopping criterion checked AFTER the token is generated
    (`ConfidenceCriteria`), so the low-confidence token stays in the draft. Confidence is the
    drafter's probability of the drafted token: under greedy the top probability of the raw
    softmax, under sampling the token's probability in the processed distribution.

    transformers also re-tunes the threshold online when scikit-learn is installed (ROC of the
    drafted-token probabilities vs their acceptance, cost = FPR + 3 FNR); `adapt=true` does the
    same here (without scikit-learn), `adapt=false` (default) keeps the threshold fixed."""

    needs_steps = True

    def __init__(self, threshold: float = 0.4, max_len: int = 20, adapt: bool = False):
        super().__init__(max_len=max_len)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold0, self.adapt = threshold, adapt
        self.reset()

    def confidence(self, step: DraftStep) -> float:
        if entropy.is_greedy(step):
            return float(step.logits.double().softmax(-1).max())
        return float(step.probs[int(step.token)])

    def decide(self, step: DraftStep) -> Decision:
        p = self.confidence(step)
        self._round.append(p)
        return Decision.STOP_AFTER if p < self.threshold else Decision.CONTINUE

    def begin(self) -> int:
        self._round = []
        return self.max_len

    def observe(self, drafted: int, accepted: int) -> None:
        if not self.adapt:
            return
        # as transformers: the accepted drafts are matches, the first rejected one a miss, the
        # drafts after it (never judged) are dropped
        judged = self._round[: min(drafted, accepted + 1)]
        self._probs.extend(judged)
        self._matches.extend([1] * min(accepted, len(judged)) + [0] * (len(judged) - min(accepted, len(judged))))
        if len(self._probs) > 5 and 0 in self._matches and 1 in self._matches:
            self.threshold = _roc_threshold(self._probs, self._matches)

    def reset(self) -> None:
        self.threshold = self.threshold0
        self._round, self._probs, self._matches = [], [], []


def _roc_threshold(scores: list[float], labels: list[int]) -> float:
    """The score threshold minimising FPR + 3 FNR over the ROC curve's thresholds (as
    transformers, with scikit-learn's `roc_curve`: a first threshold of +inf, then the distinct
    scores from high to low; the first minimum wins)."""
    pos = sum(labels)
    neg = len(labels) - pos
    pairs = sorted(zip(scores, labels), key=lambda t: -t[0])
    best, best_cost = math.inf, 3.0  # threshold +inf: nothing predicted positive, FPR 0, FNR 1
    tp = fp = 0
    i = 0
    while i < len(pairs):
        s = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == s:
            tp += pairs[i][1]
            fp += 1 - pairs[i][1]
            i += 1
        cost = fp / neg + 3 * (1 - tp / pos)
        if cost < best_cost:
            best, best_cost = s, cost
    return best


# ---------------------------------------------------------------------------------------------
# Entropy-based rules
# ---------------------------------------------------------------------------------------------


class EntropyPolicy(LengthPolicy):
    """Base of the rules that read the drafter's entropy (specexp.entropy says which distribution:
    the sampling distribution under sampling, softmax(logits / temperature) under greedy or when
    `temperature` is set). `step_entropy(step)` is what the rule reads and what the analysis
    records report as the drafter's entropy (`entropy_label` says of which distribution);
    `entropy(logits)` is this rule's measure of softmax(logits / (temperature or 1))."""

    needs_steps = True

    def __init__(self, max_len: int = 10, entropy_type: str = "shannon", renyi_alpha: float = 2.0,
                 entropy_top_k: int = 50, temperature: float | None = None):
        super().__init__(max_len=max_len)
        entropy._check(entropy_type, renyi_alpha, entropy_top_k)
        if temperature is not None and not temperature > 0:
            raise ValueError(f"entropy temperature must be > 0 or null, got {temperature}")
        self.entropy_type, self.renyi_alpha, self.entropy_top_k = entropy_type, renyi_alpha, entropy_top_k
        self.temperature = temperature
        self.history: list[float] = []  # this round's entropies, one per position decided so far

    def measure(self, probs: torch.Tensor) -> float:
        return float(entropy.measure(probs, self.entropy_type, self.renyi_alpha, self.entropy_top_k))

    def entropy(self, logits: torch.Tensor) -> float:
        return self.measure(entropy.softmax(logits, self.temperature or 1.0))

    def step_entropy(self, step: DraftStep) -> float:
        """The entropy this rule reads at `step` (what the analysis records report)."""
        return self.measure(entropy.step_probs(step, self.temperature))

    def entropy_label(self, step: DraftStep) -> str:
        return entropy.label(step, self.temperature, self.entropy_type)

    def begin(self) -> int:
        self.history = []
        return self.max_len

    def reset(self) -> None:
        self.history = []


# --- Entropy Drafting (Kluser 2024, bachelor thesis; code: "Entropy Drafting" repository) ------
# The rule is checked after the token is generated; the triggering token is kept in the draft
# (keep_trigger=true, as the thesis' code) or dropped (keep_trigger=false). At most 10 tokens.


class _ThesisRule(EntropyPolicy):
    def __init__(self, max_len: int = 10, keep_trigger: bool = True, **kw):
        super().__init__(max_len=max_len, **kw)
        self.keep_trigger = keep_trigger

    def triggered(self, h: float, earlier: list[float]) -> bool:
        raise NotImplementedError

    def decide(self, step: DraftStep) -> Decision:
        h = self.step_entropy(step)
        earlier = self.history
        self.history = earlier + [h]
        if self.triggered(h, earlier):
            return Decision.STOP_AFTER if self.keep_trigger else Decision.STOP_BEFORE
        return Decision.CONTINUE


class EntropyStatic(_ThesisRule):
    """Static threshold: stop when H_t >= tau (thesis default tau = 2.25 nats)."""

    def __init__(self, tau: float = 2.25, **kw):
        super().__init__(**kw)
        self.tau = tau

    def triggered(self, h, earlier):
        return h >= self.tau


class EntropyMovingAverage(_ThesisRule):
    """Moving average: with n = min(last_n, number of earlier entropies in this round) >= 1,
    stop when H_t^2 >= m * mean(H_{t-1}^2 .. H_{t-n}^2). Never triggers on the round's first
    token. Thesis defaults m = 0.5, last_n = 7."""

    def __init__(self, m: float = 0.5, last_n: int = 7, **kw):
        super().__init__(**kw)
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        self.m, self.last_n = m, last_n

    def triggered(self, h, earlier):
        n = min(self.last_n, len(earlier))
        if n < 1:
            return False
        mean_sq = sum(e * e for e in earlier[-n:]) / n
        return h * h >= self.m * mean_sq


class EntropyCumulative(_ThesisRule):
    """Cumulative: with n = min(last_n, number of earlier entropies in this round), stop when
    H_t^2 + H_{t-1}^2 + ... + H_{t-n}^2 >= tau_cum. Thesis defaults tau_cum = 10, last_n = 7."""

    def __init__(self, tau_cum: float = 10.0, last_n: int = 7, **kw):
        super().__init__(**kw)
        if last_n < 0:
            raise ValueError(f"last_n must be >= 0, got {last_n}")
        self.tau_cum, self.last_n = tau_cum, last_n

    def triggered(self, h, earlier):
        n = min(self.last_n, len(earlier))
        window = earlier[len(earlier) - n:] if n else []
        return h * h + sum(e * e for e in window) >= self.tau_cum


# --- The entropy-based speculative-decoding framework's rules ----------------------------------
# Checked BEFORE a position is drafted: the high-entropy position is not drafted. Never stops
# before `min_len` tokens are drafted; at most `max_len` (defaults 1 and 16).


class _FrameworkRule(EntropyPolicy):
    def __init__(self, min_len: int = 1, max_len: int = 16, **kw):
        super().__init__(max_len=max_len, **kw)
        if not 0 <= min_len <= max_len:
            raise ValueError(f"need 0 <= min_len <= max_len, got {min_len}, {max_len}")
        self.min_len = min_len

    def triggered(self, h: float, earlier: list[float], position: int) -> bool:
        raise NotImplementedError

    def decide(self, step: DraftStep) -> Decision:
        h = self.step_entropy(step)
        if step.position >= self.min_len and self.triggered(h, self.history, step.position):
            return Decision.STOP_BEFORE
        self.history = self.history + [h]
        return Decision.CONTINUE


def _absolute(h: float, theta_abs: float) -> bool:
    return h > theta_abs


def _relative(h: float, earlier: list[float], theta_rel: float, eps: float = 1e-6) -> bool:
    if not earlier or earlier[-1] < eps:  # no previous entropy, or ~0: a ratio means nothing
        return False
    return h / earlier[-1] > theta_rel


class EntropyAbsolute(_FrameworkRule):
    """Stop before a position whose entropy H_t > theta_abs (default 1.5)."""

    def __init__(self, theta_abs: float = 1.5, **kw):
        super().__init__(**kw)
        self.theta_abs = theta_abs

    def triggered(self, h, earlier, position):
        return _absolute(h, self.theta_abs)


class EntropyRelative(_FrameworkRule):
    """Stop before a position whose entropy jumped: H_t / H_{t-1} > theta_rel (default 1.5); no
    stop when H_{t-1} is absent (first position) or ~0 (< 1e-6)."""

    def __init__(self, theta_rel: float = 1.5, **kw):
        super().__init__(**kw)
        self.theta_rel = theta_rel

    def triggered(self, h, earlier, position):
        return _relative(h, earlier, self.theta_rel)


class EntropyWindow(_FrameworkRule):
    """Stop when the mean entropy of the last `window` positions, the current one included,
    exceeds theta_abs (defaults 3 and 1.5); no stop until `window` entropies are available.
    `seed_slice=true` takes the earlier entropies as the framework seed's code does,
    `hist[-(window - 1):]`: the same for window >= 2, but at window=1 `hist[-0:]` is the whole
    round's history, so the rule compares the mean of every entropy so far (not the current one
    alone) with theta_abs."""

    def __init__(self, theta_abs: float = 1.5, window: int = 3, seed_slice: bool = False, **kw):
        super().__init__(**kw)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.theta_abs, self.window, self.seed_slice = theta_abs, window, seed_slice

    def triggered(self, h, earlier, position):
        if self.seed_slice:
            recent = earlier[-(self.window - 1):] + [h]  # window=1: earlier[-0:] == earlier (the seed's)
        else:
            recent = earlier[len(earlier) - (self.window - 1):] + [h] if self.window > 1 else [h]
        if len(recent) < self.window:
            return False
        return sum(recent) / len(recent) > self.theta_abs


class EntropyAdaptive(_FrameworkRule):
    """A threshold that rises along the draft: stop when H_t > theta_abs + alpha * t, t the
    0-based position (defaults 1.5 and 0.1)."""

    def __init__(self, theta_abs: float = 1.5, alpha: float = 0.1, **kw):
        super().__init__(**kw)
        self.theta_abs, self.alpha = theta_abs, alpha

    def triggered(self, h, earlier, position):
        return h > self.theta_abs + self.alpha * position


class EntropyCombined(_FrameworkRule):
    """Absolute OR relative (logic="or", default) or absolute AND relative (logic="and")."""

    def __init__(self, theta_abs: float = 1.5, theta_rel: float = 1.5, logic: str = "or", **kw):
        super().__init__(**kw)
        if logic not in ("or", "and"):
            raise ValueError(f"logic must be 'or' or 'and', got {logic!r}")
        self.theta_abs, self.theta_rel, self.logic = theta_abs, theta_rel, logic

    def triggered(self, h, earlier, position):
        a, r = _absolute(h, self.theta_abs), _relative(h, earlier, self.theta_rel)
        return (a or r) if self.logic == "or" else (a and r)


# --- AdaEDL (Agrawal, Jeon, Lee 2024, arXiv:2410.18351; PMLR v262) -------------------------------


class AdaEDL(EntropyPolicy):
    """Before drafting a token, stop if the entropy-based lower bound on its acceptance
    probability, 1 - sqrt(gamma * H), is below lambda (the paper's Sec. 3; Appendix B derives the
    bound from Pinsker's inequality with CE(p_DM, p_TM) ~ (1 + gamma) H_DM). A higher lambda
    stops earlier. After each round with a draft, lambda follows the paper's Algorithm 1, with
    r = accepted / drafted and L = max_len:
        AR <- beta1 * AR + (1 - beta1) * r
        lambda' = lambda + eps   if AR < alpha        (below the target acceptance: stop earlier)
                  lambda - eps   elif accepted != L   (not yet drafting the most: draft longer)
                  lambda         otherwise
        lambda <- beta2 * lambda + (1 - beta2) * lambda'
    with the paper's beta1 0.5, beta2 0.9, eps 0.01, alpha 0.9, gamma 0.2 (Sec. 4.4).
    (`update="draft_verify"`: Draft & Verify's adjuster, which the paper modifies: it keeps lambda
    when the draft reached max_len and raises it when AR <= alpha.) Each round moves lambda by at
    most (1 - beta2) eps = 0.001; lambda and AR are kept across samples by default
    (`per_sample=false`); `per_sample=true` resets them before every sample unless
    carry_length_state. Never stops before `min_len` tokens (default 1, ours: a round with no
    draft teaches lambda nothing, so a high lambda could otherwise lock the run into
    autoregressive decoding)."""

    def __init__(self, lambda_init: float = 0.5, entropy_scale: float = 0.2, beta1: float = 0.5,
                 beta2: float = 0.9, eps: float = 0.01, alpha: float = 0.9, ar_init: float = 0.0,
                 max_len: int = 10, min_len: int = 1, update: str = "adaedl", per_sample: bool = False, **kw):
        super().__init__(max_len=max_len, **kw)
        if update not in ("adaedl", "draft_verify"):
            raise ValueError(f"update must be 'adaedl' or 'draft_verify', got {update!r}")
        if entropy_scale <= 0:
            raise ValueError(f"entropy_scale must be > 0, got {entropy_scale}")
        if not 0 <= min_len <= max_len:
            raise ValueError(f"need 0 <= min_len <= max_len, got {min_len}, {max_len}")
        self.lambda_init, self.entropy_scale = lambda_init, entropy_scale
        self.beta1, self.beta2, self.eps, self.alpha, self.ar_init = beta1, beta2, eps, alpha, ar_init
        self.min_len, self.update, self.per_sample = min_len, update, per_sample
        self.lam, self.ar = lambda_init, ar_init

    def bound(self, h: float) -> float:
        """The acceptance-probability lower bound 1 - sqrt(gamma * H)."""
        return 1.0 - math.sqrt(self.entropy_scale * max(h, 0.0))

    def decide(self, step: DraftStep) -> Decision:
        h = self.step_entropy(step)
        if step.position >= self.min_len and self.bound(h) < self.lam:
            return Decision.STOP_BEFORE
        self.history = self.history + [h]
        return Decision.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted == 0:  # no draft: no acceptance rate to learn from
            return
        self.ar = self.beta1 * self.ar + (1 - self.beta1) * accepted / drafted
        if self.update == "draft_verify":
            target = self.lam if drafted >= self.max_len else self.lam + (self.eps if self.ar <= self.alpha else -self.eps)
        elif self.ar < self.alpha:  # Algorithm 1, lines 9-15
            target = self.lam + self.eps
        elif accepted != self.max_len:
            target = self.lam - self.eps
        else:
            target = self.lam
        self.lam = self.beta2 * self.lam + (1 - self.beta2) * target

    def start_sample(self, carry: bool = False) -> None:
        self.history = []
        if self.per_sample and not carry:
            self.reset()

    def reset(self) -> None:
        super().reset()
        self.lam, self.ar = self.lambda_init, self.ar_init


# --- SVIP (Zhang et al. 2024, arXiv:2411.18462) --------------------------------------------------


class SVIP(EntropyPolicy):
    """After drafting a token, stop when sqrt(gamma * H) > threshold (gamma = 0.15, threshold 0.3,
    i.e. H > 0.6 nats): the token stays in the draft. At most 40 tokens."""

    def __init__(self, threshold: float = 0.3, entropy_scale: float = 0.15, max_len: int = 40, **kw):
        super().__init__(max_len=max_len, **kw)
        if entropy_scale <= 0:
            raise ValueError(f"entropy_scale must be > 0, got {entropy_scale}")
        self.threshold, self.entropy_scale = threshold, entropy_scale

    def decide(self, step: DraftStep) -> Decision:
        h = self.step_entropy(step)
        self.history = self.history + [h]
        stop = math.sqrt(self.entropy_scale * max(h, 0.0)) > self.threshold
        return Decision.STOP_AFTER if stop else Decision.CONTINUE
