"""Statistics of speed and quality: the speedup estimators of one run and the paired comparison
of runs that decoded the same samples. All tests and intervals come from scipy.stats and
statsmodels; this module only says which one is used on what.

Estimators of one run (strategy vs its own autoregressive baseline, per-sample times are the
median of the repeats, see `timing.repeats`):
  throughput_ratio        (sum strategy tokens / sum strategy s) / (sum baseline tokens / sum baseline s):
                          the primary estimator (Spec-Bench, vLLM); a paired bootstrap CI over samples
  per_token               per sample (baseline s/token) / (strategy s/token); median and geometric mean
  wall_time_ratio_matched per sample baseline s / strategy s, only where both emitted identical tokens
                          (elsewhere a strategy would get credit for stopping early)

Comparison of two runs on the same samples (`compare_times`): the per-sample ratio of seconds per
token (reference / run), its geometric mean with a paired 95% bootstrap CI, Wilcoxon signed-rank
and paired t-test on the log ratios, paired Cohen's d of the log ratios, Holm across a sweep.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95  # two-sided intervals
N_RESAMPLES = 2000  # bootstrap resamples (the minimum)
ALPHA = 0.05  # significance level of the verdicts, after Holm's correction

FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no detectable difference"


# ------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------

def bootstrap_ci(data: Sequence[Sequence[float]], statistic: Callable, seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> tuple[float | None, float | None]:
    """A paired (rows resampled together) bootstrap CI of `statistic(*data, axis=-1)`:
    scipy.stats.bootstrap, BCa, seeded. (None, None) with fewer than 2 samples. Where BCa is
    undefined (every resample gives the same value) the percentile interval is used."""
    arrays = [np.asarray(d, dtype=float) for d in data]
    if len(arrays[0]) < 2:
        return None, None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's "degenerate distribution" warning: handled below
            res = sps.bootstrap(arrays, statistic, n_resamples=n_resamples, paired=True, vectorized=True,
                                axis=-1, confidence_level=CONFIDENCE, method=method,
                                rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None, None


def _gmean(x, axis=-1):
    return sps.gmean(x, axis=axis)


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


def speedup_estimates(tok_s: Sequence[int], t_s: Sequence[float], tok_b: Sequence[int], t_b: Sequence[float],
                      matched: Sequence[bool], seed: int = 0) -> dict:
    """metrics.json["speedup"]: the three estimators over a run's samples (strategy side `_s`,
    autoregressive side `_b`; tokens emitted and seconds per sample; `matched`: both sides emitted
    the same tokens). Values above 1 mean the strategy is faster."""
    keep = [i for i in range(len(t_s)) if t_s[i] > 0 and t_b[i] > 0 and tok_s[i] > 0 and tok_b[i] > 0]
    data = [[float(x[i]) for i in keep] for x in (tok_s, t_s, tok_b, t_b)]
    tr = float(throughput_ratio(*data)) if keep else None
    lo, hi = bootstrap_ci(data, throughput_ratio, seed)
    # per sample: (baseline s/token) / (strategy s/token)
    per_token = [(t_b[i] / tok_b[i]) / (t_s[i] / tok_s[i]) for i in keep]
    matched_ratios = [t_b[i] / t_s[i] for i in keep if matched[i]]
    return {
        "estimator": "throughput_ratio",
        "throughput_ratio": tr,
        "ci_low": lo, "ci_high": hi,
        "ci": {"confidence": CONFIDENCE, "method": "paired bootstrap over samples (scipy.stats.bootstrap, BCa)",
               "n_resamples": N_RESAMPLES, "seed": seed},
        "n_samples": len(keep),
        "per_token": _summary(per_token),
        "wall_time_ratio_matched": _summary(matched_ratios) if matched_ratios else None,
    }


def format_speedup(sp: dict | None, digits: int = 2) -> str:
    """`1.23x [1.10, 1.37]` (throughput ratio and its CI), `1.23x (no CI: n=1)`, `n/a` when absent."""
    if not isinstance(sp, dict) or sp.get("throughput_ratio") is None:
        return "n/a"
    if sp.get("ci_low") is None:  # fewer than 2 samples
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
    (above 1: run is faster). speedup = geometric mean of the ratios with a paired bootstrap CI;
    Wilcoxon signed-rank and paired t-test on the log ratios (log ref s/token vs log run s/token);
    paired Cohen's d = mean / sd of the log ratios."""
    n = len(ref_s)
    if n != len(run_s):
        raise ValueError(f"paired comparison needs the same samples: {n} vs {len(run_s)}")
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 samples, got {n}: raise dataset.limit")
    log_ref = np.log(np.asarray(ref_s, float) / np.asarray(ref_tok, float))
    log_run = np.log(np.asarray(run_s, float) / np.asarray(run_tok, float))
    d = log_ref - log_run  # log of the per-sample ratio
    lo, hi = bootstrap_ci([np.exp(d)], _gmean, seed)
    sd = float(np.std(d, ddof=1))
    return {"n_samples": n, "speedup": float(np.exp(d.mean())), "ci_low": lo, "ci_high": hi,
            "p_wilcoxon": _wilcoxon(d), "p_ttest": _p(sps.ttest_rel(log_ref, log_run).pvalue) if sd > 0 else None,
            "cohens_d": float(d.mean() / sd) if sd > 0 else None}


def _wilcoxon(d: np.ndarray) -> float | None:
    """Wilcoxon signed-rank p of paired differences `d` (scipy; exact for small n without ties);
    1.0 when every difference is zero (nothing to rank)."""
    if not np.any(d != 0):
        return 1.0
    return _p(sps.wilcoxon(d).pvalue)


def compare_scores(ref: Sequence[float], run: Sequence[float], seed: int = 0) -> dict:
    """A per-sample score (ROUGE, acceptance rate) of `run` against `ref`: the mean difference
    run - ref with a paired bootstrap CI, and the Wilcoxon signed-rank p of the differences."""
    d = np.asarray(run, float) - np.asarray(ref, float)
    if len(d) < 2:
        raise ValueError(f"a paired comparison needs at least 2 samples, got {len(d)}: raise dataset.limit")
    lo, hi = bootstrap_ci([d], np.mean, seed)
    return {"n_samples": len(d), "difference": float(d.mean()), "ci_low": lo, "ci_high": hi, "p": _wilcoxon(d)}


def compare_binary(ref: Sequence[bool], run: Sequence[bool], seed: int = 0) -> dict:
    """A per-sample pass/fail (pass@1, accuracy) of `run` against `ref`: the difference in rate
    with a paired bootstrap CI and McNemar's exact test (statsmodels) on the discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(ref, bool), np.asarray(run, bool)
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 samples, got {len(a)}: raise dataset.limit")
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    lo, hi = bootstrap_ci([b.astype(float) - a.astype(float)], np.mean, seed)
    p = 1.0 if table[0][1] + table[1][0] == 0 else _p(mcnemar(table, exact=True).pvalue)
    return {"n_samples": len(a), "difference": float(b.mean() - a.mean()), "ci_low": lo, "ci_high": hi, "p": p,
            "discordant": [table[0][1], table[1][0]]}


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


def verdict(ci_low: float | None, ci_high: float | None, p_holm: float | None, null: float = 1.0,
            up: str = FASTER, down: str = SLOWER) -> str:
    """`up` / `down` when the Holm-corrected p is below ALPHA and the CI lies wholly above /
    below `null` (1 for ratios, 0 for differences); otherwise no detectable difference."""
    if p_holm is None or ci_low is None or ci_high is None or p_holm >= ALPHA:
        return NO_DIFFERENCE
    if ci_low > null:
        return up
    if ci_high < null:
        return down
    return NO_DIFFERENCE
