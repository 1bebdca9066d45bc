"""Recording: per-sample records, run aggregates, and the atomic write of metrics.json.

Definitions (as vLLM and the papers use them):
  acceptance_rate      = accepted draft tokens / drafted tokens (accepted: drafts emitted before a
                         stop; an accepted EOS draft counts as the round's own token, as
                         transformers' n_matches does; see specexp/core/decode.py)
  mean_accepted_length = tokens emitted / target forwards (accepted drafts + the target's token)
  speedup              = named estimators against the run's own autoregressive decode of the same
                         samples (specexp/stats.py): throughput_ratio (primary, with a bootstrap CI),
                         per_token, wall_time_ratio_matched
A sample's time is the median of its `timing.repeats` decodes (modes interleaved ABAB).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from specexp import stats
from specexp.core.decode import Generation

SCHEMA_VERSION = 1


def write_json_atomic(path: str | Path, obj: dict) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def environment(device: torch.device | None) -> dict:
    import transformers

    import specexp

    name = "cpu"
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device is not None:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "specexp": specexp.__version__, "python": platform.python_version(),
            "device": str(device) if device is not None else None, "device_name": name}


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    t = torch.tensor(xs, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {"mean": float(t.mean()), "p50": q[0], "p90": q[1], "p99": q[2]}


def token_latencies_ms(gens: list[Generation]) -> list[float]:
    """Each emitted token's share of its round's wall time, in ms (a round that emits m tokens
    gives each of them round_time / m)."""
    out = []
    for g in gens:
        for t, m in zip(g.round_times, g.emitted):
            out.extend([1000.0 * t / m] * m)
    return out


def aggregate(gens: list[Generation]) -> dict:
    """Speed and acceptance over a run's samples (one decoding mode)."""
    n_tokens = sum(len(g.tokens) for g in gens)
    wall = sum(g.wall_time for g in gens)
    drafted = sum(sum(g.drafted) for g in gens)
    accepted = sum(sum(g.accepted) for g in gens)
    target_fw = sum(g.target_forwards for g in gens)
    rounds_k = [k for g in gens for k in g.drafted]
    max_k = max(rounds_k, default=0)
    accept_counts = [0] * (max_k + 1)  # accept_counts[n] = rounds in which exactly n drafts were accepted
    for g in gens:
        for n in g.accepted:
            accept_counts[n] += 1
    return {
        "n_samples": len(gens),
        "new_tokens": n_tokens,
        "wall_time_s": wall,
        "tokens_per_second": n_tokens / wall if wall > 0 else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_length": n_tokens / target_fw if target_fw else None,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "accept_counts": accept_counts,
        "draft_length_mean": statistics.fmean(rounds_k) if rounds_k else None,
        "target_forwards": target_fw,
        "drafter_forwards": sum(g.drafter_forwards for g in gens),
        "model_forwards": _sum_dicts(g.model_forwards for g in gens),  # per model role, drafters' reviews included
        "model_forward_seconds": _sum_dicts(g.model_forward_seconds for g in gens),
        "latency_ms_per_token": _percentiles(token_latencies_ms(gens)),
        "time_per_sample_s": _percentiles([g.wall_time for g in gens]),
    }


def _sum_dicts(ds) -> dict:
    out: dict = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def speedup(gens: list[Generation], base: list[Generation], seed: int = 0) -> dict:
    """metrics.json["speedup"]: strategy `gens` against the autoregressive `base` of the same
    samples (see stats.speedup_estimates: throughput_ratio with its CI, per_token, matched wall ratio)."""
    return stats.speedup_estimates([len(g.tokens) for g in gens], [g.wall_time for g in gens],
                                   [len(b.tokens) for b in base], [b.wall_time for b in base],
                                   [g.tokens == b.tokens for g, b in zip(gens, base)], seed)


def median_of_repeats(reps: list[Generation]) -> tuple[Generation, dict]:
    """One sample decoded R times in one mode -> the repeat whose time is the median (its rounds,
    drafts and counters) with wall_time = the median of the R times, and the repeats' record:
    times, relative spread (max - min) / median, and whether every repeat emitted the same tokens."""
    times = [g.wall_time for g in reps]
    med = statistics.median(times)
    pick = reps[times.index(statistics.median_low(times))]
    info = {"wall_times_s": times, "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
            "identical": all(g.tokens == reps[0].tokens for g in reps)}
    return dataclasses.replace(pick, wall_time=med), info


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def timing_report(timing_cfg, repeat_infos: list[dict], load_before, load_after) -> dict:
    """metrics.json["timing"]: how the times were taken and how much they could be trusted:
    repeats, the repeats' relative spread (median and max over samples and modes), samples whose
    repeats emitted different tokens, load average before / after, torch's thread count, and
    the warnings (also logged)."""
    spreads = [r["spread"] for r in repeat_infos]
    n_mismatch = sum(not r["identical"] for r in repeat_infos)
    out = {
        "repeats": int(timing_cfg.repeats),
        "order": "interleaved per sample and counterbalanced: the baseline first when sample + repeat is even, the strategy first when odd",
        "per_sample_time": "median of the repeats",
        "spread_median": statistics.median(spreads) if spreads else None,
        "spread_max": max(spreads, default=None),
        "n_repeat_mismatch": n_mismatch,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "warnings": [],
    }
    limit = float(timing_cfg.spread_warning)
    if out["repeats"] > 1 and out["spread_median"] is not None and out["spread_median"] > limit:
        out["warnings"].append(
            f"timing: the repeats of a sample differ by {out['spread_median']:.0%} (median of (max-min)/median), "
            f"more than timing.spread_warning={limit}: the machine is busy (load {load_before} -> {load_after}); "
            "speedups have wide CIs: raise timing.repeats or run on a quiet machine")
    if n_mismatch:
        out["warnings"].append(
            f"timing: {n_mismatch} sample decodes emitted different tokens across their repeats (non-deterministic "
            "kernels?); their records show the median-time repeat")
    return out


def sample_record(sample, prompt_ids: list[int], gen: Generation, text: str, base: Generation | None,
                  repeats: dict | None = None, base_repeats: dict | None = None, fit=None) -> dict:
    """One sample's record; `repeats` / `base_repeats`: median_of_repeats' info per mode; `fit`:
    how the prompt was cut to fit (specexp.models.prompt_ids.Fitted), None when that is not known."""
    rec = {
        "id": sample.id,
        "prompt_tokens": len(prompt_ids),
        **({} if fit is None else {
            "prompt_tokens_original": fit.original,  # before any cut
            "prompt_kept": fit.kept,  # null: not cut; "start" / "end": the side kept
            "prompt_cut_part": fit.part,  # null, "prompt" (its tokens) or the task's document ("article")
        }),
        "new_tokens": len(gen.tokens),
        "tokens": gen.tokens,
        "text": text,
        "wall_time_s": gen.wall_time,
        "drafted": sum(gen.drafted),
        "accepted": sum(gen.accepted),
        "draft_lengths": gen.drafted,
        "accepted_per_round": gen.accepted,
        "target_forwards": gen.target_forwards,
        "drafter_forwards": gen.drafter_forwards,
        "model_forwards": gen.model_forwards,
    }
    if base is not None:
        rec["baseline_wall_time_s"] = base.wall_time
        rec["baseline_new_tokens"] = len(base.tokens)
        rec["matches_baseline"] = gen.tokens == base.tokens
    if repeats is not None:
        rec["repeats"] = repeats
    if base_repeats is not None:
        rec["baseline_repeats"] = base_repeats
    if getattr(sample, "category", None) is not None:
        rec["category"] = sample.category
    return rec
