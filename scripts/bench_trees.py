"""Model-free tree strategies against prompt lookup on one loaded pair: tokens per target forward
(deterministic under greedy) and the throughput ratio over autoregressive decoding, per strategy,
autoregressive decoded once per sample, then each strategy. A quick check, not a study (no repeats, no CI: use `specexp`).

  .venv/bin/python scripts/bench_trees.py model_pair=smollm2-135m__prompt_lookup dataset=gsm8k \
      dataset.chat=true dataset.limit=3 max_new_tokens=96 -- token_recycling lookup_trie prompt_lookup_chat

Overrides before `--` compose the run's config; after it, the strategies (each a conf/strategy
name, optionally with `:key=value;...` overrides of it, e.g. token_recycling:depth=6)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from specexp.core.decode import generate
from specexp.experiment.config import register
from specexp.experiment.run import set_up

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def main(argv: list[str]) -> None:
    cut = argv.index("--") if "--" in argv else len(argv)
    base, strategies = argv[:cut], argv[cut + 1:] or ["token_recycling", "lookup_trie", "prompt_lookup_chat"]
    setups = {}
    for s in strategies:  # 1. one Setup per strategy (the pair is loaded once per setup: small models)
        name, _, kv = s.partition(":")
        extra = [f"strategy.{x}" for x in kv.split(";") if x]
        setups[s] = set_up(config(base + [f"strategy={name}"] + extra))
    first = next(iter(setups.values()))
    budget = first.task.max_new_tokens
    rows = {s: {"tokens": 0, "forwards": 0, "time": 0.0} for s in strategies}
    ar_time, ar_tokens = 0.0, 0
    for i, prompt in enumerate(first.prompts):  # 2. per sample: autoregressive once, then each strategy
        t0 = time.perf_counter()
        ar = generate(first.target, prompt, budget, first.sampling, first.stopper)
        ar_time, ar_tokens = ar_time + time.perf_counter() - t0, ar_tokens + len(ar.tokens)
        for s, st in setups.items():
            st.policy.start_sample(carry=False)
            t1 = time.perf_counter()
            out = generate(st.target, prompt, budget, st.sampling, st.stopper, st.proposer, st.policy,
                           torch.Generator().manual_seed(i))
            r = rows[s]
            r["time"] += time.perf_counter() - t1
            assert out.tokens == ar.tokens or not st.sampling.greedy, f"{s}: greedy output differs on sample {i}"
            r["tokens"] += len(out.tokens)
            r["forwards"] += len(out.emitted)
            r.setdefault("drafted", []).extend(out.drafted)
    print(f"{len(first.prompts)} samples, max_new_tokens={budget}")
    print(f"{'strategy':34s} {'tok/fwd':>8s} {'nodes/fwd':>9s} {'tok/s':>7s} {'AR tok/s':>8s} {'speedup':>8s}")
    for s, r in rows.items():
        tps, ar_tps = r["tokens"] / r["time"], ar_tokens / ar_time
        nodes = sum(r["drafted"]) / max(len(r["drafted"]), 1)
        print(f"{s:34s} {r['tokens'] / r['forwards']:8.2f} {nodes:9.1f} {tps:7.1f} {ar_tps:8.1f} {tps / ar_tps:8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
