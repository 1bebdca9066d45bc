"""Statistics of speed and quality: the speedup estimators of one run and the paired comparison
of runs that decoded the same samples. All tests and intervals come from scipy.stats and
statsmodels; this module only says which one is used on what, and at which sample sizes it
holds (coverage and power simulated by scripts/stats_coverage.py, docs/statistics.md).

Estimators of one run (strategy vs its own autoregressive baseline, per-sample times are the
median of the repeats, see `timing.repeats`):
  throughput_ratio        (sum strategy tokens / sum strategy s) / (sum baseline tokens / sum baseline s):
                          the primary estimator (Spec-Bench, vLLM); its 95% CI is a t interval on the
                          log scale, log ratio +- t(n-1) x the paired bootstrap standard error
                          (scipy.stats.bootstrap) scaled by sqrt(n / (n - 1)) (for a plain mean this is
                          exactly the t interval; a percentile or BCa bootstrap covers 0.87 at n = 8)
  per_token               per sample (baseline s/token) / (strategy s/token); median and geometric mean
  wall_time_ratio_matched per sample baseline s / strategy s, only where both emitted identical tokens
                          (elsewhere a strategy would get credit for stopping early)
A sample with 0 tokens or a missing / non-positive time on either side has no ratio: it is left
out of every estimator alike and counted (`n_excluded`).

Comparison of two runs on the same samples (`compare_times`): the per-sample ratio of seconds per
token (reference / run), its geometric mean with the t interval of the mean log ratio
(scipy.stats.ttest_1samp), the paired t-test on the log ratios (the verdict's test: no floor on
its p, so a verdict is reachable at any n >= 2) and Wilcoxon signed-rank beside it (its exact p
cannot go below 2 / 2^n), paired Cohen's d, Holm across a sweep. Scores (ROUGE, acceptance
rate): the mean difference with its t interval and t-test. Pass / fail: McNemar's exact test and
a conservative interval of the difference in pass rate from Clopper-Pearson bounds of the two
discordant cells. A verdict that the test cannot reach at the run's n and number of runs is
"undecidable" and names the n that would decide.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95  # two-sided intervals
N_RESAMPLES = 2000  # bootstrap resamples
ALPHA = 0.05  # significance level of the verdicts, after Holm's correction
MIN_SAMPLES = 2  # fewest samples with an interval: at n = 1 there is no spread to estimate
QUALITY_MARGIN = 0.05  # "no quality loss": run - reference >= -0.05 (pass rate or score, absolute)

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no detectable difference"
T_TEST, WILCOXON, MCNEMAR = "paired t-test", "Wilcoxon signed-rank", "McNemar exact"


# ------------------------------------------------------------------------------------------
# Intervals
# ------------------------------------------------------------------------------------------

def bootstrap_interval(data: Sequence[Sequence[float]], statistic: Callable, seed: int = 0,
                       n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None, str | None]:
    """A paired (rows resampled together) bootstrap CI of `statistic(*data, axis=-1)`:
    scipy.stats.bootstrap, BCa, seeded, and the method that produced it. (None, None, None) with
    fewer than 2 samples. Where BCa is undefined (every resample gives the same value) the
    percentile interval is used, and named."""
    arrays = [np.asarray(d, dtype=float) for d in data]
    if len(arrays[0]) < 2:
        return None, None, None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's "degenerate distribution" warning: handled below
            res = sps.bootstrap(arrays, statistic, n_resamples=n_resamples, paired=True, vectorized=True,
                                axis=-1, confidence_level=CONFIDENCE, method=method,
                                rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi, method
    return None, None, None


def bootstrap_ci(data: Sequence[Sequence[float]], statistic: Callable, seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None]:
    """bootstrap_interval without the method's name."""
    return bootstrap_interval(data, statistic, seed, n_resamples)[:2]


def t_interval(x: Sequence[float]) -> tuple[float | None, float | None]:
    """The t interval of the mean of `x` (scipy.stats.ttest_1samp(...).confidence_interval);
    the point itself when every value is the same; (None, None) below MIN_SAMPLES."""
    x = np.asarray(x, float)
    if len(x) < MIN_SAMPLES:
        return None, None
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    ci = sps.ttest_1samp(x, 0.0).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def log_t_interval(data: Sequence[Sequence[float]], statistic: Callable, seed: int = 0,
                   n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None]:
    """A CI of a positive ratio statistic that holds at small n: on the log scale,
    log(stat) +- t(n-1, 0.975) x se x sqrt(n / (n-1)), se the paired bootstrap standard error of
    log(stat) (scipy.stats.bootstrap). The bootstrap standard error of a mean is the plug-in
    sd / sqrt(n); the factor makes it s / sqrt(n), so for a mean this is the t interval."""
    arrays = [np.asarray(d, dtype=float) for d in data]
    n = len(arrays[0])
    if n < MIN_SAMPLES:
        return None, None
    est = math.log(float(statistic(*arrays, axis=-1)))
    res = sps.bootstrap(arrays, lambda *a, axis=-1: np.log(statistic(*a, axis=axis)), n_resamples=n_resamples,
                        paired=True, vectorized=True, axis=-1, method="percentile",
                        rng=np.random.default_rng(seed))
    se = float(res.standard_error) * math.sqrt(n / (n - 1))
    half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    return math.exp(est - half), math.exp(est + half)


LOG_T_METHOD = ("t interval on the log scale with the paired bootstrap standard error (scipy.stats.bootstrap, "
                "x sqrt(n/(n-1)), t with n-1 df)")


# ------------------------------------------------------------------------------------------
# The estimators of one run
# ------------------------------------------------------------------------------------------

def throughput_ratio(tok_s, t_s, tok_b, t_b, axis=-1):
    """(strategy tokens / strategy seconds) / (baseline tokens / baseline seconds), totals over samples."""
    return (np.sum(tok_s, axis) / np.sum(t_s, axis)) / (np.sum(tok_b, axis) / np.sum(t_b, axis))


def _summary(ratios: list[float]) -> dict:
    return {"median": float(np.median(ratios)) if ratios else None,
            "geomean": float(sps.gmean(ratios)) if ratios else None,
            "n": len(ratios), "per_sample": ratios}


def _usable(*values) -> bool:
    """A sample has a ratio: every time and token count present, finite and positive."""
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return False
        if not (math.isfinite(f) and f > 0):
            return False
    return True


def speedup_estimates(tok_s: Sequence[int], t_s: Sequence[float], tok_b: Sequence[int], t_b: Sequence[float],
                      matched: Sequence[bool], seed: int = 0) -> dict:
    """metrics.json["speedup"]: the three estimators over a run's samples (strategy side `_s`,
    autoregressive side `_b`; tokens emitted and seconds per sample; `matched`: both sides emitted
    the same tokens). Values above 1 mean the strategy is faster. Samples without a ratio (0
    tokens, a missing or non-positive time on either side) are left out of all three, counted in
    n_excluded."""
    keep = [i for i in range(len(t_s)) if _usable(t_s[i], t_b[i], tok_s[i], tok_b[i])]
    data = [[float(x[i]) for i in keep] for x in (tok_s, t_s, tok_b, t_b)]
    tr = float(throughput_ratio(*data)) if keep else None
    lo, hi = log_t_interval(data, throughput_ratio, seed) if keep else (None, None)
    # per sample: (baseline s/token) / (strategy s/token)
    per_token = [(t_b[i] / tok_b[i]) / (t_s[i] / tok_s[i]) for i in keep]
    matched_ratios = [t_b[i] / t_s[i] for i in keep if matched[i]]
    return {
        "estimator": "throughput_ratio",
        "throughput_ratio": tr,
        "ci_low": lo, "ci_high": hi,
        "ci": {"confidence": CONFIDENCE, "method": LOG_T_METHOD if lo is not None else None,
               "n_resamples": N_RESAMPLES, "seed": seed},
        "n_samples": len(keep),
        "n_excluded": len(t_s) - len(keep),
        "per_token": _summary(per_token),
        "wall_time_ratio_matched": _summary(matched_ratios) if matched_ratios else None,
    }


def format_speedup(sp: dict | None, digits: int = 2) -> str:
    """`1.23x [1.10, 1.37]` (throughput ratio and its CI), `1.23x (no CI: n=1)`, `n/a` when absent."""
    if not isinstance(sp, dict) or sp.get("throughput_ratio") is None:
        return "n/a"
    if sp.get("ci_low") is None:  # fewer than MIN_SAMPLES samples
        return format_ratio(sp["throughput_ratio"], digits=digits) + f" (no CI: n={sp.get('n_samples', '?')})"
    return format_ratio(sp["throughput_ratio"], sp.get("ci_low"), sp.get("ci_high"), digits)


def format_ratio(x: float | None, lo: float | None = None, hi: float | None = None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    s = f"{x:.{digits}f}x"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def split_halves(ids) -> tuple[list, list]:
    """Winner's curse: select on one half, report on the other. The samples in id order,
    alternately into a selection half and a report half."""
    ids = sorted(ids)
    return ids[0::2], ids[1::2]


# ------------------------------------------------------------------------------------------
# Paired comparison of two runs (or a run and its own baseline) on the same samples
# ------------------------------------------------------------------------------------------

def _p(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def compare_times(ref_s: Sequence[float], ref_tok: Sequence[int], run_s: Sequence[float], run_tok: Sequence[int],
                  seed: int = 0) -> dict:
    """`run` against `ref`, sample by sample (same order): ratio_i = ref s/token / run s/token
    (above 1: run is faster). speedup = geometric mean of the ratios with the t interval of the
    mean log ratio; paired t-test (the verdict's test) and Wilcoxon signed-rank on the log ratios;
    paired Cohen's d = mean / sd of the log ratios. Samples without a ratio (0 tokens, a missing
    or non-positive time) are left out and counted (n_excluded). `seed` is unused (kept for the
    callers' signature: every interval here is exact given the model)."""
    n_all = len(ref_s)
    if n_all != len(run_s):
        raise ValueError(f"paired comparison needs the same samples: {n_all} vs {len(run_s)}")
    keep = [i for i in range(n_all) if _usable(ref_s[i], ref_tok[i], run_s[i], run_tok[i])]
    n = len(keep)
    if n < MIN_SAMPLES:
        raise ValueError(f"a paired comparison needs at least {MIN_SAMPLES} samples with tokens and times, got {n}"
                         f" (of {n_all}): raise dataset.limit")
    ref_s, ref_tok, run_s, run_tok = ([float(x[i]) for i in keep] for x in (ref_s, ref_tok, run_s, run_tok))
    log_ref = np.log(np.asarray(ref_s) / np.asarray(ref_tok))
    log_run = np.log(np.asarray(run_s) / np.asarray(run_tok))
    d = log_ref - log_run  # log of the per-sample ratio
    lo, hi = t_interval(d)
    sd = float(np.std(d, ddof=1))
    return {"n_samples": n, "n_excluded": n_all - n, "speedup": float(np.exp(d.mean())),
            "ci_low": math.exp(lo), "ci_high": math.exp(hi), "ci_method": "t interval of the mean log ratio",
            "test": T_TEST, "p_ttest": _ttest(d), "p_wilcoxon": _wilcoxon(d),
            "cohens_d": float(d.mean() / sd) if sd > 0 else None}


def _ttest(d: np.ndarray) -> float | None:
    """One-sample t-test p of paired differences `d` against 0 (scipy); 1.0 when every
    difference is zero, 0.0 when they are all the same non-zero value (no spread: t is infinite)."""
    if np.ptp(d) == 0:
        return 1.0 if d[0] == 0 else 0.0
    return _p(sps.ttest_1samp(d, 0.0).pvalue)


def _wilcoxon(d: np.ndarray) -> float | None:
    """Wilcoxon signed-rank p of paired differences `d` (scipy; exact for small n without ties);
    1.0 when every difference is zero (nothing to rank)."""
    if not np.any(d != 0):
        return 1.0
    return _p(sps.wilcoxon(d).pvalue)


def compare_scores(ref: Sequence[float], run: Sequence[float], seed: int = 0) -> dict:
    """A per-sample score (ROUGE, acceptance rate) of `run` against `ref`: the mean difference
    run - ref with its t interval, the paired t-test p (the verdict's) and Wilcoxon's beside it.
    Pairs where either score is missing (NaN) are left out and counted (n_excluded)."""
    a, b = np.asarray(ref, float), np.asarray(run, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    if len(d) < MIN_SAMPLES:
        raise ValueError(f"a paired comparison needs at least {MIN_SAMPLES} samples, got {len(d)}: "
                         "raise dataset.limit")
    lo, hi = t_interval(d)
    return {"n_samples": len(d), "n_excluded": int((~ok).sum()), "difference": float(d.mean()), "ci_low": lo,
            "ci_high": hi, "test": T_TEST, "p": _ttest(d), "p_wilcoxon": _wilcoxon(d)}


def compare_binary(ref: Sequence[bool], run: Sequence[bool], seed: int = 0) -> dict:
    """A per-sample pass/fail (pass@1, accuracy) of `run` against `ref`: the difference in pass
    rate, McNemar's exact test (statsmodels) on the discordant pairs, and a conservative 95%
    interval of the difference: the difference is c/n - b/n (c: only the run passes, b: only the
    reference passes), so it lies above -U(b) and below U(c), U the one-sided 97.5% Clopper-Pearson
    upper bound (statsmodels proportion_confint, "beta"); each bound fails at most 2.5% of the time."""
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    a, b = np.asarray(ref, bool), np.asarray(run, bool)
    n = len(a)
    if n < MIN_SAMPLES:
        raise ValueError(f"a paired comparison needs at least {MIN_SAMPLES} samples, got {n}: raise dataset.limit")
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    lost, gained = table[0][1], table[1][0]
    upper = lambda k: float(proportion_confint(k, n, alpha=1 - CONFIDENCE, method="beta")[1])  # noqa: E731
    p = 1.0 if lost + gained == 0 else _p(mcnemar(table, exact=True).pvalue)
    return {"n_samples": n, "difference": float(b.mean() - a.mean()), "ci_low": -upper(lost), "ci_high": upper(gained),
            "test": MCNEMAR, "p": p, "discordant": [lost, gained]}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction across a family of tests (statsmodels multipletests); None
    entries (no test) stay None and are not counted."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adj = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adj):
            out[i] = float(p)
    return out


# ------------------------------------------------------------------------------------------
# Can a verdict be reached?
# ------------------------------------------------------------------------------------------

def smallest_p(test: str, n: int) -> float:
    """The smallest two-sided p `test` can give on n paired samples: the t-test has no floor
    (n >= 2); exact Wilcoxon signed-rank 2 / 2^n (all n differences of one sign); exact McNemar
    2 / 2^n (all n pairs discordant one way)."""
    if n < MIN_SAMPLES:
        return 1.0
    if test == T_TEST:
        return 0.0
    if test in (WILCOXON, MCNEMAR):
        return min(1.0, 2.0 / 2 ** n)
    raise ValueError(f"unknown test {test!r}: {T_TEST}, {WILCOXON} or {MCNEMAR}")


def deciding_n(test: str, m: int, n: int = MIN_SAMPLES) -> int:
    """The smallest sample count >= n at which `test`, Holm-corrected across m tests, can reach
    p < ALPHA (Holm's first step needs m x the smallest p below ALPHA)."""
    n = max(n, MIN_SAMPLES)
    while m * smallest_p(test, n) >= ALPHA:
        n += 1
    return n


def undecidable(test: str, n: int, m: int) -> str | None:
    """None when `test` on n samples, Holm-corrected across m tests, can reach p < ALPHA; else the
    verdict that says it cannot: "undecidable at n = 8 with 7 runs (smallest attainable p after
    Holm 0.0547 >= 0.05; n = 9 would decide)"."""
    floor = m * smallest_p(test, n)
    if floor < ALPHA:
        return None
    runs = f" with {m} runs" if m > 1 else ""
    return (f"undecidable at n = {n}{runs} (smallest attainable p{' after Holm' if m > 1 else ''} "
            f"{min(floor, 1.0):.3g} >= {ALPHA}; n = {deciding_n(test, m, n)} would decide)")


def verdict(ci_low: float | None, ci_high: float | None, p_holm: float | None, null: float = 1.0,
            up: str = FASTER, down: str = SLOWER, cannot: str | None = None) -> str:
    """`up` / `down` when the Holm-corrected p is below ALPHA and the CI lies wholly above /
    below `null` (1 for ratios, 0 for differences); `cannot` (the `undecidable` text) when the
    test could not have reached ALPHA; otherwise no detectable difference."""
    if cannot:
        return cannot
    if p_holm is None or ci_low is None or ci_high is None or p_holm >= ALPHA:
        return NO_DIFFERENCE
    if ci_low > null:
        return up
    if ci_high < null:
        return down
    return NO_DIFFERENCE


def non_inferior(ci_low: float | None, ci_high: float | None, margin: float = QUALITY_MARGIN) -> str:
    """"No quality loss" from the interval of run - reference and a margin: met when the whole CI
    lies at or above -margin (a loss larger than the margin is ruled out), not met when it lies
    wholly below -margin, else undecided (never "met" for lack of power)."""
    if ci_low is None or ci_high is None:
        return "undecided (no CI)"
    if ci_low >= -margin:
        return "met"
    if ci_high < -margin:
        return "not met"
    return f"undecided (CI [{ci_low:+.2f}, {ci_high:+.2f}] reaches below -{margin:.2f})"


# ------------------------------------------------------------------------------------------
# Planning: how many samples a run needs
# ------------------------------------------------------------------------------------------

def samples_needed(sd_log: float, effect: float, power: float = 0.8, m: int = 1) -> int | None:
    """The samples a paired t-test on log per-sample ratios needs to detect a speedup of
    `effect` (e.g. 1.10) with `power`, two-sided at ALPHA / m (Holm's first step across m runs, the
    worst case), when the per-sample log ratios have standard deviation `sd_log`
    (statsmodels TTestPower: a one-sample t-test on the log ratios). None when sd_log is 0 or
    missing (any n >= MIN_SAMPLES decides)."""
    from statsmodels.stats.power import TTestPower

    if not sd_log or not math.isfinite(sd_log) or effect <= 0 or effect == 1:
        return None
    d = abs(math.log(effect)) / sd_log  # standardized effect on the log scale (Cohen's d)
    n = TTestPower().solve_power(effect_size=d, alpha=ALPHA / m, power=power, alternative="two-sided")
    return max(MIN_SAMPLES, int(math.ceil(float(n))))


# ------------------------------------------------------------------------------------------
# Factor importance: which swept keys explain the speedup, at the level of runs
# ------------------------------------------------------------------------------------------

def _rss_rank(y: np.ndarray, columns: list[np.ndarray]) -> tuple[float, int]:
    """Residual sum of squares and rank of the least-squares fit of y on an intercept and
    `columns` (numpy lstsq: a rank-deficient design, e.g. a key nested in a strategy, is fine)."""
    x = np.column_stack([np.ones(len(y)), *columns])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.sum((y - x @ beta) ** 2)), int(np.linalg.matrix_rank(x))


def factor_anova(y: Sequence[float], factors: dict[str, Sequence[str]], nested: dict[str, str] | None = None) -> dict:
    """Type II ANOVA of a main-effects model at the level of runs: y holds one value per run (its
    mean log per-sample speedup over the same samples, so the sample block is the same in every
    run), `factors` one categorical level per run for each key.

    A factor's sum of squares is what the fit loses when the factor is dropped from the model of
    every term that does not contain it (type II: RSS(those terms without f) - RSS(those terms),
    df the rank it carries). `nested` maps a key to the factor it is nested in (a key of one
    strategy only: {"tau": "strategy"}); it contains its parent, so the parent is measured without
    it and the nested key within the parent. Nothing depends on the order or the names of the
    factors. share = SS / total SS of y about its mean (type II shares need not add up to 1; a
    factor whose levels are given by the other factors has df 0 and no share).

    The test's denominator is run-to-run variation between runs of the SAME configuration (pure
    error: within-configuration sum of squares, df = runs - configurations): F = (SS/df) / MS_pe,
    p from the F distribution (scipy.stats.f). Without replication (one run per configuration)
    there is nothing to tell a factor from drift: F and p are None and `tested` is False.

    Returns {"rows": [{factor, df, sum_sq, share, F, p}], "total_sum_sq", "n_runs",
    "n_configurations", "df_pure_error", "sum_sq_pure_error", "tested"}."""
    y = np.asarray(y, dtype=float)
    levels = {name: [str(v) for v in vals] for name, vals in factors.items()}

    def dummies(name: str) -> list[np.ndarray]:
        return [np.array([v == lvl for v in levels[name]], dtype=float) for lvl in sorted(set(levels[name]))]

    total = float(np.sum((y - y.mean()) ** 2))
    configs = list(zip(*levels.values())) if levels else [()] * len(y)
    groups: dict[tuple, list[float]] = {}
    for c, v in zip(configs, y):
        groups.setdefault(c, []).append(v)
    ss_pe = float(sum(np.sum((np.array(g) - np.mean(g)) ** 2) for g in groups.values()))  # pure error
    df_pe = len(y) - len(groups)
    tested = df_pe > 0 and ss_pe > 0
    rows = []
    nested = nested or {}
    for name in levels:
        kept = [k for k in levels if nested.get(k) != name]  # the terms that do not contain `name`
        rss_with, rank_with = _rss_rank(y, [c for k in kept for c in dummies(k)])
        rss, rank = _rss_rank(y, [c for k in kept if k != name for c in dummies(k)])
        df, ss = rank_with - rank, max(rss - rss_with, 0.0)
        f = p = None
        if tested and df > 0:
            f = (ss / df) / (ss_pe / df_pe)
            p = float(sps.f.sf(f, df, df_pe))
        rows.append({"factor": name, "df": df, "sum_sq": ss, "share": ss / total if total > 0 else None,
                     "F": f, "p": p})
    return {"rows": rows, "total_sum_sq": total, "n_runs": len(y), "n_configurations": len(groups),
            "df_pure_error": df_pe, "sum_sq_pure_error": ss_pe, "tested": tested}


# ------------------------------------------------------------------------------------------
# Sampling until the interval is narrow enough: Stein's two-stage rule
# ------------------------------------------------------------------------------------------

STEIN = "Stein two-stage"


def stein_samples(pilot: Sequence[float], half_width: float, confidence: float = CONFIDENCE) -> dict:
    """Stein's two-stage rule (C. Stein, "A two-sample test for a linear hypothesis whose power is
    independent of the variance", Ann. Math. Statist. 16, 1945): from a first stage of n0 >= 2
    values (here per-sample log speedups) with standard deviation s0, the total number of samples
    N = max(n0, floor((t(n0-1, (1+confidence)/2) x s0 / half_width)^2) + 1). The interval
    mean(all N) +- t(n0-1) x s0 / sqrt(N) then has half-width <= half_width and exact coverage
    `confidence` under normality, whatever the variance: N is fixed by the first stage alone, so
    looking at the data does not bias it (no optional stopping). Returns {"rule", "n0", "s0",
    "target", "N"}."""
    x = np.asarray(pilot, dtype=float)
    n0 = len(x)
    if n0 < MIN_SAMPLES or not np.all(np.isfinite(x)):
        raise ValueError(f"Stein's rule needs {MIN_SAMPLES} or more finite first-stage values, got {x.tolist()}")
    if not half_width > 0:
        raise ValueError(f"the target half-width must be > 0, got {half_width}")
    s0 = float(np.std(x, ddof=1))
    t = float(sps.t.ppf((1 + confidence) / 2, n0 - 1))
    n = max(n0, int(math.floor((t * s0 / half_width) ** 2)) + 1)
    return {"rule": STEIN, "n0": n0, "s0": s0, "target": float(half_width), "N": n}
