"""Statistics at the sample sizes people run: verdicts that can be reached (or say they cannot),
quality criteria decided from intervals, a fair best fixed-gamma reference, the two kinds of
comparison, acceptance with a sample that drafts nothing, excluded samples, the benchmark's units,
acceptance_alpha at a stop, the threshold plot's lines, the thesis table's rows, the planner."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_report import noisy_run, write_run

from specexp import stats
from specexp.report import bench_analysis as benchmark
from specexp.report import paired
from specexp.report import forward_costs
from specexp.report import plots
from specexp.report import cli as report
from specexp.core.decode import Generation


def collected(root):
    runs = report.load_runs([root])
    df = report.collect([root], runs=runs)
    return df, report.collect_samples(runs, df)


# ---- verdicts that can be reached ----------------------------------------------------------

def test_seven_runs_truly_twice_as_fast_at_n8_are_faster(tmp_path, capsys):
    """7 runs, each 2x on every one of 8 samples: Wilcoxon + Holm could never get below 0.05
    (7 x 2/2^8 = 0.055), so they all read "no detectable difference"; the t-test on the log ratios
    has no floor and finds them faster."""
    for j in range(7):
        noisy_run(tmp_path, str(j), 2.0, seed=j, n=8, params={"gamma": j + 1})
    assert report.main([str(tmp_path), "--stats"]) == 0
    st = pd.read_csv(tmp_path / "report" / "stats.csv")
    assert len(st) == 7 and (st["n_samples"] == 8).all()
    assert (st["verdict"] == "faster").all(), st["verdict"].tolist()
    assert (st["p_wilcoxon"] * 7 >= stats.ALPHA).all()  # what the old verdict's test could reach
    assert "raise dataset.limit to 6" not in capsys.readouterr().out


def test_a_test_that_cannot_reach_alpha_says_undecidable_and_the_n_that_would():
    assert stats.undecidable(stats.WILCOXON, 8, 7) == (
        "undecidable at n = 8 with 7 runs (smallest attainable p after Holm 0.0547 >= 0.05; n = 9 would decide)")
    assert stats.undecidable(stats.WILCOXON, 9, 7) is None and stats.deciding_n(stats.WILCOXON, 2) == 7
    assert stats.undecidable(stats.T_TEST, 8, 7) is None  # no floor
    assert stats.undecidable(stats.MCNEMAR, 4, 1).startswith("undecidable at n = 4 (smallest attainable p 0.125")
    assert stats.verdict(1.5, 2.0, 0.2, cannot="undecidable at n = 4") == "undecidable at n = 4"


def test_quality_verdict_at_n4_is_undecidable_not_no_difference(tmp_path):
    """Pass@1 from 100% to 0% on 4 samples: McNemar's exact p is at best 2/2^4 = 0.125."""
    noisy_run(tmp_path, "0", 1.0, seed=0, n=4, passed=[True] * 4)
    noisy_run(tmp_path, "1", 1.0, seed=1, n=4, params={"gamma": 2}, passed=[False] * 4)
    df, samples = collected(tmp_path)
    st = paired.compare_runs(df, samples, {"run": "0"}).set_index("run")
    assert st.loc["1", "quality_verdict"] == (
        "undecidable at n = 4 (smallest attainable p 0.125 >= 0.05; n = 6 would decide)")


# ---- quality criteria from an interval -----------------------------------------------------

def criteria_sweep(root, n: int, fixed_passed: list[bool], dyn_passed: list[bool]) -> dict:
    noisy_run(root, "0", 1.2, seed=0, n=n, params={"gamma": 4}, passed=fixed_passed)
    noisy_run(root, "1", 1.3, seed=1, n=n, strategy="entropy_static", params={"tau": 1.0}, passed=dyn_passed)
    df, samples = collected(root)
    (row,) = paired.success_criteria(df, samples)
    return row


def test_pass_rate_falling_from_100_to_0_percent_at_n4_is_not_met(tmp_path):
    row = criteria_sweep(tmp_path, 8, [True] * 8, [False] * 8)  # a report half of 4
    assert row["n_report"] == 4 and row["quality_diff"] == -1.0
    assert row["no_quality_loss"] != "met" and row["no_quality_loss"].startswith("undecided")


def test_no_quality_loss_is_met_only_when_the_interval_rules_a_loss_out(tmp_path):
    equal = [i % 3 != 0 for i in range(200)]
    row = criteria_sweep(tmp_path / "big", 200, equal, equal)  # 100 report samples, no discordant pair
    assert row["quality_ci_low"] > -stats.QUALITY_MARGIN and row["no_quality_loss"] == "met"
    row = criteria_sweep(tmp_path / "small", 8, [True] * 8, [True] * 8)  # the same, on 4: not enough
    assert row["no_quality_loss"].startswith("undecided")


def test_binary_interval_is_the_clopper_pearson_bounds_of_the_discordant_cells():
    from statsmodels.stats.proportion import proportion_confint

    c = stats.compare_binary([True] * 4, [False] * 4)
    assert c["difference"] == -1.0 and c["p"] == pytest.approx(0.125)
    assert c["ci_low"] == pytest.approx(-1.0)
    assert c["ci_high"] == pytest.approx(proportion_confint(0, 4, alpha=0.05, method="beta")[1])  # 1 - 0.025^(1/4)
    assert c["ci_high"] == pytest.approx(1 - 0.025 ** 0.25)


# ---- a fair reference ----------------------------------------------------------------------

def test_best_fixed_gamma_is_selected_by_its_speedup_over_its_own_baseline(tmp_path):
    """gamma=2 is truly 1.45x over its own baseline, gamma=6 truly 1.21x but ran on a machine 1.5x
    quieter (its baseline too); a dynamic rule is truly 0.93x of gamma=2. By raw tokens/s gamma=6
    would be the reference and the dynamic rule "faster than the best fixed" at about 1.12x."""
    ids = [f"s{i:02d}" for i in range(12)]
    difficulty = np.exp(np.random.default_rng(5).normal(0, 0.3, len(ids)))
    rng = np.random.default_rng(6)

    def run(name, strategy, params, speedup, machine):
        base = difficulty * np.exp(rng.normal(0, 0.03, len(ids))) / machine
        mine = difficulty * np.exp(rng.normal(0, 0.03, len(ids))) / machine / speedup
        write_run(tmp_path, name, strategy=strategy, params=params, speedup=speedup,
                  sample_times=dict(zip(ids, mine)), base_times=dict(zip(ids, base)))

    run("0", "speculative", {"gamma": 2}, 1.45, 1.0)
    run("1", "speculative", {"gamma": 6}, 1.21, 1.5)
    run("2", "entropy_static", {"tau": 1.0}, 1.45 * 0.93, 1.0)
    df, samples = collected(tmp_path)
    st = paired.compare_runs(df, samples, {"strategy": "speculative"}).set_index("run")
    assert st.loc["2", "reference"].startswith("0 (speculative (gamma=2)), selected: highest speedup")
    assert st.loc["2", "speedup"] == pytest.approx(0.93, rel=0.03)
    assert st.loc["2", "verdict"] in ("slower", stats.NO_DIFFERENCE)
    crit = paired.success_criteria(df, samples)[0]
    assert crit["best_fixed"].startswith("0 (") and crit["faster_10pct"] == "not met"


# ---- two kinds of comparison ---------------------------------------------------------------

def test_raw_and_normalised_comparisons_are_labelled_and_corrected_apart(tmp_path):
    noisy_run(tmp_path, "0", 1.3, seed=0, params={"gamma": 2})
    noisy_run(tmp_path, "1", 1.1, seed=1, params={"gamma": 4})
    noisy_run(tmp_path, "2", 1.5, seed=2, strategy="entropy_static", params={"tau": 1.0})
    ids = [f"s{i:02d}" for i in range(12)]
    write_run(tmp_path, "3", strategy="autoregressive", speedup=None, accept=None, sample_times=dict.fromkeys(ids, 1.0))
    df, samples = collected(tmp_path)
    st = paired.compare_runs(df, samples, {"strategy": "speculative"}).set_index("run")
    assert st.loc["3", "comparison"] == paired.RAW and st.loc["2", "comparison"] == paired.NORMALISED
    norm = st[st["comparison"] == paired.NORMALISED]
    assert norm["p_holm"].astype(float).tolist() == pytest.approx(stats.holm(norm["p_ttest"].tolist()))
    assert float(st.loc["3", "p_holm"]) == pytest.approx(float(st.loc["3", "p_ttest"]))  # a family of one
    text = report.render_markdown([report.study.stats_section(st.reset_index())], "x")
    assert "| raw |" in text and "| normalised |" in text and "separate Holm families" in text


# ---- acceptance, excluded samples ----------------------------------------------------------

def test_acceptance_survives_a_sample_that_drafts_nothing(tmp_path):
    noisy_run(tmp_path, "0", 1.0, seed=0, accept=0.5)
    noisy_run(tmp_path, "1", 1.2, seed=1, params={"gamma": 2}, accept=0.8)
    df, samples = collected(tmp_path)
    first = samples.index[(samples["run_dir"].str.endswith("1")) & (samples["sample"] == "s00")]
    samples.loc[first, "acceptance_rate"] = None  # s00 drafted nothing in run 1
    st = paired.compare_runs(df, samples, {"run": "0"}).set_index("run")
    assert st.loc["1", "acceptance_n"] == 11
    assert st.loc["1", "acceptance_diff"] == pytest.approx(6 / 7 - 4 / 7)
    assert st.loc["1", "acceptance_verdict"] == "higher"


def test_zero_token_and_missing_time_samples_are_left_out_alike_and_counted():
    ref_s, run_s, tok = [1.0, 2.0, 1.5, 1.2, 2.0], [0.5, 1.0, 0.8, 0.6, 1.0], [10, 10, 10, 10, 10]
    c = stats.compare_times(ref_s, tok, run_s, [10, 10, 10, 10, 0])  # the last sample emitted nothing
    assert c["n_samples"] == 4 and c["n_excluded"] == 1 and math.isfinite(c["p_wilcoxon"])
    assert c == {**stats.compare_times(ref_s[:4], tok[:4], run_s[:4], tok[:4]), "n_excluded": 1}
    sp = stats.speedup_estimates(tok, [0.5, 1.0, float("nan"), 0.6, 1.0], tok, ref_s, [True] * 5)
    assert sp["n_samples"] == 4 and sp["n_excluded"] == 1
    assert sp["throughput_ratio"] == pytest.approx((40 / 3.1) / (40 / 6.2))
    assert sp["per_token"]["n"] == 4 and sp["wall_time_ratio_matched"]["n"] == 4


def test_ci_method_names_the_interval_that_ran():
    sp = stats.speedup_estimates([10] * 4, [1.0, 1.1, 0.9, 1.2], [10] * 4, [2.0, 2.1, 1.8, 2.5], [True] * 4)
    assert sp["ci"]["method"] == stats.LOG_T_METHOD
    # every resample equal: BCa is undefined, the percentile interval ran and is named
    assert stats.bootstrap_interval([[2.0, 2.0, 2.0]], np.mean)[2] == "percentile"
    assert stats.bootstrap_interval([[1.0, 2.0, 4.0, 3.0]], np.mean)[2] == "BCa"


def test_acceptance_alpha_does_not_count_a_round_cut_by_a_stop_as_a_rejection():
    g = Generation(tokens=list(range(7)))
    g.log_round(4, 4, [])  # 4 of 4 accepted
    g.log_round(4, 1, [])  # a stop among the accepted drafts after 1: cut, nothing rejected
    g.log_round(4, 0, [9, 9, 9, 9])  # a rejection at the first draft
    assert forward_costs.acceptance_alpha([g]) == pytest.approx(5 / 6)  # 5 acceptances, 1 rejection


# ---- the benchmark's units -----------------------------------------------------------------

def test_benchmark_resamples_prompts_not_prompt_times_repeat():
    def call(prompt, repeat, wall, n=10):
        return SimpleNamespace(prompt=prompt, repeat=repeat, gen=SimpleNamespace(tokens=list(range(n)), wall_time=wall))

    mine = [call(p, r, 1.0 + p) for p in range(3) for r in range(4)]
    base = [call(p, r, 2.0 + 2 * p + 0.1 * r) for p in range(3) for r in range(4)]
    sp = benchmark.paired_speedup(mine, base)
    assert sp["n_samples"] == 3  # the prompts, each summing its 4 repeats
    assert sp["throughput_ratio"] == pytest.approx(sum(b.gen.wall_time for b in base) / 24)
    assert sp["wall_time_ratio_matched"]["n"] == 3


# ---- the threshold plot --------------------------------------------------------------------

def test_threshold_lines_never_average_model_pairs_or_seeds():
    rows = []
    for pair in ("pair-a", "pair-b"):
        for seed in (0, 1):
            for tau, sp in ((1.0, 1.2), (2.0, 1.4)):
                rows.append({"strategy": "entropy_static", "param.tau": tau, "model_pair": pair, "seed": seed,
                             "sampling": "greedy", "dataset": "xsum", "speedup": sp + (pair == "pair-b"),
                             "speedup_ci_low": sp - 0.1, "speedup_ci_high": sp + 0.1, "acceptance_rate": 0.5,
                             "n_samples": 8})
    lines = plots.threshold_lines(pd.DataFrame(rows), "tau", [])
    assert len(lines) == 4 and all(p["runs"].max() == 1 for _, p in lines)
    assert all(p["ci_low"].notna().all() for _, p in lines)
    twice = pd.DataFrame(rows[:2] + rows[:2])  # the same configuration run twice
    (label, pts), = plots.threshold_lines(twice, "tau", [])
    assert pts["ci_low"].isna().all() and "mean of up to 2 runs per point, no CI" in label


# ---- the thesis table: its rows from one source ---------------------------------------------

def test_thesis_speedup_row_is_its_baselines_ms_over_its_ms(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    write_run(tmp_path, "ar", strategy="autoregressive", speedup=None, accept=None, sample_times=dict.fromkeys(ids, 2.5))
    write_run(tmp_path, "t1", strategy="entropy_static", params={"tau": 1.0}, speedup=1.5,
              sample_times=dict.fromkeys(ids, 2.0), base_times=dict.fromkeys(ids, 3.0))
    df, samples = collected(tmp_path)
    md = report.render(df, "thesis_6_6", "md", samples)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[2] == "| pair pair-a / xsum / greedy | ms/token | 78.12 | – | 62.50 | – | – |"
    assert lines[3] == "|  | its baseline's ms/token | 78.12 | – | 93.75 | – | – |"  # 3.0 s / 32 tokens
    assert lines[4].startswith("|  | vs. no drafter [95% CI] | 1x | – | 1.50x")  # 93.75 / 62.50


# ---- the planner ---------------------------------------------------------------------------

def test_plan_prints_the_samples_needed_and_its_assumptions(tmp_path, capsys):
    from statsmodels.stats.power import TTestPower

    noisy_run(tmp_path, "0", 1.2, seed=0, n=8)
    noisy_run(tmp_path, "1", 1.1, seed=1, n=8, params={"gamma": 2})
    assert report.main([str(tmp_path), "--plan", "--effect", "1.05", "--power", "0.9", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "assumptions:" in out and "power 0.90" in out and "alpha 0.05 / 2 runs" in out
    df, samples = collected(tmp_path)
    x = samples[samples["run_dir"].str.endswith("0")]["speedup_per_token"].astype(float)
    sd = float(np.std(np.log(x), ddof=1))
    n = math.ceil(TTestPower().solve_power(effect_size=math.log(1.05) / sd, alpha=0.025, power=0.9))
    assert f"sd of log ratios {sd:.3f} -> n = {n}" in out and "every run: dataset.limit=" in out
