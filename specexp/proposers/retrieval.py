"""Retrieval from the target's own replies (specexp/builds/build_datastore.py; REST, He et al. 2024), as the
second source of a prompt lookup: when the text's suffix does not repeat in the prompt or the
output, the datastore drafts what the target wrote after the same context elsewhere. Model-free:
no forwards, deterministic drafts (one-hot proposals); verification keeps the output the target's."""
from __future__ import annotations

import functools

import torch

from specexp.builds.build_datastore import NGramTable, build_datastore, load_replies


@functools.lru_cache(maxsize=4)
def _table(folder: str, max_n: int) -> NGramTable:
    return NGramTable(load_replies(folder), max_n)  # counted once per process (a sweep binds many times)


class Datastore:
    """The target's replies as an n-gram table, drafting confident continuations.

    dir: a built datastore folder (null: built on first use for the pair's target and cached under
    $SPECEXP_CACHE/datastore/); replies, reply_mix, article_chars, reply_tokens, reply_batch,
    skip: what to build (specexp.builds.build_datastore.build_datastore); max_n: the longest context counted;
    min_n: the shortest context that may draft; min_count: times a context must have been seen;
    min_share: draft a token only while it followed its context at least this often."""

    def __init__(self, dir: str | None = None, replies: int = 600, reply_mix: dict | None = None,
                 article_chars: int = 1000, reply_tokens: int = 128, reply_batch: int = 32, skip: int = 500,
                 max_n: int = 4, min_n: int = 2, min_count: int = 4, min_share: float = 0.7):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"datastore: need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        if not 0.0 <= min_share <= 1.0 or min_count < 1:
            raise ValueError(f"datastore: need 0 <= min_share <= 1 and min_count >= 1, got {min_share}, {min_count}")
        self.dir = dir
        self.build = dict(replies=replies, reply_mix=dict(reply_mix) if reply_mix else None,
                          article_chars=article_chars, reply_tokens=reply_tokens, reply_batch=reply_batch, skip=skip)
        self.max_n, self.min_n, self.min_count, self.min_share = max_n, min_n, min_count, min_share
        self.table: NGramTable | None = None

    @classmethod
    def from_replies(cls, replies: list[list[int]], **kw) -> "Datastore":
        """A datastore over given token lists (tests, a user's own text)."""
        d = cls(**kw)
        d.table = NGramTable(replies, d.max_n)
        return d

    def bind(self, pair) -> "Datastore":
        if self.table is None:
            folder = self.dir or build_datastore(pair.specs["target"], **self.build)
            self.table = _table(str(folder), self.max_n)
        return self

    def draft(self, tokens: torch.Tensor, k: int, eos=frozenset()) -> list[int]:
        """Up to k tokens continuing `tokens` [L]; [] when the datastore has no confident continuation."""
        if self.table is None:
            raise RuntimeError("Datastore without a table: call bind(pair) (or use Datastore.from_replies)")
        tail = tokens[-self.max_n:].tolist()
        return self.table.draft(tail, k, self.min_n, self.min_count, self.min_share, eos)
