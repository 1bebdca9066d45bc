"""Prompt lookup as a token tree: every earlier occurrence of the text's suffix proposes its
continuation, and so does the datastore when given; the continuations are merged into one trie
and verified in one target forward (REST, He et al. 2024, arXiv 2311.08252, builds its tree the
same way from a suffix array over a corpus; prompt lookup, Saxena 2023, keeps one continuation).

1. The suffix: the longest n (min_ngram <= n <= max_ngram) such that the last n tokens occurred
   earlier in prompt + output with at least one token after them; every such occurrence (the
   `max_matches` most recent) gives the up to `depth` tokens that followed it (cut after an EOS).
2. The datastore (a `Datastore`, specexp/proposers/retrieval.py; optional): its confident
   continuation of the text (one chain: its table keeps each context's most frequent next token)
   is one more continuation.
3. The trie: the continuations inserted from the root (the context's last token); a node's count
   = the continuations through it. The `max_nodes` nodes with the highest counts are kept (ties:
   the shallower, then the one inserted first: the most recent occurrence first, the datastore
   last); a child never counts more than its parent, so the kept nodes form a tree. They are
   drafted in BFS order, siblings by count (the likelier first: greedy takes the first match).
Model-free and deterministic (`Draft.probs = None`): the target verifies the tree with the
deterministic rule, lossless for greedy and sampling. Decoder-only targets (token trees).
"""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer, check_depth_policy
from specexp.proposers.retrieval import Datastore


def suffix_occurrences(text: list[int], max_ngram: int | None = None, min_ngram: int = 1) -> tuple[int, list[int]]:
    """(n, ends): the longest suffix length n in [min_ngram, max_ngram] whose last n tokens also
    end at earlier positions e < len(text) - 1, and all those e in increasing order; (0, []) when
    no suffix of min_ngram tokens repeats."""
    L = len(text)
    limit = L - 1 if max_ngram is None else min(L - 1, max_ngram)
    if L < 2 or limit < max(min_ngram, 1):
        return 0, []
    t = torch.tensor(text)
    ends = torch.nonzero(t[: L - 1] == t[L - 1]).flatten()
    n = 1
    while n < limit and ends.numel():  # 1. narrow to the occurrences that also match one token further back
        cand = ends[ends >= n]
        cand = cand[t[cand - n] == t[L - 1 - n]]
        if cand.numel() == 0:
            break
        ends, n = cand, n + 1
    if ends.numel() == 0 or n < min_ngram:
        return 0, []
    return n, ends.tolist()


class Trie:
    """Continuations merged by prefix: node i has a token, a parent (-1: the root), a count."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.counts: list[int] = []
        self.depth: list[int] = []
        self._child: dict[tuple[int, int], int] = {}  # (parent, token) -> node

    def insert(self, seq: list[int]) -> None:
        node = -1
        for t in seq:
            nxt = self._child.get((node, t))
            if nxt is None:
                nxt = len(self.tokens)
                self._child[(node, t)] = nxt
                self.tokens.append(t)
                self.parents.append(node)
                self.counts.append(0)
                self.depth.append(0 if node < 0 else self.depth[node] + 1)
            self.counts[nxt] += 1
            node = nxt

    def best(self, max_nodes: int) -> tuple[list[int], list[int]]:
        """The `max_nodes` nodes with the highest counts (ties: shallower, then inserted first) as a
        tree in BFS order, siblings by count: (tokens, parents)."""
        rank = sorted(range(len(self.tokens)), key=lambda i: (-self.counts[i], self.depth[i], i))
        keep = rank[:max_nodes]  # a parent ranks before its children (count >=, depth <): a tree
        kids: dict[int, list[int]] = {}
        for i in sorted(keep, key=lambda i: (-self.counts[i], i)):  # siblings: the likelier first
            kids.setdefault(self.parents[i], []).append(i)
        order, frontier = [], [-1]
        while frontier:  # BFS from the root: every parent before its children
            frontier = [c for p in frontier for c in kids.get(p, [])]
            order += frontier
        index = {node: j for j, node in enumerate(order)}
        return [self.tokens[i] for i in order], [index.get(self.parents[i], -1) for i in order]


class LookupTrie(Proposer):
    """Several prompt-lookup continuations and the datastore's, as one trie (module docstring).

    max_ngram / min_ngram: the suffix lengths tried (null max: unbounded); max_matches: occurrences
    used, the most recent; max_nodes: the tree's node budget; datastore: a `Datastore` (null: none)."""

    forwards = 0
    drafts_trees = True  # batch decoding runs chains only (specexp/core/batch_decode.py check_supported)

    def __init__(self, max_ngram: int | None = None, min_ngram: int = 1, max_matches: int = 32,
                 max_nodes: int = 24, datastore: Datastore | None = None):
        if min_ngram < 1 or (max_ngram is not None and max_ngram < min_ngram):
            raise ValueError(f"lookup_trie: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_matches < 1 or max_nodes < 1:
            raise ValueError(f"lookup_trie: max_matches and max_nodes must be >= 1, got {max_matches}, {max_nodes}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.max_matches, self.max_nodes = max_matches, max_nodes
        self.datastore = datastore

    def bind(self, pair) -> "LookupTrie":
        if getattr(getattr(getattr(pair, "target", None), "config", None), "is_encoder_decoder", False):
            raise ValueError("strategy=lookup_trie needs a decoder-only target (token trees)")
        if self.datastore is not None:
            self.datastore.bind(pair)
        return self

    def continuations(self, text: list[int], depth: int) -> list[list[int]]:
        """Steps 1-2: the most recent occurrence's continuation first, the datastore's last."""
        _, ends = suffix_occurrences(text, self.max_ngram, self.min_ngram)
        out = []
        for e in reversed(ends[-self.max_matches:]):
            seq = text[e + 1: e + 1 + depth]
            cut = next((j for j, t in enumerate(seq) if t in self.eos), None)
            out.append(seq if cut is None else seq[: cut + 1])
        if self.datastore is not None:
            found = self.datastore.draft(torch.tensor(text), depth, self.eos)
            if found:
                out.append(found)
        return out

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy | None, sampling: Sampling | None,
                generator: torch.Generator | None) -> Draft:
        check_depth_policy(policy, "lookup_trie")
        if max_len <= 0:
            return Draft(tokens.new_empty(0), None)
        trie = Trie()
        for seq in self.continuations(tokens.tolist(), max_len):
            trie.insert(seq)
        nodes, parents = trie.best(self.max_nodes)
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, dtype=tokens.dtype, device=tokens.device), None,
                     parents=torch.tensor(parents, device=tokens.device))
