"""Collecting runs: every metrics.json under sweep / run dirs into one table (a row per run), each
speculative run joined to its autoregressive baseline. The per-sample table (a row per run x
sample, `processed_data.csv`) is specexp/report/per_sample.py.

One row per metrics.json (ok and failed runs alike). Columns (docs/reports.md has the full list):
identity (run_dir, job, status, error, method, strategy, model_pair, target, drafter, dataset,
sampling, max_new_tokens, seed, samples_key), the strategy's parameters (`param.<key>`), each
run's Hydra overrides (`override.<key>`), speed and acceptance (tokens_per_second, ms_per_token,
latency_ms_p50..., acceptance_rate, mean_accepted_length, draft_length_mean, forwards), quality
(`quality.<key>`, `quality_baseline.<key>`), the baseline join (baseline_tokens_per_second,
baseline_ms_per_token, speedup, speedup_ci_low, speedup_ci_high, speedup_estimator,
speedup_per_token_geomean, speedup_source), timing (timing_repeats, timing_spread_median) and,
when a run carries them, the cost-model speedups (`cost_speedup.params|previous_work|measured`)
and the token-tree columns (tree_nodes_mean, tree_depth_mean, tree_accept_d1..3: `tree_columns`).

Speedup: the throughput ratio (strategy tokens/s over autoregressive tokens/s, totals over the
samples) with its 95% CI over samples: a t interval on the log ratio with the paired bootstrap
standard error (specexp/stats.py, speedup_estimates). Its source, in `speedup_source`:
"paired" (the run decoded every sample autoregressively too, `baseline=true`, interleaved per
sample: preferred), "ar_run:<dir>" (a separate `strategy=autoregressive` run of the same model
pair, dataset version, samples, token budget and sampling settings), "self" (an autoregressive
run: 1.0), or empty (no baseline found).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from specexp import stats
from specexp.dotted_keys import value_at
from specexp.report import categories
from specexp.report.paper_estimators import repro_estimators

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
    return {"job": value_at(h, "job.num"), "choices": value_at(h, "runtime.choices", {}) or {}}


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


def _config_pair_name(cfg: dict) -> Any:
    """The pair's name from a run's recorded config, which is stored unresolved: a failed run of a
    pair that names itself after its models (model_pair=hf: `${specexp_pair_name:}`) is labelled
    by that name (specexp/report/pair_names.py, the rule the run uses), not by the interpolation.
    An interpolation this reader cannot resolve keeps its recorded text."""
    name = value_at(cfg, "model_pair.name")
    if not (isinstance(name, str) and "${" in name):
        return name
    from omegaconf import OmegaConf

    from specexp.report import pair_names  # noqa: F401  (registers ${specexp_pair_name:})
    try:
        return OmegaConf.select(OmegaConf.create(cfg), "model_pair.name")
    except Exception:  # an interpolation this reader cannot resolve: keep the recorded text
        return name


def flatten(path: Path, m: dict) -> tuple[dict, dict]:
    """One table row for a run, and its samples {sample id: (seconds, new tokens, tokens)} (for
    joining to a separate autoregressive run)."""
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
        "strategy": m.get("strategy") or value_at(cfg, "strategy.name") or choices.get("strategy"),
        "model_pair": value_at(m, "model_pair.name") or _config_pair_name(cfg),
        "target": value_at(m, "model_pair.target") or value_at(cfg, "model_pair.target.name"),
        "drafter": value_at(m, "model_pair.drafter") or value_at(cfg, "model_pair.drafter.name"),
        "dataset": value_at(m, "dataset.name") or choices.get("dataset"),
        "dataset_version": value_at(m, "dataset.version"),
        "n_samples": value_at(m, "dataset.n_samples"),
        "max_new_tokens": value_at(cfg, "max_new_tokens") or value_at(cfg, "dataset.max_new_tokens"),
        "samples_key": hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10] if ids else None,
        "sampling": sampling_label(m.get("sampling") or cfg.get("sampling")),
        "temperature": value_at(m, "sampling.temperature", value_at(cfg, "sampling.temperature")),
        "top_k": value_at(m, "sampling.top_k", value_at(cfg, "sampling.top_k")),
        "top_p": value_at(m, "sampling.top_p", value_at(cfg, "sampling.top_p")),
        "seed": cfg.get("seed"),
        "experiment": choices.get("experiment"),
        "batch_size": m.get("batch_size") or cfg.get("batch_size") or 1,  # samples decoded at a time (specexp/core/batch_decode.py)
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
        "latency_ms_mean": value_at(m, "latency_ms_per_token.mean"),
        "latency_ms_p50": value_at(m, "latency_ms_per_token.p50"),
        "latency_ms_p90": value_at(m, "latency_ms_per_token.p90"),
        "latency_ms_p99": value_at(m, "latency_ms_per_token.p99"),
        "time_per_sample_s_p50": value_at(m, "time_per_sample_s.p50"),
        "acceptance_rate": m.get("acceptance_rate"),
        "mean_accepted_length": m.get("mean_accepted_length"),
        "draft_length_mean": m.get("draft_length_mean"),
        "new_tokens": m.get("new_tokens"),
        "wall_time_s": m.get("wall_time_s"),
        "target_forwards": m.get("target_forwards"),
        "drafter_forwards": m.get("drafter_forwards"),
        "n_matches_baseline": m.get("n_matches_baseline"),
        "all_match_baseline": m.get("all_match_baseline"),
        "baseline_tokens_per_second": value_at(m, "baseline.tokens_per_second"),
        "baseline_ms_per_token": _ms(value_at(m, "baseline.tokens_per_second")),
        **_speedup_columns(m.get("speedup")),
        **_batch_columns(m.get("batch")),
        "timing_repeats": value_at(m, "timing.repeats"),
        "timing_spread_median": value_at(m, "timing.spread_median"),
    })
    for prefix, q in (("quality", m.get("quality")), ("quality_baseline", m.get("quality_baseline"))):
        for k, v in (q or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"{prefix}.{k}"] = v
    row.update(tree_columns(m.get("tree")))
    cms = m.get("cost_model_speedup")
    if isinstance(cms, dict):
        for k, v in cms.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"cost_speedup.{k}"] = v
    # the estimators of the paper-reproduction repository (specexp/report/paper_estimators.py)
    row.update({f"repro.{k}": v for k, v in repro_estimators(samples).items()})
    env = m.get("environment") or {}
    row.update({"device_name": env.get("device_name"), "torch": env.get("torch"),
                "transformers": env.get("transformers"), "specexp": env.get("specexp")})
    row.update(categories.columns(m))  # category.<name>.<key>: the per-category breakdown, when there is one
    times = {str(s.get("id")): (s.get("wall_time_s"), s.get("new_tokens"), s.get("tokens"))
             for s in samples if s.get("wall_time_s")}
    return row, times


def _speedup_columns(sp) -> dict:
    """The run's speedup as columns: the throughput ratio with its CI (metrics.json's estimator)."""
    if not isinstance(sp, dict) or sp.get("throughput_ratio") is None:
        return {"speedup": None, "speedup_ci_low": None, "speedup_ci_high": None, "speedup_estimator": None,
                "speedup_per_token_geomean": None, "speedup_source": None}
    return {"speedup": sp["throughput_ratio"], "speedup_ci_low": sp.get("ci_low"), "speedup_ci_high": sp.get("ci_high"),
            "speedup_estimator": sp.get("estimator", "throughput_ratio"),
            "speedup_per_token_geomean": value_at(sp, "per_token.geomean"), "speedup_source": "paired"}


TREE_DEPTHS = 3  # acceptance by depth shown as columns for depths 1 .. 3


def tree_columns(tree) -> dict:
    """A tree-drafting run's `tree` block as columns (none for a run without one, so a table of
    chain runs has no tree columns): mean nodes and depth per tree round, and the acceptance at
    depths 1 .. TREE_DEPTHS (of the rounds whose tree reached depth d, the share whose accepted
    path reached it; None where no tree was that deep). Tokens per target forward is
    `mean_accepted_length`, already a column."""
    if not isinstance(tree, dict):
        return {}
    rates = {e.get("depth"): e.get("rate") for e in tree.get("acceptance_by_depth") or [] if isinstance(e, dict)}
    return {"tree_nodes_mean": tree.get("nodes_mean"), "tree_depth_mean": tree.get("depth_mean"),
            **{f"tree_accept_d{d}": rates.get(d) for d in range(1, TREE_DEPTHS + 1)}}


def _batch_columns(b) -> dict:
    """A batched run's batch throughput (all rows' new tokens / whole-dataset wall time, median over
    repeats) and its two speedups: against autoregressive at the same batch size and at batch 1."""
    b = b if isinstance(b, dict) else {}
    tps = b.get("tokens_per_second") or {}
    return {"batch_tokens_per_second": tps.get("strategy", tps.get("autoregressive")),
            "batch_speedup_same_batch": b.get("speedup_vs_autoregressive_same_batch"),
            "batch_speedup_batch1": b.get("speedup_vs_autoregressive_batch1")}


def _is_ar(row) -> bool:
    return row.get("strategy") == "autoregressive"


_JOIN_KEYS = ("model_pair", "target", "dataset", "dataset_version", "samples_key", "max_new_tokens", "sampling",
              "batch_size")  # per-sample latencies at batch B compare with autoregressive at the same B only


def join_baselines(df: pd.DataFrame, times: list[dict]) -> pd.DataFrame:
    """Fill speedup for runs without a paired baseline from a separate autoregressive run with
    the same model pair, dataset (version), samples, token budget, sampling settings and batch size."""
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
            df.loc[i, ["speedup", "speedup_per_token_geomean"]] = [1.0, 1.0]  # itself: no interval
            df.loc[i, ["speedup_estimator", "speedup_source"]] = ["throughput_ratio", "self"]
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
            ids = sorted(mine)
            sp = stats.speedup_estimates([mine[s][1] or 0 for s in ids], [mine[s][0] for s in ids],
                                         [theirs[s][1] or 0 for s in ids], [theirs[s][0] for s in ids],
                                         [mine[s][2] is not None and mine[s][2] == theirs[s][2] for s in ids])
            if sp["throughput_ratio"] is None:
                continue
            for k, v in _speedup_columns(sp).items():
                df.loc[i, k] = v
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
