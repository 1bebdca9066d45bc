"""Where a feature drafter's acceptance is won and lost, per dataset: the target answers the
first `--per-dataset` chat prompts of each dataset greedily (`--new-tokens`), and the drafter
drafts greedy chains of `--gamma` from every position of each reply, with the target's real
features up to there (as the decode loop hands them over). Prints, per dataset, the acceptance
of each draft position given the ones before, and the mean accepted length per round (tokens per
target forward). No timing: acceptance only, so it is the same on any machine.

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

    from specexp import build
    from specexp.config import compose
    from specexp.eagle import acceptance_summary, chain_acceptance
    from specexp.replies import replies_with_reads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eagle-dir", help="a built feature drafter (default: the smollm2-135m__eagle pair's, "
                                        "built if missing)")
    ap.add_argument("--datasets", default="xsum,gsm8k,humaneval", help="comma list of xsum, gsm8k, humaneval")
    ap.add_argument("--per-dataset", type=int, default=4, help="prompts per dataset (the first ones: default 4)")
    ap.add_argument("--new-tokens", type=int, default=48, help="reply length (default 48)")
    ap.add_argument("--gamma", type=int, default=4, help="draft length (default 4)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    own = [f"model_pair.dir={args.eagle_dir}", "model_pair.build=null"] if args.eagle_dir else []
    pair = build.pair(compose(["model_pair=smollm2-135m__eagle", "model_pair.device=cpu", *own]).model_pair)
    target, drafter, tok = pair.target, pair.get("drafter"), pair.tokenizer
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    out = {"eagle_dir": pair.specs["drafter"].name, "settings": vars(args), "datasets": {}}
    for name in args.datasets.split(","):
        prompts = [p.ids.tolist() for p in load_prompts([name], args.per_dataset, tok, torch.device("cpu"))]
        reads = replies_with_reads(target, prompts, tok.eos_token_id, tok.eos_token_id, args.new_tokens, 1, 1, False)
        accepted = sum(torch.tensor(chain_acceptance(  # every round start from the prompt's last token on
            drafter, embed, head, {"windows": r["ids"][None], "ids": r["top_ids"][None], "hidden": r["hidden"][None]},
            torch.tensor([0]), args.gamma, 1, [r["prompt_tokens"] - 1])["rounds_accepting_at_least"]) for r in reads)
        d = out["datasets"][name] = {"prompts": len(reads), **acceptance_summary(accepted)}
        print(f"{name:10s} {d['prompts']} prompts, {d['rounds']} rounds: acceptance by position "
              f"{' / '.join(f'{a:.2f}' for a in d['acceptance_per_position'])}, "
              f"{d['mean_accepted_length']:.2f} tokens per target forward")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
