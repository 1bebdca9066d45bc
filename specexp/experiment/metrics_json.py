"""metrics.json: its schema (FIELDS, each top-level field documented once), the record of a run
built from its decode (`run_record`), per-sample records, run aggregates, per-category
breakdowns, and the atomic write. docs/metrics.md is the user's guide to the same fields.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from specexp import stats
from specexp.core.decode import Generation
from specexp.experiment import provenance
from specexp.experiment import sweep_callbacks as sweep
from specexp.length import Fixed
from specexp.models.loading import describe, n_params
from specexp.proposers.drafter import DraftModel
from specexp.report import forward_costs as costs
from specexp.report import token_records

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------------------------
# The schema: every top-level field of metrics.json, once
# --------------------------------------------------------------------------------------------

NUMBER = (int, float)
NULL = type(None)

# When a field is there: "always" (every metrics.json, ok or failed), "ok" (status ok), "failed"
# (status failed), or under a condition of an ok run: "baseline" (the strategy timed against its
# own autoregressive decode: baseline=true, a strategy with a proposer), "records" (records=true),
# "tree" (the proposer drafted token trees: Draft.parents, specexp/core/tree.py),
# "batched" (batch_size > 1), "target_ci" (timing.target_ci set), "categories" (the samples carry
# categories), "measured" (a length policy measured what steers it).
#   name: (JSON types, when, meaning); the fields inside each: docs/metrics.md
FIELDS: dict[str, tuple[tuple[type, ...], str, str]] = {
    # written by run.run, before the decode
    "schema_version": ((int,), "always", "SCHEMA_VERSION"),
    "status": ((str,), "always", '"ok", or "failed" (then error and traceback, no aggregates)'),
    "config": ((dict,), "always", "the composed config, unresolved"),
    "overrides": ((list,), "always", "the command line's overrides"),
    "started_at": ((str,), "always", "local time the run started, ISO 8601"),
    "error": ((str,), "failed", "the exception: its type and message"),
    "traceback": ((str,), "failed", "its traceback"),
    # what was run (run_record)
    "model_pair": ((dict,), "ok", "name, each role's model as loaded, sources (hub or local per role)"),
    "dataset": ((dict,), "ok", "name, version, n_samples (decoded), prompt_fit (how prompts were cut to fit)"),
    "strategy": ((str,), "ok", "the strategy's name"),
    "sampling": ((dict,), "ok", "the sampling settings"),
    "batch_size": ((int,), "ok", "samples decoded at a time"),
    # the strategy's aggregates over the samples (aggregate)
    "n_samples": ((int,), "ok", "samples decoded"),
    "new_tokens": ((int,), "ok", "tokens emitted, summed over samples"),
    "wall_time_s": (NUMBER, "ok", "decode seconds (each sample's median repeat), summed"),
    "tokens_per_second": (NUMBER + (NULL,), "ok", "new_tokens / wall_time_s"),
    "acceptance_rate": (NUMBER + (NULL,), "ok", "accepted drafts / drafted tokens (null: nothing drafted)"),
    "mean_accepted_length": (NUMBER + (NULL,), "ok", "tokens emitted per target forward"),
    "drafted_tokens": ((int,), "ok", "drafts proposed"),
    "accepted_tokens": ((int,), "ok", "drafts accepted"),
    "accept_counts": ((list,), "ok", "[n]: rounds in which exactly n drafts were accepted"),
    "draft_length_mean": (NUMBER + (NULL,), "ok", "mean draft length per round"),
    "target_forwards": ((int,), "ok", "the target's forwards, prompt processing included"),
    "drafter_forwards": ((int,), "ok", "the proposer's model forwards"),
    "model_forwards": ((dict,), "ok", "forwards per model role"),
    "model_forward_seconds": ((dict,), "ok", "seconds in those forwards per model role"),
    "latency_ms_per_token": ((dict,), "ok", "mean, p50, p90, p99 of each token's share of its round"),
    "time_per_sample_s": ((dict,), "ok", "the same statistics over per-sample wall time"),
    "quality": ((dict,), "ok", "the task's score of the strategy's outputs"),
    # against the run's own autoregressive decode
    "baseline": ((dict,), "baseline", "the aggregates of the autoregressive decode of the same samples"),
    "quality_baseline": ((dict,), "baseline", "the task's score of the autoregressive outputs"),
    "speedup": ((dict,), "baseline", "named estimators (speedup): throughput_ratio with its CI, per_token, "
                                     "wall_time_ratio_matched"),
    "n_matches_baseline": ((int,), "baseline", "samples whose output equals the autoregressive one"),
    "all_match_baseline": ((bool,), "baseline", "every sample's output equals the autoregressive one"),
    # per sample, and how the times were taken
    "samples": ((list,), "ok", "one record per sample (sample_record)"),
    "timing": ((dict,), "ok", "repeats, order, spread, load average, threads, warnings (timing_report)"),
    "sequential": ((dict,), "target_ci", "Stein's two-stage rule: target, n0, s0, N, why it stopped"),
    "batch": ((dict,), "batched", "batch throughput per mode and the speedups at batch_size "
                                  "(specexp/core/batch_decode.py decode_samples)"),
    "categories": ((dict,), "categories", "per category: aggregates, speedup, quality (categories)"),
    "draft_records": ((list,), "records", "per drafted token: entropies, position, accepted"),
    "analysis": ((dict,), "records", "acceptance by entropy bin and position, correlations "
                                     "(specexp/report/token_records.py)"),
    "tree": ((dict,), "tree", "token trees: nodes and depth per round, acceptance by depth and by sibling rank "
                              "and round time by forward width (tree_block)"),
    "cost_model_speedup": ((dict,), "ok", "speedups under cost models (specexp/report/forward_costs.py)"),
    "cost_model": ((dict,), "ok", "the forwards, costs and Leviathan inputs behind them"),
    "measured": ((dict,), "measured", "what this machine measured that steers the policy or the tree (replayed by "
                                      "`specexp reproduce`)"),
    "headline": ((dict,), "ok", "what the summary, the log line and the sweep objective report "
                                "(specexp/experiment/sweep_callbacks.py headline)"),
    "environment": ((dict,), "always", "torch / transformers / specexp / python versions, device, device_name"),
    "provenance": ((dict,), "ok", "git commit, model revisions or file hashes"),
}


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


def merge_measured(*parts) -> dict:
    """The "measured" block: what the length policy (cost_aware's costs) and the proposer (a
    machine-sized tree's verification costs) measured that steers decoding, merged; "replay" keys
    are relative to the strategy node (the proposer's start with "proposer.")."""
    out: dict = {}
    for part in parts:
        m = part.measured() if part is not None and hasattr(part, "measured") else {}
        for key, value in (m or {}).items():
            out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tree_block(gens: list[Generation]) -> dict | None:
    """metrics.json["tree"]: over the rounds that drafted a token tree (None when none did, as for
    every chain strategy). Per round: nodes (the draft's tokens) and depth (its levels).
      acceptance_by_depth[d - 1] (d = 1 .. the deepest tree): of the rounds whose tree reached
        depth d, how many accepted a path reaching d (the per-position acceptance vLLM reports;
        on a chain, the share of rounds drafting d tokens that accepted the first d);
      accepted_by_rank[r]: accepted nodes that were their parent's (r+1)-th most likely child by
        the drafter's probability (null when the proposer does not order siblings by it).
      round_seconds_by_width: every round (a tree's or not) by the width of its target forward
        (drafted + 1, in bins 1, 2-3, 4-7, 8-15, ...): rounds and their median wall time (drafting
        included: for a model-free tree, about the verification's), the cost of width on this machine.
    Accepted paths are counted as verified: a stop token inside the path does not shorten it.
    Tokens per target forward: mean_accepted_length (top level)."""
    nodes = [x for g in gens for x in g.tree_nodes]
    if not nodes:
        return None
    depths = [x for g in gens for x in g.tree_depth]
    paths = [x for g in gens for x in g.tree_path]
    by_depth = []
    for d in range(1, max(depths, default=0) + 1):  # 1. per depth: rounds that reached it, paths that reached it
        reached = sum(t >= d for t in depths)
        accepted = sum(t >= d and a >= d for t, a in zip(depths, paths))
        by_depth.append({"depth": d, "rounds": reached, "accepted": accepted,
                         "rate": accepted / reached if reached else None})
    ranks = [r for g in gens for r in g.tree_ranks]
    by_rank = None
    if ranks and all(r is not None for r in ranks):  # 2. the accepted nodes' ranks among their siblings
        flat = [x for r in ranks for x in r]
        by_rank = [0] * (max(flat, default=-1) + 1)
        for x in flat:
            by_rank[x] += 1
    return {
        "rounds": len(nodes),
        "nodes_mean": statistics.fmean(nodes),
        "nodes_max": max(nodes),
        "depth_mean": statistics.fmean(depths),
        "depth_max": max(depths),
        "accepted_path_mean": statistics.fmean(paths),
        "acceptance_by_depth": by_depth,
        "accepted_by_rank": by_rank,
        "round_seconds_by_width": seconds_by_width(gens),
    }


def seconds_by_width(gens: list[Generation]) -> list[dict]:
    """Rounds binned by their target forward's width w = drafted + 1 (bins [2^j, 2^(j+1) - 1]):
    {"widths": [lo, hi], "rounds", "median_seconds"}, the bins that hold a round."""
    bins: dict[int, list[float]] = {}
    for g in gens:
        for k, t in zip(g.drafted, g.round_times):
            bins.setdefault((k + 1).bit_length() - 1, []).append(t)
    return [{"widths": [2 ** j, 2 ** (j + 1) - 1], "rounds": len(ts), "median_seconds": statistics.median(ts)}
            for j, ts in sorted(bins.items())]


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


def medians_per_sample(reps: list[list[Generation]]) -> tuple[list[Generation], list[dict]]:
    """A dataset decoded R times in one mode (reps[r][i]: repeat r of sample i) -> per sample
    median_of_repeats: the median-time repeats and their records."""
    picked = [median_of_repeats([r[i] for r in reps]) for i in range(len(reps[0]) if reps else 0)]
    return [g for g, _ in picked], [info for _, info in picked]


def categories(samples: list, gens: list, bases: list | None = None,
               quality: dict | None = None, seed: int = 0) -> dict | None:
    """metrics.json["categories"]: {category: aggregates} over `samples` (which may carry
    `.category`), or None (the block's fields: specexp/report/categories.py, which reads it back)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if getattr(s, "category", None) is not None:
            groups.setdefault(s.category, []).append(i)
    if not groups:
        return None
    scores = {r["id"]: r for r in (quality or {}).get("per_sample") or [] if isinstance(r, dict) and "id" in r}
    out = {}
    for cat, idx in groups.items():
        agg = aggregate([gens[i] for i in idx])
        entry = {k: agg[k] for k in CATEGORY_KEYS}
        if bases:
            entry["baseline_tokens_per_second"] = aggregate([bases[i] for i in idx])["tokens_per_second"]
            entry["speedup"] = speedup([gens[i] for i in idx], [bases[i] for i in idx], seed=seed)
        rows = [scores[samples[i].id] for i in idx if samples[i].id in scores]
        numeric = [k for k, v in (rows[0].items() if rows else ()) if isinstance(v, (int, float))]  # bools: a rate
        if numeric:
            entry["quality"] = {k: sum(float(r[k]) for r in rows) / len(rows) for k in numeric}
            entry["quality"]["n_scored"] = len(rows)
        out[cat] = entry
    return out


CATEGORY_KEYS = ("n_samples", "new_tokens", "tokens_per_second", "acceptance_rate", "mean_accepted_length")


def classic_gamma(proposer, policy) -> int | None:
    """gamma when the strategy is the classic algorithm (a DraftModel with the Fixed policy): the
    cost models' Leviathan prediction needs it (specexp/report/forward_costs.py)."""
    if type(proposer) is DraftModel and type(policy) is Fixed:
        return int(policy.gamma)
    return None


# --------------------------------------------------------------------------------------------
# A run's record: metrics.json built from the decode's results
# --------------------------------------------------------------------------------------------

@dataclass
class Decoded:
    """What run.decode_dataset's decode produced: the input of `run_record`. Per sample, in order;
    fewer samples than the dataset's when timing.target_ci stopped early."""

    samples: list  # the tasks' samples decoded
    prompts: list  # their prompts' token ids (tensors), as decoded
    fitted: list  # how each prompt was cut to fit (specexp.models.prompt_ids.Fitted)
    prompt_fit: dict  # how prompts were cut, over the dataset (metrics.json dataset.prompt_fit)
    gens: list[Generation]  # the strategy's median-time repeat
    gen_reps: list[dict]  # its repeats' record (median_of_repeats)
    completions: list[str]  # the strategy's texts, postprocessed by the task
    timing: dict  # timing_report
    bases: list[Generation] | None = None  # the autoregressive baseline's, None without one
    base_reps: list[dict] | None = None
    completions_baseline: list[str] | None = None
    sequential: dict | None = None  # timing.target_ci's record, None when off
    batch: dict | None = None  # batch_size > 1: the batch block (specexp/core/batch_decode.py decode_samples)


def run_record(cfg, pair, task, lms: dict, proposer, policy, batch_size: int, d: Decoded) -> dict:
    """The fields of an ok run's metrics.json after the head that run.run writes (FIELDS), in
    their order. `lms`: every model that ran forwards, by role (the target as "target")."""
    bases = d.bases
    names = {r: describe(s) for r, s in pair.specs.items() if s}
    # 1. What was run, and the strategy's aggregates.
    result = {
        "model_pair": {"name": cfg.model_pair.name, **names,
                       "sources": {k: v.source for k, v in pair.specs.items() if v}},
        "dataset": {"name": task.name, "version": task.version, "n_samples": len(d.samples),
                    "prompt_fit": d.prompt_fit},
        "strategy": cfg.strategy.get("name"),
        "sampling": OmegaConf.to_container(cfg.sampling),
        "batch_size": batch_size,
        **aggregate(d.gens),
        "quality": task.score(d.samples, d.completions),
    }
    # 2. Against the run's own autoregressive decode of the same samples.
    if bases is not None:
        matches = [g.tokens == b.tokens for g, b in zip(d.gens, bases)]
        result["baseline"] = aggregate(bases)
        result["quality_baseline"] = task.score(d.samples, d.completions_baseline)
        result["speedup"] = speedup(d.gens, bases, seed=cfg.seed)
        result["n_matches_baseline"] = sum(matches)
        result["all_match_baseline"] = all(matches)
    # 3. Per sample, and how the times were taken.
    result["samples"] = [
        sample_record(s, p.tolist(), g, c, bases[i] if bases is not None else None,
                      d.gen_reps[i], d.base_reps[i] if bases is not None else None, fit=f)
        for i, (s, p, g, c, f) in enumerate(zip(d.samples, d.prompts, d.gens, d.completions, d.fitted))
    ]
    result["timing"] = d.timing
    if d.sequential is not None:  # timing.target_ci: how many samples Stein's rule asked for and why it stopped
        result["sequential"] = d.sequential
    if d.batch is not None:  # batch throughput and speedups at batch_size (specexp/core/batch_decode.py)
        result["batch"] = d.batch
    cats = categories(d.samples, d.gens, bases, result["quality"], cfg.seed)
    if cats is not None:  # the samples carry categories (dataset=jsonl with dataset.category)
        result["categories"] = cats
    # 4. Per drafted token (records=true), and the cost models.
    if cfg.records:
        result["draft_records"] = [{"sample": s.id, **r} for s, g in zip(d.samples, d.gens) for r in g.records]
        result["analysis"] = token_records.aggregate(result["draft_records"], [g.drafted for g in d.gens],
                                                     entropy_type=getattr(policy, "entropy_type", "shannon"))
    tree = tree_block(d.gens)
    if tree is not None:  # the proposer drafted token trees: their shape and acceptance by depth and rank
        result["tree"] = tree
    params = {r: n_params(getattr(m, "model", m)) for r, m in lms.items()}
    result.update(costs.report(d.gens, lms, names, classic_gamma(proposer, policy), base=bases, params=params))
    measured = merge_measured(policy, proposer)
    if measured:  # what this machine measured that steers decisions (costs): `specexp reproduce` replays it
        result["measured"] = measured
    # 5. The headline, and where and from what it ran.
    result["headline"] = sweep.headline(result)  # what the summary, the log line and the objective report
    result["environment"] = environment(pair.device)
    result["provenance"] = provenance.collect(pair.specs)  # git commit, model revisions / file hashes
    return result
