"""Coverage and power of the report's intervals and tests at the sample sizes people run, by
simulation with the project's own functions (specexp/stats.py). Prints a Markdown table.

    python scripts/stats_coverage.py                       # n = 4, 8, 32; 500 replicates each
    python scripts/stats_coverage.py --n 8 --reps 300      # one size, fewer replicates

Per sample i of n: a shared difficulty exp(N(0, 0.3)) (both sides decode the same sample), the
same token count on both sides (20 to 200), and timing noise on each side:
  lognormal  exp(N(0, 0.10)) per side
  heavy      the same, and a load spike on each side with probability 0.15 that multiplies its
             time by U(1.5, 3) (a busy machine: skewed, heavy right tail)
The run takes 1/effect of the baseline's time, so the true speedup (geometric mean of per-sample
ratios, and throughput ratio) is `effect`.

Columns: coverage of the true ratio by the 95% intervals (the paired comparison's t interval of
the mean log ratio; the throughput ratio's log-t interval with bootstrap standard error; the BCa
bootstrap the report used before, for contrast); A/A: share of replicates whose verdict is
faster or slower when the truth is 1.0 (the paired t-test, nominal 5%); power: share "faster" when
the truth is 1.10; ">10% met": share whose CI lies above 1.10 when the truth is exactly 1.10
(nominal at most 2.5%); pass/fail: coverage of the pass-rate difference interval (both sides pass
independently with probability 0.7, the truth 0).
"""
from __future__ import annotations

import argparse

import numpy as np

from specexp import stats

NOISE = ("lognormal", "heavy")


def sample(rng: np.random.Generator, n: int, effect: float, noise: str):
    """(baseline seconds, run seconds, tokens) of n samples (see the module docstring)."""
    difficulty = np.exp(rng.normal(0, 0.3, n))
    tokens = rng.integers(20, 201, n).astype(float)

    def side():
        t = np.exp(rng.normal(0, 0.10, n))
        if noise == "heavy":
            t *= np.where(rng.random(n) < 0.15, rng.uniform(1.5, 3.0, n), 1.0)
        return t

    base = tokens * difficulty * side()
    run = tokens * difficulty * side() / effect
    return base, run, tokens


def coverage(n: int, noise: str, reps: int, seed: int = 0, effect: float = 1.0, bca: bool = True) -> dict:
    """Shares over `reps` seeded replicates: ci_t (compare_times' interval covers `effect`),
    ci_throughput (speedup_estimates' interval covers it), ci_bca (the BCa bootstrap of the
    throughput ratio covers it, when `bca`), verdict (share not "no detectable difference"),
    faster, above_110 (the CI lies above 1.10)."""
    rng = np.random.default_rng(seed)
    hits = {"ci_t": 0, "ci_throughput": 0, "ci_bca": 0, "verdict": 0, "faster": 0, "above_110": 0}
    for r in range(reps):
        base, run, tok = sample(rng, n, effect, noise)
        c = stats.compare_times(base, tok, run, tok)
        hits["ci_t"] += c["ci_low"] <= effect <= c["ci_high"]
        v = stats.verdict(c["ci_low"], c["ci_high"], c["p_ttest"])
        hits["verdict"] += v != stats.NO_DIFFERENCE
        hits["faster"] += v == stats.FASTER
        hits["above_110"] += c["ci_low"] > 1.10
        sp = stats.speedup_estimates(tok, run, tok, base, [True] * n, seed=r)
        hits["ci_throughput"] += sp["ci_low"] <= effect <= sp["ci_high"]
        if bca:
            lo, hi, _ = stats.bootstrap_interval([tok, run, tok, base], stats.throughput_ratio, seed=r)
            hits["ci_bca"] += lo is not None and lo <= effect <= hi
    out = {k: v / reps for k, v in hits.items()}
    if not bca:
        out["ci_bca"] = None
    return out


def binary_coverage(n: int, reps: int, seed: int = 0, p: float = 0.7) -> float:
    """Coverage of compare_binary's interval of the pass-rate difference (truth 0)."""
    rng = np.random.default_rng(seed)
    hit = 0
    for _ in range(reps):
        c = stats.compare_binary(rng.random(n) < p, rng.random(n) < p)
        hit += c["ci_low"] <= 0 <= c["ci_high"]
    return hit / reps


def table(ns: list[int], reps: int, seed: int = 0) -> str:
    rows = ["| n | noise | coverage: t interval (geomean) | coverage: throughput ratio (log-t) | "
            "coverage: BCa bootstrap (before) | A/A verdicts (nominal 0.05) | power at 1.10x | "
            "\">10% faster\" met at exactly 1.10x (nominal <= 0.025) | coverage: pass-rate difference |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in ns:
        b = binary_coverage(n, reps, seed)
        for noise in NOISE:
            aa = coverage(n, noise, reps, seed, 1.0)
            eff = coverage(n, noise, reps, seed + 1, 1.10, bca=False)
            rows.append(f"| {n} | {noise} | {aa['ci_t']:.3f} | {aa['ci_throughput']:.3f} | {aa['ci_bca']:.3f} | "
                        f"{aa['verdict']:.3f} | {eff['faster']:.3f} | {eff['above_110']:.3f} | {b:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8, 32], help="sample sizes (default 4 8 32)")
    ap.add_argument("--reps", type=int, default=500, help="replicates per cell (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    args = ap.parse_args(argv)
    print(f"{args.reps} replicates per cell, seed {args.seed}, 95% intervals, alpha {stats.ALPHA}\n")
    print(table(args.n, args.reps, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
