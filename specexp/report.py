"""`specexp-report`: collect every metrics.json under sweep / run dirs into one table, join each
speculative run to its autoregressive baseline, and print the papers' tables and plots.

    specexp-report outputs/multirun/2025-01-01/12-00-00            # runs.csv + runs.parquet, runs table
    specexp-report SWEEP_DIR --table thesis_6_6 --format latex      # a named layout (see TABLES)
    specexp-report SWEEP_A SWEEP_B --table all --plots -o report/   # several sweeps, all tables, PNGs
    python -m specexp.report ...                                    # the same

One row per metrics.json (ok and failed runs alike). Columns (docs/reports.md has the full list):
identity (run_dir, job, status, error, method, strategy, model_pair, target, drafter, dataset,
sampling, max_new_tokens, samples_key), the strategy's parameters (`param.<key>`), each run's
Hydra overrides (`override.<key>`), speed and acceptance (tokens_per_second, ms_per_token,
latency_ms_p50..., acceptance_rate, mean_accepted_length, draft_length_mean, forwards), quality
(`quality.<key>`, `quality_baseline.<key>`), the baseline join (baseline_tokens_per_second,
baseline_ms_per_token, speedup, speedup_mean, speedup_source) and, when a run carries them, the
cost-model speedups (`cost_speedup.params|previous_work|measured`).

Speedup: the per-sample wall-time ratio autoregressive / strategy, median over samples. Its
source, in `speedup_source`: "paired" (the run decoded every sample autoregressively too,
`baseline=true`, alternating per sample: preferred), "ar_run:<dir>" (a separate
`strategy=autoregressive` run of the same model pair, dataset version, samples, token budget and
sampling settings), "self" (an autoregressive run: 1.0), or empty (no baseline found).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

log = logging.getLogger("specexp.report")

# Strategy parameters that are plumbing, not hyperparameters (never in a method label).
_NOT_PARAMS = {"name", "proposer", "length", "keep_trigger", "entropy_type", "renyi_alpha",
               "entropy_top_k", "entropy_temperature"}
# Which parameter of a strategy is "the threshold" on a plot's x axis, in order of preference.
_THRESHOLD_KEYS = ("tau", "tau_cum", "m", "theta_abs", "theta_rel", "threshold", "lambda_", "lam",
                   "initial_lambda", "lenience", "gamma", "window", "last_n", "start", "max_len")
QUALITY_ORDER = ("rouge1", "pass@1", "accuracy", "rouge2", "rougeL", "exact_match", "perplexity")
QUALITY_LABEL = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "pass@1": "pass@1",
                 "accuracy": "Accuracy", "exact_match": "Exact match", "perplexity": "Perplexity"}
_PERCENT_QUALITY = {"pass@1", "accuracy", "exact_match"}


# --------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------

def find_metrics(paths: Iterable[str | Path], name: str = "metrics.json") -> list[Path]:
    """Every `name` file under the given dirs (recursively; a file path is taken as is)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(q for q in p.rglob(name) if ".submitit" not in q.parts)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return sorted(dict.fromkeys(q.resolve() for q in found))


def load_runs(paths: Iterable[str | Path]) -> list[tuple[Path, dict]]:
    """(path, parsed metrics.json) for every metrics.json found; unreadable files become failed runs."""
    out = []
    for p in find_metrics(paths):
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            m = {"status": "failed", "error": f"unreadable metrics.json: {type(err).__name__}: {err}"}
        out.append((p, m))
    return out


def _get(d: Any, dotted: str, default: Any = None) -> Any:
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def _parse_value(text: str) -> Any:
    import yaml

    try:
        v = yaml.safe_load(text)
    except Exception:
        return text
    return v if _scalar(v) else text


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """["strategy.gamma=4", "+experiment=x", "sampling=greedy"] -> {"strategy.gamma": 4, ...}"""
    out = {}
    for o in overrides or []:
        key, sep, val = str(o).partition("=")
        if not sep:
            continue
        out[key.lstrip("+~")] = _parse_value(val)
    return out


def _hydra_info(run_dir: Path) -> dict:
    """Job number and group choices from the run's .hydra/hydra.yaml (absent: {})."""
    f = run_dir / ".hydra" / "hydra.yaml"
    if not f.exists():
        return {}
    import yaml

    try:
        h = (yaml.safe_load(f.read_text()) or {}).get("hydra", {})
    except Exception:
        return {}
    return {"job": _get(h, "job.num"), "choices": _get(h, "runtime.choices", {}) or {}}


def sampling_label(s: dict | None) -> str | None:
    if not s:
        return None
    t = s.get("temperature")
    if t is None:
        return None
    if float(t) == 0.0:
        return "greedy"
    parts = [f"T={float(t):g}"]
    if s.get("top_k"):
        parts.append(f"top_k={s['top_k']}")
    if s.get("top_p") is not None and float(s["top_p"]) < 1.0:
        parts.append(f"top_p={float(s['top_p']):g}")
    return ", ".join(parts)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def _first_line(text: str | None, limit: int = 300) -> str | None:
    if _missing(text) or not text:
        return None
    one = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _ms(tps):
    return 1000.0 / tps if isinstance(tps, (int, float)) and tps > 0 else None


def flatten(path: Path, m: dict) -> tuple[dict, dict]:
    """One table row for a run, and the run's per-sample wall times {sample id: seconds}
    (for joining to a separate autoregressive run)."""
    cfg = m.get("config") or {}
    hinfo = _hydra_info(path.parent)
    choices = hinfo.get("choices", {})
    job = hinfo.get("job")
    if job is None and path.parent.name.isdigit():
        job = int(path.parent.name)
    samples = m.get("samples") or []
    ids = [str(s.get("id")) for s in samples]
    row: dict[str, Any] = {
        "run_dir": str(path.parent),
        "job": job,
        "status": m.get("status", "unknown"),
        "error": _first_line(m.get("error")),
        "started_at": m.get("started_at"),
        "strategy": m.get("strategy") or _get(cfg, "strategy.name") or choices.get("strategy"),
        "model_pair": _get(m, "model_pair.name") or _get(cfg, "model_pair.name"),
        "target": _get(m, "model_pair.target") or _get(cfg, "model_pair.target.name"),
        "drafter": _get(m, "model_pair.drafter") or _get(cfg, "model_pair.drafter.name"),
        "dataset": _get(m, "dataset.name") or choices.get("dataset"),
        "dataset_version": _get(m, "dataset.version"),
        "n_samples": _get(m, "dataset.n_samples"),
        "max_new_tokens": _get(cfg, "dataset.max_new_tokens"),
        "samples_key": hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10] if ids else None,
        "sampling": sampling_label(m.get("sampling") or cfg.get("sampling")),
        "temperature": _get(m, "sampling.temperature", _get(cfg, "sampling.temperature")),
        "top_k": _get(m, "sampling.top_k", _get(cfg, "sampling.top_k")),
        "top_p": _get(m, "sampling.top_p", _get(cfg, "sampling.top_p")),
        "seed": cfg.get("seed"),
        "experiment": choices.get("experiment"),
    }
    for k, v in (cfg.get("strategy") or {}).items():
        if k in ("name", "proposer", "length") or (isinstance(v, str) and "${" in v):
            continue
        if _scalar(v):
            row[f"param.{k}"] = v
        elif isinstance(v, (list, dict)):  # e.g. a cascade's k_matrix: compact JSON text
            row[f"param.{k}"] = json.dumps(v, separators=(",", ":"))
    for k, v in parse_overrides(m.get("overrides") or []).items():
        row[f"override.{k}"] = v
    row.update({
        "tokens_per_second": m.get("tokens_per_second"),
        "ms_per_token": _ms(m.get("tokens_per_second")),
        "latency_ms_mean": _get(m, "latency_ms_per_token.mean"),
        "latency_ms_p50": _get(m, "latency_ms_per_token.p50"),
        "latency_ms_p90": _get(m, "latency_ms_per_token.p90"),
        "latency_ms_p99": _get(m, "latency_ms_per_token.p99"),
        "time_per_sample_s_p50": _get(m, "time_per_sample_s.p50"),
        "acceptance_rate": m.get("acceptance_rate"),
        "mean_accepted_length": m.get("mean_accepted_length"),
        "draft_length_mean": m.get("draft_length_mean"),
        "new_tokens": m.get("new_tokens"),
        "wall_time_s": m.get("wall_time_s"),
        "target_forwards": m.get("target_forwards"),
        "drafter_forwards": m.get("drafter_forwards"),
        "n_matches_baseline": m.get("n_matches_baseline"),
        "all_match_baseline": m.get("all_match_baseline"),
        "baseline_tokens_per_second": _get(m, "baseline.tokens_per_second"),
        "baseline_ms_per_token": _ms(_get(m, "baseline.tokens_per_second")),
        "speedup": _get(m, "speedup.median"),
        "speedup_mean": _get(m, "speedup.mean"),
        "speedup_source": "paired" if _get(m, "speedup.median") is not None else None,
    })
    for prefix, q in (("quality", m.get("quality")), ("quality_baseline", m.get("quality_baseline"))):
        for k, v in (q or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"{prefix}.{k}"] = v
    cms = m.get("cost_model_speedup")
    if isinstance(cms, dict):
        for k, v in cms.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"cost_speedup.{k}"] = v
    env = m.get("environment") or {}
    row.update({"device_name": env.get("device_name"), "torch": env.get("torch"),
                "transformers": env.get("transformers"), "specexp": env.get("specexp")})
    times = {str(s.get("id")): s.get("wall_time_s") for s in samples if s.get("wall_time_s")}
    return row, times


def _is_ar(row) -> bool:
    return row.get("strategy") == "autoregressive"


_JOIN_KEYS = ("model_pair", "target", "dataset", "dataset_version", "samples_key", "max_new_tokens", "sampling")


def join_baselines(df: pd.DataFrame, times: list[dict]) -> pd.DataFrame:
    """Fill speedup for runs without a paired baseline from a separate autoregressive run with
    the same model pair, dataset (version), samples, token budget and sampling settings."""
    if df.empty:
        return df
    ok = df["status"] == "ok"
    ar_index: dict[tuple, list[int]] = {}
    for i in df.index[ok]:
        if _is_ar(df.loc[i]):
            ar_index.setdefault(tuple(df.loc[i, k] for k in _JOIN_KEYS), []).append(i)
    for i in df.index[ok]:
        row = df.loc[i]
        if _is_ar(row):
            df.loc[i, ["speedup", "speedup_mean", "speedup_source"]] = [1.0, 1.0, "self"]
            if pd.isna(row["baseline_tokens_per_second"]):
                df.loc[i, "baseline_tokens_per_second"] = row["tokens_per_second"]
                df.loc[i, "baseline_ms_per_token"] = row["ms_per_token"]
            continue
        if isinstance(row["speedup_source"], str) and row["speedup_source"]:
            continue
        for j in ar_index.get(tuple(row[k] for k in _JOIN_KEYS), []):
            mine, theirs = times[i], times[j]
            if not mine or set(mine) != set(theirs):
                continue
            ratios = [theirs[s] / mine[s] for s in mine if mine[s] > 0]
            if not ratios:
                continue
            df.loc[i, "speedup"] = statistics.median(ratios)
            df.loc[i, "speedup_mean"] = statistics.fmean(ratios)
            df.loc[i, "speedup_source"] = f"ar_run:{df.loc[j, 'run_dir']}"
            df.loc[i, "baseline_tokens_per_second"] = df.loc[j, "tokens_per_second"]
            df.loc[i, "baseline_ms_per_token"] = df.loc[j, "ms_per_token"]
            for c in df.columns:
                if c.startswith("quality.") and pd.isna(df.loc[i].get("quality_baseline." + c[8:], math.nan)):
                    df.loc[i, "quality_baseline." + c[8:]] = df.loc[j, c]
            break
    return df


def _method_labels(df: pd.DataFrame) -> pd.Series:
    """strategy + the parameters that vary among that strategy's runs, e.g. "entropy_static (tau=2.25)"."""
    labels = pd.Series(df["strategy"].fillna("?").astype(str), index=df.index)
    pcols = [c for c in df.columns if c.startswith("param.") and c[6:] not in _NOT_PARAMS]
    for strat, idx in df.groupby(df["strategy"].fillna("?")).groups.items():
        sub = df.loc[idx, pcols]
        varying = [c for c in pcols if sub[c].dropna().astype(str).nunique() > 1]
        for i in idx:
            parts = [f"{c[6:]}={_fmt_param(df.loc[i, c])}" for c in varying if not pd.isna(df.loc[i, c])]
            if parts:
                labels[i] = f"{strat} ({', '.join(parts)})"
    return labels


def _fmt_param(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def collect(paths: Iterable[str | Path], runs: list[tuple[Path, dict]] | None = None) -> pd.DataFrame:
    """The table of every run under `paths` (see the module docstring for the columns)."""
    runs = load_runs(paths) if runs is None else runs
    rows, times = [], []
    for p, m in runs:
        r, t = flatten(p, m)
        rows.append(r)
        times.append(t)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = join_baselines(df, times)
    df.insert(3, "method", _method_labels(df))
    return df


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix types (an override that is 4 in one run and 'null' in another) as text."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            kinds = {type(v) for v in out[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool}):
                out[c] = out[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return out


def write_table(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """runs.csv and runs.parquet in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, pq = out_dir / "runs.csv", out_dir / "runs.parquet"
    df.to_csv(csv, index=False)
    _arrow_safe(df).to_parquet(pq, index=False)
    return csv, pq


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

class Section:
    """One printed table: a title, column names, rows of strings, notes under it."""

    def __init__(self, title: str, columns: list[str], rows: list[list[str]], notes: list[str] | None = None):
        self.title, self.columns, self.rows, self.notes = title, columns, rows, notes or []


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _numeric_col(rows: list[list[str]], i: int) -> bool:
    """Right-align a column when most of its filled cells are numbers (1.84x and 32% count)."""
    vals = [str(r[i]).rstrip("x%").strip() for r in rows if i < len(r) and str(r[i]) not in ("", "–", "NIL")]
    if not vals:
        return True

    def num(v: str) -> bool:
        try:
            float(v)
            return True
        except ValueError:
            return False

    return sum(map(num, vals)) * 2 > len(vals)


def render_markdown(sections: list[Section], heading: str) -> str:
    out = [f"## {heading}", ""]
    for s in sections:
        if s.title:
            out += [f"### {s.title}", ""]
        out.append("| " + " | ".join(_md_cell(c) for c in s.columns) + " |")
        out.append("|" + "|".join("---:" if _numeric_col(s.rows, i) else "---" for i in range(len(s.columns))) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in s.rows]
        out += [""] + [f"{n}  " for n in s.notes] + ([""] if s.notes else [])
    return "\n".join(out).rstrip() + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESC.get(ch, ch) for ch in str(s)).replace("τ", r"$\tau$").replace("γ", r"$\gamma$")


def render_latex(sections: list[Section], heading: str) -> str:
    out = [f"% {heading} -- generated by specexp-report (needs \\usepackage{{booktabs}})"]
    for s in sections:
        spec = "".join("r" if _numeric_col(s.rows, i) else "l" for i in range(len(s.columns)))
        out += [r"\begin{table}[ht]", r"\centering", r"\small"]
        if s.title:
            out.append(r"\caption{" + latex_escape(s.title) + "}")
        out += [r"\begin{tabular}{" + spec + "}", r"\toprule",
                " & ".join(r"\textbf{" + latex_escape(c) + "}" for c in s.columns) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in s.rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        for n in s.notes:
            out.append(r"\par\footnotesize " + latex_escape(n))
        out += [r"\end{table}", ""]
    return "\n".join(out)


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
        parts.append(f"{n} {k}" if n in ("pair",) else str(k))
    return " / ".join(parts)


def _groups(df: pd.DataFrame, cols: list[str]):
    if df.empty:
        return []
    keyed = df.assign(**{c: df[c].astype(object).where(df[c].notna(), "–") for c in cols})
    return list(keyed.groupby(cols, sort=True, dropna=False))


# --------------------------------------------------------------------------------------------
# Named tables
# --------------------------------------------------------------------------------------------

def table_runs(df: pd.DataFrame) -> list[Section]:
    """Every run: job, status, method, sampling, dataset, tokens/s, acceptance, speedup (source)."""
    if df.empty:
        return [Section("", ["run"], [], ["no metrics.json found"])]
    rows = []
    for _, r in df.sort_values(["job", "run_dir"], na_position="last").iterrows():
        rows.append([
            _f(r.get("job"), "{:.0f}", "") if not isinstance(r.get("job"), str) else r.get("job"),
            r["status"], str(r["method"]), _s(r.get("sampling")), _s(r.get("dataset")),
            _f(r.get("tokens_per_second"), "{:.1f}"), _f(r.get("acceptance_rate"), "{:.3f}"),
            _f(r.get("mean_accepted_length")), _f(r.get("speedup"), "{:.2f}x"),
            "–" if _missing(r.get("speedup_source")) else str(r.get("speedup_source")).split(":")[0],
            _first_line(r.get("error"), 140) or "",
        ])
    n_fail = int((df["status"] != "ok").sum())
    return [Section("", ["job", "status", "method", "sampling", "dataset", "tok/s", "accept", "acc. len",
                         "speedup", "baseline", "error"], rows,
                    [f"{len(df)} runs, {len(df) - n_fail} ok, {n_fail} failed."])]


THESIS_COLUMNS = [("No drafter", "autoregressive", ()),
                  ("Heuristic", "heuristic", ("start",)),
                  ("Static", "entropy_static", ("tau",)),
                  ("MA", "entropy_ma", ("m", "last_n")),
                  ("Cumulative", "entropy_cum", ("tau_cum", "last_n"))]


def table_thesis_6_6(df: pd.DataFrame) -> list[Section]:
    """Entropy Drafting thesis, Table 6.6: ms per token of static, MA, cumulative, transformers'
    heuristic and no drafter, each at its best hyperparameters (lowest ms/token), per model
    pair / dataset / sampling; plus the speedup over no drafter."""
    ok = _ok(df)
    cols = ["Setting", "", *[c[0] for c in THESIS_COLUMNS]]
    rows, notes = [], []
    paired_used = False
    for keys, g in _groups(ok, ["model_pair", "dataset", "sampling"]):
        ms, params = {}, {}
        for label, strat, pkeys in THESIS_COLUMNS:
            sub = g[g["strategy"] == strat].dropna(subset=["ms_per_token"])
            if strat == "autoregressive" and sub.empty:
                base = g["baseline_ms_per_token"].dropna()
                if not base.empty:
                    ms[label], params[label], paired_used = float(base.median()), "paired†", True
                continue
            if sub.empty:
                continue
            best = sub.loc[sub["ms_per_token"].idxmin()]
            ms[label] = float(best["ms_per_token"])
            params[label] = ", ".join(f"{k}={_fmt_param(best[f'param.{k}'])}" for k in pkeys
                                      if f"param.{k}" in best and not pd.isna(best[f"param.{k}"])) or "–"
        if not ms:
            continue
        ar = ms.get("No drafter")
        title = _group_title(keys, ("pair", "dataset", "sampling"))
        rows.append([title, "ms/token", *[_f(ms.get(c[0])) for c in THESIS_COLUMNS]])
        rows.append(["", "vs. no drafter", *[_f(ar / ms[c[0]] if ar and c[0] in ms else None, "{:.2f}x")
                                             for c in THESIS_COLUMNS]])
        rows.append(["", "best", *[params.get(c[0], "–") for c in THESIS_COLUMNS]])
    notes.append("ms/token = wall time / generated tokens over all samples (1000 / tokens per second); "
                 "each strategy column at its hyperparameters with the lowest ms/token.")
    if paired_used:
        notes.append("† no separate strategy=autoregressive run: median of the runs' paired autoregressive baselines.")
    if not rows:
        notes.append("no ok runs of autoregressive / heuristic / entropy_static / entropy_ma / entropy_cum.")
    return [Section("Entropy Drafting, Table 6.6: ms per token at the best hyperparameters", cols, rows, notes)]


def _quality_key(g: pd.DataFrame) -> str | None:
    have = [c[8:] for c in g.columns if c.startswith("quality.") and g[c].notna().any()]
    for k in QUALITY_ORDER:
        if k in have:
            return k
    return have[0] if have else None


def _fmt_quality(k: str | None, v) -> str:
    if k in _PERCENT_QUALITY:
        return _pct(v)
    return _f(v, "{:.3f}")


def table_reproduction(df: pd.DataFrame) -> list[Section]:
    """The paper-reproduction table, per model pair / dataset: method, sampling, quality
    (ROUGE-1, pass@1 or accuracy), speedup, acceptance rate; the autoregressive row from the
    separate autoregressive run when there is one, else from the paired baselines."""
    ok = _ok(df)
    sections = []
    for keys, g in _groups(ok, ["model_pair", "dataset", "experiment"]):
        qk = _quality_key(g)
        qlabel = QUALITY_LABEL.get(qk, qk or "Quality")
        rows = []
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
                             _f(r.get("speedup"), "{:.2f}x"), _pct(r.get("acceptance_rate"))])
        n = g["n_samples"].dropna()
        title = (f"{keys[0]} on {keys[1]}" + (f" ({int(n.max())} samples)" if not n.empty else "")
                 + (f", experiment {keys[2]}" if keys[2] != "–" else ""))
        sections.append(Section(title, ["Method", "Sampling", qlabel, "Speedup", "Acceptance rate"], rows,
                                ["Speedup: median per-sample wall-time ratio against autoregressive decoding "
                                 "of the same samples."]))
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


def table_cascade(df: pd.DataFrame) -> list[Section]:
    """Cascade drafting: per method and dataset, the speedup under the model-parameter cost model,
    the previous-work cost model, the cost model with this run's measured per-forward times, and
    the wall-clock speedup (plus Leviathan et al.'s predicted speedup when runs carry it). Runs
    without `cost_model_speedup` (or with a null entry) show '–' there."""
    ok = _ok(df)
    ok = ok[ok["strategy"] != "autoregressive"] if not ok.empty else ok
    have_cost = any(c.startswith("cost_speedup.") and ok[c].notna().any() for c in ok.columns)
    kinds = [("cost_speedup.params", "params"), ("cost_speedup.previous_work", "prev. work"),
             ("cost_speedup.measured", "measured cost"), ("speedup", "wall-clock")]
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
                    v = gd[col].mean() if col in gd and gd[col].notna().any() else None
                    row.append(_f(v, "{:.2f}x"))
            rows.append(row)
    notes = ["Speedup over autoregressive decoding. params: standardized walltime improvement with each "
             "model's cost = its parameter count; prev. work: the cost ratios of earlier work (T5: xxl 1, "
             "large 0.11, base 0.04, small 0.02); measured cost: each model's measured time per forward in "
             "this run; wall-clock: the run's median per-sample time ratio."]
    if not have_cost:
        notes.append("No run carries cost_model_speedup (the cascade strategies write it): cost-model columns are empty.")
    return [Section("Cascade speculative drafting: speedup under cost models", cols, rows, notes)]


def table_specbench(df: pd.DataFrame) -> list[Section]:
    """Spec-Bench style, per model pair and sampling: for each strategy (row) and dataset (column
    pair), mean accepted length τ and speedup, then their mean over datasets."""
    ok = _ok(df)
    sections = []
    for keys, g in _groups(ok, ["model_pair", "sampling"]):
        datasets = sorted(g["dataset"].dropna().unique())
        cols = ["Method"] + [f"{d} {x}" for d in datasets for x in ("τ", "speedup")] + ["Mean τ", "Mean speedup"]
        rows = []
        for method, gm in g.groupby("method", sort=True):
            taus, sps, row = [], [], [method]
            for d in datasets:
                gd = gm[gm["dataset"] == d]
                tau = gd["mean_accepted_length"].mean() if gd["mean_accepted_length"].notna().any() else None
                sp = gd["speedup"].mean() if gd["speedup"].notna().any() else None
                row += [_f(tau), _f(sp, "{:.2f}x")]
                taus += [tau] if tau is not None else []
                sps += [sp] if sp is not None else []
            row += [_f(statistics.fmean(taus) if taus else None), _f(statistics.fmean(sps) if sps else None, "{:.2f}x")]
            rows.append(row)
        sections.append(Section(f"Spec-Bench style: {keys[0]}, {_samp_name(keys[1])}", cols, rows,
                                ["τ: mean accepted length (tokens per target forward); speedup against "
                                 "autoregressive decoding of the same samples."]))
    return sections or [Section("Spec-Bench style", ["Method"], [], ["no ok runs"])]


TABLES: dict[str, Callable[[pd.DataFrame], list[Section]]] = {
    "runs": table_runs,
    "thesis_6_6": table_thesis_6_6,
    "reproduction": table_reproduction,
    "cascade": table_cascade,
    "specbench": table_specbench,
}
TABLE_HEADINGS = {"runs": "Runs", "thesis_6_6": "Entropy Drafting thesis, Table 6.6",
                  "reproduction": "Paper reproduction", "cascade": "Cascade speculative drafting",
                  "specbench": "Spec-Bench style"}


def render(df: pd.DataFrame, name: str, fmt: str = "md") -> str:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    sections = TABLES[name](df)
    if fmt in ("md", "markdown"):
        return render_markdown(sections, TABLE_HEADINGS[name])
    if fmt in ("latex", "tex"):
        return render_latex(sections, TABLE_HEADINGS[name])
    raise ValueError(f"unknown format {fmt!r}: md or latex")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="specexp-report",
        description="Collect metrics.json files of sweeps/runs into one table (CSV + parquet), "
                    "print named tables (Markdown or LaTeX) and write plots.")
    ap.add_argument("paths", nargs="+", help="sweep dirs, run dirs or metrics.json files (searched recursively)")
    ap.add_argument("-o", "--out", help="output dir (default: <the one dir given>/report, else ./report)")
    ap.add_argument("-t", "--table", action="append", default=None,
                    help=f"table layout to print, repeatable: {', '.join(TABLES)} or all (default: runs)")
    ap.add_argument("-f", "--format", default="md", choices=["md", "latex"], help="table format")
    ap.add_argument("--plots", action="store_true", help="write PNG plots into the output dir")
    ap.add_argument("--no-write", action="store_true",
                    help="print only: write no table files (--plots still writes its PNGs)")
    args = ap.parse_args(argv)

    runs = load_runs(args.paths)
    if not runs:
        print(f"specexp-report: no metrics.json under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    df = collect(args.paths, runs=runs)
    if args.out:
        out = Path(args.out)
    elif len(args.paths) == 1 and Path(args.paths[0]).is_dir():
        out = Path(args.paths[0]) / "report"
    else:
        out = Path("report")
    n_ok = int((df["status"] == "ok").sum())
    print(f"specexp-report: {len(df)} runs ({n_ok} ok, {len(df) - n_ok} failed) from {len(args.paths)} path(s)",
          file=sys.stderr)
    if not args.no_write:
        csv, pq = write_table(df, out)
        print(f"specexp-report: wrote {csv} and {pq}", file=sys.stderr)
    names = args.table or ["runs"]
    if "all" in names:
        names = list(TABLES)
    for name in names:
        text = render(df, name, args.format)
        print(text)
        if not args.no_write:
            (out / f"{name}.{'tex' if args.format == 'latex' else 'md'}").write_text(text)
    if args.plots:
        from specexp import plots

        written = plots.plot_all(df, runs, out)
        for p in written:
            print(f"specexp-report: plot {p}", file=sys.stderr)
        if not written:
            print("specexp-report: nothing to plot (no ok runs with a varying threshold, records or drafts)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
