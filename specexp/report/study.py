"""The study report of a sweep: `DIR/report/final_report.md` with what ran (configs, environment,
estimator), the tables with CIs and verdicts, the success criteria of the "Entropy-Based
Speculative Decoding" framework, factor importance, the figures, and `processed_data.csv` (one
row per run x sample) beside it."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from specexp import stats
from specexp.report import paired as compare
from specexp.report import plots
from specexp.report.collect_runs import _missing
from specexp.report.rendering import Section, render_markdown
from specexp.report.tables import SPEEDUP_NOTE, float_or_none, render

ESTIMATOR_TEXT = (
    "Speed is compared sample by sample. Each sample is decoded `timing.repeats` times per mode, the modes "
    "interleaved (baseline, strategy, baseline, ...), and its time is the median of its repeats. A run's speedup is "
    "the **throughput ratio**: strategy tokens/s over autoregressive tokens/s, totals over the samples, with a 95% "
    "CI that is a t interval on the log scale with the paired bootstrap standard error (scipy.stats.bootstrap, 2000 "
    "resamples, seeded). The paired statistics compare per-sample seconds per token: geometric mean of the ratios "
    "(reference / run) with the t interval of the mean log ratio, the paired t-test (the verdict's test) and "
    "Wilcoxon signed-rank on the log ratios, paired Cohen's d, Holm's correction across the runs of the sweep "
    "(statsmodels). Verdict: faster / slower when the Holm-corrected t-test p < 0.05 and the CI excludes 1; "
    "undecidable when the test could not reach p < 0.05 at the run's n and number of runs (it names the n that "
    "would); else no detectable difference. These intervals cover at least 93% in simulation from n = 2 on "
    "(docs/statistics.md).")

KMEANS_NOTE = (
    "KMeans + PCA (the Entropy-Based Speculative Decoding framework's clustering of runs) is not used: the "
    "factors of a sweep are few, designed and categorical, so the ANOVA above answers 'which keys matter' "
    "directly (with a test where configurations ran more than once); "
    "clusters of a dozen runs in a PCA of their metrics would describe the grid, not test "
    "it, and move with every rerun.")


def _cell(x, fmt="{:.3g}") -> str:
    return "–" if x is None or _missing(x) else fmt.format(x)


def stats_section(st: pd.DataFrame) -> Section:
    """The paired statistics table (stats.csv) for printing."""
    rows = []
    for _, r in st.iterrows():
        acc = ("–" if _missing(r.get("acceptance_diff")) else
               f"{r['acceptance_diff']:+.3f} [{_cell(r['acceptance_ci_low'], '{:+.3f}')}, "
               f"{_cell(r['acceptance_ci_high'], '{:+.3f}')}] {r.get('acceptance_verdict') or ''}".rstrip())
        qual = ("–" if _missing(r.get("quality_diff")) else
                f"{r['quality_metric']} {r['quality_diff']:+.3f} [{_cell(r['quality_ci_low'], '{:+.3f}')}, "
                f"{_cell(r['quality_ci_high'], '{:+.3f}')}] ({r['quality_test']}, p={_cell(r['quality_p'])}) "
                f"{r.get('quality_verdict') or ''}".rstrip())
        rows.append([str(r["run"]), str(r["method"]), str(r["reference"]), str(r.get("comparison", "–")),
                     str(r["n_samples"]), stats.format_ratio(r["speedup"], float_or_none(r["ci_low"]), float_or_none(r["ci_high"])),
                     _cell(r["p_ttest"]), _cell(r["p_wilcoxon"]), _cell(r["p_holm"]), _cell(r["cohens_d"], "{:.2f}"),
                     r["verdict"], acc, qual])
    kinds = set(st["comparison"]) if "comparison" in st else set()
    return Section("Paired statistics against the reference",
                   ["run", "method", "reference", "comparison", "n", "speedup (geomean) [95% CI]", "p t-test",
                    "p Wilcoxon", "p Holm", "Cohen's d", "verdict", "acceptance Δ [95% CI]", "quality Δ [95% CI]"],
                   rows,
                   ["speedup: geometric mean over samples of (reference s/token) / (run s/token), 95% t interval of "
                    "the mean log ratio; p t-test: paired t-test on the log ratios (the verdict's test; no floor, so a "
                    "verdict is reachable at any n >= 2); p Wilcoxon: signed-rank on the same, for robustness (its "
                    "exact p cannot go below 2 / 2^n); p Holm: the t-test p corrected across the runs of the same "
                    "comparison kind; verdict: faster / slower when p Holm < 0.05 and the CI excludes 1, "
                    "undecidable when the test could not reach 0.05 (with the n that would).",
                    "comparison: normalised = each side's s/token over its own interleaved baseline's (cancels load "
                    "drift between runs that ran one after the other); raw = the runs' own s/token (a reference "
                    "without an interleaved baseline, such as a separate autoregressive run: drift between the runs "
                    "is in the ratio). The two kinds are separate Holm families."
                    + (" This table holds both kinds." if len(kinds) > 1 else ""),
                    "acceptance Δ: run minus reference acceptance rate per sample, on the samples where both drafted "
                    "(mean, t interval, t-test, Holm); quality Δ: run minus reference (pass/fail: McNemar exact, "
                    "interval from Clopper-Pearson bounds of the discordant cells; scores: t interval and t-test)."])


def criteria_section(rows: list[dict]) -> Section | None:
    if not rows:
        return None
    out = []
    for r in rows:
        out.append([r["setting"], r["best_dynamic"], r["best_fixed"],
                    f"{r['n_selection']} / {r['n_report']}" + ("" if r["split_half"] else " (same samples)"),
                    stats.format_ratio(r["speedup"], r["ci_low"], r["ci_high"]), r["faster_10pct"],
                    (stats.format_ratio(r.get("acceptance_ratio"), r.get("acceptance_ci_low"),
                                        r.get("acceptance_ci_high")).replace("x", "", 1)
                     if r.get("acceptance_ratio") else "–")
                    + f": {r['acceptance_within_10pct']}",
                    (f"{r['quality_metric']} {r['quality_diff']:+.3f} [{r['quality_ci_low']:+.2f}, "
                     f"{r['quality_ci_high']:+.2f}]: " if r.get("quality_metric") else "") + r["no_quality_loss"]])
    n_met = sum(r["faster_10pct"] == "met" for r in rows)
    return Section("Success criteria (Entropy-Based Speculative Decoding framework): best dynamic strategy vs "
                   "best fixed-k",
                   ["setting", "best dynamic", "best fixed-k", "n select / report", "speedup [95% CI]",
                    "> 10% faster", "acceptance ratio [95% CI]: within 10%", "no quality loss"], out,
                   ["Selection (winner's curse): both runs are chosen on one half of the samples (every "
                    "other sample in id order) and compared on the other half; with fewer than 4 samples on the same "
                    "samples, as marked. Selection is by each run's speedup over its own interleaved baseline (else "
                    "ms/token).",
                    "> 10% faster: met when the speedup's CI (t interval of the mean log ratio) lies above 1.10, not "
                    "met when below, else undecided. Acceptance within 10%: the CI of the ratio of mean acceptance "
                    "rates (t interval on the log scale) at or above 0.90. No quality loss: met when the CI of the "
                    f"difference (dynamic - fixed) lies at or above -{rows[0].get('quality_margin', stats.QUALITY_MARGIN):.2f} "
                    "(the loss is ruled out beyond that margin), not met when it lies wholly below, else undecided "
                    "(a test that finds no significant loss is not evidence of none).",
                    f"Criterion 1 met on {n_met} of {len(rows)} setting(s); the framework asks for at least half."])


def factors_section(f: dict | None) -> Section | None:
    """The factor-importance table of `compare.factor_importance` (a type II ANOVA of run means)."""
    if not f or not f["rows"]:
        return None
    rows = [[r["factor"], _cell(r["df"], "{:.0f}"), _cell(r["share"], "{:.1%}"), _cell(r["F"], "{:.2f}"),
             _cell(r["p"])] for r in f["rows"]]
    rows.append(["run to run (same configuration)", _cell(f["df_pure_error"], "{:.0f}"),
                 _cell(f["sum_sq_pure_error"] / f["total_sum_sq"] if f["total_sum_sq"] > 0 else None, "{:.1%}"),
                 "–", "–"])
    notes = [f"Type II ANOVA with the run as the unit ({f['n_runs']} runs, {f['n_configurations']} configurations): "
             f"each run's mean log per-sample speedup (per-token ratio against its own baseline) over the "
             f"{f['n_samples']} samples every run decoded, on the strategy and every varying Hydra override as "
             "categorical factors (a key that does not apply to a run is the level '–'; a key of some strategies "
             "only is nested in the strategy). A factor's sum of squares is what the fit loses without it, the "
             "other factors that do not contain it kept, so neither the order nor the names of the keys matter; "
             "share: that over the total sum of squares of the run means (shares need not add up to 1; "
             "df 0: the key's levels are given by the other keys)."]
    if f["tested"]:
        notes.append(f"F and p test each factor against the run-to-run variation between runs of the same "
                     f"configuration (pure error, df {f['df_pure_error']}).")
    else:
        notes.append("No p-values: every configuration ran once, so run-to-run drift cannot be told apart from a "
                     "factor's effect (no replication, no residual degrees of freedom at run level). Run some "
                     "configurations twice (the same sweep again with the same hydra.sweep.dir) to test the factors.")
    return Section("Factor importance: what explains the speedup", ["factor", "df", "share of variance", "F", "p"],
                   rows, notes)


def config_section(df: pd.DataFrame) -> Section:
    ok = df.copy()
    ok["run"] = compare.run_names(ok)
    varying = [c for c in ok.columns if c.startswith("override.") and ok[c].astype(str).nunique() > 1]
    rows = []
    for _, r in ok.sort_values("run").iterrows():
        rows.append([r["run"], r["status"], str(r["method"]), str(r.get("dataset")), str(r.get("sampling")),
                     _cell(r.get("n_samples"), "{:.0f}"), _cell(r.get("timing_repeats"), "{:.0f}"),
                     " ".join(f"{c[9:]}={r[c]}" for c in varying if not _missing(r[c])) or "–"])
    common = [c for c in ok.columns if c.startswith("override.") and c not in varying and ok[c].notna().all()]
    notes = ["common overrides: " + " ".join(f"{c[9:]}={ok[c].iloc[0]}" for c in common)] if common else []
    return Section("Configurations", ["run", "status", "method", "dataset", "sampling", "samples", "repeats",
                                "varying overrides"], rows, notes)


def environment_lines(runs: list[tuple[Path, dict]]) -> list[str]:
    envs, loads = set(), []
    for _, m in runs:
        e = m.get("environment") or {}
        if e:
            envs.add(f"{e.get('device_name')}; torch {e.get('torch')}, transformers {e.get('transformers')}, "
                     f"specexp {e.get('specexp')}, python {e.get('python')}")
        t = m.get("timing") or {}
        if t.get("loadavg_before"):
            loads.append((t["loadavg_before"][0], (t.get("loadavg_after") or [math.nan])[0], t.get("torch_threads"),
                          t.get("spread_median")))
    out = [f"- environment: {e}" for e in sorted(envs)]
    if loads:
        out.append("- load average (1 min) before / after each run: "
                   + ", ".join(f"{a:.2f}/{b:.2f}" for a, b, _, _ in loads)
                   + f"; torch threads: {sorted({x for _, _, x, _ in loads})}")
        spreads = [s for *_, s in loads if s is not None]
        if spreads:
            out.append("- repeat spread (median over samples of (max-min)/median): "
                       + ", ".join(f"{s:.0%}" for s in spreads))
    return out


def write_final_report(df: pd.DataFrame, samples: pd.DataFrame, runs: list[tuple[Path, dict]], out: Path,
                       reference: dict | None = None, seed: int = 0) -> tuple[Path, str]:
    """final_report.md + processed_data.csv + stats.csv + the figures in `out`; returns the report's
    path and the comparison table (Markdown) for the console."""
    out.mkdir(parents=True, exist_ok=True)
    samples.to_csv(out / "processed_data.csv", index=False)
    parts = ["# Study report", "", "## What ran", "", *environment_lines(runs), f"- estimator: {ESTIMATOR_TEXT}", "",
             render_markdown([config_section(df)], "Configurations").split("\n", 2)[2]]
    parts += [render(df, "runs", "md", samples)]
    comparison = ""
    try:
        st = compare.compare_runs(df, samples, reference, seed)
        st.to_csv(out / "stats.csv", index=False)
        comparison = render_markdown([stats_section(st)], "Comparison")
        parts.append(comparison)
    except ValueError as err:
        parts.append(f"## Comparison\n\nno paired statistics: {err}\n")
    if (reference or {}).get("strategy") != compare.FIXED and (df["strategy"] == compare.FIXED).any():
        try:  # the framework's default comparison, when the sweep has fixed-gamma runs
            st2 = compare.compare_runs(df, samples, {"strategy": compare.FIXED}, seed)
            st2.to_csv(out / "stats_vs_best_fixed.csv", index=False)
            parts.append(render_markdown([stats_section(st2)], "Comparison against the best fixed-gamma run"))
        except ValueError as err:
            parts.append(f"## Comparison against the best fixed-gamma run\n\nnot possible: {err}\n")
    extra = [criteria_section(compare.success_criteria(df, samples, seed)),
             factors_section(compare.factor_importance(df, samples))]
    extra = [s for s in extra if s is not None]
    parts.append(render_markdown(extra, "Analysis") if extra else
                 "## Analysis\n\nno success criteria (needs fixed-gamma and dynamic runs on the same samples) "
                 "and no factor importance (needs a swept key).\n")
    parts.append(KMEANS_NOTE + "\n")
    if (df["strategy"].isin(["entropy_static", "entropy_ma", "entropy_cum", "heuristic"])).any():
        parts.append(render(df, "thesis_6_6", "md", samples))
    figures = plots.plot_all(df, runs, out)
    parts += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    parts += ["## Files", "", "- `runs.csv`: one row per run; `processed_data.csv`: one row per run x sample; "
              "`stats.csv`: the paired statistics.", "", SPEEDUP_NOTE, ""]
    path = out / "final_report.md"
    path.write_text("\n".join(parts))
    return path, comparison
