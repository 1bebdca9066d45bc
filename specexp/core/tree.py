"""Token trees: a draft of several candidate continuations verified in one target forward.

A tree is its nodes' tokens [n] and parent indices [n] in topological order (parents[i] < i;
-1: a child of the context's last token). A chain of k drafts is the tree with parents
[-1, 0, 1, ..., k-2]: one child per node. The target sees the tree through an additive 4D
attention mask (each node attends to the cache, the context and its own ancestors) and depth-based
position ids (specexp.models.cached_lm.tree_attention), so row 1 + i of its logits is its
distribution after the path to node i, exactly as if that path had been fed as a chain.
Verification walks the tree (specexp/core/verify.py: verify_tree); the cache then keeps the
accepted path's entries, gathered into place after the prefix (`keep_path`).
"""
from __future__ import annotations

import torch

from specexp.models.cached_lm import CachedLM


def check_tree(tokens: torch.Tensor, parents: torch.Tensor) -> None:
    """Refuse a malformed tree: one parent per token, each an earlier node or -1."""
    if parents.shape != tokens.shape or parents.dim() != 1:
        raise ValueError(f"a draft tree needs one parent per token: tokens {tuple(tokens.shape)}, "
                         f"parents {tuple(parents.shape)}")
    bad = [i for i, p in enumerate(parents.tolist()) if not -1 <= p < i]
    if bad:
        raise ValueError(f"draft tree nodes {bad[:5]} have a parent that is not an earlier node (or -1 for the "
                         "context): parents must be in topological order")


def chain(k: int, device=None) -> torch.Tensor:
    """The parents of a chain of k drafts: each node the child of the one before."""
    return torch.arange(k, device=device) - 1


def is_chain(parents: torch.Tensor) -> bool:
    return bool((parents == chain(parents.shape[0], parents.device)).all())


def children(parents: list[int]) -> list[list[int]]:
    """kids[p + 1] = the children of node p in order (kids[0]: those of the context)."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        kids[p + 1].append(i)
    return kids


def path_to(node: int, parents: list[int]) -> list[int]:
    """The nodes from the first level down to `node` (inclusive)."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def leaf_paths(parents: list[int]) -> list[list[int]]:
    """Every root-to-leaf path, in node order of the leaves."""
    kids = children(parents)
    return [path_to(i, parents) for i in range(len(parents)) if not kids[i + 1]]


def forward(target: CachedLM, context: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
    """One target forward over `context` (the tokens its cache has not seen, at least one) and a
    draft tree: logits [n + 1, V], row 0 after the context, row 1 + i after node i. A chain (or
    `parents` None) takes the plain causal forward, so its logits are those of a chain draft."""
    n = tokens.shape[0]
    ids = torch.cat([context, tokens])
    if parents is None or is_chain(parents):
        return target.forward(ids, keep=n + 1)
    check_tree(tokens, parents)
    return target.forward(ids, keep=n + 1, tree=parents)


def keep_path(lm: CachedLM, start: int, path: list[int]) -> None:
    """After verification: keep the cache's first `start` positions (the context) and the accepted
    path's nodes (node i sat at start + i), gathered into place; drop the other nodes. For a chain's
    accepted prefix this is `crop(start + n)`."""
    lm.keep_path(start, [start + i for i in path])


def without_replacement(q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The distributions siblings drawn from q [V] without replacement were drawn from, in order:
    row i = q with tokens[:i] removed, renormalised [k, V] (Draft.probs for such children, as
    Sequoia's sampling without replacement; Chen et al. 2024, Alg. 2)."""
    rows, cur = [], q.clone()
    for t in tokens.tolist():
        rows.append(cur / cur.sum())
        cur = cur.clone()
        cur[t] = 0
    return torch.stack(rows)
