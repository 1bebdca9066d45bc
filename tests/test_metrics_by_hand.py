"""The headline numbers against values computed by hand (written in the comments): tokens/s,
acceptance, mean accepted length, latency percentiles, every speedup estimator, the cost-model
speedups, on a fixture of two samples with known per-round times and tokens; a case where the
strategy is SLOWER (so the direction of the speedup is tested); drafts after a stop are not
counted; and a real run's metrics.json agrees with its own per-sample records."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pair_overrides

from specexp.report import forward_costs
from specexp.experiment import metrics_json
from specexp.core.decode import Generation

# ---------------------------------------------------------------------------------- the fixture
#
# Strategy, sample A: rounds (drafted, accepted, emitted) = (3, 3, 4), (3, 1, 2): 6 tokens
#                     round times 0.2 s, 0.1 s; wall 0.3 s
#           sample B: rounds (2, 0, 1), (2, 2, 3), (0, 0, 1): 5 tokens
#                     round times 0.1, 0.1, 0.05 s; wall 0.25 s
# Forwards (role: forwards, seconds, prefills, prefill seconds):
#   A target 2, 0.14, 1, 0.10   drafter 6, 0.07, 1, 0.02
#   B target 3, 0.18, 1, 0.10   drafter 4, 0.05, 1, 0.02
# Autoregressive baseline: A 6 tokens in 0.6 s (the same tokens), B 5 tokens in 0.25 s (other
# tokens); target forwards A 6 (0.5 s, prefill 0.1 s), B 5 (0.42 s, prefill 0.1 s).

TOK_A, TOK_B, TOK_B_BASE = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [7, 8, 9, 10, 12]


def gen(tokens, wall, drafted, accepted, emitted, times, fw, fsec, pre, psec):
    return Generation(tokens=list(tokens), wall_time=wall, drafted=drafted, accepted=accepted, emitted=emitted,
                      round_times=times, target_forwards=fw.get("target", 0), drafter_forwards=fw.get("drafter", 0),
                      model_forwards=fw, model_forward_seconds=fsec, model_prefills=pre, model_prefill_seconds=psec)


def strategy_gens():
    a = gen(TOK_A, 0.3, [3, 3], [3, 1], [4, 2], [0.2, 0.1], {"target": 2, "drafter": 6},
            {"target": 0.14, "drafter": 0.07}, {"target": 1, "drafter": 1}, {"target": 0.10, "drafter": 0.02})
    b = gen(TOK_B, 0.25, [2, 2, 0], [0, 2, 0], [1, 3, 1], [0.1, 0.1, 0.05], {"target": 3, "drafter": 4},
            {"target": 0.18, "drafter": 0.05}, {"target": 1, "drafter": 1}, {"target": 0.10, "drafter": 0.02})
    return [a, b]


def baseline_gens(wall_a=0.6, wall_b=0.25):
    a = gen(TOK_A, wall_a, [0] * 6, [0] * 6, [1] * 6, [wall_a / 6] * 6, {"target": 6}, {"target": 0.5},
            {"target": 1}, {"target": 0.1})
    b = gen(TOK_B_BASE, wall_b, [0] * 5, [0] * 5, [1] * 5, [wall_b / 5] * 5, {"target": 5}, {"target": 0.42},
            {"target": 1}, {"target": 0.1})
    return [a, b]


def test_aggregate_by_hand():
    m = metrics_json.aggregate(strategy_gens())
    assert m["n_samples"] == 2 and m["new_tokens"] == 11
    assert m["wall_time_s"] == pytest.approx(0.55)
    assert m["tokens_per_second"] == pytest.approx(20.0)  # 11 tokens / 0.55 s
    assert m["drafted_tokens"] == 10 and m["accepted_tokens"] == 6
    assert m["acceptance_rate"] == pytest.approx(0.6)  # 6 / 10
    assert m["target_forwards"] == 5 and m["drafter_forwards"] == 10
    assert m["mean_accepted_length"] == pytest.approx(2.2)  # 11 tokens / 5 target forwards
    assert m["accept_counts"] == [2, 1, 1, 1]  # rounds with 0, 1, 2, 3 accepted drafts
    assert m["draft_length_mean"] == pytest.approx(2.0)  # (3 + 3 + 2 + 2 + 0) / 5 rounds
    assert m["model_forwards"] == {"target": 5, "drafter": 10}
    assert m["model_forward_seconds"] == pytest.approx({"target": 0.32, "drafter": 0.12})  # 0.14 + 0.18, 0.07 + 0.05
    # each token's latency = its round's time / the tokens the round emitted:
    #   A: 0.2/4 = 50 ms x4, 0.1/2 = 50 ms x2;  B: 100 ms, 33.3 ms x3, 50 ms
    #   sorted: 33.3 x3, 50 x7, 100; mean 550/11 = 50; p50 = x[5] = 50; p90 = x[9] = 50;
    #   p99 = x[9] + 0.9 (x[10] - x[9]) = 95 (linear interpolation)
    lat = m["latency_ms_per_token"]
    assert lat["mean"] == pytest.approx(50.0) and lat["p50"] == pytest.approx(50.0)
    assert lat["p90"] == pytest.approx(50.0) and lat["p99"] == pytest.approx(95.0)
    # per-sample times 0.3, 0.25: mean = p50 = 0.275, p90 = 0.25 + 0.9 * 0.05 = 0.295, p99 = 0.2995
    t = m["time_per_sample_s"]
    assert (t["mean"], t["p50"], t["p90"], t["p99"]) == pytest.approx((0.275, 0.275, 0.295, 0.2995))


def assert_log_t_ci(sp: dict, resamples: list[tuple[float, float]], n: int) -> None:
    """The throughput ratio's CI is exp(log ratio +- t(n-1, 0.975) x se x sqrt(n / (n-1))), se the
    standard deviation of the log ratio over the exact bootstrap distribution `resamples`
    ((log ratio, probability) pairs); 2000 seeded resamples estimate se within a few percent."""
    from scipy import stats as sps

    mean = sum(v * p for v, p in resamples)
    se = math.sqrt(sum((v - mean) ** 2 * p for v, p in resamples)) * math.sqrt(n / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * se
    assert math.log(sp["throughput_ratio"] / sp["ci_low"]) == pytest.approx(half, rel=0.1)
    assert math.log(sp["ci_high"] / sp["throughput_ratio"]) == pytest.approx(half, rel=0.1)
    assert sp["ci"]["method"].startswith("t interval on the log scale")


def test_speedup_estimators_by_hand():
    sp = metrics_json.speedup(strategy_gens(), baseline_gens())
    assert sp["estimator"] == "throughput_ratio"
    # (11 / 0.55) / (11 / 0.85) = 0.85 / 0.55
    assert sp["throughput_ratio"] == pytest.approx(0.85 / 0.55)
    # the CI: log ratio +- t(1 df) x the bootstrap standard error x sqrt(2 / 1); a paired bootstrap
    # over two samples resamples {A, A} (ratio 2.0, p 1/4), {B, B} (1.0, p 1/4) or {A, B} (0.85 / 0.55, p 1/2)
    assert_log_t_ci(sp, [(math.log(2.0), 0.25), (0.0, 0.25), (math.log(0.85 / 0.55), 0.5)], n=2)
    # per sample (baseline s/token) / (strategy s/token): A (0.6/6)/(0.3/6) = 2, B (0.25/5)/(0.25/5) = 1
    assert sp["per_token"]["per_sample"] == pytest.approx([2.0, 1.0])
    assert sp["per_token"]["median"] == pytest.approx(1.5)
    assert sp["per_token"]["geomean"] == pytest.approx(math.sqrt(2.0))
    # only A emitted the baseline's tokens: 0.6 / 0.3 = 2
    w = sp["wall_time_ratio_matched"]
    assert w["n"] == 1 and w["per_sample"] == pytest.approx([2.0]) and w["median"] == pytest.approx(2.0)
    assert w["geomean"] == pytest.approx(2.0)


def test_a_slower_strategy_gets_a_speedup_below_one():
    """Baseline A in 0.15 s, B in 0.1 s: the strategy (0.3 s, 0.25 s) is slower."""
    sp = metrics_json.speedup(strategy_gens(), baseline_gens(wall_a=0.15, wall_b=0.1))
    assert sp["throughput_ratio"] == pytest.approx(0.25 / 0.55)  # (11 / 0.55) / (11 / 0.25) = 0.4545
    # every resample is slower (A 0.5, B 0.4), but with 2 samples the t interval (1 df) is wide
    assert_log_t_ci(sp, [(math.log(0.5), 0.25), (math.log(0.4), 0.25), (math.log(0.25 / 0.55), 0.5)], n=2)
    assert sp["per_token"]["per_sample"] == pytest.approx([0.5, 0.4])  # (0.15/6)/(0.3/6), (0.1/5)/(0.25/5)
    assert sp["per_token"]["median"] == pytest.approx(0.45)
    assert sp["per_token"]["geomean"] == pytest.approx(math.sqrt(0.2))
    assert sp["wall_time_ratio_matched"]["median"] == pytest.approx(0.5)  # A: 0.15 / 0.3


def test_cost_model_speedups_by_hand():
    """target = Linear(10, 10) (110 parameters), drafter = Linear(2, 5) (15 parameters)."""
    models = {"target": torch.nn.Linear(10, 10), "drafter": torch.nn.Linear(2, 5)}
    c = forward_costs.report(strategy_gens(), models, gamma=3, base=baseline_gens(), params={"target": 110, "drafter": 15})
    s = c["cost_model_speedup"]
    # params: N c_t / (F_t c_t + F_d c_d) = 11 * 110 / (5 * 110 + 10 * 15) = 1210 / 700
    assert s["params"] == pytest.approx(1210 / 700)
    assert s["csd_paper"] is None and s["previous_work"] is None  # neither T5 nor a listed LLaMA
    # measured, prefills left out: strategy target (0.14 + 0.18 - 0.2) s / 3 forwards = 0.04 s,
    # drafter (0.07 + 0.05 - 0.04) s / 8 = 0.01 s; autoregressive target (0.5 + 0.42 - 0.2) / 9 = 0.08 s
    d = c["cost_model"]
    assert d["costs"]["measured"] == pytest.approx({"target": 0.04, "drafter": 0.01})
    assert d["measured_target_autoregressive"] == pytest.approx(0.08)
    assert s["measured"] == pytest.approx(11 * 0.08 / (5 * 0.04 + 10 * 0.01))  # 0.88 / 0.3
    # Leviathan: alpha = accepted / (accepted + rounds ending in a rejection) = 6 / (6 + 2);
    # c = 0.01 / 0.08; (1 - 0.75^4) / (1 - 0.75) / (3 * 0.125 + 1) = 2.734375 / 1.375
    assert d["leviathan"] == pytest.approx({"gamma": 3, "alpha": 0.75, "cost_ratio": 0.125})
    assert s["leviathan_predicted"] == pytest.approx(2.734375 / 1.375)


def test_a_stop_inside_accepted_drafts_counts_only_the_emitted_ones():
    """The drafter proposes [a, EOS(, b)] and the target agrees: only `a` is an accepted draft
    (the EOS is the round's own token, `b` is never emitted)."""
    from test_paths import ScriptLM

    from specexp.length import Fixed
    from specexp.models.cached_lm import CachedLM
    from specexp.proposers import DraftModel
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper
    from types import SimpleNamespace

    script, prompt = [5, 0, 6, 7, 8], torch.tensor([3, 4])  # 0 = EOS
    target = ScriptLM(script, 2, 10)
    pair = SimpleNamespace(target=target, vocab_size=10, get=lambda r: ScriptLM(script, 2, 10))
    g = generate_one(target, pair, prompt, Stopper(eos_ids=[0]), Fixed(3), Sampling(), CachedLM, DraftModel)
    assert g.tokens == [5, 0]
    assert g.emitted == [2] and g.accepted == [1]
    assert g.drafted[0] in (2, 3)  # 2 where the drafter stops drafting at its own EOS
    m = metrics_json.aggregate([g])
    assert m["accepted_tokens"] == 1 and m["acceptance_rate"] == pytest.approx(1 / g.drafted[0])
    assert m["mean_accepted_length"] == pytest.approx(2.0)  # 2 tokens / 1 target forward


def generate_one(target, pair, prompt, stopper, policy, sampling, CachedLM, DraftModel):
    from specexp.core.decode import generate

    proposer = DraftModel().bind(pair)
    return generate(CachedLM(target), prompt, 10, sampling, stopper, proposer, policy, torch.Generator())


def test_a_runs_metrics_agree_with_its_per_sample_records(tmp_path, random_pair_dir):
    """End to end: metrics.json's aggregates and speedup, recomputed by hand from its own
    per-sample records (so run() wires strategy and baseline the right way round)."""
    from specexp.experiment.run import run_cli

    out = tmp_path / "run"
    assert run_cli([*pair_overrides(random_pair_dir), "dataset=humaneval", "dataset.limit=3", "max_new_tokens=10",
                    "summary=false", "timing.repeats=1", f"hydra.run.dir={out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    s = m["samples"]
    tok, wall = sum(x["new_tokens"] for x in s), sum(x["wall_time_s"] for x in s)
    btok, bwall = sum(x["baseline_new_tokens"] for x in s), sum(x["baseline_wall_time_s"] for x in s)
    assert m["tokens_per_second"] == pytest.approx(tok / wall)
    assert m["baseline"]["tokens_per_second"] == pytest.approx(btok / bwall)
    assert m["speedup"]["throughput_ratio"] == pytest.approx((tok / wall) / (btok / bwall))
    assert m["acceptance_rate"] == pytest.approx(sum(x["accepted"] for x in s) / sum(x["drafted"] for x in s))
    assert m["mean_accepted_length"] == pytest.approx(tok / sum(x["target_forwards"] for x in s))
    assert m["draft_length_mean"] == pytest.approx(sum(sum(x["draft_lengths"]) for x in s)
                                                   / sum(len(x["draft_lengths"]) for x in s))
    per = [(x["baseline_wall_time_s"] / x["baseline_new_tokens"]) / (x["wall_time_s"] / x["new_tokens"]) for x in s]
    assert m["speedup"]["per_token"]["per_sample"] == pytest.approx(per)


def test_median_of_repeats_by_hand():
    """A sample decoded 4 times in 0.1, 0.4, 0.2, 0.3 s: its time is the median 0.25 s, its rounds
    those of the 0.2 s repeat (the lower median), spread (0.4 - 0.1) / 0.25 = 1.2."""
    reps = [gen(TOK_A, t, [3], [2], [3], [t], {"target": 1}, {"target": t}, {}, {}) for t in (0.1, 0.4, 0.2, 0.3)]
    reps[2].drafted = [2]  # marks the repeat that must be picked
    g, info = metrics_json.median_of_repeats(reps)
    assert g.wall_time == pytest.approx(0.25) and g.drafted == [2]
    assert info["wall_times_s"] == [0.1, 0.4, 0.2, 0.3]
    assert info["spread"] == pytest.approx(1.2) and info["identical"] is True


def test_paired_comparison_of_two_runs_by_hand():
    """Three samples of 4 tokens; reference 0.4, 0.2, 0.4 s, run 0.2, 0.8, 0.05 s: per-sample
    ratios (ref s/token over run s/token) 2, 0.25, 8, log ratios d = (1, -2, 3) ln 2.
      speedup   = geometric mean = (2 * 0.25 * 8)^(1/3) = 4^(1/3)
      Cohen's d = mean(d) / sd(d) = (2/3) / (sqrt(57)/3) = 2 / sqrt(57)
      t-test    = t = d sqrt(3) on 2 df: two-sided p = 1 - t / sqrt(2 + t^2)
      Wilcoxon  = |d| ranks 1, 2, 3 with signs +, -, +: W = min(4, 2) = 2; exact two-sided
                  p = 2 P(W+ <= 2) = 2 * 3/8 (W+ over the 8 sign patterns: 0,1,2,3,3,4,5,6)"""
    from specexp import stats

    c = stats.compare_times([0.4, 0.2, 0.4], [4, 4, 4], [0.2, 0.8, 0.05], [4, 4, 4])
    assert c["n_samples"] == 3
    assert c["speedup"] == pytest.approx(4 ** (1 / 3))
    assert c["cohens_d"] == pytest.approx(2 / math.sqrt(57))
    t = 2 * math.sqrt(3) / math.sqrt(57)
    assert c["p_ttest"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert c["p_wilcoxon"] == pytest.approx(0.75)
    # the t interval of the mean log ratio: (2/3) ln 2 +- t(2 df, 0.975) (sqrt(57)/3) ln 2 / sqrt(3)
    from scipy import stats as sps

    half = sps.t.ppf(0.975, 2) * math.sqrt(57) / 3 * math.log(2) / math.sqrt(3)
    assert c["ci_low"] == pytest.approx(math.exp(2 / 3 * math.log(2) - half))
    assert c["ci_high"] == pytest.approx(math.exp(2 / 3 * math.log(2) + half))
    # swapped, the run is the reference: every ratio inverts
    r = stats.compare_times([0.2, 0.8, 0.05], [4, 4, 4], [0.4, 0.2, 0.4], [4, 4, 4])
    assert r["speedup"] == pytest.approx(4 ** (-1 / 3)) and r["cohens_d"] == pytest.approx(-2 / math.sqrt(57))
