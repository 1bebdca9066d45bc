"""The statistics (specexp/stats.py) and the run aggregates (specexp/experiment/metrics_json.py) on hand-computed
fixtures and synthetic per-sample times with fixed seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specexp import stats
from specexp.experiment import metrics_json
from specexp.core.decode import Generation


def gen(n_tokens: int, wall: float, drafted=(), accepted=(), emitted=(), first: int = 1) -> Generation:
    g = Generation(tokens=list(range(first, first + n_tokens)), wall_time=wall, drafted=list(drafted),
                   accepted=list(accepted), emitted=list(emitted) or [1] * n_tokens,
                   round_times=[wall / max(1, len(emitted or [1] * n_tokens))] * len(emitted or [1] * n_tokens))
    g.target_forwards = len(g.emitted)
    return g


# Two samples. A: both sides emit the same 10 tokens, strategy 1 s, baseline 2 s.
# B: the strategy stops after 6 tokens (2 s), the baseline emits 12 tokens (4 s): the wall-time
# ratio (4 / 2 = 2.0) would credit the strategy for stopping early; per token it is 1.0.
def fixture(strategy_times=(1.0, 2.0)):
    a = gen(10, strategy_times[0], drafted=[4, 4, 4, 4], accepted=[3, 2, 1, 0], emitted=[4, 3, 2, 1])
    b = gen(6, strategy_times[1], drafted=[3, 3], accepted=[3, 1], emitted=[4, 2], first=100)
    base = [gen(10, 2.0), gen(12, 4.0, first=200)]
    return [a, b], base


def test_aggregate_by_hand():
    gens, _ = fixture()
    a = metrics_json.aggregate(gens)
    assert a["n_samples"] == 2 and a["new_tokens"] == 16 and a["wall_time_s"] == 3.0
    assert a["tokens_per_second"] == pytest.approx(16 / 3)
    assert a["drafted_tokens"] == 22 and a["accepted_tokens"] == 10
    assert a["acceptance_rate"] == pytest.approx(10 / 22)
    assert a["mean_accepted_length"] == pytest.approx(16 / 6)  # 6 rounds = 6 target forwards
    assert a["accept_counts"] == [1, 2, 1, 2, 0]  # rounds that accepted 0, 1, 2, 3, 4 drafts
    assert a["draft_length_mean"] == pytest.approx(22 / 6)


def test_speedup_estimators_by_hand_faster():
    gens, base = fixture()
    sp = metrics_json.speedup(gens, base)
    assert sp["estimator"] == "throughput_ratio"
    # (16 tokens / 3 s) / (22 tokens / 6 s) = 96 / 66
    assert sp["throughput_ratio"] == pytest.approx(96 / 66)
    # per token: A (2/10)/(1/10) = 2.0, B (4/12)/(2/6) = 1.0
    assert sp["per_token"]["per_sample"] == pytest.approx([2.0, 1.0])
    assert sp["per_token"]["median"] == pytest.approx(1.5)
    assert sp["per_token"]["geomean"] == pytest.approx(math.sqrt(2.0))
    # wall-time ratio only where the outputs are identical: A alone, 2 / 1
    assert sp["wall_time_ratio_matched"]["n"] == 1
    assert sp["wall_time_ratio_matched"]["per_sample"] == pytest.approx([2.0])
    assert sp["ci_low"] <= sp["throughput_ratio"] <= sp["ci_high"]


def test_speedup_estimators_by_hand_slower():
    """The direction: a strategy that takes longer per token gets a ratio below 1."""
    gens, base = fixture(strategy_times=(4.0, 8.0))
    sp = metrics_json.speedup(gens, base)
    assert sp["throughput_ratio"] == pytest.approx((16 / 12) / (22 / 6))  # 4/11
    assert sp["throughput_ratio"] < 1
    assert sp["per_token"]["per_sample"] == pytest.approx([0.5, 0.25])
    assert sp["wall_time_ratio_matched"]["per_sample"] == pytest.approx([0.5])
    assert stats.format_speedup(sp).startswith("0.36x [")


def test_speedup_with_no_identical_output_has_no_matched_ratio():
    gens, base = fixture()
    base[0] = gen(10, 2.0, first=500)  # other tokens
    assert metrics_json.speedup(gens, base)["wall_time_ratio_matched"] is None


def test_median_of_repeats():
    reps = [gen(5, 3.0), gen(5, 1.0), gen(5, 2.0)]
    g, info = metrics_json.median_of_repeats(reps)
    assert g.wall_time == 2.0 and g is not reps[2] and g.tokens == reps[2].tokens
    assert info == {"wall_times_s": [3.0, 1.0, 2.0], "spread": 1.0, "identical": True}
    g, info = metrics_json.median_of_repeats([gen(5, 1.0), gen(5, 2.0, first=9)])
    assert g.wall_time == 1.5 and info["identical"] is False


# ---- synthetic per-sample times ------------------------------------------------------------

def synthetic(rng, n: int, effect: float = 1.0):
    """Per-sample seconds of a reference and a run on the same n samples: a shared per-sample
    difficulty (log-sd 0.3) and independent timing noise (log-sd 0.1) on each side; the run takes
    1/effect of the time."""
    difficulty = np.exp(rng.normal(0, 0.3, n))
    ref = difficulty * np.exp(rng.normal(0, 0.1, n))
    run = difficulty * np.exp(rng.normal(0, 0.1, n)) / effect
    return ref, run


def test_a_ten_percent_effect_is_detected():
    ref, run = synthetic(np.random.default_rng(0), 30, effect=1.10)
    c = stats.compare_times(ref, [20] * 30, run, [20] * 30, seed=0)
    assert c["ci_low"] > 1.0 and c["ci_low"] < 1.10 < c["ci_high"]
    assert c["p_wilcoxon"] < 0.01 and c["p_ttest"] < 0.01 and c["cohens_d"] > 0.5
    assert stats.verdict(c["ci_low"], c["ci_high"], c["p_ttest"]) == stats.FASTER
    # and the other way round: slower
    c = stats.compare_times(run, [20] * 30, ref, [20] * 30, seed=0)
    assert stats.verdict(c["ci_low"], c["ci_high"], c["p_ttest"]) == stats.SLOWER


def test_false_positive_rate_without_effect():
    """400 A/A replicates: the tests reject at about their nominal 5% (within 5% +- 3%)."""
    rng = np.random.default_rng(1)
    reps = 400
    wil = tt = verdicts = 0
    for r in range(reps):
        ref, run = synthetic(rng, 30)
        c = stats.compare_times(ref, [1] * 30, run, [1] * 30, seed=r)
        wil += c["p_wilcoxon"] < stats.ALPHA
        tt += c["p_ttest"] < stats.ALPHA
        verdicts += stats.verdict(c["ci_low"], c["ci_high"], c["p_ttest"]) != stats.NO_DIFFERENCE  # the verdict's test
    for rate in (wil / reps, tt / reps, verdicts / reps):
        assert 0.02 <= rate <= 0.08, (wil, tt, verdicts)


def test_holm_by_hand():
    # sorted p: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.04, 0.06) = 0.06; None is not a test
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06], nan_ok=False)
    # a p that alone rejects does not after correction across 3 runs
    adj = stats.holm([0.02, 0.5, 0.9])
    assert adj[0] == pytest.approx(0.06)
    assert stats.verdict(1.05, 1.2, 0.02) == stats.FASTER
    assert stats.verdict(1.05, 1.2, adj[0]) == stats.NO_DIFFERENCE


def test_binary_and_score_comparisons():
    ref = [True] * 10 + [False] * 10
    run = [True] * 10 + [True] * 9 + [False]  # 9 discordant pairs, all in the run's favour
    c = stats.compare_binary(ref, run)
    assert c["discordant"] == [0, 9] and c["difference"] == pytest.approx(0.45)
    assert c["p"] == pytest.approx(2 * 0.5 ** 9)  # exact McNemar: binomial(9, 0.5), both tails
    c = stats.compare_scores([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert c["difference"] == 0 and c["p"] == 1.0


def test_planned_n_reaches_its_power_in_simulation():
    """samples_needed (statsmodels TTestPower) for a 1.10x speedup at power 0.8 with log-ratio sd
    0.1: simulated, the t-test verdict finds it in about 80% of 300 replicates (asserted >= 0.7)."""
    n = stats.samples_needed(0.1, 1.10, 0.8)
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(300):
        d = rng.normal(math.log(1.10), 0.1, n)
        c = stats.compare_times(np.exp(d), [1] * n, [1.0] * n, [1] * n)
        found += stats.verdict(c["ci_low"], c["ci_high"], c["p_ttest"]) == stats.FASTER
    assert found / 300 >= 0.7, (n, found)
    assert stats.samples_needed(0.1, 1.10, 0.8, m=7) > n  # Holm across 7 runs needs more
    assert stats.samples_needed(0.0, 1.10) is None


def test_single_sample_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="at least 2 samples.*dataset.limit"):
        stats.compare_times([1.0], [1], [1.0], [1])


def test_format():
    assert stats.format_ratio(1.234, 1.1, 1.37) == "1.23x [1.10, 1.37]"
    assert stats.format_ratio(None) == "n/a" and stats.format_speedup(None) == "n/a"
