"""The named table layouts of `specexp-report` (Markdown or LaTeX): runs, thesis_6_6,
reproduction, cascade, specbench. Every speedup is the throughput ratio with its 95% CI,
`1.23x [1.10, 1.37]`; a table that picks a best cell says how it was selected."""
from __future__ import annotations

import math
import statistics
from typing import Callable

import pandas as pd

from specexp import stats
from specexp.report import categories
from specexp.report.collect_runs import (
    _PERCENT_QUALITY,
    QUALITY_LABEL,
    QUALITY_ORDER,
    TREE_DEPTHS,
    _first_line,
    _fmt_param,
    _missing,
)
from specexp.report.paper_estimators import REPO as REPRO_REPO
from specexp.report.per_sample import ms_per_token, selection_score
from specexp.report.rendering import Section, render_latex, render_markdown


def _f(x, fmt: str = "{:.2f}", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return fmt.format(x)


def _s(x) -> str:
    return "–" if _missing(x) or x == "" else str(x)


def _pct(x) -> str:
    return _f(None if x is None or (isinstance(x, float) and math.isnan(x)) else 100 * x, "{:.0f}%")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if not df.empty else df


def _group_title(keys: tuple, names: tuple) -> str:
    parts = []
    for k, n in zip(keys, names):
        if k is None or (isinstance(k, float) and math.isnan(k)):
            continue
        if n == "batch":  # batch size: named only when samples were decoded B > 1 at a time
            if k not in (1, "–"):
                parts.append(f"batch {k}")
            continue
        parts.append(f"{n} {k}" if n in ("pair",) else str(k))
    return " / ".join(parts)


def _batch_suffix(batch) -> str:
    """", batch B" for a group decoded B > 1 samples at a time; "" at batch 1."""
    title = _group_title((batch,), ("batch",))
    return f", {title}" if title else ""


def group_runs(df: pd.DataFrame, cols: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """Groups of runs by `cols`, a missing value as its own level "–"; runs decoded at different
    batch sizes never share a group (a frame without the column is batch 1 throughout)."""
    if df.empty:
        return []
    if "batch_size" in cols and "batch_size" not in df:
        df = df.assign(batch_size=1)
    keyed = df.assign(**{c: df[c].astype(object).where(df[c].notna(), "–") for c in cols})
    return list(keyed.groupby(cols, sort=True, dropna=False))


SPEEDUP_NOTE = ("Speedup: throughput ratio (strategy tokens/s over autoregressive tokens/s on the same samples, "
                "totals over samples) with its 95% CI over samples: a t interval on the log scale with the paired bootstrap "
                "standard error (no CI below 2 samples).")


def speedup_cell(r) -> str:
    """`1.23x [1.10, 1.37]`: a run's throughput ratio and its CI."""
    return stats.format_ratio(*(float_or_none(r.get(k)) for k in ("speedup", "speedup_ci_low", "speedup_ci_high")))


def group_speedup_cell(g: pd.DataFrame) -> str:
    """One run: its speedup and CI; several runs in one cell: their mean, marked as such."""
    g = g.dropna(subset=["speedup"]) if "speedup" in g else g.iloc[0:0]
    if g.empty:
        return "–"
    if len(g) == 1:
        return speedup_cell(g.iloc[0])
    return f"{g['speedup'].mean():.2f}x (mean of {len(g)} runs)"


# --------------------------------------------------------------------------------------------
# Named tables
# --------------------------------------------------------------------------------------------

def table_runs(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Section]:
    """Every run: job, status, method, sampling, dataset, tokens/s, acceptance, speedup (source);
    with batched runs among them, also the batch size and the batch throughput columns; with
    tree-drafting runs among them, also the tree columns (TREE_COLUMNS)."""
    if df.empty:
        return [Section("", ["run"], [], ["no metrics.json found"])]
    batched = "batch_size" in df and bool((df["batch_size"].fillna(1) > 1).any())
    trees = [(c, h, fmt) for c, h, fmt in TREE_COLUMNS if c in df and df[c].notna().any()]
    rows = []
    for _, r in df.sort_values(["job", "run_dir"], na_position="last").iterrows():
        rows.append([
            _f(r.get("job"), "{:.0f}", "") if not isinstance(r.get("job"), str) else r.get("job"),
            r["status"], str(r["method"]), _s(r.get("sampling")), _s(r.get("dataset")),
            _f(r.get("tokens_per_second"), "{:.1f}"), _f(r.get("acceptance_rate"), "{:.3f}"),
            _f(r.get("mean_accepted_length")), speedup_cell(r),
            "–" if _missing(r.get("speedup_source")) else str(r.get("speedup_source")).split(":")[0],
            *([_f(r.get("batch_size"), "{:.0f}", "1"), _f(r.get("batch_tokens_per_second"), "{:.1f}"),
               _f(r.get("batch_speedup_same_batch"), "{:.2f}x"), _f(r.get("batch_speedup_batch1"), "{:.2f}x")]
              if batched else []),
            *[_f(r.get(c), fmt) for c, _, fmt in trees],
            _first_line(r.get("error"), 140) or "",
        ])
    n_fail = int((df["status"] != "ok").sum())
    cols = ["job", "status", "method", "sampling", "dataset", "tok/s", "accept", "acc. len", "speedup [95% CI]",
            "baseline", *(["B", "batch tok/s", "vs AR@B", "vs AR@1"] if batched else []),
            *[h for _, h, _ in trees], "error"]
    notes = [f"{len(df)} runs, {len(df) - n_fail} ok, {n_fail} failed.", SPEEDUP_NOTE]
    if batched:
        notes.append("B: samples decoded at a time (batch_size). batch tok/s: new tokens of all samples / wall time "
                     "of the whole dataset's decode, median over repeats; vs AR@B, vs AR@1: that throughput over "
                     "autoregressive decoding's at the same B and at batch 1 (docs/batching.md). tok/s and speedup "
                     "at B > 1 are per-sequence: each sample's latency, shared with the other rows.")
    if trees:
        notes.append(TREE_NOTE)
    return [Section("", cols, rows, notes)]


# The runs table's token-tree columns (collect_runs.tree_columns), shown when some run drafted trees.
TREE_COLUMNS = [("tree_nodes_mean", "tree nodes", "{:.1f}"), ("tree_depth_mean", "tree depth", "{:.2f}"),
                *[(f"tree_accept_d{d}", f"accept@d{d}", "{:.3f}") for d in range(1, TREE_DEPTHS + 1)]]
TREE_NOTE = ("Token trees (runs whose proposer drafted trees; – for chain runs): tree nodes and tree depth: mean "
             "nodes and levels per round that drafted a tree; accept@dN: of those rounds whose tree reached depth N, "
             "the share whose accepted path reached it; acc. len: tokens per target forward.")


THESIS_COLUMNS = [("No drafter", "autoregressive", ()),
                  ("Heuristic", "heuristic", ("start",)),
                  ("Static", "entropy_static", ("tau",)),
                  ("MA", "entropy_ma", ("m", "last_n")),
                  ("Cumulative", "entropy_cum", ("tau_cum", "last_n"))]


def _half_stats(ps: pd.DataFrame, run_dir: str, ids: list[str]) -> pd.DataFrame:
    sub = ps[(ps["run_dir"] == run_dir) & ps["sample"].isin(ids)]
    return sub.set_index("sample").loc[[i for i in ids if i in set(sub["sample"])]]


def _baseline_of(rows: pd.DataFrame, ar_rows: pd.DataFrame | None) -> tuple[pd.Series, pd.Series] | None:
    """(tokens, seconds) per sample of the baseline a run's `rows` are compared with: its own
    paired baselines (decoded interleaved with it: preferred), else the autoregressive run's rows
    of the same samples; None when neither covers every sample."""
    tok_b, t_b = rows["baseline_new_tokens"], rows["baseline_wall_time_s"]
    if (tok_b.isna().any() or t_b.isna().any()) and ar_rows is not None:
        ar = ar_rows.loc[rows.index]
        tok_b, t_b = ar["new_tokens"], ar["wall_time_s"]
    if tok_b.isna().any() or t_b.isna().any():
        return None
    return tok_b, t_b


def _speedup_on(rows: pd.DataFrame, ar_rows: pd.DataFrame | None) -> dict:
    """Throughput ratio and CI of a run's `rows` against its baseline (`_baseline_of`)."""
    base = _baseline_of(rows, ar_rows)
    if base is None:
        return {"throughput_ratio": None}
    tok_b, t_b = base
    return stats.speedup_estimates(rows["new_tokens"].tolist(), rows["wall_time_s"].tolist(), tok_b.tolist(),
                                   t_b.tolist(), [False] * len(rows))


def _baseline_ms(rows: pd.DataFrame, ar_rows: pd.DataFrame | None) -> float | None:
    """ms/token of the baseline `_speedup_on` divides by, on the same samples."""
    base = _baseline_of(rows, ar_rows)
    return None if base is None else ms_per_token(*base)


def table_thesis_6_6(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Section]:
    """Entropy Drafting thesis, Table 6.6: ms per token of static, MA, cumulative, transformers'
    heuristic and no drafter, each at its best hyperparameters (lowest ms/token), per model
    pair / dataset / sampling; plus the speedup over no drafter with its CI.

    Winner's curse: with per-sample data and >= 4 common samples, each column's hyperparameters
    are selected on one half of the samples and every number is measured on the other half.
    Otherwise the selected cell is reported on the samples it was selected on, and says so."""
    ok = _ok(df)
    cols = ["Setting", "", *[c[0] for c in THESIS_COLUMNS]]
    rows, notes, splits = [], [], set()
    paired_used = False
    for keys, g in group_runs(ok, ["model_pair", "dataset", "sampling", "batch_size"]):
        ps = samples[samples["run_dir"].isin(g["run_dir"])] if samples is not None and not samples.empty else None
        ids = None
        if ps is not None:
            per_run = [set(x) for _, x in ps.groupby("run_dir")["sample"]]
            ids = set.intersection(*per_run) if per_run else set()
        split = ids is not None and len(ids) >= 4
        sel_ids, rep_ids = stats.split_halves(ids) if split else (sorted(ids or []), sorted(ids or []))
        splits.add((split, len(sel_ids), len(rep_ids)))
        ar = g[g["strategy"] == "autoregressive"].sort_values("run_dir")
        ar_rows = _half_stats(ps, ar.iloc[0]["run_dir"], rep_ids) if ps is not None and not ar.empty else None
        ms, sp, params, base_ms = {}, {}, {}, {}
        for label, strat, pkeys in THESIS_COLUMNS:
            sub = g[g["strategy"] == strat].dropna(subset=["ms_per_token"])
            if strat == "autoregressive" and sub.empty:
                base = g["baseline_ms_per_token"].dropna()
                if not base.empty:
                    ms[label], params[label], paired_used = float(base.median()), "paired†", True
                continue
            if sub.empty:
                continue
            if ps is not None and sel_ids:  # select on one half, measure on the other
                sel = {r: selection_score(_half_stats(ps, r, sel_ids)) for r in sub["run_dir"]}
                best = sub.set_index("run_dir").loc[min(sel, key=lambda r: sel[r])]
                rep = _half_stats(ps, best.name, rep_ids)
                ms[label] = ms_per_token(rep["new_tokens"], rep["wall_time_s"])
                sp[label] = (stats.format_speedup(_speedup_on(rep, ar_rows)) if strat != "autoregressive"
                             else "1x")
                base_ms[label] = _baseline_ms(rep, ar_rows) if strat != "autoregressive" else ms[label]
            else:
                best = sub.loc[sub["ms_per_token"].idxmin()]
                ms[label] = float(best["ms_per_token"])
                sp[label] = speedup_cell(best) if strat != "autoregressive" else "1x"
                base_ms[label] = (ms[label] if strat == "autoregressive" else
                                  float_or_none(best.get("baseline_ms_per_token")) or
                                  (ms[label] * float_or_none(best.get("speedup"))
                                   if float_or_none(best.get("speedup")) else None))
            chosen = ", ".join(f"{k}={_fmt_param(best[f'param.{k}'])}" for k in pkeys
                               if f"param.{k}" in best and not pd.isna(best[f"param.{k}"])) or "–"
            params[label] = chosen + (f" (best of {len(sub)})" if len(sub) > 1 else "")
        if not ms:
            continue
        title = _group_title(keys, ("pair", "dataset", "sampling", "batch"))
        rows.append([title, "ms/token", *[_f(ms.get(c[0])) for c in THESIS_COLUMNS]])
        rows.append(["", "its baseline's ms/token", *[_f(base_ms.get(c[0])) for c in THESIS_COLUMNS]])
        rows.append(["", "vs. no drafter [95% CI]", *[sp.get(c[0], "–") for c in THESIS_COLUMNS]])
        rows.append(["", "selected", *[params.get(c[0], "–") for c in THESIS_COLUMNS]])
    notes.append("ms/token = wall time / generated tokens over the reported samples; each strategy column at "
                 "its selected hyperparameters. vs. no drafter: against the run's own interleaved baseline when it "
                 "has one, else the autoregressive run, whose ms/token on the same samples is the row \"its "
                 "baseline's ms/token\": vs. no drafter = its baseline's ms/token / ms/token, both rows from the "
                 "same samples. The No drafter column is a separate run (or the paired baselines' median): dividing "
                 "it by another column's ms/token mixes runs timed at different moments. " + SPEEDUP_NOTE)
    for split, n_sel, n_rep in sorted(splits):
        if split:
            notes.append(f"Selection (winner's curse): hyperparameters selected on {n_sel} samples (every other "
                         f"sample in id order; by the speedup over each run's own interleaved baseline, else by "
                         f"ms/token); ms/token and speedup measured on the other {n_rep}.")
        else:
            notes.append("Selection: fewer than 4 common samples (or no per-sample data): each cell was selected on "
                         "the same samples it reports, so the selected cell is optimistic; its CI is shown.")
    if paired_used:
        notes.append("† no separate strategy=autoregressive run: median of the runs' paired autoregressive baselines.")
    if not rows:
        notes.append("no ok runs of autoregressive / heuristic / entropy_static / entropy_ma / entropy_cum.")
    return [Section("Entropy Drafting, Table 6.6: ms per token at the best hyperparameters", cols, rows, notes)]


def float_or_none(v) -> float | None:
    """A table cell as a float; None where it is missing (None or NaN)."""
    return None if _missing(v) else float(v)


def _quality_key(g: pd.DataFrame) -> str | None:
    """The run-level quality metric a table shows: the first of QUALITY_ORDER that some run has
    (else any `quality.*` column with a value)."""
    have = [c[8:] for c in g.columns if c.startswith("quality.") and g[c].notna().any()]
    for k in QUALITY_ORDER:
        if k in have:
            return k
    return have[0] if have else None


def _fmt_quality(k: str | None, v) -> str:
    if k in _PERCENT_QUALITY:
        return _pct(v)
    return _f(v, "{:.3f}")


def table_reproduction(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Section]:
    """The paper-reproduction table, per model pair / dataset: method, sampling, quality
    (ROUGE-1, pass@1 or accuracy), speedup, acceptance rate; the autoregressive row from the
    separate autoregressive run when there is one, else from the paired baselines."""
    ok = _ok(df)
    sections = []
    for keys, g in group_runs(ok, ["model_pair", "dataset", "experiment", "batch_size"]):
        qk = _quality_key(g)
        qlabel = QUALITY_LABEL.get(qk, qk or "Quality")
        rows, repro_notes = [], []
        for samp, gs in g.groupby(g["sampling"].astype(object).where(g["sampling"].notna(), "–"), sort=False):
            ar = gs[gs["strategy"] == "autoregressive"]
            spec = gs[gs["strategy"] != "autoregressive"]
            if not ar.empty:
                qv = ar[f"quality.{qk}"].mean() if qk and f"quality.{qk}" in ar else None
            else:
                col = f"quality_baseline.{qk}" if qk else None
                qv = spec[col].dropna().mean() if col and col in spec and spec[col].notna().any() else None
            if not ar.empty or not spec.empty:
                rows.append(["Auto-regressive", _samp_name(samp), _fmt_quality(qk, qv), "1x", "NIL"])
            for _, r in spec.sort_values("method").iterrows():
                rows.append([_method_name(r), _samp_name(samp),
                             _fmt_quality(qk, r.get(f"quality.{qk}") if qk else None),
                             speedup_cell(r), _pct(r.get("acceptance_rate"))])
                repro_sp, repro_acc = r.get("repro.speedup_mean_of_ratios"), r.get("repro.acceptance_mean_of_rates")
                if pd.notna(repro_sp) or pd.notna(repro_acc):  # its estimators beside ours (repro_estimators.py)
                    repro_notes.append(
                        f"{_method_name(r)}, {_samp_name(samp)}: as {REPRO_REPO} estimates them: speedup "
                        f"{_f(repro_sp if pd.notna(repro_sp) else None, '{:.2f}x')} (mean of per-sample throughput "
                        f"ratios), acceptance {_pct(repro_acc if pd.notna(repro_acc) else None)} (mean of per-sample "
                        "rates); the table's acceptance rate is pooled.")
        n = g["n_samples"].dropna()
        title = (f"{keys[0]} on {keys[1]}" + (f" ({int(n.max())} samples)" if not n.empty else "")
                 + (f", experiment {keys[2]}" if keys[2] != "–" else "")
                 + _batch_suffix(keys[3]))
        sections.append(Section(title, ["Method", "Sampling", qlabel, "Speedup [95% CI]", "Acceptance rate"], rows,
                                [SPEEDUP_NOTE] + repro_notes))
    return sections or [Section("Paper reproduction", ["Method", "Sampling", "Quality", "Speedup", "Acceptance rate"],
                                [], ["no ok runs"])]


def _samp_name(s) -> str:
    return "Greedy" if s == "greedy" else str(s)


def _method_name(r) -> str:
    m = str(r["method"])
    if r.get("strategy") == "speculative":
        g = r.get("param.gamma")
        return "Speculative" + (f" (γ={_fmt_param(g)})" if g is not None and not pd.isna(g) else "")
    return m


def table_cascade(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Section]:
    """Cascade drafting: per method and dataset, the speedup under the model-parameter cost model,
    the previous-work cost model, the cost model with this run's measured per-forward times, and
    the wall-clock speedup (plus Leviathan et al.'s predicted speedup when runs carry it). Runs
    without `cost_model_speedup` (or with a null entry) show '–' there."""
    ok = _ok(df)
    ok = ok[ok["strategy"] != "autoregressive"] if not ok.empty else ok
    have_cost = any(c.startswith("cost_speedup.") and ok[c].notna().any() for c in ok.columns)
    kinds = [("cost_speedup.params", "params"), ("cost_speedup.previous_work", "prev. work"),
             ("cost_speedup.measured", "measured cost"), ("speedup", "wall-clock")]
    if "cost_speedup.csd_paper" in ok and ok["cost_speedup.csd_paper"].notna().any():  # the CS-Drafting paper's table
        kinds.insert(1, ("cost_speedup.csd_paper", "paper table"))
    if "cost_speedup.leviathan_predicted" in ok and ok["cost_speedup.leviathan_predicted"].notna().any():
        kinds.append(("cost_speedup.leviathan_predicted", "Leviathan pred."))
    datasets = sorted(ok["dataset"].dropna().unique()) if not ok.empty else []
    cols = ["Method", "Sampling"] + [f"{d}: {label}" for d in datasets for _, label in kinds]
    rows = []
    if not ok.empty:
        for (pair, method, samp), g in ok.groupby(["model_pair", "method", ok["sampling"].fillna("–")], sort=True):
            row = [f"{method} [{pair}]", _samp_name(samp)]
            for d in datasets:
                gd = g[g["dataset"] == d]
                for col, _ in kinds:
                    if col == "speedup":
                        row.append(group_speedup_cell(gd))
                        continue
                    v = gd[col].mean() if col in gd and gd[col].notna().any() else None
                    row.append(_f(v, "{:.2f}x"))
            rows.append(row)
    notes = ["Speedup over autoregressive decoding. params: standardized walltime improvement with each "
             "model's cost = its parameter count; prev. work: the cost ratios of earlier work (T5: xxl 1, "
             "large 0.11, base 0.04, small 0.02); paper table (when shown): the CS-Drafting paper's costs (FLAN-T5 "
             "xxl 11300, base 220, small 60; llama-160m 160, LLaMA-7B 70000); measured cost: each model's measured time per forward in "
             "this run; wall-clock: " + SPEEDUP_NOTE]
    if not have_cost:
        notes.append("No run carries cost_model_speedup (the cascade strategies write it): cost-model columns are empty.")
    return [Section("Cascade speculative drafting: speedup under cost models", cols, rows, notes)]


def table_specbench(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Section]:
    """Spec-Bench style, per model pair and sampling: for each strategy (row) and dataset (column
    pair), mean accepted length τ and speedup, then their mean over datasets. Runs whose samples
    have categories (dataset=jsonl) first get Spec-Bench's own layout: a column per category."""
    per_category = [Section(*s) for s in categories.specbench_sections(df)] if not df.empty else []
    ok = _ok(df)
    sections = []
    for keys, g in group_runs(ok, ["model_pair", "sampling", "batch_size"]):
        datasets = sorted(g["dataset"].dropna().unique())
        cols = ["Method"] + [f"{d} {x}" for d in datasets for x in ("τ", "speedup [95% CI]")] + ["Mean τ", "Mean speedup"]
        rows = []
        for method, gm in g.groupby("method", sort=True):
            taus, sps, row = [], [], [method]
            for d in datasets:
                gd = gm[gm["dataset"] == d]
                tau = gd["mean_accepted_length"].mean() if gd["mean_accepted_length"].notna().any() else None
                sp = gd["speedup"].mean() if gd["speedup"].notna().any() else None
                row += [_f(tau), group_speedup_cell(gd)]
                taus += [tau] if tau is not None else []
                sps += [sp] if sp is not None else []
            row += [_f(statistics.fmean(taus) if taus else None), _f(statistics.fmean(sps) if sps else None, "{:.2f}x")]
            rows.append(row)
        sections.append(Section(f"Spec-Bench style: {keys[0]}, {_samp_name(keys[1])}{_batch_suffix(keys[2])}", cols, rows,
                                ["τ: mean accepted length (tokens per target forward). " + SPEEDUP_NOTE,
                                 "Mean speedup: the plain mean of the datasets' throughput ratios (no CI)."]))
    return per_category + sections or [Section("Spec-Bench style", ["Method"], [], ["no ok runs"])]


TABLES: dict[str, Callable[..., list[Section]]] = {
    "runs": table_runs,
    "thesis_6_6": table_thesis_6_6,
    "reproduction": table_reproduction,
    "cascade": table_cascade,
    "specbench": table_specbench,
}
TABLE_HEADINGS = {"runs": "Runs", "thesis_6_6": "Entropy Drafting thesis, Table 6.6",
                  "reproduction": "Paper reproduction", "cascade": "Cascade speculative drafting",
                  "specbench": "Spec-Bench style"}


def render(df: pd.DataFrame, name: str, fmt: str = "md", samples: pd.DataFrame | None = None) -> str:
    """Table `name` of the runs `df` (and their per-sample rows, for selection on split halves)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    sections = TABLES[name](df, samples)
    if fmt in ("md", "markdown"):
        return render_markdown(sections, TABLE_HEADINGS[name])
    if fmt in ("latex", "tex"):
        return render_latex(sections, TABLE_HEADINGS[name])
    raise ValueError(f"unknown format {fmt!r}: md or latex")

