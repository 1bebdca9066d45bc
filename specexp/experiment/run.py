"""The `specexp` entry point: one Hydra job = decode a dataset with a strategy, write metrics.json.

    specexp                                   # the embedded default (tiny pair, HumanEval)
    specexp strategy.gamma=8 sampling=sample  # compose a run
    specexp -m strategy.gamma=1,2,4,8         # sweep
"""
from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from specexp import stats
from specexp.core import batch_decode as batch
from specexp.core import beam_search as beam
from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.experiment import instantiate, validate, watch
from specexp.experiment import metrics_json as record
from specexp.experiment import sweep_callbacks as sweep
from specexp.experiment.config import CONF_DIR, cli_overrides, register
from specexp.models.cached_lm import cached_lm, check_context
from specexp.models.loading import Pair
from specexp.models.prompt_ids import eos_ids, fit_line, fit_prompts
from specexp.tasks.typed_prompts import PromptTask

log = logging.getLogger("specexp")


def check_sequential(timing, with_baseline: bool, batch_size: int, n_samples: int) -> dict | None:
    """timing.target_ci (sample until the speedup's CI is narrow enough): None when off, else the
    record to fill ({"target", "n0"}); refused, naming the fix, where it cannot apply."""
    target = timing.get("target_ci")
    if target is None:
        return None
    n0 = int(timing.get("pilot", 4))
    if not float(target) > 0:
        raise ValueError(f"timing.target_ci must be > 0 (a half-width on the log scale, e.g. 0.05) or null, got {target}")
    if n0 < stats.MIN_SAMPLES:
        raise ValueError(f"timing.pilot must be >= {stats.MIN_SAMPLES} (the first stage needs a spread), got {n0}")
    if not with_baseline or batch_size > 1:
        raise ValueError("timing.target_ci needs a strategy timed against its own baseline (baseline=true, not "
                         "strategy=autoregressive) at batch_size=1; set timing.target_ci=null")
    if n_samples < n0:
        raise ValueError(f"timing.target_ci: the dataset has {n_samples} samples, fewer than timing.pilot={n0}; "
                         f"raise dataset.limit or lower timing.pilot")
    return {"target": float(target), "n0": n0}


def per_sample_log_speedups(gens: list, bases: list) -> list[float]:
    """log of (baseline s/token) / (strategy s/token) per sample: the values whose mean is the log speedup."""
    return [math.log((b.wall_time / len(b.tokens)) / (g.wall_time / len(g.tokens))) for g, b in zip(gens, bases)
            if g.tokens and b.tokens and g.wall_time > 0 and b.wall_time > 0]  # a sample with no ratio is left out


def decode_dataset(cfg: DictConfig) -> dict:
    """Load, warm up, decode every sample `timing.repeats` times per mode (baseline and strategy
    alternating), score, aggregate: metrics.json's fields after its head (metrics_json.FIELDS)."""
    # 1. Set up: the pair, the task's prompts (cut to fit), the strategy; whatever cannot run
    #    fails here, before any decode.
    s = set_up(cfg)
    # 2. Warm up (untimed): first calls pay for allocations and kernel selection.
    warm_up(cfg, s)
    # 3. Timed decodes: every sample `timing.repeats` times per mode, the modes interleaved; a
    #    sample's time is the median of its repeats. B samples at a time (batch_size > 1), else one.
    load_before = record.load_average()
    if s.batch_size > 1:
        d = decode_batched(cfg, s)
    else:
        d = decode_one_at_a_time(cfg, s)
    d.timing = record.timing_report(cfg.timing, d.gen_reps + (d.base_reps or []), load_before,
                                    record.load_average())
    for w in d.timing["warnings"]:
        log.warning(w)
    # 4. The outputs as text (the task's postprocessing); one prompt: its generation shown, drafts marked.
    d.completions = texts(s, d.samples, d.gens)
    if d.bases is not None:
        d.completions_baseline = texts(s, d.samples, d.bases)
    if isinstance(s.task, PromptTask) and s.task.show:
        watch.show_run(watch.Printer(sys.stdout), s.pair.tokenizer, d.samples[0].prompt, d.gens[0],
                       d.bases[0] if d.bases is not None else None, cfg.strategy.get("name"),
                       entropy=bool(cfg.records))
    # 5. Record: scores, aggregates, per-sample records, cost models (specexp/experiment/metrics_json.py).
    return record.run_record(cfg, s.pair, s.task, s.lms, s.proposer, s.policy, s.batch_size, d)


@dataclass
class Setup:
    """What a run decodes with (decode_dataset's step 1)."""

    pair: Pair
    task: Any
    samples: list
    prompts: list[torch.Tensor]  # the samples' prompts, cut to fit
    fitted: list  # per sample: how its prompt was cut (specexp.models.prompt_ids.Fitted)
    prompt_fit: dict  # how prompts were cut, over the dataset
    batch_size: int
    proposer: Any  # None: autoregressive
    policy: Any
    search: Any  # strategy=beam: its own decode (specexp/core/beam_search.py), else None
    sampling: Any
    stopper: Stopper
    lms: dict  # role -> CachedLM, the target as "target"
    with_baseline: bool  # the strategy timed against its own autoregressive decode
    repeats: int  # timing.repeats
    sequential: dict | None  # timing.target_ci's record, None when off

    @property
    def target(self):
        return self.lms["target"]


def set_up(cfg: DictConfig) -> Setup:
    """decode_dataset's step 1: load the pair, the task and the strategy; fit the prompts; refuse,
    before any decode, what cannot run (a batch size, a context too short, an unbatchable strategy)."""
    torch.manual_seed(cfg.seed)
    batch.check_batch_size(cfg.get("batch_size", 1))  # a bad batch_size fails before any model loads
    pair = instantiate.pair(cfg.model_pair)
    task = instantiate.task(cfg.dataset, pair.tokenizer)
    if hasattr(task, "set_model"):  # scored by the target's log-likelihoods (mmlu scoring=loglikelihood)
        task.set_model(pair.target, pair.tokenizer)
    if cfg.max_new_tokens is not None:  # the top-level budget overrides the dataset's (checked in validate)
        task.max_new_tokens = cfg.max_new_tokens
    samples = task.samples()
    batch_size = batch.check_batch_size(cfg.get("batch_size", 1), len(samples))  # specexp/core/batch_decode.py
    proposer, policy = instantiate.strategy(cfg.strategy, pair)
    search = beam.from_strategy(cfg.strategy)  # strategy=beam: its own decode (specexp/core/beam_search.py), else None
    sampling = instantiate.sampling(cfg.sampling)
    stopper = Stopper(eos_ids(pair), task.stop, pair.tokenizer)
    target = cached_lm(pair.target)  # an encoder-decoder target gets the seq2seq wrapper
    lms = {"target": target, **(getattr(proposer, "cached_models", None) or {})}  # role -> CachedLM
    # longer prompts cut to dataset.max_prompt_tokens (auto: what every model's context holds), the
    # task's side kept (specexp/models/prompt_ids.py); what does not fit even so fails before any decode
    prompts, fitted, prompt_fit = fit_prompts(pair.tokenizer, samples, task, lms, pair.device)
    check_context(lms, max((p.shape[0] for p in prompts), default=0), task.max_new_tokens, what="the longest prompt")
    with_baseline = bool(cfg.baseline) and proposer is not None
    if proposer is not None:
        proposer.records = bool(cfg.records)
    batch.check_run(batch_size, proposer, pair.target, search, bool(cfg.carry_length_state),  # before any decode
                    policy, cfg.strategy.get("name"))
    repeats = int(cfg.timing.repeats)
    if repeats < 1:
        raise ValueError(f"timing.repeats must be >= 1, got {repeats}")
    sequential = check_sequential(cfg.timing, with_baseline, batch_size, len(prompts))  # timing.target_ci
    return Setup(pair, task, samples, prompts, fitted, prompt_fit, batch_size, proposer, policy, search, sampling,
                 stopper, lms, with_baseline, repeats, sequential)


def decode_one(cfg: DictConfig, s: Setup, i: int, prompt: torch.Tensor, budget: int, speculative: bool):
    """Sample i decoded once, by the strategy (`speculative`) or autoregressively (beam search
    under strategy=beam), its sampling driven by a generator seeded seed + i."""
    gen = torch.Generator(device=s.pair.device).manual_seed(cfg.seed + i)
    if not speculative:
        if s.search is not None:
            return s.search.generate(s.target, prompt, budget, s.stopper, s.sampling)
        return generate(s.target, prompt, budget, s.sampling, s.stopper, generator=gen)
    s.policy.start_sample(carry=bool(cfg.carry_length_state))  # reset unless state is carried
    return generate(s.target, prompt, budget, s.sampling, s.stopper, s.proposer, s.policy, gen, records=cfg.records)


def warm_up(cfg: DictConfig, s: Setup) -> None:
    """decode_dataset's step 2: `warmup` untimed decodes of the first prompt (16 tokens at most)
    per mode; the length policy is reset after them."""
    for _ in range(cfg.warmup):
        for spec in ([False, True] if s.with_baseline else [s.proposer is not None]):
            decode_one(cfg, s, 0, s.prompts[0], min(16, s.task.max_new_tokens), spec)
    if s.policy is not None:
        s.policy.reset()


def decode_one_at_a_time(cfg: DictConfig, s: Setup) -> record.Decoded:
    """decode_dataset's step 3 at batch size 1: every sample R times per mode, the modes alternating
    and their order counterbalanced, so drift in the machine's speed hits both alike; a sample's
    time is the median of its R repeats. Under timing.target_ci it stops where Stein's rule says."""
    gens, bases, gen_reps, base_reps = [], [], [], []
    sequential, speculative = s.sequential, s.proposer is not None
    for i, prompt in enumerate(tqdm(s.prompts, desc=f"decoding {s.task.name} (x{s.repeats})", unit="sample",
                                    leave=False)):
        reps_s, reps_b, order = [], [], []
        for r in range(s.repeats):
            # counterbalanced (ABBA...): the baseline first when sample + repeat is even, the strategy
            # first when odd, so a cost that falls on whichever decode runs first hits both modes alike
            first_base = (i + r) % 2 == 0
            modes = ([False, True] if first_base else [True, False]) if s.with_baseline else [True]
            for strategy_mode in modes:
                if strategy_mode:
                    reps_s.append(decode_one(cfg, s, i, prompt, s.task.max_new_tokens, speculative))
                else:
                    reps_b.append(decode_one(cfg, s, i, prompt, s.task.max_new_tokens, False))
            order.append("".join("S" if m else "B" for m in modes))
        g, info = record.median_of_repeats(reps_s)
        info["order"] = order  # per repeat, which mode ran first: "BS" or "SB"
        gens.append(g)
        gen_reps.append(info)
        if s.with_baseline:
            b, info = record.median_of_repeats(reps_b)
            bases.append(b)
            base_reps.append(info)
        if sequential is not None and i + 1 == sequential["n0"]:  # first stage done: Stein's N, at most the dataset
            sequential.update(stats.stein_samples(per_sample_log_speedups(gens, bases), sequential["target"]))
            sequential["stopped"] = ("target reached" if sequential["N"] <= len(s.prompts)
                                     else "dataset.limit reached")
        if sequential is not None and "N" in sequential and i + 1 >= sequential["N"]:
            break
    n = len(gens)  # fewer than the dataset's when timing.target_ci stopped early: only the decoded samples count
    return decoded(s, n, gens, gen_reps, bases if s.with_baseline else None, base_reps if s.with_baseline else None)


def decode_batched(cfg: DictConfig, s: Setup) -> record.Decoded:
    """decode_dataset's step 3 at batch_size > 1 (specexp/core/batch_decode.py): the dataset
    decoded B samples at a time, `timing.repeats` times per mode; per sample, the median-time repeat."""
    main, base, info = batch.decode_samples(
        s.pair.target, s.prompts, s.task.max_new_tokens, s.sampling, s.stopper, s.proposer, s.policy,
        batch_size=s.batch_size, seed=cfg.seed, repeats=s.repeats, warmup=int(cfg.warmup),
        with_baseline=s.with_baseline, records=bool(cfg.records), device=s.pair.device)
    gens, gen_reps = record.medians_per_sample(main)
    bases, base_reps = record.medians_per_sample(base) if s.with_baseline else (None, None)
    d = decoded(s, len(s.prompts), gens, gen_reps, bases, base_reps)
    d.batch = info
    return d


def decoded(s: Setup, n: int, gens: list, gen_reps: list, bases: list | None, base_reps: list | None) -> record.Decoded:
    """The first n samples' decode, for the record (texts and timing filled in by decode_dataset)."""
    return record.Decoded(samples=s.samples[:n], prompts=s.prompts[:n], fitted=s.fitted[:n], prompt_fit=s.prompt_fit,
                          gens=gens, gen_reps=gen_reps, completions=[], timing={}, bases=bases, base_reps=base_reps,
                          sequential=s.sequential)


def texts(s: Setup, samples: list, gens: list) -> list[str]:
    """The generations' texts as the task scores them (its postprocessing)."""
    return [s.task.postprocess(x, s.pair.tokenizer.decode(g.tokens, skip_special_tokens=True))
            for x, g in zip(samples, gens)]


def run(cfg: DictConfig) -> dict:
    """Check the config, decode and write metrics.json in the Hydra run dir: status ok, or failed
    with the error (never a partial result passed off as one, never another run's result lost)."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir) / cfg.metrics_file
    head = {
        "schema_version": record.SCHEMA_VERSION,
        "status": "failed",
        "config": OmegaConf.to_container(cfg, resolve=False),
        "overrides": list(hc.overrides.task),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # 1. An ok result already there: this run's own is skipped (resume), another config's is kept.
    done = sweep.read_metrics(out)
    if done.get("status") == "ok":
        if not sweep.same_config(done.get("config"), head["config"]):
            raise FileExistsError(
                f"{out.parent} holds an ok run of another config ([{' '.join(done.get('overrides') or [])}]); "
                f"specexp does not overwrite it. Give this run its own folder (hydra.run.dir=..., or a new "
                f"hydra.sweep.dir), or move {out} away to run here.")
        if cfg.resume:
            log.info("resume: %s already says ok, skipping this run (resume=false runs it again)", out)
            log.info(sweep.run_line(done, skipped=True))
            return done
    # 2. Check the config (specexp.experiment.validate), then decode: before any model loads, a mistake fails
    #    with its key; whatever fails, the JSON says what happened (KeyboardInterrupt too).
    try:
        validate.check(cfg)
        result = decode_dataset(cfg)
    except BaseException as err:
        failed = {**head, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                  "environment": record.environment(None)}
        where = save_metrics(out, failed)
        log.error("run failed (%s: %s); wrote %s", type(err).__name__, err, where)
        log.info(sweep.run_line(failed))
        raise
    # 3. Write the result; where the run dir cannot take it, to a fallback file (and say so).
    metrics = {**head, "status": "ok", **result}
    where = save_metrics(out, metrics)
    if cfg.summary:
        print(summary(metrics, where))
    log.info(sweep.run_line(metrics))
    if where != out:
        raise OSError(f"could not write {out}; the run's results are saved in {where} (status ok): "
                      f"copy that file to {out} to keep it with its run")
    return metrics


def save_metrics(out: Path, data: dict) -> Path:
    """Write `data` to `out` atomically and return `out`. When that fails (a read-only or full
    file system, a vanished folder), write it to the first writable fallback folder instead
    (<temp dir>/specexp-unsaved, ~/.cache/specexp/unsaved, the working directory), log where,
    and return that path: a finished decode is never lost to the write."""
    try:
        record.write_json_atomic(out, data)
        return out
    except OSError as err:
        first = err
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{out.parent.name}-{out.name}"
    for folder in (Path(tempfile.gettempdir()) / "specexp-unsaved", Path.home() / ".cache/specexp/unsaved",
                   Path.cwd()):
        try:
            record.write_json_atomic(folder / name, data)
        except OSError:
            continue
        log.error("could not write %s (%s: %s); saved the run's metrics (status %s) to %s instead",
                  out, type(first).__name__, first, data.get("status"), folder / name)
        return folder / name
    raise OSError(f"could not write {out} ({first}) nor any fallback folder") from first


def _f(x, fmt="{:.2f}"):
    return "n/a" if x is None else fmt.format(x)


def _ci(ci, fmt="{:.1f}") -> str:
    return "n/a" if not ci else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def summary(m: dict, path: Path) -> str:
    """The run's summary. A batched run leads with what it measures as a batch (batch
    throughput, and the speedup against autoregressive at the same batch size, with CIs over
    repeats) and shows the per-row figures (per-row latency) apart, labelled."""
    h = m.get("headline") or sweep.headline(m)
    batched = h["measure"] == sweep.BATCH_THROUGHPUT
    lines = [f"specexp: {m['strategy']} on {m['dataset']['name']} ({m['dataset']['n_samples']} samples), "
             f"pair {m['model_pair']['name']}, {m['environment']['device_name']}"
             + (f", batch {h['batch_size']}" if batched else "")]
    modes = {"strategy": m, "autoregressive": m.get("baseline")}
    if batched:
        pct = int(h["confidence"] * 100)
        rows = [("", "batch tok/s", f"{pct}% CI", "per-row tok/s", "accept rate", "mean acc. len",
                 "per-row ms/token p50")]
        batch_of = {"strategy": h["modes"][h["main_mode"]], "autoregressive": h["modes"].get("autoregressive")}
        for label, a in modes.items():
            if a:
                b = batch_of[label] or {}
                rows.append((label, _f(b.get("tokens_per_second"), "{:.1f}"), _ci(b.get("ci")),
                             _f(a["tokens_per_second"], "{:.1f}"), _f(a["acceptance_rate"], "{:.3f}"),
                             _f(a["mean_accepted_length"]), _f(a["latency_ms_per_token"]["p50"])))
    else:
        rows = [("", "tokens/s", "accept rate", "mean acc. len", "ms/token p50")]
        for label, a in modes.items():
            if a:
                rows.append((label, _f(a["tokens_per_second"], "{:.1f}"), _f(a["acceptance_rate"], "{:.3f}"),
                             _f(a["mean_accepted_length"]), _f(a["latency_ms_per_token"]["p50"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if batched:
        how = (f"no CI: {h['why_no_ci']}" if h["why_no_ci"] else
               "CI: Student t over repeats on the log, timing noise only")
        lines.append(f"  batch tok/s: new tokens of all samples / wall time of the whole dataset's decode at batch "
                     f"{h['batch_size']}, median of {h['repeats']} repeat(s) ({how}); per-row: each row timed from "
                     "admission to its last round, rows sharing the batch counted apart")
        if h.get("speedup") is not None:
            b1 = h.get("speedup_vs_autoregressive_batch1")
            ci = f", {pct}% CI over repeats" if h.get("speedup_ci") else ""
            lines.append(f"  speedup at batch {h['batch_size']} (batch throughput ratio vs {h['speedup_against']}{ci}): "
                         f"{sweep.format_headline_speedup(h)}; vs autoregressive at batch 1: {stats.format_ratio(b1)}")
    cut = fit_line(m["dataset"].get("prompt_fit") or {}, m["dataset"]["n_samples"])
    if cut:  # prompts cut to fit (specexp/models/prompt_ids.py); per sample: prompt_tokens_original, prompt_kept
        lines.append("  " + cut)
    if "speedup" in m:
        sp = m["speedup"]
        pt, wm = sp.get("per_token") or {}, sp.get("wall_time_ratio_matched") or {}
        what = "per-row speedup (throughput ratio of per-row latencies" if batched else "speedup (throughput ratio"
        lines.append(f"  {what}, {int(sp['ci']['confidence'] * 100)}% CI, t on the log scale (docs/statistics.md), "
                     f"n={sp['n_samples']}): {stats.format_speedup(sp)}; per-token ratio geomean "
                     f"{stats.format_ratio(pt.get('geomean'))}, median {stats.format_ratio(pt.get('median'))}; "
                     f"wall-time ratio on identical outputs {stats.format_ratio(wm.get('geomean'))} (geomean, "
                     f"n={wm.get('n', 0)})")
        lines.append(f"  output identical to autoregressive on {m['n_matches_baseline']}/{m['dataset']['n_samples']} samples")
    t = m.get("timing")
    if t:
        lines.append(f"  timing: {t['repeats']} repeat(s) per sample and mode, interleaved; repeat spread median "
                     f"{_f(t['spread_median'], '{:.0%}')}; load {t['loadavg_before']} -> {t['loadavg_after']}; "
                     f"{t['torch_threads']} torch threads")
        lines += [f"  WARNING {w}" for w in t.get("warnings", [])]
    q = m.get("sequential")
    if q:
        lines.append(f"  sampled until it knew ({q['rule']}, target CI half-width {q['target']:g} on the log scale): "
                     f"{q['n0']} first-stage samples, sd of log speedups {q['s0']:.3f} -> N = {q['N']}; "
                     f"{q['stopped']} after {m['dataset']['n_samples']} samples"
                     + (f" (dataset.limit={q['N']} would reach the target)" if q["stopped"] != "target reached" else ""))
    if m.get("cost_model_speedup") and m.get("drafter_forwards") is not None and "baseline" in m:
        c = m["cost_model_speedup"]
        x = {k: "n/a" if v is None else f"{v:.2f}x" for k, v in c.items()}
        lines.append(f"  cost-model speedup: params {x['params']}, previous work {x['previous_work']}, "
                     f"measured {x['measured']}, Leviathan predicted {x['leviathan_predicted']}; "
                     f"forwards {m.get('model_forwards')}")
    if m.get("quality"):
        q = {k: v for k, v in m["quality"].items() if isinstance(v, (int, float))}
        lines.append("  quality: " + ", ".join(f"{k}={v:.4g}" for k, v in q.items()))
    lines.append(f"  metrics: {path}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    # what a sweeper (e.g. Optuna) optimises: the summary's headline (batch throughput on a batched run)
    return sweep.headline(metrics)["tokens_per_second"]


def main() -> None:
    if sys.argv[1:2] == ["console"]:  # `specexp console <overrides>` is `specexp-console <overrides>`
        from specexp.experiment import console

        del sys.argv[1]
        return console.main()
    if sys.argv[1:2] == ["reproduce"]:  # `specexp reproduce RUN_DIR`: decode a recorded run again, compare
        from specexp.experiment import rerun as reproduce

        sys.exit(reproduce.main(sys.argv[2:], decode_dataset))
    register()
    sys.argv[1:] = cli_overrides(sys.argv[1:])
    _app()


# --------------------------------------------------------------------------------------------
# Running the CLI in this process
# --------------------------------------------------------------------------------------------

def run_cli(args: list[str]) -> int:
    """Run `specexp <args>` (e.g. ["-m", "strategy.gamma=1,2"]) in this process and return its
    exit code: the jobs of a basic-launcher sweep share this process's model cache, and a script
    or notebook can run several sweeps one after the other (the tests do)."""
    from hydra.core.global_hydra import GlobalHydra

    old = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = ["specexp", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
        sweep.release_sweep_locks()  # a sweep that raised never reached on_multirun_end


if __name__ == "__main__":
    main()
