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
    from hydra.utils import instantiate

    from specexp.config import compose
    from specexp.eagle import chain_acceptance
    from specexp.models import ModelSpec, load_model, load_tokenizer, resolve_source

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eagle-dir", help="a built feature drafter (default: the smollm2-135m__eagle pair's, built if missing)")
    ap.add_argument("--datasets", default="xsum,gsm8k,humaneval", help="comma list of xsum, gsm8k, humaneval")
    ap.add_argument("--per-dataset", type=int, default=4, help="prompts per dataset (the first ones: default 4)")
    ap.add_argument("--new-tokens", type=int, default=48, help="reply length (default 48)")
    ap.add_argument("--gamma", type=int, default=4, help="draft length (default 4)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    cfg = compose(["model_pair=smollm2-135m__eagle"]).model_pair
    eagle_dir = args.eagle_dir or instantiate(cfg.build)
    spec = resolve_source(ModelSpec(**{k: v for k, v in dict(cfg.target).items() if v is not None}))
    target, tok = load_model(spec, torch.float32, torch.device("cpu")), load_tokenizer(spec)
    drafter = load_model(ModelSpec(name=str(eagle_dir)), torch.float32, torch.device("cpu"))
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    out = {"eagle_dir": str(eagle_dir), "settings": vars(args), "datasets": {}}
    for name in args.datasets.split(","):
        rows = []
        with torch.inference_mode():
            for p in load_prompts([name], args.per_dataset, tok, torch.device("cpu")):
                g = target.generate(p.ids[None], attention_mask=torch.ones_like(p.ids)[None], do_sample=False,
                                    max_new_tokens=args.new_tokens, top_k=None, top_p=None, temperature=None)[0]
                h = target.get_decoder()(input_ids=g[None]).last_hidden_state[0]
                rows.append((g, head(h).argmax(-1), h, len(p.ids) - 1))  # first start: the last prompt token
            res = [chain_acceptance(drafter, embed, head, {"windows": g[None], "ids": top1[None, :, None],
                                                           "hidden": h[None]}, torch.tensor([0]), args.gamma, 1, [t0])
                   for g, top1, h, t0 in rows]
        rounds = sum(r["rounds"] for r in res)
        accepted = [sum(r["rounds_accepting_at_least"][j] for r in res) for j in range(args.gamma + 1)]
        out["datasets"][name] = {"prompts": len(rows), "rounds": rounds,
                                 "acceptance_per_position": [round(accepted[j + 1] / max(1, accepted[j]), 3)
                                                             for j in range(args.gamma)],
                                 "mean_accepted_length": round(sum(accepted[1:]) / max(1, rounds) + 1, 3)}
        d = out["datasets"][name]
        print(f"{name:10s} {d['prompts']} prompts, {rounds} rounds: acceptance by position "
              f"{' / '.join(f'{a:.2f}' for a in d['acceptance_per_position'])}, "
              f"{d['mean_accepted_length']:.2f} tokens per target forward")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
