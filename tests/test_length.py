"""Each draft-length rule's decisions on hand-computed entropy sequences.

A position's logits are uniform over n of V tokens, so its entropy is ln n exactly (for every
entropy type); the expected decisions are worked out next to each test from those numbers."""
from __future__ import annotations

import math

import pytest
import torch

from specexp import length as L
from specexp.length import Decision, DraftStep

V = 40
C, BEFORE, AFTER = Decision.CONTINUE, Decision.STOP_BEFORE, Decision.STOP_AFTER


def logits_h(n: float) -> torch.Tensor:
    """Logits whose softmax has entropy ln n: uniform over n tokens (n integer), or for a
    non-integer n two-level logits solved numerically."""
    x = torch.full((V,), float("-inf"))
    if float(n).is_integer():
        x[: int(n)] = 0.0
        return x
    # uniform over ceil(n) tokens, with one token down-weighted so that H = ln n
    m = math.ceil(n)
    target = math.log(n)
    lo, hi = 0.0, 1.0  # weight w of the last token relative to the others
    for _ in range(200):
        w = (lo + hi) / 2
        p = torch.tensor([1.0] * (m - 1) + [w], dtype=torch.float64)
        p = p / p.sum()
        h = float(-(p * p.log()).sum())
        lo, hi = (w, hi) if h < target else (lo, w)
    x[:m] = torch.tensor([0.0] * (m - 1) + [math.log(w)])
    return x


def H(n: float) -> float:
    return math.log(n)


def run(policy: L.LengthPolicy, ns: list[float], greedy: bool = True) -> list[Decision]:
    """Feed one round of positions with entropies ln n to `policy`; the decisions, up to and
    including the first stop."""
    policy.begin()
    out = []
    for j, n in enumerate(ns):
        logits = logits_h(n)
        q = torch.nn.functional.one_hot(logits.argmax(), V).float() if greedy else logits.softmax(-1)
        d = policy.decide(DraftStep(j, logits, q, int(logits.argmax()), greedy=greedy))
        out.append(d)
        if d is not C:
            break
    return out


def test_logits_h_has_the_entropy_it_claims():
    for n in (1, 2, 2.5, 2.8, 3, 7.3, 10):
        p = logits_h(n).double().softmax(-1)
        assert float(-(p * p.clamp_min(1e-300).log()).sum()) == pytest.approx(math.log(n), abs=1e-6)


# --- Entropy Drafting thesis: checked after drafting, trigger kept by default --------------------

def test_static_threshold():
    # tau 2.25: ln 2 = 0.693, ln 8 = 2.079 continue; ln 10 = 2.303 >= 2.25 stops (token kept)
    assert run(L.EntropyStatic(tau=2.25), [2, 8, 10, 2]) == [C, C, AFTER]
    assert run(L.EntropyStatic(tau=2.25, keep_trigger=False), [2, 8, 10]) == [C, C, BEFORE]
    # >=: an entropy exactly at tau stops. tau is the rule's own measure of these logits, so the two
    # are equal on every CPU (math.log(4) may differ from a vectorised float64 log by an ulp)
    h4 = L.EntropyStatic().entropy(logits_h(4))
    assert h4 == pytest.approx(math.log(4))
    assert run(L.EntropyStatic(tau=h4), [4]) == [AFTER]
    # the first token can trigger
    assert run(L.EntropyStatic(), [20]) == [AFTER]


def test_moving_average():
    # m 0.5, last_n 7. H^2: ln4^2 = 1.922, ln2^2 = 0.480.
    # t0: no earlier entropy -> never stops, even at ln 30
    assert run(L.EntropyMovingAverage(), [30, 30, 1]) == [C, AFTER]  # t1: 11.57 >= 0.5 * 11.57
    # t1: 0.480 >= 0.5 * 1.922 = 0.961? no. t2: 1.922 >= 0.5 * mean(1.922, 0.480) = 0.600 -> stop
    assert run(L.EntropyMovingAverage(m=0.5, last_n=7), [4, 2, 4]) == [C, C, AFTER]


def test_moving_average_window_is_the_last_n():
    # H^2: ln8^2 = 4.324, ln2^2 = 0.480, ln2.5^2 = 0.840
    # last_n 7, t2: 0.840 >= 0.5 * mean(4.324, 0.480) = 1.201? no -> continue
    assert run(L.EntropyMovingAverage(m=0.5, last_n=7), [8, 2, 2.5]) == [C, C, C]
    # last_n 1, t2: 0.840 >= 0.5 * 0.480 = 0.240 -> stop
    assert run(L.EntropyMovingAverage(m=0.5, last_n=1), [8, 2, 2.5]) == [C, C, AFTER]


def test_cumulative():
    # tau_cum 10: ln10^2 = 5.302; + ln8^2 = 4.324 -> 9.626 < 10; + ln2^2 = 0.480 -> 10.106 >= 10
    assert run(L.EntropyCumulative(tau_cum=10, last_n=7), [10, 8, 2]) == [C, C, AFTER]
    # last_n 1: t2 sums only ln2^2 + ln8^2 = 4.80 -> continue
    assert run(L.EntropyCumulative(tau_cum=10, last_n=1), [10, 8, 2]) == [C, C, C]
    # a single token can trigger: ln 25^2 = 10.36
    assert run(L.EntropyCumulative(tau_cum=10, last_n=7, keep_trigger=False), [25]) == [BEFORE]


# --- The framework: checked before drafting (the position is not drafted), min_len 1 -------------

def test_absolute():
    # theta 1.5: ln4 = 1.386 continue, ln5 = 1.609 > 1.5 -> not drafted
    assert run(L.EntropyAbsolute(theta_abs=1.5), [2, 4, 5]) == [C, C, BEFORE]
    # min_len 1: position 0 is always drafted, whatever its entropy
    assert run(L.EntropyAbsolute(theta_abs=1.5), [30, 5]) == [C, BEFORE]
    assert run(L.EntropyAbsolute(theta_abs=1.5, min_len=0), [30]) == [BEFORE]
    assert run(L.EntropyAbsolute(theta_abs=1.5, min_len=3), [30, 30, 30, 30]) == [C, C, C, BEFORE]


def test_relative():
    # theta_rel 1.5: ln3 / ln2 = 1.585 > 1.5 -> stop; ln2.8 / ln2 = 1.485 -> continue
    assert run(L.EntropyRelative(theta_rel=1.5), [2, 3]) == [C, BEFORE]
    assert run(L.EntropyRelative(theta_rel=1.5), [2, 2.8, 2.8]) == [C, C, C]
    # previous entropy 0 (one token): no ratio, no stop, however large the jump
    assert run(L.EntropyRelative(theta_rel=1.5), [1, 30, 30]) == [C, C, C]
    # no previous entropy at position 0 (min_len 0): no stop
    assert run(L.EntropyRelative(theta_rel=1.5, min_len=0), [30]) == [C]


def test_window():
    # w 3, theta 1.5. t1: only 2 entropies -> no stop even at ln 20.
    assert run(L.EntropyWindow(theta_abs=1.5, window=3), [8, 20]) == [C, C]
    # t2: mean(ln8, ln20, ln1) = (2.079 + 2.996 + 0) / 3 = 1.692 -> stop
    assert run(L.EntropyWindow(theta_abs=1.5, window=3), [8, 20, 1]) == [C, C, BEFORE]
    # t2: mean(ln8, ln2, ln3) = (2.079 + 0.693 + 1.099) / 3 = 1.290 -> continue
    # t3: mean(ln2, ln3, ln10) = 1.365 -> continue; t4: mean(ln3, ln10, ln8) = 1.827 -> stop
    assert run(L.EntropyWindow(theta_abs=1.5, window=3), [8, 2, 3, 10, 8]) == [C, C, C, C, BEFORE]
    # w 1 is the absolute rule
    assert run(L.EntropyWindow(theta_abs=1.5, window=1), [2, 4, 5]) == [C, C, BEFORE]


def test_adaptive():
    # theta 1.5, alpha 0.1: threshold 1.5 + 0.1 t. ln6 = 1.792 stops at t = 2 (1.7), not at t = 3 (1.8)
    assert run(L.EntropyAdaptive(theta_abs=1.5, alpha=0.1), [1, 1, 6]) == [C, C, BEFORE]
    # ln7 = 1.946 > 1.9 at t = 4
    assert run(L.EntropyAdaptive(theta_abs=1.5, alpha=0.1), [1, 1, 1, 6, 7]) == [C, C, C, C, BEFORE]


def test_combined():
    # [ln2, ln3]: relative (1.585 > 1.5) but not absolute (1.099 < 1.5)
    assert run(L.EntropyCombined(logic="or"), [2, 3]) == [C, BEFORE]
    assert run(L.EntropyCombined(logic="and"), [2, 3]) == [C, C]
    # [ln4, ln5]: absolute (1.609) but not relative (1.161)
    assert run(L.EntropyCombined(logic="or"), [4, 5]) == [C, BEFORE]
    assert run(L.EntropyCombined(logic="and"), [4, 5]) == [C, C]
    # [ln2, ln5]: both
    assert run(L.EntropyCombined(logic="and"), [2, 5]) == [C, BEFORE]
    with pytest.raises(ValueError):
        L.EntropyCombined(logic="xor")


@pytest.mark.parametrize("kind,k,ns,expected", [
    ("topk", 3, [2, 30], [C, C]),          # top-3 entropy of uniform-30 is ln3 = 1.099 < 1.5
    ("topk", 5, [2, 30], [C, BEFORE]),     # ln5 = 1.609 > 1.5
    ("renyi", 50, [2, 5], [C, BEFORE]),    # Renyi of a uniform is ln n too
])
def test_entropy_types_change_decisions(kind, k, ns, expected):
    assert run(L.EntropyAbsolute(theta_abs=1.5, entropy_type=kind, entropy_top_k=k), ns) == expected


# --- AdaEDL ---------------------------------------------------------------------------------------

def test_adaedl_stop_rule():
    # lambda 0.5, gamma 0.2: stop before a token with 1 - sqrt(0.2 H) < 0.5, i.e. H > 1.25.
    # ln3 = 1.099: bound 0.531 -> draft; ln4 = 1.386: bound 0.473 -> stop
    p = L.AdaEDL(lambda_init=0.5, entropy_scale=0.2)
    assert p.bound(H(3)) == pytest.approx(1 - math.sqrt(0.2 * math.log(3)))
    assert run(p, [3, 3, 4]) == [C, C, BEFORE]
    assert run(L.AdaEDL(lambda_init=0.5), [30, 4]) == [C, BEFORE]  # min_len 1
    assert run(L.AdaEDL(lambda_init=0.5, min_len=0), [4]) == [BEFORE]


def test_adaedl_threshold_update():
    p = L.AdaEDL(lambda_init=0.5, beta1=0.5, beta2=0.9, eps=0.01, alpha=0.9, ar_init=0.0)
    # AR = 0.5 * 0 + 0.5 * 4/4 = 0.5 < 0.9 -> lambda' = 0.51; lambda = 0.9 * 0.5 + 0.1 * 0.51 = 0.501
    p.observe(4, 4)
    assert p.ar == pytest.approx(0.5) and p.lam == pytest.approx(0.501)
    q = L.AdaEDL(lambda_init=0.5, ar_init=1.0)
    q.observe(4, 4)  # AR = 1.0 >= 0.9: acceptance on target -> lambda' = 0.49 -> 0.499 (drafts get longer)
    assert q.ar == pytest.approx(1.0) and q.lam == pytest.approx(0.499)
    q.observe(10, 9)  # AR = 0.5 + 0.45 = 0.95 >= 0.9 -> lambda' = 0.489 -> 0.9 * 0.499 + 0.0489 = 0.498
    assert q.ar == pytest.approx(0.95) and q.lam == pytest.approx(0.498)
    q.observe(4, 0)  # AR = 0.475 < 0.9: rejections -> lambda' = 0.508 -> 0.4990 (drafts get shorter)
    assert q.ar == pytest.approx(0.475) and q.lam == pytest.approx(0.9 * 0.498 + 0.1 * 0.508)
    q.observe(0, 0)  # a round with no draft: nothing to learn
    assert q.ar == pytest.approx(0.475)
    q.reset()
    assert (q.lam, q.ar) == (0.5, 1.0)
    # a higher lambda stops earlier: lambda 0.7 stops at H > 0.45 (ln2 = 0.693)
    assert run(L.AdaEDL(lambda_init=0.7), [1, 2]) == [C, BEFORE]


def test_adaedl_draft_verify_update():
    p = L.AdaEDL(lambda_init=0.5, ar_init=1.0, max_len=10, update="draft_verify")
    p.observe(10, 2)  # reached max_len: lambda kept
    assert p.lam == pytest.approx(0.5)
    p.observe(3, 0)  # AR = 0.3 <= 0.9 -> +eps: 0.45 + 0.051 = 0.501
    assert p.lam == pytest.approx(0.501)


# --- SVIP -------------------------------------------------------------------------------------------

def test_svip():
    # stop after a token with sqrt(0.15 H) > 0.3, i.e. H > 0.6: ln2 = 0.693 stops; ln1.8 = 0.588 does not
    assert run(L.SVIP(), [1, 1.8, 1.8, 2]) == [C, C, C, AFTER]
    assert L.SVIP().max_len == 40


# --- transformers' confidence threshold and schedules ------------------------------------------------

def test_confidence_threshold_after_drafting():
    # top probability: uniform-2 -> 0.5 >= 0.4 continue; uniform-3 -> 0.333 < 0.4 stop, token kept
    assert run(L.Confidence(threshold=0.4), [1, 2, 3, 2]) == [C, C, AFTER]
    assert L.Confidence().max_len == 20


def test_confidence_under_sampling_uses_the_drafted_tokens_probability():
    pol = L.Confidence(threshold=0.4)
    pol.begin()
    q = torch.tensor([0.7, 0.2, 0.1])
    logits = q.log()
    assert pol.decide(DraftStep(0, logits, q, 0, greedy=False)) is C  # p(token 0) = 0.7
    assert pol.decide(DraftStep(1, logits, q, 1, greedy=False)) is AFTER  # p(token 1) = 0.2


def test_confidence_adaptive_threshold_minimises_fpr_plus_3_fnr():
    # drafted probabilities and outcomes: accepted >= 0.5, rejected below
    pol = L.Confidence(threshold=0.4, adapt=True)
    for probs, accepted in [([0.9, 0.8, 0.3], 2), ([0.7, 0.2], 1), ([0.6, 0.55, 0.1], 2)]:
        pol.begin()
        pol._round = list(probs)
        pol.observe(len(probs), accepted)
    # scores 0.9 0.8 0.3 | 0.7 0.2 | 0.6 0.55 0.1 with labels 1 1 0 | 1 0 | 1 1 0: a perfect split at 0.55
    assert pol.threshold == pytest.approx(0.55)
    pol.reset()
    assert pol.threshold == 0.4


def test_heuristic_schedule():
    p = L.Heuristic(start=5)
    seq = []
    for accepted_all in (True, True, False, False, False, False, False, False, False, True):
        k = p.begin()
        seq.append(k)
        p.observe(k, k if accepted_all else 0)
    # 5 -> 7 -> 9 -> 8 -> 7 -> ... -> never below 1
    assert seq == [5, 7, 9, 8, 7, 6, 5, 4, 3, 2]
    for _ in range(5):
        p.observe(p.begin(), 0)
    assert p.begin() == 1
    p.reset()
    assert p.begin() == 5
    assert L.Heuristic(start=5, max_len=6).begin() == 5


def test_heuristic_transient_resets_every_sample_even_when_carrying():
    carried, transient = L.Heuristic(), L.HeuristicTransient()
    for p in (carried, transient):
        p.observe(5, 5)
        p.start_sample(carry=True)
    assert carried.begin() == 7  # state carried to the next sample
    assert transient.begin() == 5  # always reset
    carried.start_sample(carry=False)
    assert carried.begin() == 5


def test_random_gamma_is_uniform_seeded_and_reset():
    p = L.RandomGamma(min_gamma=2, max_gamma=6, seed=3)
    seq = [p.begin() for _ in range(400)]
    assert set(seq) == {2, 3, 4, 5, 6}
    assert all(50 < seq.count(k) < 110 for k in range(2, 7))  # ~80 each
    p.reset()
    assert [p.begin() for _ in range(400)] == seq
    assert [L.RandomGamma(2, 6, seed=4).begin() for _ in range(20)] != seq[:20]


def test_every_stateful_policy_resets_to_its_initial_state():
    for p in (L.Heuristic(), L.HeuristicTransient(), L.AdaEDL(), L.Confidence(adapt=True), L.RandomGamma()):
        fresh = [p.begin() for _ in range(3)]
        p.reset()
        for k, n in ((4, 4), (4, 0), (3, 3), (5, 1)):
            p.begin()
            p.observe(k, n)
        p.reset()
        assert [p.begin() for _ in range(3)] == fresh, type(p).__name__
    a = L.AdaEDL(lambda_init=0.6, ar_init=0.3, per_sample=True)
    a.observe(4, 1)
    a.start_sample(carry=False)
    assert (a.lam, a.ar) == (0.6, 0.3)
    b = L.AdaEDL(lambda_init=0.6, ar_init=0.3)  # default: lambda adapts over the whole run
    b.observe(4, 1)
    b.start_sample(carry=False)
    assert b.lam > 0.6 and b.ar != 0.3


def test_entropy_history_is_per_round():
    """A round's rules only look at entropies of the current draft."""
    p = L.EntropyMovingAverage()
    run(p, [30, 30, 30])
    assert run(p, [1]) == [C]  # the first position of a new round has no earlier entropy


def test_invalid_parameters_fail_loudly():
    for bad in (lambda: L.RandomGamma(5, 2), lambda: L.Heuristic(start=0), lambda: L.EntropyWindow(window=0),
                lambda: L.EntropyAbsolute(min_len=20, max_len=16), lambda: L.AdaEDL(update="x"),
                lambda: L.EntropyMovingAverage(last_n=0), lambda: L.Confidence(threshold=2)):
        with pytest.raises(ValueError):
            bad()
