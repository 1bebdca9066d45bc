"""Batched decoding benchmark (docs/batching.md): for each batch size, the batch throughput
(new tokens of all prompts / wall time) and per-sequence latency of our autoregressive loop,
transformers' batched `generate` (left padding, greedy; static batches) and each speculative
strategy, with the strategy's speedup against our autoregressive loop at the same batch size and
the crossover batch size where speculation stops paying.

    python scripts/bench_batch.py --pair tiny --batch-sizes 1,4,8
    python scripts/bench_batch.py --pair smollm2-135m__truncated --strategies speculative,prompt_lookup
    python scripts/bench.py --pair smollm2 --batch-sizes 1,4,8,16     # the same, from the main bench

Batch size 1 runs the batch-1 loop (specexp.core.decode.generate); larger sizes specexp.core.batch_decode. Modes
are interleaved within each repeat (ABC ABC ...) so machine drift hits all alike; a number is the
median over repeats; last, the ceiling: the model's own decode-step forward at each B (no loop,
no prefill), which bounds how far any decode loop can scale. Greedy, EOS only (no stop strings;
`--ignore-eos`: exactly --new-tokens per prompt, vLLM's throughput protocol), the same prompts
for every mode; every row of every mode is checked against our batch-1 autoregressive output
(`identical` column). A strategy written
PAIR:STRATEGY drafts with another pair's proposer (e.g. smollm2-135m__distilled:speculative, its
distilled drafter) for --pair's target; that pair must share the target's tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# scripts/bench.py --batch-sizes: the pair loaded, and the drafters it compares (PAIR:STRATEGY = another pair's drafter)
BENCH_PAIRS = {"tiny": "tiny", "smollm2": "smollm2-135m__truncated"}
BENCH_STRATEGIES = {"tiny": "speculative,prompt_lookup,bigram",
                    "smollm2": "speculative,prompt_lookup,bigram"}  # speculative: the truncated self-drafter


def from_bench(args) -> list[str]:
    """This script's command line for `scripts/bench.py --batch-sizes`, from bench.py's parsed
    `args` (the distilled drafter joins with --distilled-dir)."""
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    strategies = BENCH_STRATEGIES[args.pair]
    argv = ["--pair", BENCH_PAIRS[args.pair], "--batch-sizes", args.batch_sizes,
            "--prompts", str(args.batch_prompts or max(sizes)), "--new-tokens", str(args.new_tokens),
            "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.pair == "smollm2" and args.distilled_dir:
        strategies += ",smollm2-135m__distilled:speculative"
        argv += ["--pair-override", f"smollm2-135m__distilled:model_pair.dir={args.distilled_dir}",
                 "--pair-override", "smollm2-135m__distilled:model_pair.build=null"]
    argv += ["--strategies", strategies, *(["--ignore-eos"] if args.ignore_eos else [])]
    argv += [x for o in args.override for x in ("--override", o)]
    return argv + (["--json", args.json] if args.json else [])


def hf_generate(model, prompts, batch_size: int, new_tokens: int, eos: int,
                ignore_eos: bool = False) -> tuple[list[list[int]], list[float]]:
    """transformers' batched greedy generate over static batches of `batch_size` (left padding);
    returns each row's new tokens (cut after its first EOS) and its latency (its batch's time).
    `ignore_eos`: no EOS ends a row (exactly new_tokens each), as ours with no stop ids."""
    import copy

    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens, gc.do_sample, gc.pad_token_id = new_tokens, False, eos
    gc.eos_token_id = None if ignore_eos else eos
    gc.top_k, gc.top_p, gc.temperature = None, None, None
    out, lat = [], []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s: s + batch_size]
        width = max(p.shape[0] for p in chunk)
        ids = torch.full((len(chunk), width), eos, dtype=torch.long, device=chunk[0].device)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(chunk):
            ids[b, width - p.shape[0]:], mask[b, width - p.shape[0]:] = p, 1
        t0 = time.perf_counter()
        gen = model.generate(ids, attention_mask=mask, generation_config=gc)
        dt = time.perf_counter() - t0
        for row in gen[:, width:].tolist():
            out.append(row[: row.index(eos) + 1] if eos in row and not ignore_eos else row)
            lat.append(dt)
    return out, lat


@torch.inference_mode()
def forward_ceiling(model, sizes: list[int], context: int = 200, repeats: int = 12) -> dict:
    """The upper bound on batched decoding's scaling here: one decode-step forward of the model
    itself (transformers' forward, a `context`-token cache per row, no decode loop, no prefill) at
    each batch size, the sizes interleaved, median of `repeats` after two warm-ups. Returns
    {B: {"ms_per_step", "tokens_per_second", "vs_batch1"}}."""
    import copy

    from specexp.models.cached_lm import cache_arg, cache_of

    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    caches = {B: cache_of(model(input_ids=torch.randint(0, vocab, (B, context), generator=gen).to(model.device),
                                use_cache=True)) for B in sizes}
    times = {B: [] for B in sizes}
    for _ in range(repeats + 2):
        for B in sizes:
            cache, x = copy.deepcopy(caches[B]), torch.randint(0, vocab, (B, 1), generator=gen).to(model.device)
            t0 = time.perf_counter()
            model(input_ids=x, **cache_arg(model, cache), use_cache=True)
            times[B].append(time.perf_counter() - t0)
    med = {B: statistics.median(v[2:]) for B, v in times.items()}
    return {B: {"ms_per_step": 1000 * med[B], "tokens_per_second": B / med[B],
                "vs_batch1": (B / med[B]) / (1 / med[sizes[0]]) if sizes[0] == 1 else None} for B in sizes}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="tiny", help="a conf/model_pair name (default: tiny)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    ap.add_argument("--strategies", default="speculative,prompt_lookup,bigram",
                    help="comma list of conf/strategy names to run speculatively on --pair, or PAIR:STRATEGY "
                         "(another pair's proposer, same tokenizer) (default: %(default)s)")
    ap.add_argument("--pair-override", action="append", default=[], metavar="PAIR:KEY=VALUE",
                    help="an override for the pair of a PAIR:STRATEGY entry (e.g. its model_pair.dir)")
    ap.add_argument("--ignore-eos", action="store_true", help="no EOS ends a row: exactly --new-tokens per prompt")
    ap.add_argument("--batch-sizes", default="1,4,8", help="comma list (default: %(default)s)")
    ap.add_argument("--prompts", type=int, default=8, help="HumanEval prompts (default 8)")
    ap.add_argument("--new-tokens", type=int, default=64, help="most new tokens per prompt; EOS stops (default 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    ap.add_argument("--json", help="output JSON (default outputs/bench/batch-<pair>-<date>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from tqdm.auto import tqdm

    from specexp.core.batch_decode import check_supported, generate_batch
    from specexp.core.decode import generate
    from specexp.core.stopping import Stopper
    from specexp.experiment import instantiate
    from specexp.experiment.config import compose
    from specexp.models.cached_lm import cached_lm
    from specexp.models.prompt_ids import encode_prompt, eos_ids
    from specexp.models.sampling import Sampling

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    base = [f"model_pair={args.pair}", "dataset=humaneval", f"dataset.limit={args.prompts}", *args.override]
    cfg = compose(base)
    pair = instantiate.pair(cfg.model_pair)
    task = instantiate.task(cfg.dataset, pair.tokenizer)
    prompts = [encode_prompt(pair.tokenizer, s.prompt, task.max_prompt_tokens, pair.device) for s in task.samples()]
    if max(sizes) > len(prompts):
        raise SystemExit(f"--batch-sizes up to {max(sizes)} needs at least that many prompts (--prompts)")
    eos = sorted(eos_ids(pair))
    stopper, greedy = Stopper([] if args.ignore_eos else eos), Sampling()
    strategies, other_pairs = {}, {}
    for name in [s for s in args.strategies.split(",") if s]:
        if ":" in name:  # another pair's proposer (its drafter) for this target
            other, strat = name.split(":", 1)
            ovr = [o.split(":", 1)[1] for o in args.pair_override if o.split(":", 1)[0] == other]
            ocfg = compose([f"model_pair={other}", "dataset=humaneval", f"strategy={strat}", *ovr])
            if other not in other_pairs:
                other_pairs[other] = instantiate.pair(ocfg.model_pair)
            if other_pairs[other].tokenizer.get_vocab() != pair.tokenizer.get_vocab():
                raise SystemExit(f"{name}: pair {other} has another tokenizer than {args.pair}")
            proposer, policy = instantiate.strategy(ocfg.strategy, other_pairs[other])
        else:
            proposer, policy = instantiate.strategy(compose(base + [f"strategy={name}"]).strategy, pair)
        check_supported(proposer, pair.target)
        strategies[name] = (proposer, policy)

    def ours(proposer, policy, B, ps, n):
        if B == 1:  # the batch-1 loop
            lm, out = cached_lm(pair.target), []
            for p in ps:
                if policy is not None:
                    policy.start_sample()
                out.append(generate(lm, p, n, greedy, stopper, proposer, policy))
            return out
        return generate_batch(pair.target, ps, n, greedy, stopper, proposer, policy, batch_size=B)

    # each mode: (batch size, prompts, new tokens) -> generations (hf: tokens and latencies)
    modes = {"ours-autoregressive": lambda B, ps=prompts, n=args.new_tokens: ours(None, None, B, ps, n)}
    if not args.no_hf:
        modes["hf-generate"] = lambda B, ps=prompts, n=args.new_tokens: hf_generate(pair.target, ps, B, n, eos[0],
                                                                                  args.ignore_eos)
    for name, (proposer, policy) in strategies.items():
        modes[f"ours-{name}"] = lambda B, ps=prompts, n=args.new_tokens, p=proposer, q=policy: ours(p, q, B, ps, n)

    for fn in modes.values():  # warm-up, untimed: every batch size, a few tokens
        for B in sizes:
            fn(B, prompts[:B], 8)
    reference = [g.tokens for g in ours(None, None, 1, prompts, args.new_tokens)]
    load_before = os.getloadavg()
    times = {(m, B): [] for m in modes for B in sizes}
    lat, tokens, identical = {}, {}, {}
    with tqdm(total=len(sizes) * args.repeats * len(modes), desc="bench-batch", leave=False) as bar:
        for B in sizes:
            for _ in range(args.repeats):
                for m, fn in modes.items():
                    t0 = time.perf_counter()
                    res = fn(B)
                    times[m, B].append(time.perf_counter() - t0)
                    toks, la = res if m == "hf-generate" else ([g.tokens for g in res], [g.wall_time for g in res])
                    lat[m, B], tokens[m, B] = statistics.median(la), sum(len(t) for t in toks)
                    identical[m, B] = sum(t == r for t, r in zip(toks, reference))
                    bar.update(1)
    rows = []
    for B in sizes:
        ar = tokens["ours-autoregressive", B] / statistics.median(times["ours-autoregressive", B])
        for m in modes:
            tps = tokens[m, B] / statistics.median(times[m, B])
            rows.append({"batch_size": B, "mode": m, "tokens_per_second": tps,
                         "latency_s_p50": lat[m, B], "speedup_vs_ours_ar_same_batch": tps / ar,
                         "identical_to_batch1_ar": identical[m, B], "n_prompts": len(prompts),
                         "wall_times_s": times[m, B]})
    crossover = {}
    for name in strategies:
        losing = [r["batch_size"] for r in rows if r["mode"] == f"ours-{name}" and r["speedup_vs_ours_ar_same_batch"] < 1]
        crossover[name] = min(losing) if losing else None
    ar1 = next(r for r in rows if r["batch_size"] == sizes[0] and r["mode"] == "ours-autoregressive")
    summary = {}
    for B in sizes:
        ar = next(r for r in rows if r["batch_size"] == B and r["mode"] == "ours-autoregressive")
        hf = next((r for r in rows if r["batch_size"] == B and r["mode"] == "hf-generate"), None)
        summary[B] = {"ours_ar_vs_ours_ar_at_first_size": ar["tokens_per_second"] / ar1["tokens_per_second"],
                      "ours_ar_vs_hf_generate": ar["tokens_per_second"] / hf["tokens_per_second"] if hf else None}
    ceiling = forward_ceiling(pair.target, sizes)
    result = {"pair": args.pair, "prompts": len(prompts), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "forward_ceiling": ceiling,
              "ignore_eos": args.ignore_eos, "strategies": list(strategies), "argv": sys.argv[1:] if argv is None else argv,
              "autoregressive_scaling": summary,
              "estimator": "tokens/s = new tokens of all prompts / median wall time over repeats (modes interleaved)",
              "torch_threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "rows": rows, "crossover_batch_size": crossover}
    head = f"{'B':>3} {'mode':<26} {'tok/s':>8} {'lat p50 s':>9} {'vs AR@B':>8} {'identical':>9}"
    print(head)
    for r in rows:
        print(f"{r['batch_size']:>3} {r['mode']:<26} {r['tokens_per_second']:>8.1f} {r['latency_s_p50']:>9.2f} "
              f"{r['speedup_vs_ours_ar_same_batch']:>7.2f}x {r['identical_to_batch1_ar']:>4}/{len(prompts)}")
    for B, v in summary.items():
        hf = f"{v['ours_ar_vs_hf_generate']:.2f}x transformers' generate at B={B}" if v["ours_ar_vs_hf_generate"] else ""
        print(f"ours autoregressive at B={B}: {v['ours_ar_vs_ours_ar_at_first_size']:.2f}x its tokens/s at B={sizes[0]}"
              + (f", {hf}" if hf else ""))
    for B, v in ceiling.items():
        print(f"ceiling at B={B}: the model's own decode-step forward (200-token cache, no loop, no prefill) "
              f"{v['ms_per_step']:.1f} ms = {v['tokens_per_second']:.1f} tok/s"
              + (f", {v['vs_batch1']:.2f}x batch 1" if v["vs_batch1"] else ""))
    print(f"crossover batch size (first B where the strategy is slower than our AR at B; None: never): {crossover}")
    print(f"load average {load_before} -> {result['loadavg_after']}, torch threads {torch.get_num_threads()}")
    out = Path(args.json or ROOT / "outputs" / "bench" / f"batch-{args.pair}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
