"""Retrieval from the target's own replies (REST, He et al. 2024, arXiv 2311.08252), as the
second source of a prompt lookup: when the text's suffix does not repeat in the prompt or the
output, the datastore drafts what the target wrote after the same context elsewhere. Model-free:
no forwards, deterministic drafts (one-hot proposals); verification keeps the output the target's.

1. The replies: a built folder's replies.json (specexp/builds/build_datastore.py builds it; the
   experiment layer builds it for a `Datastore(dir=None)` before binding, specexp/experiment/instantiate.py).
2. `NGramTable`: for every context of 1..`max_n` tokens in the replies, the most frequent next
   token, its share of the context's continuations, and the context's count.
3. `NGramTable.draft`: from the longest context of at least `min_n` tokens seen `min_count`+
   times, append its most frequent next token while that token's share is >= `min_share` (a
   confident continuation), at most k tokens, stopping after an EOS. Deterministic, no forwards.
"""
from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from pathlib import Path

import torch

REPLIES = "replies.json"  # in a built datastore folder: {"about": ..., "replies": [[token ids], ...]}


# -------------------------------------------------------------------------------- 1. the replies
def load_replies(folder: str | Path) -> list[list[int]]:
    return json.loads((Path(folder) / REPLIES).read_text())["replies"]


# ------------------------------------------------------------------------------ 2-3. the n-grams
class NGramTable:
    """What followed each context of 1..max_n tokens in `docs` (module docstring, steps 2-3)."""

    def __init__(self, docs: list[list[int]], max_n: int = 4):
        if max_n < 1:
            raise ValueError(f"datastore: max_n must be >= 1, got {max_n}")
        self.max_n = max_n
        counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(max_n + 1)]
        for doc in docs:
            for i in range(1, len(doc)):
                for n in range(1, min(max_n, i) + 1):
                    counts[n][tuple(doc[i - n: i])][doc[i]] += 1
        # context -> (most frequent next token, its share, the context's count); ties: the smaller id
        self.next: list[dict[tuple, tuple[int, float, int]]] = [{}]
        for n in range(1, max_n + 1):
            table = {}
            for ctx, c in counts[n].items():
                total = sum(c.values())
                tok, top = min(c.items(), key=lambda kv: (-kv[1], kv[0]))
                table[ctx] = (tok, top / total, total)
            self.next.append(table)
        self.tokens = sum(map(len, docs))

    def __deepcopy__(self, memo):  # read-only once counted: per-row copies (specexp/core/batch_decode.py) share it
        return self

    def draft(self, text: list[int], k: int, min_n: int = 2, min_count: int = 2, min_share: float = 0.5,
              eos: frozenset | set = frozenset()) -> list[int]:
        """Up to k tokens continuing `text` (step 3); [] when no context of min_n+ tokens is known."""
        out: list[int] = []
        while len(out) < k:
            ctx = (text[-self.max_n:] + out)[-self.max_n:]
            hit = None
            for n in range(min(self.max_n, len(ctx)), min_n - 1, -1):  # the longest known context
                hit = self.next[n].get(tuple(ctx[-n:]))
                if hit is not None and hit[2] >= min_count:
                    break
                hit = None
            if hit is None or hit[1] < min_share:
                break
            out.append(hit[0])
            if hit[0] in eos:
                break
        return out


# ------------------------------------------------------------------------------- the proposer
@functools.lru_cache(maxsize=4)
def _table(folder: str, max_n: int) -> NGramTable:
    return NGramTable(load_replies(folder), max_n)  # counted once per process (a sweep binds many times)


class Datastore:
    """The target's replies as an n-gram table, drafting confident continuations.

    dir: a built datastore folder (null: a run builds it for the pair's target before binding and
    caches it under $SPECEXP_CACHE/datastore/); replies, reply_mix, article_chars, reply_tokens, reply_batch,
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
        """Read the built folder `dir` (a run builds it first when dir is null:
        specexp.experiment.instantiate.provide_builds); without one the table stays empty."""
        if self.table is None and self.dir:
            self.table = _table(str(self.dir), self.max_n)
        return self

    def draft(self, tokens: torch.Tensor, k: int, eos=frozenset()) -> list[int]:
        """Up to k tokens continuing `tokens` [L]; [] when the datastore has no confident continuation."""
        if self.table is None:
            raise RuntimeError("Datastore without a table: call bind(pair) (or use Datastore.from_replies)")
        tail = tokens[-self.max_n:].tolist()
        return self.table.draft(tail, k, self.min_n, self.min_count, self.min_share, eos)
