"""Where a feature drafter's acceptance is won and lost, per dataset: the target answers the
first `--per-dataset` chat prompts of each dataset greedily (`--new-tokens`), and the drafter
drafts greedy chains of `--gamma` from every position of each reply, with the target's real
features up to there (as the decode loop hands them over). Prints, per dataset, the acceptance
of each draft position given the ones before, and the mean accepted length per round (tokens per
target forward). No timing: acceptance only, so it is the same on any machine.

`--datasets chat_categories`: 15 kinds of chat prompt (specexp/tasks/chat_categories.py),
`--per-dataset` of each, reported per kind and marked `trained` or `absent` by the drafter's own
build.json (its `reply_mix`), with the pooled rows over the absent and the trained kinds. Each
number is pooled over prompts with a 95% BCa bootstrap CI over prompts. `--eagle-dir` given
twice or more replays every drafter on the same replies and prints each later one minus the
first, over the kinds absent from both trainings, with a paired bootstrap CI over prompts.

`--top B`: also what a draft tree could win at most. From every position, the drafter follows the
target's own greedy path (its own predicted features, as it drafts) and a depth counts when the
target's token is among the drafter's B most likely there; the run of such depths + 1 is the
tokens per target forward of a full tree of branching B (B^depth nodes: an upper bound for any
tree of that branching, e.g. EAGLE-2's), and B = 1 is the greedy chain.

    python scripts/eagle_acceptance.py                          # the smollm2-135m__eagle pair's drafter
    python scripts/eagle_acceptance.py --eagle-dir DIR --per-dataset 8 --datasets gsm8k
    python scripts/eagle_acceptance.py --eagle-dir OLD --eagle-dir NEW --datasets chat_categories --per-dataset 3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from bench import load_prompts

    from specexp.builds.target_replies import replies_with_reads
    from specexp.experiment import instantiate
    from specexp.experiment.config import compose

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eagle-dir", action="append", help="a built feature drafter; give it again to compare "
                    "several on the same replies (default: the smollm2-135m__eagle pair's, built if missing)")
    ap.add_argument("--datasets", default="xsum,gsm8k,humaneval",
                    help="comma list of xsum, gsm8k, humaneval, chat_categories")
    ap.add_argument("--per-dataset", type=int, default=4, help="prompts per dataset, per kind for chat_categories "
                                                              "(the first ones: default 4)")
    ap.add_argument("--new-tokens", type=int, default=48, help="reply length (default 48)")
    ap.add_argument("--gamma", type=int, default=4, help="draft length (default 4)")
    ap.add_argument("--top", type=int, default=0, help="also the full-tree bound for branching 1..TOP (0: no)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    # 1. The drafters (the first loads the target) and the target's greedy replies, read as it writes them.
    dirs = args.eagle_dir or [None]
    pairs = [instantiate.pair(compose(["model_pair=smollm2-135m__eagle", "model_pair.device=cpu",
                                       *([f"model_pair.dir={d}", "model_pair.build=null"] if d else [])]).model_pair)
             for d in dirs]
    target, tok = pairs[0].target, pairs[0].tokenizer
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    prompts = load_prompts(args.datasets.split(","), args.per_dataset, tok, torch.device("cpu"))
    reads = replies_with_reads(target, [p.ids.tolist() for p in prompts], tok.eos_token_id, tok.eos_token_id,
                               args.new_tokens, 1, 1, True, desc="the target answers")
    groups = {}  # a dataset, or a chat_categories kind: the prompts' indices
    for i, p in enumerate(prompts):
        groups.setdefault(p.category or p.dataset, []).append(i)
    out = {"settings": vars(args), "prompts": len(prompts), "prompt_groups": groups, "drafters": []}
    # 2. Per drafter, per prompt: greedy chains of gamma from every reply position (where drafting happens).
    for pair in pairs:
        drafter = pair.get("drafter")
        mix = build_mix(pair.specs["drafter"].name)
        per_prompt = [per_reply(drafter, embed, head, r, args.gamma) for r in reads]
        d = {"eagle_dir": pair.specs["drafter"].name, "reply_mix": mix, "groups": {}}
        print(f"\n{d['eagle_dir']}  (trained on: {', '.join(mix) if mix else 'unknown'})")
        for name, idx in groups.items():
            g = d["groups"][name] = {"prompts": len(idx), "trained": trained(name, mix),
                                     **pooled([per_prompt[i] for i in idx])}
            print(f"  {name:15s} {'trained' if g['trained'] else 'absent ':8s} {g['prompts']} prompts, "
                  f"{g['rounds']:4d} rounds: first draft {g['first_draft']:.2f} {interval(g['first_draft_ci'])}, "
                  f"{g['tokens_per_forward']:.2f} {interval(g['tokens_per_forward_ci'])} tokens per target forward")
            if args.top:
                ranks = torch.cat([path_ranks(drafter, embed, head, reads[i], args.gamma) for i in idx])
                g["tree_bound"] = tree_bound(ranks, args.top)
                for b, t in g["tree_bound"].items():
                    print(f"  {'':15s} full tree of branching {b}, depth {args.gamma}: at most "
                          f"{t['tokens_per_target_forward']:.2f} tokens per target forward")
        for side in (False, True):  # the kinds absent from this drafter's training, then those in it
            idx = [i for name, ix in groups.items() if d["groups"][name]["trained"] is side for i in ix]
            if idx:
                d["absent" if not side else "trained"] = pool = {"prompts": len(idx),
                                                                  **pooled([per_prompt[i] for i in idx])}
                print(f"  {'ALL ' + ('trained' if side else 'absent'):24s} {pool['prompts']} prompts, "
                      f"{pool['rounds']:4d} rounds: first draft {pool['first_draft']:.2f} "
                      f"{interval(pool['first_draft_ci'])}, {pool['tokens_per_forward']:.2f} "
                      f"{interval(pool['tokens_per_forward_ci'])} tokens per target forward")
        d["per_prompt"] = per_prompt
        out["drafters"].append(d)
    if len(pairs) > 1:
        out["compared"] = compare(out["drafters"], groups)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def per_reply(drafter, embed, head, read: dict, gamma: int) -> list[int]:
    """rounds_accepting_at_least (accepted[j]: rounds that accepted >= j drafts) of greedy chains of
    `gamma` from every reply position of one reply, with the target's real features up to there."""
    from specexp.builds.train_feature_drafter import chain_acceptance

    one = {"windows": read["ids"][None], "ids": read["top_ids"][None], "hidden": read["hidden"][None]}
    return chain_acceptance(drafter, embed, head, one, torch.tensor([0]), gamma, 1,
                            [read["prompt_tokens"]])["rounds_accepting_at_least"]


def pooled(rows: list[list[int]]) -> dict:
    """Over prompts: the first draft's acceptance (accepted rounds / rounds, pooled) and tokens per
    target forward (1 + accepted drafts / rounds), each with a 95% bootstrap CI over prompts (the
    prompt is the unit: rounds within one reply are not independent; BCa, specexp.stats)."""
    from specexp.stats import bootstrap_ci

    a = torch.tensor(rows, dtype=torch.float64)  # [prompts, gamma + 1]
    rounds, first, drafts = a[:, 0].numpy(), a[:, 1].numpy(), a[:, 1:].sum(1).numpy()
    out = {"rounds": int(rounds.sum()), "first_draft": float(first.sum() / max(1, rounds.sum())),
           "tokens_per_forward": float(1 + drafts.sum() / max(1, rounds.sum()))}
    lo, hi = bootstrap_ci([first, rounds], lambda f, r, axis: f.sum(axis) / r.sum(axis))
    out["first_draft_ci"] = [lo, hi]  # None, None with one prompt
    lo, hi = bootstrap_ci([drafts, rounds], lambda x, r, axis: 1 + x.sum(axis) / r.sum(axis))
    out["tokens_per_forward_ci"] = [lo, hi]
    out["estimator"] = "pooled over prompts; 95% BCa bootstrap over prompts"
    return out


def compare(drafters: list[dict], groups: dict) -> dict:
    """Each later drafter against the first on the same replies: the difference in first-draft
    acceptance and in tokens per target forward, pooled over the kinds absent from BOTH trainings,
    over those only the later one trained on, over those both trained on, and over all prompts,
    each with a paired bootstrap CI over prompts."""
    from specexp.stats import bootstrap_ci

    base, out = drafters[0], {}
    for d in drafters[1:]:
        seen = {name: (base["groups"][name]["trained"], d["groups"][name]["trained"]) for name in groups}
        res = {}
        for label, names in (("absent_from_both", [n for n, t in seen.items() if t == (False, False)]),
                             ("trained_by_the_later_only", [n for n, t in seen.items() if t == (False, True)]),
                             ("trained_by_both", [n for n, t in seen.items() if t == (True, True)]),
                             ("all", list(groups))):
            idx = [i for name in names for i in groups[name]]
            if len(idx) < 2:
                continue
            a = torch.tensor([base["per_prompt"][i] for i in idx], dtype=torch.float64)
            b = torch.tensor([d["per_prompt"][i] for i in idx], dtype=torch.float64)
            r = a[:, 0].numpy()
            fa, fb = a[:, 1].numpy(), b[:, 1].numpy()
            xa, xb = a[:, 1:].sum(1).numpy(), b[:, 1:].sum(1).numpy()
            diff = lambda u, v, r, axis: (v.sum(axis) - u.sum(axis)) / r.sum(axis)  # noqa: E731
            res[label] = {"kinds": names, "prompts": len(idx),
                          "first_draft_difference": float((fb.sum() - fa.sum()) / r.sum()),
                          "first_draft_difference_ci": list(bootstrap_ci([fa, fb, r], diff)),
                          "tokens_per_forward_difference": float((xb.sum() - xa.sum()) / r.sum()),
                          "tokens_per_forward_difference_ci": list(bootstrap_ci([xa, xb, r], diff))}
            x = res[label]
            print(f"\n{d['eagle_dir']} minus {base['eagle_dir']}, {label} ({x['prompts']} prompts): first draft "
                  f"{x['first_draft_difference']:+.3f} {fmt(x['first_draft_difference_ci'])}, tokens per target "
                  f"forward {x['tokens_per_forward_difference']:+.3f} {fmt(x['tokens_per_forward_difference_ci'])}")
        out[d["eagle_dir"]] = res
    return out


def fmt(ci) -> str:
    return "[n/a]" if ci[0] is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def interval(ci) -> str:
    return "[n/a: one prompt]" if ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def build_mix(eagle_dir: str) -> list[str]:
    """The instruction kinds the drafter's build trained on (its build.json), [] when unknown."""
    p = Path(eagle_dir).expanduser() / "build.json"
    try:
        return sorted(json.loads(p.read_text())["params"]["reply_mix"])
    except (OSError, KeyError, ValueError):
        return []


def trained(group: str, mix: list[str]) -> bool:
    """Whether a dataset or chat kind asks for what one of the training mix's kinds asks for."""
    from specexp.tasks.chat_categories import TRAINED_AS

    kind = TRAINED_AS.get(group, {"humaneval": "code"}.get(group, group))
    return kind is not None and kind in mix


def tree_bound(ranks: torch.Tensor, top: int) -> dict:
    """For branching 1..top: 1 + the mean run of depths whose target token is within the drafter's top b."""
    out = {}
    for b in range(1, top + 1):
        hits = (ranks < b).int().cumprod(1)  # [rounds, depth]: depths 1..j all within the top b
        out[b] = {"tokens_per_target_forward": round(1 + float(hits.sum(1).float().mean()), 4), "rounds": len(ranks)}
    return out


@torch.inference_mode()
def path_ranks(drafter, embed, head, read: dict, depth: int) -> torch.Tensor:
    """[rounds, depth]: from each position t of the reply (real features up to t), the rank of the
    target's token x_{t+1+d} among the drafter's logits at depth d, the drafter fed the target's
    own path with its own predicted features (as it drafts)."""
    from specexp.proposers.feature_drafter import FeatureLM

    x, hidden, lm = read["ids"], read["hidden"], FeatureLM(drafter, embed, head)
    lm.start(x)
    known, out = 0, []
    for t in range(read["prompt_tokens"], x.shape[0] - depth - 1):  # reply positions, as drafting faces them
        lm.add_features(hidden[known:t].float())
        known = t
        logits = lm.forward(x[lm.length: t + 1], keep=1)[-1]
        ranks = []
        for d in range(depth):
            ranks.append(int((logits > logits[x[t + 1 + d]]).sum()))
            logits = lm.forward(x[t + 1 + d].view(1), keep=1)[-1]
        out.append(ranks)
        lm.crop(lm.real_length)
    return torch.tensor(out, dtype=torch.long).view(-1, depth)


if __name__ == "__main__":
    main()
