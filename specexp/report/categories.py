"""Per-category breakdown of a run's aggregates (Spec-Bench reports speed per category), as
specexp-report reads it. The run writes it (specexp.experiment.metrics_json.categories):
metrics.json["categories"][<category>] holds, over that category's samples only,
  n_samples, new_tokens, tokens_per_second, acceptance_rate, mean_accepted_length (tokens per target forward),
  baseline_tokens_per_second and speedup (the same estimators as the run's, with the throughput
  ratio's t interval on the log scale, paired bootstrap standard error: metrics_json.speedup /
  specexp.stats), when the run has a baseline,
  quality: the mean of each numeric per-sample score, when the task scores per sample.
Categories appear in order of first appearance; samples without a category are left out. A run
whose samples have no category gets no breakdown (None).

Here: `columns` adds category.<name>.<key> columns to a run's row, and
`specbench_sections` lays them out as Spec-Bench does (`--table specbench`): one column per
category (the throughput ratio with its CI), the overall one, and the mean accepted tokens."""
from __future__ import annotations

import math


def columns(m: dict) -> dict:
    """A run's breakdown as table columns: category.<name>.speedup (throughput ratio),
    .speedup_ci_low, .speedup_ci_high, .tokens_per_second, .acceptance_rate, .mean_accepted_length."""
    out = {}
    for cat, c in (m.get("categories") or {}).items():
        sp = c.get("speedup") or {}
        for k, v in (("speedup", sp.get("throughput_ratio")), ("speedup_ci_low", sp.get("ci_low")),
                     ("speedup_ci_high", sp.get("ci_high")), ("tokens_per_second", c.get("tokens_per_second")),
                     ("acceptance_rate", c.get("acceptance_rate")),
                     ("mean_accepted_length", c.get("mean_accepted_length"))):
            out[f"category.{cat}.{k}"] = v
    return out


def _num(r, key: str) -> float | None:
    v = r.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def specbench_sections(df) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, columns, rows, notes) per model pair / sampling / dataset whose ok runs have
    categories: a row per run (its method), a column per category with its speedup and 95% CI,
    the overall speedup and CI, and the overall mean accepted tokens per target forward."""
    from specexp.stats import format_ratio

    cats = list(dict.fromkeys(c[len("category."):-len(".speedup")] for c in df.columns
                              if c.startswith("category.") and c.endswith(".speedup")))
    out = []
    ok = df[df["status"] == "ok"]
    for keys, g in ok.groupby(["model_pair", "sampling", "dataset"], sort=True, dropna=False):
        here = [c for c in cats if g[f"category.{c}.speedup"].notna().any()]
        if not here:
            continue
        rows = []
        for _, r in g.sort_values("method").iterrows():
            rows.append([str(r["method"])]
                        + [format_ratio(_num(r, f"category.{c}.speedup"), _num(r, f"category.{c}.speedup_ci_low"),
                                        _num(r, f"category.{c}.speedup_ci_high")) for c in here]
                        + [format_ratio(_num(r, "speedup"), _num(r, "speedup_ci_low"), _num(r, "speedup_ci_high")),
                           "n/a" if _num(r, "mean_accepted_length") is None else f"{r['mean_accepted_length']:.2f}"])
        out.append((f"Spec-Bench: {keys[2]}, pair {keys[0]}, {keys[1]}", ["Method", *here, "Overall", "Mean accepted tokens"],
                    rows, ["Each category and Overall: speedup as the throughput ratio (strategy tokens/s over "
                           "autoregressive tokens/s on the same samples) with its 95% CI over the samples: a t "
                           "interval on the log scale with the paired bootstrap standard error (no CI below 2 "
                           "samples). Mean accepted tokens: tokens emitted per target forward, over all samples."]))
    return out
