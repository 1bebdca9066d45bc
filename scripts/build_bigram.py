#!/usr/bin/env python
"""Build the bigram drafter's table (each token id's most likely successor) with a target's
tokenizer, cache it and record what it was built from.

    python scripts/build_bigram.py --tokenizer google/flan-t5-xxl --corpus shared:wikitext-2-raw/wiki.test.raw
    python scripts/build_bigram.py --tokenizer ~/.cache/specexp/tiny-v1/target            # stdlib sources
    python scripts/build_bigram.py --tokenizer <dir> --dataset json --data-files docs.jsonl --text-field text
    python scripts/build_bigram.py --tokenizer <dir> --dataset wikitext --dataset-config wikitext-103-raw-v1

Without --out the table lands in the cache ($SPECEXP_CACHE/bigram/, default ~/.cache/specexp/bigram/)
where the `bigram`, `prompt_lookup` and `cascade*` strategies find it for the same tokenizer and
corpus (or pass it explicitly: strategy.table=<path>). Prints the path and the record.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from specexp.builds.build_bigram import build_bigram  # noqa: E402
from specexp.proposers.bigram import DEFAULT_MAX_BYTES, load_table  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="the target's tokenizer: hub id or local directory")
    ap.add_argument("--corpus", default=None,
                    help="stdlib (default), a text file or folder, or shared:<path under the shared data folder>")
    ap.add_argument("--dataset", default=None, help="a Hugging Face dataset id or loader (json, text, csv...)")
    ap.add_argument("--dataset-config", default=None)
    ap.add_argument("--split", default="train")
    ap.add_argument("--data-files", default=None, nargs="+", help="files for a loader dataset (json, text...)")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="cap on the corpus text")
    ap.add_argument("--out", default=None, help="write the table here instead of the cache")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache has it")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)
    path = build_bigram(tok, tokenizer_name=args.tokenizer, corpus=args.corpus, dataset=args.dataset,
                        dataset_config=args.dataset_config, split=args.split, data_files=args.data_files,
                        text_field=args.text_field, max_bytes=args.max_bytes, out=args.out, force=args.force)
    _, meta = load_table(path)
    print(path)
    print(json.dumps(meta, indent=2))
    return path


if __name__ == "__main__":
    main()
