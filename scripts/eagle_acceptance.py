"""Where a feature drafter's acceptance is won and lost, per dataset: the target answers the
first `--per-dataset` chat prompts of each dataset greedily (`--new-tokens`), and the drafter
drafts greedy chains of `--gamma` from every position of each reply, with the target's real
features up to there (as the decode loop hands them over). Prints, per dataset, the acceptance
of each draft position given the ones before, and the mean accepted length per round (tokens per
target forward). No timing: acceptance only, so it is the same on any machine.

`--top B`: also what a draft tree could win at most. From every position, the drafter follows the
target's own greedy path (its own predicted features, as it drafts) and a depth counts when the
target's token is among the drafter's B most likely there; the run of such depths + 1 is the
tokens per target forward of a full tree of branching B (B^depth nodes: an upper bound for any
tree of that branching, e.g. EAGLE-2's), and B = 1 is the greedy chain.

    python scripts/eagle_acceptance.py                          # the smollm2-135m__eagle pair's drafter
    python scripts/eagle_acceptance.py --eagle-dir DIR --per-dataset 8 --datasets gsm8k
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
    from specexp.builds.train_feature_drafter import acceptance_summary, chain_acceptance
    from specexp.experiment import instantiate
    from specexp.experiment.config import compose

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eagle-dir", help="a built feature drafter (default: the smollm2-135m__eagle pair's, "
                                        "built if missing)")
    ap.add_argument("--datasets", default="xsum,gsm8k,humaneval", help="comma list of xsum, gsm8k, humaneval")
    ap.add_argument("--per-dataset", type=int, default=4, help="prompts per dataset (the first ones: default 4)")
    ap.add_argument("--new-tokens", type=int, default=48, help="reply length (default 48)")
    ap.add_argument("--gamma", type=int, default=4, help="draft length (default 4)")
    ap.add_argument("--top", type=int, default=0, help="also the full-tree bound for branching 1..TOP (0: no)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    own = [f"model_pair.dir={args.eagle_dir}", "model_pair.build=null"] if args.eagle_dir else []
    pair = instantiate.pair(compose(["model_pair=smollm2-135m__eagle", "model_pair.device=cpu", *own]).model_pair)
    target, drafter, tok = pair.target, pair.get("drafter"), pair.tokenizer
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    out = {"eagle_dir": pair.specs["drafter"].name, "settings": vars(args), "datasets": {}}
    for name in args.datasets.split(","):
        prompts = [p.ids.tolist() for p in load_prompts([name], args.per_dataset, tok, torch.device("cpu"))]
        reads = replies_with_reads(target, prompts, tok.eos_token_id, tok.eos_token_id, args.new_tokens, 1, 1, False)
        accepted = sum(torch.tensor(chain_acceptance(  # rounds from every reply position (p >= P: where drafting happens)
            drafter, embed, head, {"windows": r["ids"][None], "ids": r["top_ids"][None], "hidden": r["hidden"][None]},
            torch.tensor([0]), args.gamma, 1, [r["prompt_tokens"]])["rounds_accepting_at_least"]) for r in reads)
        d = out["datasets"][name] = {"prompts": len(reads), **acceptance_summary(accepted)}
        print(f"{name:10s} {d['prompts']} prompts, {d['rounds']} rounds: acceptance by position "
              f"{' / '.join(f'{a:.2f}' for a in d['acceptance_per_position'])}, "
              f"{d['mean_accepted_length']:.2f} tokens per target forward")
        if args.top:
            ranks = torch.cat([path_ranks(drafter, embed, head, r, args.gamma) for r in reads])
            d["tree_bound"] = {}
            for b in range(1, args.top + 1):
                hits = (ranks < b).int().cumprod(1)  # [rounds, depth]: depths 1..j all within the top b
                tau = 1 + float(hits.sum(1).float().mean())
                d["tree_bound"][b] = {"tokens_per_target_forward": round(tau, 4), "rounds": len(ranks)}
                print(f"{'':10s} full tree of branching {b}, depth {args.gamma}: at most {tau:.2f} tokens per "
                      "target forward")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
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
