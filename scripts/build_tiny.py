#!/usr/bin/env python
"""Build (or reuse) the embedded tiny target/drafter pair.

    python scripts/build_tiny.py                      # ~/.cache/specexp/tiny-v1 (or $SPECEXP_CACHE/tiny-v1)
    python scripts/build_tiny.py --out-dir /tmp/tiny --seed 1 --corpus my_code/ --steps 100
    python scripts/build_tiny.py --set target_lr=1e-3 --set vocab_size=2048 --force
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from specexp.builds.train_tiny_pair import DEFAULTS, build_tiny_pair, default_tiny_dir  # noqa: E402


def _kv(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or key not in DEFAULTS:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {sorted(DEFAULTS)}, got {text!r}")
    try:
        return key, ast.literal_eval(value)  # numbers, True/False/None
    except (ValueError, SyntaxError):
        return key, value  # a plain string


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=None, help=f"where to build (default {default_tiny_dir()})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default=None,
                    help="a text file or directory to train on (default: the Python standard library's sources)")
    ap.add_argument("--steps", type=int, default=None, help=f"target training steps (default {DEFAULTS['steps']})")
    ap.add_argument("--distill-steps", type=int, default=None,
                    help=f"drafter distillation steps (default {DEFAULTS['distill_steps']})")
    ap.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="override any other build hyperparameter")
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching pair exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hp = dict(args.set)
    if args.steps is not None:
        hp["steps"] = args.steps
    if args.distill_steps is not None:
        hp["distill_steps"] = args.distill_steps
    out = build_tiny_pair(args.out_dir, seed=args.seed, corpus=args.corpus, progress=not args.quiet,
                          force=args.force, **hp)
    with open(os.path.join(out, "build.json")) as fh:
        info = json.load(fh)
    print(json.dumps({"out_dir": out, "n_params": info["n_params"], "losses": info["losses"],
                      "wall_time_s": info["wall_time_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
