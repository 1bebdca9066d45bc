"""Paired statistics across the runs of a sweep (`specexp-report DIR --stats`), the success
criteria of the "Entropy-Based Speculative Decoding" framework and factor importance. The tests
themselves are scipy / statsmodels calls in specexp/stats.py; this module decides what is
compared with what.

Runs are comparable when they decoded the same samples: same model pair, dataset (version),
token budget, seed, sampling and batch size (GROUP_KEYS), and the same sample ids (checked). Against
  - no --reference: each run's own autoregressive baseline (decoded interleaved in the run);
  - --reference KEY=VALUE ...: the run of the same group matching every KEY=VALUE; when several
    match (`strategy=speculative` over a gamma grid), the one with the highest speedup over its
    own interleaved baseline (else the lowest ms/token), labelled "selected" (selected on the same
    samples, which favours the reference: the comparison is conservative). Raw tokens/s would
    reward the run that met a quiet machine.
Per run: the speedup (geometric mean of per-sample ratios of seconds per token, reference / run;
between two runs that both carry their own interleaved baseline, each side's seconds per token
over its baseline's, which cancels load drift between the runs: "normalised"; else "raw", and
the two kinds are separate Holm families) with the t interval of the mean log ratio, paired t
(the verdict's test) and Wilcoxon p, paired Cohen's d, Holm across the sweep, a verdict that says
"undecidable" where the test cannot reach ALPHA; the same for acceptance rate (t) and quality (t
for ROUGE, McNemar for pass/fail).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from specexp import stats
from specexp.report.collect_runs import _missing
from specexp.report.per_sample import QUALITY_SAMPLE_KEYS, selection_score
from specexp.report.tables import float_or_none, group_runs

GROUP_KEYS = ("model_pair", "dataset", "dataset_version", "max_new_tokens", "seed", "sampling", "batch_size")
OWN_BASELINE = "own autoregressive baseline"
STATS_COLUMNS = ["run", "method", "reference", "comparison", "n_samples", "speedup", "ci_low", "ci_high", "p_ttest",
                 "p_wilcoxon", "p_holm", "cohens_d", "verdict"]
NORMALISED, RAW = "normalised", "raw"  # the two kinds of comparison (each run over its own baseline, or not)
FIXED = "speculative"  # the fixed-gamma strategy (the framework's "best fixed-k")
NOT_DYNAMIC = ("autoregressive", FIXED)


# ------------------------------------------------------------------------------------------
# Selecting runs
# ------------------------------------------------------------------------------------------

def parse_reference(items: list[str] | None) -> dict[str, str] | None:
    """["strategy=speculative", "strategy.gamma=4"] -> {"strategy": "speculative", ...}."""
    if not items:
        return None
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise ValueError(f"--reference {it!r}: expected KEY=VALUE, e.g. strategy=speculative or run=0")
        out[key.strip()] = val.strip()
    return out


def run_names(df: pd.DataFrame) -> pd.Series:
    """Each run's dir relative to the runs' common parent ("0", "3", "sweepA/2")."""
    dirs = df["run_dir"].astype(str)
    root = os.path.commonpath(list(dirs)) if len(dirs) > 1 else str(Path(dirs.iloc[0]).parent)
    return dirs.map(lambda d: os.path.relpath(d, root) if d != root else Path(d).name)


def _columns_for(df: pd.DataFrame, key: str) -> list[str]:
    cands = [key, f"override.{key}", f"param.{key}"]
    if key.startswith("strategy."):
        cands.append(f"param.{key[len('strategy.'):]}")
    return [c for c in cands if c in df.columns]


def _equal(v, text: str) -> bool:
    if _missing(v):
        return text.lower() in ("null", "none", "")
    if str(v) == text:
        return True
    try:
        return math.isclose(float(v), float(text))
    except (TypeError, ValueError):
        return False


def match(df: pd.DataFrame, reference: dict[str, str]) -> pd.Series:
    """Which runs match every KEY=VALUE (KEY: a column such as strategy or method, a Hydra
    override such as strategy.gamma, a strategy parameter, or `run`: the run's dir name)."""
    mask = pd.Series(True, index=df.index)
    names = run_names(df)
    for key, val in reference.items():
        if key == "run":
            mask &= names == val
            continue
        cols = _columns_for(df, key)
        if not cols:
            raise ValueError(f"--reference {key}={val}: no run has a key {key!r}; use a column (strategy, method, "
                             "dataset, sampling), a Hydra override (strategy.gamma) or run=<job dir>")
        hit = pd.Series(False, index=df.index)
        for c in cols:
            hit |= df[c].map(lambda v, val=val: _equal(v, val))
        mask &= hit
    return mask


def _values_hint(df: pd.DataFrame, reference: dict[str, str]) -> str:
    parts = []
    for key in reference:
        if key == "run":
            parts.append("run: " + ", ".join(sorted(run_names(df))))
            continue
        for c in _columns_for(df, key)[:1]:
            parts.append(f"{key}: " + ", ".join(sorted({str(v) for v in df[c].dropna()})))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------
# Per-sample data of a run
# ------------------------------------------------------------------------------------------

def _rows(samples: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    return samples[samples["run_dir"] == run_dir].set_index("sample").sort_index()


def _sample_quality_key(a: pd.DataFrame, b: pd.DataFrame, prefix_a: str, prefix_b: str) -> str | None:
    """The first per-sample quality score (QUALITY_SAMPLE_KEYS) that every sample has on both sides."""
    for k in QUALITY_SAMPLE_KEYS:
        if f"{prefix_a}{k}" in a and f"{prefix_b}{k}" in b and a[f"{prefix_a}{k}"].notna().all() \
                and b[f"{prefix_b}{k}"].notna().all():
            return k
    return None


def _compare_quality(ref: pd.Series, run: pd.Series, key: str, seed: int) -> dict:
    if key in ("passed", "correct"):  # pass/fail: McNemar on the discordant pairs
        c = stats.compare_binary(ref.astype(bool).tolist(), run.astype(bool).tolist(), seed)
    else:  # a score: t interval and t-test of the mean difference
        c = stats.compare_scores(ref.astype(float).tolist(), run.astype(float).tolist(), seed)
    return {"quality_metric": key, "quality_test": c["test"], "quality_n": c["n_samples"], "quality_diff": c["difference"],
            "quality_ci_low": c["ci_low"], "quality_ci_high": c["ci_high"], "quality_p": c["p"]}


def _pair(run: pd.DataFrame, ref: pd.DataFrame | None, seed: int, name: str) -> dict:
    """The comparison of one run's per-sample rows with the reference's rows (same ids; None: the
    run's own baseline columns)."""
    if len(run) < stats.MIN_SAMPLES:
        raise ValueError(f"run {name}: a paired comparison needs at least {stats.MIN_SAMPLES} samples, it has "
                         f"{len(run)}: raise dataset.limit")
    run_s, run_tok = run["wall_time_s"], run["new_tokens"]
    if ref is None:
        ref_s, ref_tok, timing = run["baseline_wall_time_s"], run["baseline_new_tokens"], "interleaved in the run"
    elif _has_baseline(run) and _has_baseline(ref):
        # Two runs ran one after the other, so the machine's load may differ between them; each
        # run's own baseline was decoded interleaved with it. Dividing each side's seconds/token by
        # its own baseline's cancels that drift: the per-sample ratio becomes
        # (ref / ref's baseline) / (run / run's baseline), in seconds per token.
        ref_s, ref_tok = ref["wall_time_s"] / ref["baseline_wall_time_s"], ref["new_tokens"] / ref["baseline_new_tokens"]
        run_s, run_tok = run_s / run["baseline_wall_time_s"], run_tok / run["baseline_new_tokens"]
        timing = "each run over its own baseline"
    else:
        ref_s, ref_tok, timing = ref["wall_time_s"], ref["new_tokens"], "raw (runs one after the other)"
    out = stats.compare_times(ref_s.tolist(), ref_tok.tolist(), run_s.tolist(), run_tok.tolist(), seed)
    out["timing"] = timing
    out["comparison"] = RAW if timing.startswith("raw") else NORMALISED
    # acceptance: against a reference that drafts too, on the samples where both drafted (a sample
    # that drafted nothing has no rate; it is left out and counted, not the whole comparison)
    both = run["acceptance_rate"].notna() & ref["acceptance_rate"].notna() if ref is not None else None
    if both is not None and int(both.sum()) >= stats.MIN_SAMPLES:
        c = stats.compare_scores(ref["acceptance_rate"].tolist(), run["acceptance_rate"].tolist(), seed)
        out.update({"acceptance_run": float(run.loc[both, "acceptance_rate"].mean()),
                    "acceptance_reference": float(ref.loc[both, "acceptance_rate"].mean()),
                    "acceptance_n": c["n_samples"], "acceptance_diff": c["difference"],
                    "acceptance_ci_low": c["ci_low"], "acceptance_ci_high": c["ci_high"], "acceptance_p": c["p"]})
    if ref is None:
        k = _sample_quality_key(run, run, "quality_baseline.", "quality.")
        if k:
            out.update(_compare_quality(run[f"quality_baseline.{k}"], run[f"quality.{k}"], k, seed))
    else:
        k = _sample_quality_key(ref, run, "quality.", "quality.")
        if k:
            out.update(_compare_quality(ref[f"quality.{k}"], run[f"quality.{k}"], k, seed))
    return out


def _has_baseline(rows: pd.DataFrame) -> bool:
    return rows["baseline_wall_time_s"].notna().all() and rows["baseline_new_tokens"].notna().all()


# ------------------------------------------------------------------------------------------
# The stats table
# ------------------------------------------------------------------------------------------

def _groups(ok: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """Comparable runs: groups by the GROUP_KEYS the table has."""
    return group_runs(ok, [c for c in GROUP_KEYS if c in ok])


def compare_runs(df: pd.DataFrame, samples: pd.DataFrame, reference: dict[str, str] | None = None,
                 seed: int = 0) -> pd.DataFrame:
    """One row per compared run (columns STATS_COLUMNS and the acceptance_* / quality_* ones)."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        raise ValueError("--stats: no ok runs to compare")
    ok["run"] = run_names(ok)
    rows = []
    if reference is None:
        for _, r in ok.sort_values("run").iterrows():
            run = _rows(samples, r["run_dir"])
            if r["strategy"] == "autoregressive" or run.empty or run["baseline_wall_time_s"].isna().any():
                continue  # nothing to compare with inside the run
            rows.append({"run": r["run"], "method": r["method"], "reference": OWN_BASELINE,
                         **_pair(run, None, seed, r["run"])})
        if not rows:
            raise ValueError("--stats: no run carries its own autoregressive baseline (baseline=true); pass "
                             "--reference strategy=autoregressive to compare with a separate autoregressive run")
    else:
        hits = match(ok, reference)
        if not hits.any():
            raise ValueError(f"--reference {' '.join(f'{k}={v}' for k, v in reference.items())} matches no ok run; "
                             f"values here: {_values_hint(ok, reference)}")
        for _, g in _groups(ok):
            refs = g[hits.loc[g.index]]
            if refs.empty:
                continue
            best = _select(refs, samples)
            label = f"{best['run']} ({best['method']})" + (
                f", selected: {_SELECTED} of {len(refs)} matching runs" if len(refs) > 1 else "")
            ref_rows = _rows(samples, best["run_dir"])
            for _, r in g.sort_values("run").iterrows():
                if r["run_dir"] == best["run_dir"]:
                    continue
                run = _rows(samples, r["run_dir"])
                if list(run.index) != list(ref_rows.index):
                    raise ValueError(
                        f"--stats: run {r['run']} decoded other samples ({len(run)}: {_ids(run)}) than its reference "
                        f"{best['run']} ({len(ref_rows)}: {_ids(ref_rows)}); paired statistics need the same samples: "
                        "give both the same dataset, dataset.limit, seed and max_new_tokens")
                rows.append({"run": r["run"], "method": r["method"], "reference": label,
                             **_pair(run, ref_rows, seed, r["run"])})
        if not rows:
            raise ValueError(f"--reference {' '.join(f'{k}={v}' for k, v in reference.items())}: every matching run "
                             "is alone in its group (same pair, dataset, budget, seed, sampling): nothing to compare")
    out = pd.DataFrame(rows)
    for c in ("acceptance_p", "quality_p", "acceptance_diff", "quality_diff", "acceptance_ci_low",
              "acceptance_ci_high", "quality_ci_low", "quality_ci_high", "quality_test", "acceptance_n", "quality_n"):
        if c not in out:
            out[c] = None
    # Holm within each family of tests: per kind of comparison (normalised or raw); the verdict's
    # test is the paired t-test on the log ratios, and a test that cannot reach ALPHA at n with
    # the family's size says so instead of "no detectable difference"
    out["p_holm"] = None
    for _, fam in out.groupby("comparison"):
        out.loc[fam.index, "p_holm"] = pd.Series(stats.holm(_nones(fam["p_ttest"])), index=fam.index, dtype=object)
    out["verdict"] = _verdicts(out, "ci_low", "ci_high", "p_holm", "n_samples", lambda r: stats.T_TEST, 1.0,
                               stats.FASTER, stats.SLOWER, family="comparison")
    out["acceptance_p_holm"] = stats.holm(_nones(out["acceptance_p"]))
    out["acceptance_verdict"] = _verdicts(out, "acceptance_ci_low", "acceptance_ci_high", "acceptance_p_holm",
                                          "acceptance_n", lambda r: stats.T_TEST, 0.0, "higher", "lower")
    out["quality_p_holm"] = stats.holm(_nones(out["quality_p"]))
    out["quality_verdict"] = _verdicts(out, "quality_ci_low", "quality_ci_high", "quality_p_holm", "quality_n",
                                       lambda r: r["quality_test"], 0.0, "better", "worse")
    first = [c for c in STATS_COLUMNS if c in out]
    return out[first + [c for c in out.columns if c not in first]]


def _verdicts(out: pd.DataFrame, lo: str, hi: str, p: str, n: str, test, null: float, up: str, down: str,
              family: str | None = None) -> list:
    """Each row's verdict from its CI and Holm-corrected p, "undecidable ..." where its test could
    not reach ALPHA at its n across the family's size (rows with a p in the same family)."""
    has_p = out[p].map(lambda v: not _missing(v))
    sizes = (has_p.groupby(out[family]).transform("sum") if family else pd.Series(int(has_p.sum()), index=out.index))
    res = []
    for i, r in out.iterrows():
        if not has_p[i]:
            res.append(None)
            continue
        cannot = stats.undecidable(test(r), int(r[n]), int(sizes[i]))
        res.append(stats.verdict(float_or_none(r[lo]), float_or_none(r[hi]), float_or_none(r[p]), null, up, down, cannot))
    return res


def _nones(col) -> list:
    return [float_or_none(v) for v in col]


def _ids(rows: pd.DataFrame) -> str:
    ids = list(rows.index)
    return ", ".join(map(str, ids[:3])) + (", ..." if len(ids) > 3 else "")


# ------------------------------------------------------------------------------------------
# The "Entropy-Based Speculative Decoding" framework's success criteria
# ------------------------------------------------------------------------------------------

_SELECTED = "highest speedup over its own baseline (else lowest ms/token)"


def _select(g: pd.DataFrame, samples: pd.DataFrame, ids: list[str] | None = None) -> pd.Series:
    """The best run of `g` on the samples `ids` (all when None) by per_sample.selection_score:
    its speedup over its own interleaved baseline, else its ms/token. Keeps g's columns."""
    score = {rd: selection_score(_rows(samples, rd) if ids is None else _rows(samples, rd).loc[ids])
             for rd in g["run_dir"]}
    best = min(score, key=score.get)
    return g[g["run_dir"] == best].iloc[0]


def success_criteria(df: pd.DataFrame, samples: pd.DataFrame, seed: int = 0,
                     margin: float = stats.QUALITY_MARGIN) -> list[dict]:
    """Per group (dataset x pair x sampling ...): the best dynamic strategy against the best
    fixed-k, each selected (per_sample.selection_score: speedup over its own baseline, else
    ms/token) on one half of the samples and compared on the other half (all samples, labelled,
    with fewer than 4), with the framework's three criteria, each decided from an interval:
      1. more than 10% faster: the speedup's CI (t interval of the mean log ratio) lies above 1.10
         (met), below it (not met), else undecided;
      2. acceptance within 10%: the CI of (mean dynamic acceptance / mean fixed acceptance), a t
         interval on the log scale, lies at or above 0.90 (met), below it (not met), else undecided;
      3. no quality loss: the CI of the difference (dynamic - fixed) lies at or above -margin
         (met), wholly below it (not met), else undecided: never "met" for lack of power."""
    ok = df[df["status"] == "ok"].copy()
    ok["run"] = run_names(ok) if not ok.empty else []
    out = []
    for keys, g in (_groups(ok) if not ok.empty else []):
        fixed, dyn = g[g["strategy"] == FIXED], g[~g["strategy"].isin(NOT_DYNAMIC)]
        if fixed.empty or dyn.empty:
            continue
        ids = sorted(set.intersection(*[set(_rows(samples, rd).index) for rd in g["run_dir"]]))
        if len(ids) < 2:
            continue
        split = len(ids) >= 4
        sel, rep = stats.split_halves(ids) if split else (ids, ids)
        bf, bd = _select(fixed, samples, sel), _select(dyn, samples, sel)
        ref, run = _rows(samples, bf["run_dir"]).loc[rep], _rows(samples, bd["run_dir"]).loc[rep]
        row = {"setting": _setting(dict(zip([c for c in GROUP_KEYS if c in ok], keys))),
               "best_fixed": f"{bf['run']} ({bf['method']})", "best_dynamic": f"{bd['run']} ({bd['method']})",
               "n_selection": len(sel), "n_report": len(rep), "split_half": split, "quality_margin": margin}
        if len(rep) < stats.MIN_SAMPLES:
            why = f"undecidable at n = {len(rep)} (no interval below {stats.MIN_SAMPLES} report samples)"
            row.update({"speedup": None, "ci_low": None, "ci_high": None, "faster_10pct": why,
                        "acceptance_within_10pct": why, "no_quality_loss": why})
            out.append(row)
            continue
        c = _pair(run, ref, seed, bd["run"])
        row.update({k: c.get(k) for k in ("speedup", "ci_low", "ci_high", "p_ttest", "p_wilcoxon")})
        row["faster_10pct"] = _decide(c["ci_low"], c["ci_high"], 1.10)
        both = run["acceptance_rate"].notna() & ref["acceptance_rate"].notna()
        if int(both.sum()) >= stats.MIN_SAMPLES:
            a, b = run.loc[both, "acceptance_rate"].to_numpy(float), ref.loc[both, "acceptance_rate"].to_numpy(float)
            row["acceptance_ratio"] = float(a.mean() / b.mean()) if b.mean() > 0 else None
            lo, hi = (stats.log_t_interval([a, b], lambda x, y, axis=-1: np.mean(x, axis) / np.mean(y, axis), seed)
                      if a.mean() > 0 and b.mean() > 0 else (None, None))
            row["acceptance_ci_low"], row["acceptance_ci_high"], row["acceptance_n"] = lo, hi, int(both.sum())
            row["acceptance_within_10pct"] = _decide(lo, hi, 0.90, inclusive=True)
        else:
            row["acceptance_within_10pct"] = "n/a (no acceptance)"
        if c.get("quality_metric"):
            row.update({k: c[k] for k in ("quality_metric", "quality_test", "quality_diff", "quality_ci_low",
                                          "quality_ci_high", "quality_p")})
            row["no_quality_loss"] = stats.non_inferior(c["quality_ci_low"], c["quality_ci_high"], margin)
        else:
            row["no_quality_loss"] = "n/a (no per-sample quality)"
        out.append(row)
    return out


def _setting(k: dict) -> str:
    return (f"{k.get('model_pair')} / {k.get('dataset')} / {k.get('sampling')} "
            f"({k.get('max_new_tokens')} tokens, seed {k.get('seed')}"
            + (f", batch {k['batch_size']}" if k.get("batch_size") not in (None, 1, "–") else "") + ")")


def _decide(lo, hi, bar: float, inclusive: bool = False) -> str:
    if lo is None or hi is None:
        return "undecided (no CI)"
    if lo > bar or (inclusive and lo >= bar):
        return "met"
    if hi < bar:
        return "not met"
    return f"undecided (CI [{lo:.2f}, {hi:.2f}] contains {bar:.2f})"


# ------------------------------------------------------------------------------------------
# Factor importance
# ------------------------------------------------------------------------------------------

def factor_importance(df: pd.DataFrame, samples: pd.DataFrame) -> dict | None:
    """Which swept config keys explain the speedup, with the run as the unit: each ok run's mean
    log per-sample speedup (per-token ratio against its own baseline) over the samples every such
    run decoded (so the sample block is the same in every run and cancels), and a type II ANOVA of
    the strategy and every varying Hydra override as categorical factors (stats.factor_anova: the
    result depends neither on the order nor on the names of the keys). A key that does not apply
    to a run is the level "–". F and p only where some configuration ran more than once (the
    run-to-run variation is the test's denominator); else `tested` is False. None when no key
    varies or no run has per-sample speedups."""
    ok = df[(df["status"] == "ok") & (df["strategy"] != "autoregressive")]
    data = samples[samples["run_dir"].isin(ok["run_dir"]) & samples["speedup_per_token"].notna()]
    data = data[data["speedup_per_token"].astype(float) > 0]
    if data.empty:
        return None
    common = set.intersection(*(set(g["sample"].astype(str)) for _, g in data.groupby("run_dir")))
    data = data[data["sample"].astype(str).isin(common)]
    if data.empty:
        return None
    y = np.log(data["speedup_per_token"].astype(float)).groupby(data["run_dir"]).mean()
    label = ok.set_index("run_dir").loc[y.index].map(lambda v: "–" if _missing(v) else str(v))  # "–": not applied
    factors = [c for c in ["strategy", *sorted(c for c in ok.columns if c.startswith("override."))]
               if label[c].nunique() > 1 and not (c == "override.strategy" and "strategy" in label)]
    if not factors:
        return None
    # a key that applies to some strategies only ("–" exactly on the others) is nested in the strategy
    nested = {c: "strategy" for c in factors if c != "strategy" and "strategy" in factors
              and (label[c] == "–").any() and (label[c] == "–").groupby(label["strategy"]).nunique().max() == 1}
    name = {c: c.removeprefix("override.") for c in factors}
    out = stats.factor_anova(y.values, {name[c]: label[c].tolist() for c in factors},
                             {name[c]: name[p] for c, p in nested.items()})
    out["n_samples"] = len(common)
    return out


# ------------------------------------------------------------------------------------------
# Planning from a pilot run
# ------------------------------------------------------------------------------------------

def plan(df: pd.DataFrame, samples: pd.DataFrame, effect: float = 1.10, power: float = 0.8) -> list[str]:
    """From a pilot sweep: the samples per run the paired t-test on log per-sample ratios (against
    each run's own baseline) needs to detect a speedup of `effect` with `power` at ALPHA, Holm
    across the pilot's compared runs (worst case: ALPHA / m), assuming each run's pilot standard
    deviation of the log ratios. Lines to print, the assumptions first."""
    ok = df[(df["status"] == "ok") & (df["strategy"] != "autoregressive")].copy()
    if ok.empty or samples.empty or "speedup_per_token" not in samples:
        raise ValueError("--plan: no ok run with per-sample speedups (runs need their own baseline: baseline=true)")
    ok["run"] = run_names(ok)
    sds = {}
    for _, r in ok.sort_values("run").iterrows():
        x = _rows(samples, r["run_dir"])["speedup_per_token"].dropna().astype(float)
        x = x[x > 0]
        if len(x) >= stats.MIN_SAMPLES:
            sds[f"{r['run']} ({r['method']})"] = (float(np.std(np.log(x), ddof=1)), len(x))
    if not sds:
        raise ValueError(f"--plan: no run has {stats.MIN_SAMPLES} or more samples with a per-sample speedup: "
                         "raise dataset.limit in the pilot")
    m = len(sds)
    lines = [f"plan: samples per run to detect a speedup of {effect:.2f}x (log ratio {math.log(effect):.4f}) with "
             f"power {power:.2f}: paired t-test on log per-sample ratios against each run's own baseline, two-sided, "
             f"alpha {stats.ALPHA} / {m} runs (Holm's first step, the worst case; statsmodels TTestPower).",
             "assumptions: per-sample log ratios independent and about normal, their standard deviation as in the "
             "pilot (an estimate from few samples: its own uncertainty is not in the n), the same machine and "
             "settings as the pilot."]
    worst = None
    for name, (sd, n0) in sds.items():
        n = stats.samples_needed(sd, effect, power, m)
        worst = n if worst is None or (n or 0) > worst else worst
        lines.append(f"  {name}: pilot n = {n0}, sd of log ratios {sd:.3f} -> "
                     + (f"n = {n}" if n is not None else f"no spread: any n >= {stats.MIN_SAMPLES}"))
    if worst:
        lines.append(f"every run: dataset.limit={worst}")
    return lines
