"""What a verification forward costs on this machine: the target's forward over w new tokens
(w = 1 + the draft length) after a context of `--context` tokens, relative to a 1-token forward,
and the feature drafter's 1-token forward relative to the same (c). The widths alternate within
each repeat (a load change hits them all), and each ratio is the median over repeats of
(time at width w / time at width 1 in the same repeat), with a 95% bootstrap CI
(specexp.stats.bootstrap_ci). Leviathan et al.'s formula assumes a verification forward costs one
autoregressive step; on a CPU it does not, and this table says by how much.

`--profile`: also where a forward's time goes at each width, from torch.profiler's self CPU time
per operator over `--profile-repeats` forwards, grouped as matrix multiplies (the linear layers
and the LM head), attention, cache and copies, and the rest. The profiler adds its own per-op
cost, so read the groups' shares and their growth with the width, not the absolute times.

    OMP_NUM_THREADS=2 python scripts/verify_cost.py --threads 2 --json outputs/bench/verify-cost.json
    OMP_NUM_THREADS=2 python scripts/verify_cost.py --threads 2 --widths 1,3,5 --repeats 10 --profile
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from specexp.experiment import instantiate
    from specexp.experiment.config import compose
    from specexp.models.cached_lm import cached_lm
    from specexp.proposers import DraftModel
    from specexp.stats import bootstrap_ci

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1,2,3,4,5,6,8,11,16", help="tokens per forward (1 is the reference)")
    ap.add_argument("--context", type=int, default=400, help="tokens already in the cache (default 400)")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--vocab", type=int, default=8192, help="the feature drafter's subset head (0: whole head)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--profile", action="store_true", help="also where each width's time goes, by operator group")
    ap.add_argument("--profile-repeats", type=int, default=10, help="forwards profiled per width (default 10)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = sorted({1, *map(int, args.widths.split(","))})

    pair = instantiate.pair(compose(["model_pair=smollm2-135m__eagle"]).model_pair)  # builds the drafter if missing
    target = cached_lm(pair.target, vocab_size=pair.vocab_size)
    target.keep_hidden = True  # as when a feature drafter verifies
    drafter = DraftModel("drafter", vocab=args.vocab or None).bind(pair).lm
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, len(pair.tokenizer), (n,), generator=gen)  # noqa: E731
    hidden = pair.target.config.hidden_size
    times = {w: [] for w in widths} | {"drafter": []}

    def timed(f) -> float:
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    with torch.inference_mode():
        ctx = ids(args.context)
        target.reset()
        target.forward(ctx, keep=1)
        drafter.reset()
        drafter.add_features(torch.zeros(args.context, hidden))
        drafter.forward(ctx, keep=1)
        for _ in range(args.repeats + 1):  # the first repeat warms up and is dropped
            for w in widths:
                x = ids(w)
                times[w].append(timed(lambda: target.forward(x, keep=w)))
                target.crop(args.context)
            drafter.pending = drafter.pending[:0]
            drafter.add_features(torch.zeros(1, hidden))  # the last context token's feature
            x = ids(1)
            times["drafter"].append(timed(lambda: drafter.forward(x, keep=1)))
            drafter.crop(args.context)
    base = np.array(times[1][1:])
    out = {"settings": vars(args), "reference_ms": float(np.median(base) * 1e3), "ratios": {}}
    for key in [*widths[1:], "drafter"]:
        r = np.array(times[key][1:]) / base
        lo, hi = bootstrap_ci([r], lambda a, axis=-1: np.median(a, axis=axis))
        out["ratios"][str(key)] = {"median": float(np.median(r)), "ci95": [lo, hi], "n": len(r)}
    print(f"1-token forward after {args.context} tokens: {out['reference_ms']:.1f} ms (median of {len(base)})")
    for key, v in out["ratios"].items():
        what = f"{key:>2}-token forward" if key != "drafter" else "drafter forward (c)"
        print(f"  {what:>20}: {v['median']:.2f}x  [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]")
    if args.profile:
        with torch.inference_mode():
            out["profile"] = profile_widths(target, widths, ids, args.context, args.profile_repeats)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


GROUPS = {"matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm"),
          "attention": ("aten::_scaled_dot_product",),
          "cache and copies": ("aten::cat", "aten::copy_", "aten::index_copy")}
NAMES = [*GROUPS, "rest"]  # every operator falls in one of these


def group_of(op: str) -> str:
    """The group of a profiled operator's name (by prefix; anything else: "rest")."""
    return next((g for g, prefixes in GROUPS.items() if op.startswith(prefixes)), "rest")


def profile_widths(target, widths: list[int], ids, context: int, repeats: int) -> dict:
    """{width: {group: ms per forward}} from torch.profiler's self CPU time (see the docstring)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for w in widths:
        x = ids(w)
        target.forward(x, keep=w)  # warm this width's kernels outside the profile
        target.crop(context)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                target.forward(x, keep=w)
                target.crop(context)
        groups = dict.fromkeys(NAMES, 0.0)
        for e in prof.key_averages():
            groups[group_of(e.key)] += e.self_cpu_time_total / 1e3 / repeats  # us -> ms per forward
        out[str(w)] = {g: round(ms, 2) for g, ms in groups.items()}
    print(f"where a forward's time goes (profiler self CPU ms per forward, {repeats} forwards per width):")
    print(f"  {'width':>5}  " + "  ".join(f"{g:>17}" for g in NAMES) + f"  {'total':>7}")
    for w, groups in out.items():
        print(f"  {w:>5}  " + "  ".join(f"{ms:17.1f}" for ms in groups.values()) + f"  {sum(groups.values()):7.1f}")
    return out


if __name__ == "__main__":
    main()
