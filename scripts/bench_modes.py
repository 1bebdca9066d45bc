"""scripts/bench.py's modes: ours and transformers' side by side, each a `Mode` whose `run` decodes
one prompt (MODE_KEYS: every key; `make_modes`: the wanted ones on a loaded pair, with the
forward clocks that separate model time from the loop's). What each mode compares: bench.py's
docstring and docs/benchmark.md."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from bench_hf import ForwardClock, counting_rounds, hf_sampling, set_assistant

from specexp.core.decode import Generation, generate
from specexp.core.stopping import Stopper
from specexp.length import Fixed
from specexp.models.cached_lm import cached_lm
from specexp.models.loading import ModelSpec
from specexp.models.prompt_ids import eos_ids
from specexp.models.sampling import Sampling
from specexp.proposers import Bigram, DraftModel, LookupFirst, PromptLookup

MODE_KEYS = ["ours-ar", "hf-ar", "ours-spec", "ours-spec-vocab", "hf-assisted", "ours-lookup", "hf-lookup",
             "ours-truncated", "hf-truncated", "ours-bigram",
             # (bench_proposers below): the feature drafter, the shipped model-free pairs, the datastore
             "ours-eagle", "ours-eagle-vocab", "ours-eagle-entropy", "ours-eagle-vocab-entropy",
             "ours-eagle-heuristic", "ours-eagle-lookup", "ours-eagle-lookup-entropy", "ours-eagle-lookup-heuristic",
             "ours-eagle-store-entropy", "ours-eagle-cost", "ours-eagle-store-cost", "ours-eagle-tree",
             "ours-eagle-tree-sized",
             "ours-lookup-shipped", "ours-bigram-shipped", "ours-lookup-store",
             # (tree_modes below): token trees, ours only; --tree-sizes adds ours-recycling-b<branching> modes
             "ours-recycling", "ours-recycling-sized", "ours-lookup-trie"]
# The feature drafter's tree modes: strategy=tree as shipped (branch 2, width 4, depth 4), and EAGLE-2's
# re-ranked tree (branch 4, width 8, depth 6) cut to the size that pays best on this machine (<= 32 nodes)
EAGLE_TREES = (("ours-eagle-tree", "ours eagle tree 2x4", []),
               ("ours-eagle-tree-sized", "ours eagle tree sized<=32",
                ["strategy.depth=6", "strategy.proposer.branch=4", "strategy.proposer.width=8",
                 "strategy.proposer.total=32", "strategy.proposer.size=machine"]))
# The tree modes' Token Recycling: matrix width, template (children per node at depth 0, 1, 2, ...)
TREE_K, TREE_BRANCHING = 8, [4, 2, 1]


@dataclass
class Mode:
    key: str  # MODE_KEYS
    name: str  # as printed
    side: str  # "ours" | "hf"
    run: Callable[[torch.Tensor, Sampling, int, int], Generation]  # (prompt, sampling, seed, budget)
    gamma: int | None = None  # draft length per round (None: autoregressive)
    fixed_gamma: bool = False  # drafts exactly gamma tokens every round (the Leviathan formula applies)
    drafter: str | None = None  # the drafting model's role, if a model drafts
    counterpart: str | None = None  # the other side's mode key
    tree: bool = False  # drafts token trees (ours only: transformers has no tree counterpart)


def ours_mode(key, name, target_lm, stopper, proposer=None, policy=None, **kw) -> Mode:
    def run(prompt, sampling, seed, budget):
        gen = torch.Generator(device=prompt.device).manual_seed(seed)
        if policy is not None:
            policy.start_sample(carry=False)
        return generate(target_lm, prompt, budget, sampling, stopper, proposer, policy, gen)

    return Mode(key, name, "ours", run, **kw)


def hf_mode(key, name, target, clocks: dict, eos: list[int], extra: dict | None = None, **kw) -> Mode:
    """transformers' generate on `target`; `clocks`: role -> ForwardClock of the models it runs."""

    def run(prompt, sampling, seed, budget):
        for c in clocks.values():
            c.reset()
        torch.manual_seed(seed)
        with counting_rounds(target) as rounds:
            out = target.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=budget,
                                  eos_token_id=eos, pad_token_id=eos[0], **hf_sampling(sampling), **(extra or {}))
        return Generation(tokens=out[0, prompt.shape[0]:].tolist(),
                          drafted=[k for k, _ in rounds], accepted=[n for _, n in rounds],
                          model_forwards={r: c.forwards for r, c in clocks.items()},
                          model_forward_seconds={r: c.seconds for r, c in clocks.items()},
                          model_prefills={r: min(c.forwards, 1) for r, c in clocks.items()},
                          model_prefill_seconds={r: c.prefill_seconds for r, c in clocks.items()})

    return Mode(key, name, "hf", run, **kw)


def add_truncated(pair, layers: int) -> int | None:
    """Register the layer-truncated self-drafter as the pair's "truncated" role (loaded by
    Pair.get, sharing the target's weights); returns its depth, or None when the target cannot be
    truncated (no `.layers`, or a single layer)."""
    blocks = getattr(pair.target.get_decoder(), "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) < 2:
        return None
    layers = max(1, min(layers, len(blocks) - 1))
    pair.specs["truncated"] = dataclasses.replace(pair.specs["target"], layers=layers)
    model = pair.get("truncated")
    model.generation_config = copy.deepcopy(model.generation_config)  # a shallow copy shares the target's
    return layers


def make_modes(pair, args, sync: Callable[[], None] = lambda: None) -> tuple[list[Mode], list[ForwardClock]]:
    """Every mode of the benchmark (filtered by args.modes), and the forward clocks to remove."""
    wanted = set(args.modes.split(",")) if args.modes else set(MODE_KEYS)
    unknown = wanted - set(MODE_KEYS)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}: choose from {', '.join(MODE_KEYS)}")
    target, eos = pair.target, eos_ids(pair)
    stopper = Stopper(eos)
    target_lm = cached_lm(target)
    g, lt, n = args.gamma, args.lookup_tokens, args.lookup_ngram
    layers = add_truncated(pair, args.truncated_layers) if wanted & {"ours-truncated", "hf-truncated"} else None
    drafter_label = "distilled" if args.pair == "smollm2" else "drafter"
    clocks = {"target": ForwardClock(target, sync)}
    all_clocks = [clocks["target"]]

    def clocks_with(role):
        c = ForwardClock(pair.get(role), sync)
        all_clocks.append(c)
        return {"target": clocks["target"], role: c}

    modes = []
    if "ours-ar" in wanted:
        modes.append(ours_mode("ours-ar", "ours autoregressive", target_lm, stopper, counterpart="hf-ar"))
    if "hf-ar" in wanted:
        modes.append(hf_mode("hf-ar", "hf generate", target, clocks, eos, counterpart="ours-ar"))
    if "ours-spec" in wanted:
        modes.append(ours_mode("ours-spec", f"ours speculative ({drafter_label})", target_lm, stopper,
                               DraftModel("drafter").bind(pair), Fixed(g).bind(pair), gamma=g, fixed_gamma=True,
                               drafter="drafter", counterpart="hf-assisted"))
    vocab_file = Path(getattr(pair.get("drafter").config, "_name_or_path", "") or ".") / "draft_vocab.json" \
        if "ours-spec-vocab" in wanted and args.draft_vocab else None
    if vocab_file is not None and vocab_file.is_file():  # FR-Spec-style subset head: ours only
        modes.append(ours_mode("ours-spec-vocab", f"ours speculative ({drafter_label}, {args.draft_vocab // 1024}k head)",
                               target_lm, stopper, DraftModel("drafter", vocab=args.draft_vocab).bind(pair),
                               Fixed(g).bind(pair), gamma=g, fixed_gamma=True, drafter="drafter",
                               counterpart="hf-assisted"))
    if "hf-assisted" in wanted:
        set_assistant(pair.get("drafter"), g)
        modes.append(hf_mode("hf-assisted", f"hf assisted ({drafter_label})", target, clocks_with("drafter"), eos,
                             {"assistant_model": pair.get("drafter")}, gamma=g, fixed_gamma=True,
                             drafter="drafter", counterpart="ours-spec"))
    if "ours-lookup" in wanted:
        modes.append(ours_mode("ours-lookup", "ours prompt lookup", target_lm, stopper,
                               PromptLookup(max_ngram=n, min_ngram=1, prefer="first", bigram=None).bind(pair),
                               Fixed(lt).bind(pair), gamma=lt, counterpart="hf-lookup"))
    if "hf-lookup" in wanted:
        modes.append(hf_mode("hf-lookup", "hf prompt lookup", target, clocks, eos,
                             {"prompt_lookup_num_tokens": lt, "max_matching_ngram_size": n}, gamma=lt,
                             counterpart="ours-lookup"))
    if layers and "ours-truncated" in wanted:
        modes.append(ours_mode("ours-truncated", f"ours speculative (truncated {layers}L)", target_lm, stopper,
                               DraftModel("truncated").bind(pair), Fixed(g).bind(pair), gamma=g, fixed_gamma=True,
                               drafter="truncated", counterpart="hf-truncated"))
    if layers and "hf-truncated" in wanted:
        set_assistant(pair.get("truncated"), g)
        modes.append(hf_mode("hf-truncated", f"hf assisted (truncated {layers}L)", target, clocks_with("truncated"),
                             eos, {"assistant_model": pair.get("truncated")}, gamma=g, fixed_gamma=True,
                             drafter="truncated", counterpart="ours-truncated"))
    if "ours-bigram" in wanted:
        from specexp.experiment.instantiate import provide_builds  # the table, built as a run builds it

        modes.append(ours_mode("ours-bigram", "ours bigram", target_lm, stopper,
                               provide_builds(Bigram(corpus=args.bigram_corpus), pair).bind(pair), Fixed(g).bind(pair),
                               gamma=g, fixed_gamma=True))
    modes += tree_modes(pair, args, wanted, target_lm, stopper)
    if args.pair == "smollm2" or args.eagle_dir:  # the feature drafter, the shipped model-free pairs
        for key, name, proposer, policy, kw in bench_proposers(pair, wanted, g, args.draft_vocab, args.eagle_dir):
            modes.append(ours_mode(key, name, target_lm, stopper, proposer, policy, **kw))
    return modes, all_clocks


# ------------------------------------------------------------------------------ token trees
def parse_tree_sizes(text: str | None) -> list[list[int]]:
    """--tree-sizes "4,2,1;8,2,1" -> [[4, 2, 1], [8, 2, 1]] (each a Token Recycling branching)."""
    return [[int(b) for b in part.split(",")] for part in (text or "").split(";") if part.strip()]


def tree_key(branching: list[int]) -> str:
    """The mode key of a --tree-sizes template: [8, 2, 1] -> ours-recycling-b8-2-1."""
    return "ours-recycling-b" + "-".join(map(str, branching))


def tree_modes(pair, args, wanted: set[str], target_lm, stopper, note: Callable[[str], None] = print) -> list[Mode]:
    """The token-tree modes (model-free, so no drafter clock; batch 1, decoder-only targets): Token
    Recycling (k=8, matrix reset per prompt, seeded from the prompt's bigrams) with the fixed
    template TREE_BRANCHING, with a tree sized for this machine (`size="machine"`, at most
    --tree-max-nodes nodes, --tree-sized-depth levels), and with each --tree-sizes template, the
    fixed ones cut at --tree-depth levels (Fixed(depth)); each with a prompt-lookup trie of
    --tree-lookup-nodes nodes merged in (0: none). Then strategy=lookup_trie as composed (its conf
    defaults, its own depth)."""
    from specexp.experiment import instantiate as build
    from specexp.experiment.config import compose
    from specexp.proposers.token_recycling import TokenRecycling

    depth = args.tree_depth
    variants = []  # (key, name, TokenRecycling's arguments besides the shared ones)
    if "ours-recycling" in wanted:
        variants.append(("ours-recycling", f"ours recycling {','.join(map(str, TREE_BRANCHING))} d{depth}",
                         {"branching": TREE_BRANCHING}))
    if "ours-recycling-sized" in wanted:
        sized_depth = getattr(args, "tree_sized_depth", depth)
        variants.append(("ours-recycling-sized", f"ours recycling sized<={args.tree_max_nodes} d{sized_depth}",
                         {"branching": TREE_BRANCHING, "size": "machine", "max_nodes": args.tree_max_nodes,
                          "depth": sized_depth}))
    for b in parse_tree_sizes(args.tree_sizes):
        if b == TREE_BRANCHING and "ours-recycling" in wanted:
            note(f"note: --tree-sizes {','.join(map(str, b))} is ours-recycling's template: measured once")
            continue
        variants.append((tree_key(b), f"ours recycling {','.join(map(str, b))} d{depth}", {"branching": b}))
    out, lookup = [], getattr(args, "tree_lookup_nodes", 0)
    for key, name, extra in variants:
        levels = extra.pop("depth", depth)
        if lookup:
            extra["lookup_nodes"], name = lookup, f"{name} +lookup{lookup}"
        proposer = TokenRecycling(k=TREE_K, carry=False, prompt_init=True, **extra)
        out.append(ours_mode(key, name, target_lm, stopper, proposer.bind(pair), Fixed(levels).bind(pair),
                             gamma=levels, tree=True))
    if "ours-lookup-trie" in wanted:
        cfg = compose(["strategy=lookup_trie"]).strategy
        proposer, policy = build.strategy(cfg, pair)
        out.append(ours_mode("ours-lookup-trie", f"ours lookup trie <={cfg.proposer.max_nodes} d{cfg.depth}",
                             target_lm, stopper, proposer, policy, gamma=int(cfg.depth), tree=True))
    return out


# ------------------------------------------------------------------------ the benchmark's modes
def bench_proposers(pair, wanted: set[str], gamma: int, vocab: int, eagle_dir: str | None = None):
    """scripts/bench.py's feature-drafter modes on a loaded SmolLM2 pair, as (key, name, proposer, policy,
    Mode fields): the feature drafter (registered as the pair's role "eagle"; `eagle_dir`, else
    the smollm2-135m__eagle pair's own, built if missing) with Fixed(gamma), its `vocab` subset
    head, the shipped entropy_static rule (full and subset head) and heuristic rule; the subset
    head behind a prompt lookup (`LookupFirst`) with each of the three, and behind a prompt lookup
    and the target's reply datastore (strategy lookup_store_entropy, built if missing); and the
    shipped model-free strategies exactly as composed (smollm2-135m__prompt_lookup,
    smollm2-135m__bigram, and the lookup with the datastore, prompt_lookup_store). The datastore
    and the bigram table are built as a run builds them (instantiate.provide_builds)."""
    from hydra.utils import instantiate

    from specexp.experiment import instantiate as build
    from specexp.experiment.config import compose
    from specexp.length import Fixed

    out = []
    if any(k.startswith("ours-eagle") for k in wanted):
        if eagle_dir is None:
            eagle_dir = instantiate(compose(["model_pair=smollm2-135m__eagle"]).model_pair.build)
        pair.specs["eagle"] = ModelSpec(name=str(eagle_dir))
        fixed = {"gamma": gamma, "fixed_gamma": True, "drafter": "eagle", "counterpart": "hf-assisted"}
        dynamic = {"drafter": "eagle", "counterpart": "hf-assisted"}
        head = f"{vocab // 1024}k head"
        lookup = f"ours lookup + eagle ({head})"  # LookupFirst: prompt lookup when the text repeats, else eagle
        store = f"ours lookup + datastore + eagle ({head})"  # ... else the target's replies, else eagle
        for key, name, v, first, policy, kw in (  # policy: Fixed(gamma), or a shipped strategy's length rule
                ("ours-eagle", "ours eagle (feature drafter)", None, None, "fixed", fixed),
                ("ours-eagle-vocab", f"ours eagle ({head})", vocab, None, "fixed", fixed),
                ("ours-eagle-entropy", "ours eagle, entropy_static", None, None, "entropy_static", dynamic),
                ("ours-eagle-vocab-entropy", f"ours eagle ({head}), entropy_static", vocab, None, "entropy_static",
                 dynamic),
                ("ours-eagle-heuristic", "ours eagle, heuristic", None, None, "heuristic", dynamic),
                ("ours-eagle-lookup", f"{lookup}, gamma {gamma}", vocab, "lookup", "fixed", dynamic),
                ("ours-eagle-lookup-entropy", f"{lookup}, entropy_static", vocab, "lookup", "entropy_static", dynamic),
                ("ours-eagle-lookup-heuristic", f"{lookup}, heuristic", vocab, "lookup", "heuristic", dynamic),
                ("ours-eagle-store-entropy", f"{store}, entropy_static", vocab, "store", "entropy_static", dynamic),
                ("ours-eagle-cost", f"ours eagle ({head}), cost_aware", vocab, None, "cost_aware", dynamic),
                ("ours-eagle-store-cost", f"{store}, cost_aware", vocab, "store", "cost_aware", dynamic)):
            if key in wanted and (v is None or vocab):
                rule = Fixed(gamma) if policy == "fixed" else instantiate(
                    compose([f"strategy={policy}"]).strategy.length, _convert_="all")  # built fresh per mode
                if first is None:
                    proposer = DraftModel("eagle", vocab=v)
                else:  # "store": the shipped strategy's datastore, as composed
                    datastore = instantiate(compose(["strategy=lookup_store_entropy"]).strategy.proposer.datastore) \
                        if first == "store" else None
                    proposer = LookupFirst("eagle", vocab=v, datastore=datastore)
                out.append((key, name, build.provide_builds(proposer, pair).bind(pair), rule.bind(pair), kw))
        for key, name, overrides in EAGLE_TREES:  # EAGLE-2's tree from the target's features (strategy=tree)
            if key in wanted:
                cfg = compose(["strategy=tree", "strategy.proposer.model=eagle", *overrides]).strategy
                proposer, policy = build.strategy(cfg, pair)
                out.append((key, f"{name} d{cfg.depth}", proposer, policy,
                            {**dynamic, "gamma": int(cfg.depth), "tree": True}))
    for key, name, overrides in (
            ("ours-lookup-shipped", "ours prompt_lookup (shipped pair)", ["model_pair=smollm2-135m__prompt_lookup"]),
            ("ours-bigram-shipped", "ours bigram (shipped pair)", ["model_pair=smollm2-135m__bigram"]),
            ("ours-lookup-store", "ours prompt_lookup_store (lookup + datastore)",
             ["model_pair=smollm2-135m__prompt_lookup", "strategy=prompt_lookup_store"])):
        if key in wanted:
            proposer, policy = build.strategy(compose(overrides).strategy, pair)
            out.append((key, name, proposer, policy, {}))
    return out
