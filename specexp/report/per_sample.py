"""The per-sample table (`processed_data.csv`): one row per ok run x sample, with the sample's
tokens and seconds on both sides, its per-token speedup, whether the outputs match, its drafts and
its quality scores. The run table it joins to is specexp.report.collect_runs's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from specexp.dotted_keys import value_at
from specexp.report.collect_runs import _missing

QUALITY_SAMPLE_KEYS = ("passed", "correct", "rouge1", "rouge2", "rougeL")  # per-sample scores the tasks write


def _per_sample_quality(q: dict | None) -> dict[str, dict]:
    """{sample id: {key: value}} of a task's `per_sample` scores (bools and numbers only)."""
    out = {}
    for r in (q or {}).get("per_sample") or []:
        out[str(r.get("id"))] = {k: r[k] for k in QUALITY_SAMPLE_KEYS
                                 if k in r and isinstance(r[k], (bool, int, float)) and r[k] is not None}
    return out


def collect_samples(runs: list[tuple[Path, dict]], df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok run x sample: the run's identity (run_dir, job, method, strategy, dataset,
    sampling), the sample's id and category, its tokens and seconds (median of the repeats) on
    the strategy side and the baseline side, seconds per token, the per-sample per-token speedup,
    whether the outputs are identical, drafted / accepted tokens, the repeats' spread, and the
    per-sample quality (`quality.<key>`, `quality_baseline.<key>`)."""
    ident = df.set_index("run_dir") if not df.empty else df
    rows = []
    for p, m in runs:
        if m.get("status") != "ok":
            continue
        rd = str(p.parent)
        info = ident.loc[rd] if rd in ident.index else {}
        q, qb = _per_sample_quality(m.get("quality")), _per_sample_quality(m.get("quality_baseline"))
        for s in m.get("samples") or []:
            sid = str(s.get("id"))
            t, n = s.get("wall_time_s"), s.get("new_tokens")
            bt, bn = s.get("baseline_wall_time_s"), s.get("baseline_new_tokens")
            row = {"run_dir": rd, **{k: _val(info, k) for k in ("job", "method", "strategy", "model_pair", "dataset",
                                                               "sampling", "seed", "max_new_tokens")},
                   "sample": sid, "category": s.get("category"), "new_tokens": n, "wall_time_s": t,
                   "s_per_token": t / n if t and n else None,
                   "baseline_new_tokens": bn, "baseline_wall_time_s": bt,
                   "baseline_s_per_token": bt / bn if bt and bn else None,
                   "speedup_per_token": (bt / bn) / (t / n) if t and n and bt and bn else None,
                   "matches_baseline": s.get("matches_baseline"),
                   "drafted": s.get("drafted"), "accepted": s.get("accepted"),
                   "acceptance_rate": s["accepted"] / s["drafted"] if s.get("drafted") else None,
                   "repeat_spread": value_at(s, "repeats.spread"),
                   "baseline_repeat_spread": value_at(s, "baseline_repeats.spread")}
            row.update({f"quality.{k}": v for k, v in q.get(sid, {}).items()})
            row.update({f"quality_baseline.{k}": v for k, v in qb.get(sid, {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _val(info, k):
    try:
        v = info[k]
    except (KeyError, TypeError):
        return None
    return None if _missing(v) else v


def ms_per_token(tokens: pd.Series, seconds: pd.Series) -> float | None:
    """Milliseconds per generated token over the samples: total seconds / total tokens (a ratio of
    totals, not a mean of per-sample ratios); None with no tokens."""
    n = tokens.sum()
    return 1000.0 * seconds.sum() / n if n else None


def selection_score(rows: pd.DataFrame) -> float:
    """How a best run is chosen among several (the fastest fixed gamma, a column's best
    hyperparameters); lower is better. Minus the run's speedup over its own interleaved baseline
    (throughput ratio) when every row has one: raw ms/token of runs that ran one after the other
    rewards the run that met a quiet machine. Else its ms/token."""
    if len(rows) and rows["baseline_wall_time_s"].notna().all() and rows["baseline_new_tokens"].notna().all():
        return -float((rows["new_tokens"].sum() / rows["wall_time_s"].sum())
                      / (rows["baseline_new_tokens"].sum() / rows["baseline_wall_time_s"].sum()))
    ms = ms_per_token(rows["new_tokens"], rows["wall_time_s"])
    return float("inf") if ms is None else ms
