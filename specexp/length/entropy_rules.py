"""The rules that read the drafter's entropy: the Entropy Drafting thesis' rules (checked after
drafting), the entropy-based framework's rules (checked before drafting), AdaEDL (before) and
SVIP (after). Entropies are in nats, measured as specexp.models.token_entropy describes."""
from __future__ import annotations

import math

import torch

from specexp.length.base import Decision, DraftStep, LengthPolicy
from specexp.models import token_entropy as entropy


class EntropyPolicy(LengthPolicy):
    """Base of the rules that read the drafter's entropy (specexp.models.token_entropy says which distribution:
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
    `framework_slice=true` takes the earlier entropies as the Entropy-Based Speculative Decoding
    framework's code does, `hist[-(window - 1):]`: the same for window >= 2, but at window=1
    `hist[-0:]` is the whole round's history, so the rule compares the mean of every entropy so
    far (not the current one alone) with theta_abs."""

    def __init__(self, theta_abs: float = 1.5, window: int = 3, framework_slice: bool = False, **kw):
        super().__init__(**kw)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.theta_abs, self.window, self.framework_slice = theta_abs, window, framework_slice

    def triggered(self, h, earlier, position):
        if self.framework_slice:
            recent = earlier[-(self.window - 1):] + [h]  # window=1: earlier[-0:] == earlier (the framework's)
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

    def carried_state(self, carry: bool = False) -> str | None:
        if not self.per_sample:
            return ("AdaEDL keeps lambda and its acceptance average from one sample to the next "
                    "(strategy.per_sample=false, the default); set strategy.per_sample=true to start "
                    "every sample from lambda_init")
        return super().carried_state(carry)

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
