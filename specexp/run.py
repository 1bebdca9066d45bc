"""The `specexp` entry point: one Hydra job = decode a dataset with a strategy, write metrics.json.

    specexp                                   # the embedded default (tiny pair, HumanEval)
    specexp strategy.gamma=8 sampling=sample  # compose a run
    specexp -m strategy.gamma=1,2,4,8         # sweep
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from specexp import analysis, build, costs, record, show, sweep
from specexp.config import CONF_DIR, register
from specexp.decode import generate
from specexp.models import cached_lm, describe
from specexp.prompting import encode_prompt, eos_ids
from specexp.stopping import Stopper
from specexp.tasks.prompt import PromptTask

log = logging.getLogger("specexp")


def decode_dataset(cfg: DictConfig) -> dict:
    """Load, warm up, decode every sample (baseline and strategy alternating), score, aggregate."""
    torch.manual_seed(cfg.seed)
    pair = build.pair(cfg.model_pair)
    task = build.task(cfg.dataset, pair.tokenizer)
    if cfg.prompt is not None and not isinstance(task, PromptTask):
        raise ValueError(f"prompt= runs the prompt dataset, but the config selects dataset {task.name!r}: "
                         "drop the dataset= override (or use dataset=prompt)")
    if cfg.max_new_tokens is not None:  # the top-level budget overrides the dataset's
        if cfg.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
        task.max_new_tokens = cfg.max_new_tokens
    samples = task.samples()
    proposer, policy = build.strategy(cfg.strategy, pair)
    sampling = build.sampling(cfg.sampling)
    stopper = Stopper(eos_ids(pair), task.stop, pair.tokenizer)
    target = cached_lm(pair.target)  # an encoder-decoder target gets the seq2seq wrapper
    prompts = [encode_prompt(pair.tokenizer, s.prompt, task.max_prompt_tokens, pair.device) for s in samples]
    with_baseline = bool(cfg.baseline) and proposer is not None
    if proposer is not None:
        proposer.records = bool(cfg.records)

    def decode(i: int, prompt, budget: int, speculative: bool):
        gen = torch.Generator(device=pair.device).manual_seed(cfg.seed + i)
        if not speculative:
            return generate(target, prompt, budget, sampling, stopper, generator=gen)
        policy.start_sample(carry=bool(cfg.carry_length_state))  # reset unless state is carried
        return generate(target, prompt, budget, sampling, stopper, proposer, policy, gen, records=cfg.records)

    # Warm-up (untimed): first calls pay for allocations and kernel selection.
    for _ in range(cfg.warmup):
        for spec in ([False, True] if with_baseline else [proposer is not None]):
            decode(0, prompts[0], min(16, task.max_new_tokens), spec)
    if policy is not None:
        policy.reset()

    gens, bases = [], []
    for i, prompt in enumerate(tqdm(prompts, desc=f"decoding {task.name}", unit="sample", leave=False)):
        if with_baseline:  # alternate per sample, so drift in machine speed hits both modes alike
            bases.append(decode(i, prompt, task.max_new_tokens, False))
        gens.append(decode(i, prompt, task.max_new_tokens, proposer is not None))

    def texts(gs):
        return [task.postprocess(s, pair.tokenizer.decode(g.tokens, skip_special_tokens=True))
                for s, g in zip(samples, gs)]

    completions = texts(gens)
    if isinstance(task, PromptTask) and task.show:  # one prompt: print the generation, drafts marked
        show.show_run(show.Printer(sys.stdout), pair.tokenizer, samples[0].prompt, gens[0],
                      bases[0] if with_baseline else None, cfg.strategy.get("name"), entropy=bool(cfg.records))
    result = {
        "model_pair": {"name": cfg.model_pair.name, **{k: describe(v) for k, v in pair.specs.items() if v},
                       "sources": {k: v.source for k, v in pair.specs.items() if v}},
        "dataset": {"name": task.name, "version": task.version, "n_samples": len(samples)},
        "strategy": cfg.strategy.get("name"),
        "sampling": OmegaConf.to_container(cfg.sampling),
        **record.aggregate(gens),
        "quality": task.score(samples, completions),
    }
    if with_baseline:
        matches = [g.tokens == b.tokens for g, b in zip(gens, bases)]
        result["baseline"] = record.aggregate(bases)
        result["quality_baseline"] = task.score(samples, texts(bases))
        result["speedup"] = record.speedup(gens, bases)
        result["n_matches_baseline"] = sum(matches)
        result["all_match_baseline"] = all(matches)
    result["samples"] = [
        record.sample_record(s, p.tolist(), g, c, bases[i] if with_baseline else None)
        for i, (s, p, g, c) in enumerate(zip(samples, prompts, gens, completions))
    ]
    if cfg.records:
        result["draft_records"] = [{"sample": s.id, **r} for s, g in zip(samples, gens) for r in g.records]
        result["analysis"] = analysis.aggregate(result["draft_records"], [g.drafted for g in gens],
                                                entropy_type=getattr(policy, "entropy_type", "shannon"))
    result.update(costs.report(gens, {"target": target, **(getattr(proposer, "cached_models", None) or {})},
                               {r: describe(s) for r, s in pair.specs.items() if s}, costs.classic_gamma(proposer, policy),
                               base=bases if with_baseline else None))
    result["environment"] = record.environment(pair.device)
    return result


def run(cfg: DictConfig) -> dict:
    """Decode and write metrics.json in the Hydra run dir: status ok, or failed with the error
    (never a partial result passed off as one)."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir) / cfg.metrics_file
    head = {
        "schema_version": record.SCHEMA_VERSION,
        "status": "failed",
        "config": OmegaConf.to_container(cfg, resolve=False),
        "overrides": list(hc.overrides.task),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if cfg.resume and out.exists():
        try:
            done = json.loads(out.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("status") == "ok" and sweep.same_config(done.get("config"), head["config"]):
            log.info("resume: %s already says ok, skipping this run", out)
            log.info(sweep.run_line(done, skipped=True))
            return done
        if done.get("status") == "ok":
            log.info("resume: %s was written by another config (the sweep changed); running again", out)
    try:
        result = decode_dataset(cfg)
    except BaseException as err:  # KeyboardInterrupt too: the JSON says what happened
        record.write_json_atomic(out, {**head, "error": f"{type(err).__name__}: {err}",
                                       "traceback": traceback.format_exc(), "environment": record.environment(None)})
        log.error("run failed (%s: %s); wrote %s", type(err).__name__, err, out)
        log.info(sweep.run_line({**head, "error": f"{type(err).__name__}: {err}"}))
        raise
    metrics = {**head, "status": "ok", **result}
    record.write_json_atomic(out, metrics)
    if cfg.summary:
        print(summary(metrics, out))
    log.info(sweep.run_line(metrics))
    return metrics


def _f(x, fmt="{:.2f}"):
    return "n/a" if x is None else fmt.format(x)


def summary(m: dict, path: Path) -> str:
    lines = [f"specexp: {m['strategy']} on {m['dataset']['name']} ({m['dataset']['n_samples']} samples), "
             f"pair {m['model_pair']['name']}, {m['environment']['device_name']}"]
    rows = [("", "tokens/s", "accept rate", "mean acc. len", "ms/token p50")]
    for label, a in (("strategy", m), ("autoregressive", m.get("baseline"))):
        if a:
            rows.append((label, _f(a["tokens_per_second"], "{:.1f}"), _f(a["acceptance_rate"], "{:.3f}"),
                         _f(a["mean_accepted_length"]), _f(a["latency_ms_per_token"]["p50"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if "speedup" in m:
        lines.append(f"  speedup (per-sample time ratio): median {_f(m['speedup']['median'])}x, "
                     f"mean {_f(m['speedup']['mean'])}x; output identical to autoregressive on "
                     f"{m['n_matches_baseline']}/{m['dataset']['n_samples']} samples")
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
    return metrics.get("tokens_per_second")  # what a sweeper (e.g. Optuna) optimises


def hydra_quote(text: str) -> str:
    """`text` as a quoted value of Hydra's override grammar that reads back as exactly `text`:
    backslashes before a quote or at the end are doubled, quotes and `${` escaped."""
    text = re.sub(r"(\\*)(\$\{)", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)\Z", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def cli_overrides(args: list[str]) -> list[str]:
    """The command line as Hydra gets it: `prompt=TEXT` takes TEXT literally (Hydra's grammar would
    read `a, b` as a sweep and `${x}` as an interpolation) unless it is already in quotes, and it
    selects dataset=prompt unless a dataset= override is given."""
    out = []
    for a in args:
        if a.startswith("prompt="):
            v = a[len("prompt="):]
            if not (len(v) >= 2 and v[0] == v[-1] and v[0] in "'\""):
                a = "prompt=" + hydra_quote(v)
        out.append(a)
    if any(a.startswith("prompt=") for a in out) and not any(a.split("=")[0].lstrip("+~") == "dataset" for a in out):
        out.append("dataset=prompt")
    return out


def main() -> None:
    if sys.argv[1:2] == ["console"]:  # `specexp console <overrides>` is `specexp-console <overrides>`
        from specexp import console

        del sys.argv[1]
        return console.main()
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


if __name__ == "__main__":
    main()
