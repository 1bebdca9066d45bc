"""Plots of a report (PNG, matplotlib's Agg backend, no display needed):

  speedup_vs_threshold.png  speedup (throughput ratio, 95% CI band, n samples) (top) and
                            acceptance rate (bottom) against each strategy's swept parameter, one
                            panel column per strategy, a line per sampling setting (and per value
                            of a second swept parameter)
  acceptance_by_entropy.png acceptance rate of drafted tokens per drafter-entropy bin with 95%
                            Wilson intervals (top) and the number of drafted tokens in each bin
                            (bottom), a line per method; empty bins are not drawn; from the runs'
                            `analysis` (records=true), else their `draft_records`
  draft_length_hist.png     share of drafting rounds by draft length, a panel for every run; from
                            `analysis.draft_length`, else the samples' `draft_lengths`

  speedup_by_run.png        every run's speedup (throughput ratio) with its 95% CI, n samples

Imports go one way: report -> plots -> collect (never back).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from specexp.dotted_keys import value_at  # noqa: E402
from specexp.report.collect_runs import _NOT_PARAMS, _THRESHOLD_KEYS  # noqa: E402

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
                     "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})

MAX_PANELS = 12


def _swept_params(g: pd.DataFrame) -> list[str]:
    """The numeric strategy parameters that vary among these runs, threshold-like ones first."""
    cols = [c for c in g.columns if c.startswith("param.") and c[6:] not in _NOT_PARAMS]
    varying = []
    for c in cols:
        vals = pd.to_numeric(g[c], errors="coerce").dropna()
        if vals.nunique() > 1 and len(vals) == g[c].notna().sum():
            varying.append(c[6:])
    order = {k: i for i, k in enumerate(_THRESHOLD_KEYS)}
    return sorted(varying, key=lambda k: (order.get(k, len(order)), k))


def _num_text(v: str) -> str:
    """'7.0' -> '7' (a parameter column holding NaN for other strategies is float)."""
    try:
        f = float(v)
    except ValueError:
        return v
    return f"{f:g}"


LINE_KEYS = ("model_pair", "dataset", "seed", "batch_size", "max_new_tokens", "sampling")  # never averaged over


def threshold_lines(g: pd.DataFrame, x: str, others: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """The lines of one strategy's threshold panel: one per model pair / dataset / seed / batch /
    budget / sampling (those that vary) and value of every other swept parameter, so no point
    averages runs of different settings. Each line: (label, a frame indexed by the swept value
    with speedup, ci_low, ci_high, acceptance_rate, n, runs). Where several runs share a point
    (the same configuration run again) the point is their mean speedup and has no CI (a mean of
    CI bounds is not a CI); the label says so."""
    keys = [k for k in LINE_KEYS if k in g and (k == "sampling" or g[k].astype(str).nunique() > 1)]
    keys += [f"param.{o}" for o in others]
    gg = g.assign(_x=pd.to_numeric(g[f"param.{x}"]))
    out = []
    for key, gl in gg.groupby([gg[k].astype(str) for k in keys], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k[6:]}={_num_text(v)}" if k.startswith("param.") else
                          (f"seed {v}" if k == "seed" else str(v)) for k, v in zip(keys, key))
        rows = []
        for xv, gp in gl.groupby("_x", sort=True):
            one = len(gp) == 1
            col = lambda c: (gp[c].mean() if c in gp and gp[c].notna().any() else None)  # noqa: E731
            rows.append({"x": xv, "speedup": col("speedup"), "ci_low": col("speedup_ci_low") if one else None,
                         "ci_high": col("speedup_ci_high") if one else None,
                         "acceptance_rate": col("acceptance_rate"), "n": col("n_samples"), "runs": len(gp)})
        pts = pd.DataFrame(rows).set_index("x").astype(float)
        if (pts["runs"] > 1).any():
            label += f" (mean of up to {int(pts['runs'].max())} runs per point, no CI)"
        out.append((label, pts))
    return out


def plot_threshold(df: pd.DataFrame, out: Path) -> Path | None:
    ok = df[(df["status"] == "ok") & df["strategy"].notna()]
    panels = []
    for strat, g in ok.groupby("strategy", sort=True):
        swept = _swept_params(g)
        if swept:
            panels.append((strat, swept[0], swept[1:], g))
    if not panels:
        return None
    n_all, panels = len(panels), panels[:MAX_PANELS]
    fig, axes = plt.subplots(2, len(panels), figsize=(max(6.0, 4.4 * len(panels)), 6.4), squeeze=False,
                             sharex="col")
    for j, (strat, x, others, g) in enumerate(panels):
        for label, pts in threshold_lines(g, x, others):
            n = int(pts["n"].max()) if pts["n"].notna().any() else None
            if pts["speedup"].notna().any():
                line = axes[0][j].plot(pts.index, pts["speedup"], marker="o", label=label + (f" (n={n})" if n else ""))
                band = pts.dropna(subset=["ci_low", "ci_high"])
                if not band.empty:  # one run per point: its own CI (never a mean of CI bounds)
                    axes[0][j].fill_between(band.index, band["ci_low"], band["ci_high"], color=line[0].get_color(),
                                            alpha=0.2, lw=0)
            if pts["acceptance_rate"].notna().any():
                axes[1][j].plot(pts.index, pts["acceptance_rate"], marker="o", label=label)
        gg = g.assign(_x=pd.to_numeric(g[f"param.{x}"]))
        axes[0][j].set_title(f"{strat}: {x} swept")
        axes[0][j].axhline(1.0, color="grey", lw=0.8, ls="--")
        axes[0][j].set_ylabel("speedup: throughput ratio (x), 95% CI")
        axes[1][j].set_ylabel("acceptance rate")
        axes[1][j].set_ylim(0, 1.02)
        axes[1][j].set_xlabel(x)
        if (gg["_x"].dropna() % 1 == 0).all():
            axes[1][j].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][j].legend(loc="best")
    fig.suptitle("Speedup and acceptance against the swept threshold"
                 + (f" (first {len(panels)} of {n_all} strategies)" if n_all > len(panels) else ""))
    return _save(fig, out / "speedup_vs_threshold.png")


def _entropy_bins(m: dict) -> dict | None:
    """{edges, n, accepted} from analysis.acceptance_by_entropy, else binned from draft_records."""
    a = value_at(m, "analysis.acceptance_by_entropy")
    if isinstance(a, dict) and a.get("edges") and a.get("n") is not None:
        return {"edges": list(a["edges"]), "n": list(a["n"]), "accepted": list(a.get("accepted") or [])}
    recs = m.get("draft_records")
    if not recs:
        return None
    bins, lo, hi = 20, 0.0, 5.0
    width = (hi - lo) / bins
    n, acc = [0] * bins, [0] * bins
    for r in recs:
        h = r.get("drafter_entropy")
        if h is None or (isinstance(h, float) and math.isnan(h)):
            continue
        b = min(bins - 1, max(0, int((h - lo) // width)))
        n[b] += 1
        acc[b] += bool(r.get("accepted"))
    return {"edges": [lo + i * width for i in range(bins + 1)], "n": n, "accepted": acc}


def _labels(df: pd.DataFrame, head) -> dict[str, str]:
    """run_dir -> head(run), plus the sampling / dataset / model pair when those differ between runs."""
    ok = df[df["status"] == "ok"]
    extra = [c for c in ("sampling", "dataset", "model_pair") if ok[c].astype(str).nunique() > 1]
    out = {}
    for _, r in df.iterrows():
        parts = [str(r[c]) for c in extra if not pd.isna(r[c])]
        out[r["run_dir"]] = head(r) + (f" [{', '.join(parts)}]" if parts else "")
    return out


def run_labels(df: pd.DataFrame) -> dict[str, str]:
    """run_dir -> method, plus the sampling / dataset / model pair when those differ between runs."""
    return _labels(df, lambda r: str(r["method"]))


def coarse_labels(df: pd.DataFrame, runs: list[tuple[Path, dict]], most: int = 6) -> dict[str, str]:
    """run_labels, pooled to strategy [+ sampling...] when that would draw more than `most` lines
    (acceptance by entropy depends on the pair and sampling far more than on a threshold)."""
    fine = run_labels(df)
    used = {fine.get(str(p.parent)) for p, m in runs if m.get("status") == "ok"}
    if len(used) <= most:
        return fine
    return _labels(df, lambda r: f"{r['strategy']} (all settings)")


def plot_entropy(df: pd.DataFrame, runs: list[tuple[Path, dict]], out: Path) -> Path | None:
    label = coarse_labels(df, runs)
    per_method: dict[str, dict] = {}
    for p, m in runs:
        if m.get("status") != "ok":
            continue
        b = _entropy_bins(m)
        if not b or not sum(b["n"]):
            continue
        key = str(label.get(str(p.parent), m.get("strategy")))
        cur = per_method.setdefault(key, {"edges": b["edges"], "n": [0] * len(b["n"]), "accepted": [0] * len(b["n"])})
        if len(cur["n"]) != len(b["n"]):
            continue
        cur["n"] = [x + y for x, y in zip(cur["n"], b["n"])]
        cur["accepted"] = [x + y for x, y in zip(cur["accepted"], b["accepted"] or [0] * len(b["n"]))]
    if not per_method:
        return None
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.set_prop_cycle(color=plt.get_cmap("tab10").colors)
    for key, b in sorted(per_method.items())[:MAX_PANELS]:
        e = b["edges"]
        centers = [(e[i] + e[i + 1]) / 2 for i in range(len(b["n"]))]
        pts = [(c, a, n) for c, a, n in zip(centers, b["accepted"], b["n"]) if n]  # empty bins are not drawn
        xs = [c for c, _, _ in pts]
        lo, hi = proportion_confint([a for _, a, _ in pts], [n for _, _, n in pts], alpha=0.05, method="wilson")
        total = sum(b["n"])
        line = ax.plot(xs, [a / n for _, a, n in pts], marker="o", label=f"{key} ({total} tokens)")
        ax.fill_between(xs, lo, hi, color=line[0].get_color(), alpha=0.15, lw=0)
        axn.plot(xs, [n for _, _, n in pts], marker=".", color=line[0].get_color())
    ax.set_ylabel("acceptance rate of drafted tokens\n(95% Wilson interval)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Acceptance by drafter entropy")
    ax.legend(loc="best")
    axn.set_ylabel("drafted tokens in bin (n)")
    axn.set_yscale("log")
    axn.set_xlabel("drafter entropy (nats, bin centre; last bin includes higher)")
    return _save(fig, out / "acceptance_by_entropy.png")


def _draft_hist(m: dict) -> list[int] | None:
    h = value_at(m, "analysis.draft_length.histogram")
    if isinstance(h, list) and sum(h):
        return [int(x) for x in h]
    lengths = [int(k) for s in (m.get("samples") or []) for k in (s.get("draft_lengths") or [])]
    if not lengths:
        return None
    hist = [0] * (max(lengths) + 1)
    for k in lengths:
        hist[k] += 1
    return hist


def plot_draft_lengths(df: pd.DataFrame, runs: list[tuple[Path, dict]], out: Path) -> Path | None:
    """A panel for every ok run that drafted (never "the first k")."""
    label = run_labels(df)
    job = dict(zip(df["run_dir"], df["job"]))
    per_run: dict[str, list[int]] = {}
    for p, m in runs:
        if m.get("status") != "ok" or m.get("strategy") == "autoregressive":
            continue
        h = _draft_hist(m)
        if not h:
            continue
        key = _job_prefix(job.get(str(p.parent))) + str(label.get(str(p.parent), m.get("strategy")))
        per_run[key] = h
    if not per_run:
        return None
    items = sorted(per_run.items())
    ncol = min(4, len(items))
    nrow = math.ceil(len(items) / ncol)
    kmax = max(len(h) for _, h in items)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False, sharex=True, sharey=True)
    for ax, (key, h) in zip(axes.flat, items):
        total = sum(h)
        mean = sum(i * x for i, x in enumerate(h)) / total
        ax.bar(range(len(h)), [x / total for x in h], width=0.8)
        ax.axvline(mean, color="black", lw=1, ls="--")
        title = key if len(key) <= 40 else key[:37] + "..."
        ax.set_title(f"{title}\nmean {mean:.2f} over {total} rounds (dashed)", fontsize=9)
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    for col in range(ncol):  # the lowest visible panel of each column carries the x axis
        lowest = max(r for r in range(nrow) if r * ncol + col < len(items))
        axes[lowest][col].tick_params(labelbottom=True)
        axes[lowest][col].set_xlabel("draft length (tokens drafted in a round)")
    for row in axes:
        row[0].set_ylabel("share of rounds")
    axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_xlim(-0.6, kmax - 0.4)
    fig.suptitle(f"Draft-length histograms ({len(items)} runs)")
    return _save(fig, out / "draft_length_hist.png")


def plot_speedups(df: pd.DataFrame, out: Path) -> Path | None:
    """Every run's speedup (throughput ratio) with its 95% CI as an error bar, n in the label."""
    ok = df[(df["status"] == "ok") & df["speedup"].notna() & (df["strategy"] != "autoregressive")]
    if ok.empty:
        return None
    ok = ok.sort_values(["job", "run_dir"], na_position="last")
    labels = run_labels(df)
    y = list(range(len(ok)))[::-1]
    lo = (ok["speedup"] - ok["speedup_ci_low"].fillna(ok["speedup"])).clip(lower=0)
    hi = (ok["speedup_ci_high"].fillna(ok["speedup"]) - ok["speedup"]).clip(lower=0)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(ok)))
    ax.errorbar(ok["speedup"], y, xerr=[lo, hi], fmt="o", capsize=4)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, [f"{_job_prefix(r.get('job'))}{labels.get(r['run_dir'], r['method'])} (n={r['n_samples']:.0f})"
                      for _, r in ok.iterrows()])
    ax.set_xlabel("speedup: throughput ratio vs the autoregressive baseline (x), 95% CI")
    ax.set_title("Speedup per run")
    return _save(fig, out / "speedup_by_run.png")


def _job_prefix(j) -> str:
    """"#3 " for job number 3; "" for a run outside a sweep."""
    return f"#{j:g} " if isinstance(j, (int, float)) and not pd.isna(j) else ""


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(df: pd.DataFrame, runs: list[tuple[Path, dict]], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if df.empty:
        return []
    made = [plot_speedups(df, out), plot_threshold(df, out), plot_entropy(df, runs, out),
            plot_draft_lengths(df, runs, out)]
    return [p for p in made if p is not None]
