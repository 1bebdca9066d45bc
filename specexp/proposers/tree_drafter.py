"""A drafter model that proposes a token tree (specexp/core/tree.py) instead of a chain: at each
level, every node of the frontier gets its `branch` most likely next tokens, and the `width`
candidates with the highest drafter probability of their whole path are kept (EAGLE-2's dynamic
tree, Li et al. 2024). The tree is `depth` levels deep (the length policy's draft length). Each
level is one drafter forward over the frontier (a tree forward: each node sees its own ancestors
only). Three options:
  * `total` (EAGLE-2's final re-ranking): of all the nodes expanded, keep the `total` with the
    highest path probability (the kept set holds every kept node's parent: a path's probability
    never grows down the path, and a parent wins a tie with its child);
  * `max_entropy` (entropy-gated branches): a node (and the context itself) is expanded only
    while the drafter's Shannon entropy after it, in nats, is at most this; an uncertain drafter
    stops a branch early, and a draft may be empty (the round then emits the target's own token);
  * `size: machine`: of the re-ranked nodes (at most `total`, default 48), verify the number n
    that maximises the expected tokens per unit of the target's verification cost measured on
    this machine by width, with the drafting's cost (one drafter forward per level, measured
    against a one-token target forward) in each round's cost (specexp/proposers/tree_sizing.py),
    each node's path probability under the drafter standing for its chance of acceptance, as
    EAGLE-2 ranks by it.

The children are chosen deterministically (top-k), so the draft carries no probabilities and the
target verifies them with the deterministic rule (specexp.core.verify.verify_tree_sampling), which
keeps sampling lossless; greedy verification accepts the path of the target's argmax.

On a pair whose drafter is a feature drafter (EAGLE), `bind` hands over to FeatureTreeDrafter
(feature_drafter.py), which grows the same tree (`grow`, `rerank`, `sized_total`) from the target's
features."""
from __future__ import annotations

import math

import torch

from specexp.length import LengthPolicy
from specexp.length.cost_aware import forward_step
from specexp.models import token_entropy
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, OneModelProposer, Proposer, check_depth_policy
from specexp.proposers.tree_sizing import TreeSizer


class TreeDrafter(OneModelProposer):
    """Drafts a tree with the pair's drafter model (decoder-only, the target's tokenizer)."""

    drafts_trees = True  # its drafts are token trees: batch_size 1, decoder-only pairs (refused before loading)
    ranks_siblings = True  # siblings come most likely first (metrics.json tree.accepted_by_rank)

    def __init__(self, model: str = "drafter", branch: int = 2, width: int = 4, total: int | None = None,
                 max_entropy: float | None = None, size: str = "fixed", verify_cost: list[float] | None = None,
                 cost_widths: list[int] | None = None, draft_cost: float | None = None):
        check_options(branch, width, total, max_entropy)
        self.model = model  # which model of the pair drafts
        self.branch = branch  # children per expanded node (its top-k)
        self.width = width  # nodes kept per level (the best by path probability)
        self.total = total  # nodes kept in all after the last level (the best by path probability); None = all
        self.max_entropy = max_entropy  # expand a node while the drafter's entropy after it is <= this; None = always
        # size "machine": of the re-ranked nodes, verify the n that maximise the expected tokens per
        # verification cost, the drafter's path probability standing for each node's chance (EAGLE-2's
        # premise), the costs measured at bind (tree_sizing; at most `total` or depth * width nodes)
        if size not in ("fixed", "machine"):
            raise ValueError(f"strategy.proposer.size must be fixed or machine, got {size!r}")
        self.sizer = TreeSizer(branch, size, total or 48, verify_cost, cost_widths, "tree", draft_cost) \
            if size == "machine" else None
        self.lm: CachedLM | None = None
        # (start, tokens, parents, cached): cached[i] = where node i sits in the drafter's cache
        # (start + its index when the level was fed), None if it was never fed
        self._tree: tuple[int, list[int], list[int], list[int | None]] | None = None

    def bind(self, pair) -> Proposer:
        shares = getattr(pair, "shares_tokenizer", None)
        if shares is not None and not shares(self.model):
            raise ValueError(f"strategy=tree needs a {self.model} with the target's tokenizer")
        model = pair.get(self.model)
        if hasattr(model, "as_tree_proposer"):  # a feature drafter (EAGLE): its tree grows from the target's features
            return model.as_tree_proposer(self.model, branch=self.branch, width=self.width, total=self.total,
                                          max_entropy=self.max_entropy, sizer=self.sizer).bind(pair)
        if hasattr(model, "as_proposer"):  # Medusa heads read the target's hidden states: they have a tree of their own
            raise ValueError(f"strategy=tree drafts with a language model, but the pair's {self.model} is "
                             f"{type(model).__name__}, which reads the target's hidden states: use strategy=medusa_tree "
                             "for Medusa heads")
        for role in ("target", self.model):
            if getattr(getattr(pair.get(role), "config", None), "is_encoder_decoder", False):
                raise ValueError(f"strategy=tree needs decoder-only models: the {role} is an encoder-decoder model; "
                                 "use a chain strategy (e.g. strategy=speculative)")
        self.lm = cached_lm(pair.get(self.model), vocab_size=pair.vocab_size)
        if self.sizer is not None:
            self.sizer.bind(pair.target, pair.vocab_size, level_step(self.lm.model, self.width, pair.vocab_size))
        return self

    def measured(self) -> dict:
        """The verification costs a machine-sized tree was chosen by (TreeSizer.measured)."""
        return self.sizer.measured() if self.sizer is not None else {}

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.start(prompt)
        self._tree = None

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        check_depth_policy(policy, "tree")
        self._keep_accepted(tokens)
        start = tokens.shape[0]
        # 1. The drafter's distribution after the context (its unseen suffix fed as usual).
        logits = self.lm.forward(tokens[self.lm.length:], keep=1)

        def feed(first: int, nodes: list[int], parents: list[int]) -> torch.Tensor:
            # 3. One drafter forward over the new level (each node sees its ancestors only).
            new = torch.tensor(nodes[first:], device=tokens.device, dtype=tokens.dtype)
            return self.lm.forward(new, keep=len(new), tree=torch.tensor(parents), tree_cached=first).log_softmax(-1)

        # 2. Expand level by level (grow); nodes 0..fed-1 are in the drafter's cache, at positions start + index.
        nodes, parents, score, fed = grow(logits.log_softmax(-1), max_len, self.branch, self.width, feed, self._open)
        # 4. EAGLE-2's re-ranking: the `total` best nodes over all levels (all of them without `total`);
        #    size "machine": the number that pays best on this machine (tree_sizing.choose_size).
        keep = rerank(score, parents, self.total if self.sizer is None else sized_total(self.sizer, score, parents))
        nodes, parents = pruned(nodes, parents, keep)
        self._tree = (start, nodes, parents, [start + i if i < fed else None for i in keep])
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, device=tokens.device, dtype=tokens.dtype), None,
                     parents=torch.tensor(parents, device=tokens.device))

    def _open(self, frontier: list[int], nodes: list[int], last: torch.Tensor) -> list[int | None]:
        return open_nodes(frontier, nodes, last, self.eos, self.max_entropy)

    def _keep_accepted(self, tokens: torch.Tensor) -> None:
        """Keep, in the drafter's cache, the context and the nodes of the last tree that the target
        accepted (the tokens after its start, followed down the tree), gathered into place from
        where each was fed (its index before the re-ranking)."""
        if self._tree is None:
            return
        start, nodes, parents, cached = self._tree
        self._tree = None
        kept, node = [], -1
        for t in tokens[start:-1].tolist():  # not the round's own token: the next forward feeds it
            node = next((i for i in range(len(nodes)) if parents[i] == node and nodes[i] == t), None)
            if node is None or cached[node] is None:
                break
            kept.append(cached[node])  # increasing: a child was fed after its parent
        self.lm.keep_path(start, kept)


def rerank(score: list[float], parents: list[int], total: int | None) -> list[int]:
    """The indices, in increasing (topological) order, of the `total` nodes with the highest path
    score (all of them when `total` is None). A child's score is its parent's plus a log-probability
    <= 0, so ranking by (-score, depth, index) puts every parent before its children; a node whose
    parent was not kept is skipped all the same, so the kept set always holds each kept node's parent."""
    if total is None or total >= len(score):
        return list(range(len(score)))
    depth = []
    for parent in parents:
        depth.append(depth[parent] + 1 if parent >= 0 else 0)
    kept: set[int] = set()
    for i in sorted(range(len(score)), key=lambda i: (-score[i], depth[i], i)):
        if len(kept) == total:
            break
        if parents[i] < 0 or parents[i] in kept:
            kept.add(i)
    return sorted(kept)


def sized_total(sizer: TreeSizer, score: list[float], parents: list[int]) -> int:
    """Size "machine": how many of the re-ranked nodes to verify (TreeSizer.choose), each node's
    path probability under the drafter standing for its chance of acceptance; the round drafted
    one drafter forward per level (the context's, then one per level fed)."""
    depth = [0] * len(parents)
    for i, p in enumerate(parents):  # a parent comes before its children
        depth[i] = 1 if p < 0 else depth[p] + 1
    best = sorted(score, reverse=True)[: sizer.max_nodes]
    return sizer.choose([math.exp(x) for x in best], steps=max(depth, default=1))


def level_step(model, width: int, vocab_size: int | None = None):
    """One drafting level of a language model drafter, to time (TreeSizer.bind): a tree forward
    over `width` sibling nodes after a cached context (cost_aware.forward_step)."""
    n_vocab = vocab_size or model.get_input_embeddings().weight.shape[0]
    return forward_step(cached_lm(model, vocab_size=vocab_size), n_vocab, width, tree=True, seed=2)


def check_options(branch: int, width: int, total: int | None, max_entropy: float | None) -> None:
    """Refuse tree options out of range (TreeDrafter's and the feature drafter's trees)."""
    if branch < 1 or width < 1:
        raise ValueError(f"strategy.proposer.branch and width must be >= 1, got branch={branch}, width={width}")
    if total is not None and total < 1:
        raise ValueError(f"strategy.proposer.total must be >= 1 (or null: keep every node), got {total}")
    if max_entropy is not None and not max_entropy >= 0:
        raise ValueError(f"strategy.proposer.max_entropy must be >= 0 nats (or null: no gate), got {max_entropy}")


def grow(last: torch.Tensor, depth: int, branch: int, width: int, feed, is_open) -> tuple[list, list, list, int]:
    """EAGLE-2's expansion, shared by the drafters that grow a tree level by level. `last` [1, V]:
    the drafter's log-probs after the context; per level:
      1. each open frontier node (`is_open(frontier, nodes, last)`: the frontier, None where a node is
         not expanded) gets its `branch` best tokens, a child's score being its parent's plus its own
         log-probability (the drafter's log-probability of the whole path);
      2. the `width` best candidates form the next level (frontier);
      3. but for the last level, `feed(first, nodes, parents)` feeds that level (nodes[first:]) to the
         drafter and returns its log-probs after each of them [len(nodes) - first, V].
    Returns (nodes, parents, score, fed): the tokens, parent indices and path scores of every node
    (topological), and how many of them were fed."""
    nodes, parents, score = [], [], []  # score: the drafter's log-probability of the node's path
    frontier = [-1]  # last[j]: log-probs after frontier[j]
    fed = 0
    for level in range(depth):
        cand = []
        for j, node in enumerate(is_open(frontier, nodes, last)):
            if node is None:
                continue
            top = last[j].topk(branch)
            base = score[node] if node >= 0 else 0.0
            cand += [(base + float(v), node, int(t)) for v, t in zip(top.values, top.indices) if v > float("-inf")]
        cand = sorted(cand, key=lambda c: -c[0])[:width]
        if not cand:
            break
        first = len(nodes)
        for s, parent, t in cand:
            nodes.append(t)
            parents.append(parent)
            score.append(s)
        frontier = list(range(first, len(nodes)))
        if level + 1 == depth:
            break  # the last level is never fed
        last = feed(first, nodes, parents)
        fed = len(nodes)
    return nodes, parents, score, fed


def open_nodes(frontier: list[int], nodes: list[int], last: torch.Tensor, eos, max_entropy: float | None
               ) -> list[int | None]:
    """The frontier with None for each node that is not expanded: one after an EOS (nothing
    after it could be emitted), and, with `max_entropy`, one after which the drafter's Shannon
    entropy H = -sum_x q(x) ln q(x) (nats, q = softmax of its logits) is above the threshold."""
    if max_entropy is not None:
        entropy = token_entropy.of_logits(last).tolist()  # last holds log-probs: the softmax gives q back
    out = []
    for j, node in enumerate(frontier):
        shut = (node >= 0 and bool(eos) and nodes[node] in eos) or (
            max_entropy is not None and entropy[j] > max_entropy)
        out.append(None if shut else node)
    return out


def pruned(nodes: list[int], parents: list[int], keep: list[int]) -> tuple[list[int], list[int]]:
    """The tokens and parents of the nodes `keep` (increasing; each kept node's parent kept too),
    re-indexed among themselves."""
    index = {old: i for i, old in enumerate(keep)}  # a kept node's new index (its parent is kept too)
    return [nodes[i] for i in keep], [index[parents[i]] if parents[i] >= 0 else -1 for i in keep]
