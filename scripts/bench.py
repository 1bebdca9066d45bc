"""Benchmark (not a test): our decoder vs transformers' generate, side by side in one run.

Measured alternating, after warm-up, with repeats, on the same pair, prompts and gamma, greedy,
a fixed number of new tokens (EOS ignored on both sides):
  ours autoregressive        vs  model.generate()
  ours speculative (gamma)   vs  model.generate(assistant_model=drafter), constant schedule
Prints tokens/s of each, the ratios, and the share of wall time spent outside model forwards.

    python scripts/bench.py                       # the tiny pair (built on first use)
    python scripts/bench.py --target DIR --drafter DIR --gamma 4 --new-tokens 128 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specexp.decode import generate
from specexp.length import Fixed
from specexp.models import CachedLM, resolve_device
from specexp.proposers import DraftModel
from specexp.sampling import Sampling
from specexp.stopping import Stopper
from specexp.tasks.humaneval import HumanEval


class ForwardClock:
    """Wall time spent inside a model's forward (hooks around the top-level module call)."""

    def __init__(self, *models):
        self.total, self._t0 = 0.0, None
        for m in models:
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="target model dir/id (default: the tiny pair)")
    ap.add_argument("--drafter", help="drafter model dir/id (default: the tiny pair)")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=5, help="HumanEval prompts")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.target and args.drafter):
        from specexp.tiny import build_tiny_pair

        root = build_tiny_pair()
        args.target, args.drafter = args.target or f"{root}/target", args.drafter or f"{root}/drafter"
    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    tok = AutoTokenizer.from_pretrained(args.target)
    target = AutoModelForCausalLM.from_pretrained(args.target).to(device).eval()
    drafter = AutoModelForCausalLM.from_pretrained(args.drafter).to(device).eval()
    drafter.generation_config.num_assistant_tokens = args.gamma
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = 0.0
    clock = ForwardClock(target, drafter)
    prompts = [torch.tensor(tok(s.prompt)["input_ids"], device=device)
               for s in HumanEval(limit=args.prompts).samples()]
    n = args.new_tokens

    class _Pair:
        vocab_size = target.get_output_embeddings().weight.shape[0]

        def get(self, role):
            return drafter

    lm, proposer, policy, greedy, no_stop = CachedLM(target), DraftModel().bind(_Pair()), Fixed(args.gamma), Sampling(), Stopper()
    hf_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    modes = {
        "ours autoregressive": lambda p: generate(lm, p, n, greedy, no_stop).tokens,
        "hf generate": lambda p: target.generate(p[None], **hf_kw)[0, p.shape[0]:].tolist(),
        "ours speculative": lambda p: generate(lm, p, n, greedy, no_stop, proposer, policy).tokens,
        "hf assisted": lambda p: target.generate(p[None], assistant_model=drafter, **hf_kw)[0, p.shape[0]:].tolist(),
    }
    for fn in modes.values():  # warm-up
        fn(prompts[0][:32])
    tps = {k: [] for k in modes}
    outside = {k: [] for k in modes}
    outputs = {k: [] for k in modes}
    for r in range(args.repeats):
        for p in prompts:
            for name, fn in modes.items():  # alternate: every mode sees the same machine state
                clock.total = 0.0
                sync()
                t0 = time.perf_counter()
                out = fn(p)
                sync()
                dt = time.perf_counter() - t0
                tps[name].append(len(out) / dt)
                outside[name].append(1 - clock.total / dt)
                if r == 0:
                    outputs[name].append(out)
    print(f"pair: {args.target} / {args.drafter}; gamma={args.gamma}; {len(prompts)} prompts x {n} tokens "
          f"x {args.repeats} repeats; device={device}, threads={torch.get_num_threads()}")
    print(f"{'mode':<22}{'tokens/s (median)':>18}{'outside forwards':>18}")
    for name in modes:
        print(f"{name:<22}{statistics.median(tps[name]):>18.1f}{statistics.median(outside[name]):>17.1%}")
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(f"ratio ours/hf, autoregressive: {med['ours autoregressive'] / med['hf generate']:.2f}x")
    print(f"ratio ours/hf, speculative:    {med['ours speculative'] / med['hf assisted']:.2f}x")
    print(f"speculative speedup over own autoregressive: ours {med['ours speculative'] / med['ours autoregressive']:.2f}x, "
          f"hf {med['hf assisted'] / med['hf generate']:.2f}x")
    same = all(a == b for a, b in zip(outputs["ours speculative"], outputs["hf generate"]))
    print(f"identical outputs (ours speculative == hf greedy): {same}")


if __name__ == "__main__":
    main()
