"""Recording: per-sample records, run aggregates, and the atomic write of metrics.json.

Definitions (as vLLM and the papers use them):
  acceptance_rate      = accepted draft tokens / drafted tokens
  mean_accepted_length = tokens emitted / target forwards (accepted drafts + the target's token)
  speedup              = per-sample wall-time ratio, autoregressive / strategy, same samples and budget
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from specexp.decode import Generation

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


def speedup(gens: list[Generation], base: list[Generation]) -> dict:
    ratios = [b.wall_time / g.wall_time for g, b in zip(gens, base) if g.wall_time > 0]
    return {"median": statistics.median(ratios) if ratios else None,
            "mean": statistics.fmean(ratios) if ratios else None,
            "per_sample": ratios}


def sample_record(sample, prompt_ids: list[int], gen: Generation, text: str, base: Generation | None) -> dict:
    rec = {
        "id": sample.id,
        "prompt_tokens": len(prompt_ids),
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
    return rec
