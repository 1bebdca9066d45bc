"""The bigram drafter's table (specexp/proposers/bigram.py): for every token id, the most likely
next token, counted on a corpus tokenized with the target's tokenizer.

1. The text: `load_texts` (specexp/builds/corpus.py): the standard library's sources, a file or
   folder, a file under the shared data folder, or a Hugging Face dataset; with its sha256.
2. The counts: the corpus tokenized in batches of 256 documents, `count_table` over the sequences
   (specexp/proposers/bigram.py: the table's math and its JSON format live with its reader).
3. The cache: `$SPECEXP_CACHE/bigram/<key>.json` (default `~/.cache/specexp/bigram/`), key = the
   tokenizer's vocabulary and the corpus' sha256, written to a temporary file renamed into place,
   with a record of what it was built from (corpus, tokenizer, counts, seconds). A file with the
   same key is reused.

Built ahead by `python scripts/build_bigram.py`, or by a run for a `Bigram` without a table
(specexp/experiment/instantiate.py); both land in the same cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from specexp.builds.corpus import load_texts
from specexp.models.fetch import cache_root
from specexp.proposers.bigram import DEFAULT_MAX_BYTES, FORMAT, count_table, load_table, save_table

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return cache_root() / "bigram"


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def build_table(tokenizer, docs: list[str]) -> tuple[torch.Tensor, dict]:
    """Step 2: the documents tokenized (256 at a time) and counted."""
    vocab_size = len(tokenizer)
    seqs = []
    for i in range(0, len(docs), 256):
        seqs.extend(tokenizer(docs[i: i + 256], add_special_tokens=False)["input_ids"])
    nxt, counts = count_table(seqs, vocab_size)
    return nxt, {"vocab_size": nxt.numel(), **counts}


def build_bigram(tokenizer, tokenizer_name: str | None = None, corpus: str | None = None, dataset: str | None = None,
                 dataset_config: str | None = None, split: str = "train", data_files=None, text_field: str = "text",
                 max_bytes: int = DEFAULT_MAX_BYTES, out: str | Path | None = None,
                 force: bool = False) -> Path:
    """Build (or reuse from the cache) the bigram table of `tokenizer` on a corpus; returns the JSON
    path (`out`, or the cache). The cache key is the tokenizer's vocabulary and the corpus' sha256."""
    t0 = time.perf_counter()
    docs, info = load_texts(corpus, dataset, dataset_config, split, data_files, text_field, max_bytes)
    tok_sha = tokenizer_fingerprint(tokenizer)
    key = hashlib.sha256(f"{FORMAT}|{tok_sha}|{info['sha256']}".encode()).hexdigest()[:16]
    path = Path(out) if out else cache_dir() / f"{key}.json"
    if not force and path.exists():
        try:
            _, meta = load_table(path)
            if meta.get("key") == key:
                log.info("bigram: reusing %s", path)
                return path
        except (OSError, ValueError):
            pass
    nxt, counts = build_table(tokenizer, docs)
    meta = {"key": key,
            "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", None),
            "tokenizer_sha256": tok_sha, "source": info, **counts,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - t0, 3)}
    save_table(path, nxt, meta)
    log.info("bigram: built %s from %s (%d tokens)", path, info.get("source") or info.get("dataset"), counts["n_tokens"])
    return path
