"""A drafter model that proposes a token tree (specexp/core/tree.py) instead of a chain: at each
level, every node of the frontier gets its `branch` most likely next tokens, and the `width`
candidates with the highest drafter probability of their whole path are kept (EAGLE-2's dynamic
tree, Li et al. 2024, without its final re-ranking). The tree is `depth` levels deep (the length
policy's draft length). Each level is one drafter forward over the frontier (a tree forward: each
node sees its own ancestors only).

The children are chosen deterministically (top-k), so the draft carries no probabilities and the
target verifies them with the deterministic rule (specexp.core.verify.verify_tree_sampling), which
keeps sampling lossless; greedy verification accepts the path of the target's argmax."""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, OneModelProposer, Proposer


class TreeDrafter(OneModelProposer):
    """Drafts a tree with the pair's drafter model (decoder-only, the target's tokenizer)."""

    drafts_trees = True  # its drafts are token trees: batch_size 1, decoder-only pairs (refused before loading)
    ranks_siblings = True  # siblings come most likely first (metrics.json tree.accepted_by_rank)

    def __init__(self, model: str = "drafter", branch: int = 2, width: int = 4):
        if branch < 1 or width < 1:
            raise ValueError(f"strategy.proposer.branch and width must be >= 1, got branch={branch}, width={width}")
        self.model = model  # which model of the pair drafts
        self.branch = branch  # children per expanded node (its top-k)
        self.width = width  # nodes kept per level (the best by path probability)
        self.lm: CachedLM | None = None
        self._tree: tuple[int, list[int], list[int], int] | None = None  # (start, tokens, parents, nodes fed)

    def bind(self, pair) -> Proposer:
        shares = getattr(pair, "shares_tokenizer", None)
        if shares is not None and not shares(self.model):
            raise ValueError(f"strategy=tree needs a {self.model} with the target's tokenizer")
        if hasattr(pair.get(self.model), "as_proposer"):  # a feature drafter reads the target's hidden states
            raise ValueError(f"strategy=tree drafts with a language model, but the pair's {self.model} is a feature "
                             "drafter (EAGLE), which drafts chains from the target's hidden states: use a chain "
                             "strategy (e.g. strategy=speculative) with this pair")
        for role in ("target", self.model):
            if getattr(getattr(pair.get(role), "config", None), "is_encoder_decoder", False):
                raise ValueError(f"strategy=tree needs decoder-only models: the {role} is an encoder-decoder model; "
                                 "use a chain strategy (e.g. strategy=speculative)")
        self.lm = cached_lm(pair.get(self.model), vocab_size=pair.vocab_size)
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.start(prompt)
        self._tree = None

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        if policy.needs_steps:
            raise ValueError("strategy=tree: the length policy must give a depth (e.g. specexp.length.Fixed); a "
                             "per-token rule cannot shape a tree")
        self._keep_accepted(tokens)
        start = tokens.shape[0]
        # 1. The drafter's distribution after the context (its unseen suffix fed as usual).
        logits = self.lm.forward(tokens[self.lm.length:], keep=1)
        nodes, parents, score = [], [], []  # score: the drafter's log-probability of the node's path
        frontier, last = [-1], logits.log_softmax(-1)  # last[j]: log-probs after frontier[j]
        for level in range(max_len):
            # 2. Expand: each frontier node's `branch` best tokens; keep the `width` best paths.
            cand = []
            for j, node in enumerate(frontier):
                if node >= 0 and self.eos and nodes[node] in self.eos:
                    continue  # nothing after an EOS could be emitted
                top = last[j].topk(self.branch)
                base = score[node] if node >= 0 else 0.0
                cand += [(base + float(v), node, int(t)) for v, t in zip(top.values, top.indices) if v > float("-inf")]
            cand = sorted(cand, key=lambda c: -c[0])[: self.width]
            if not cand:
                break
            first = len(nodes)
            for s, parent, t in cand:
                nodes.append(t)
                parents.append(parent)
                score.append(s)
            frontier = list(range(first, len(nodes)))
            if level + 1 == max_len:
                break
            # 3. One drafter forward over the new level (each node sees its ancestors only).
            fed = torch.tensor(nodes[first:], device=tokens.device, dtype=tokens.dtype)
            last = self.lm.forward(fed, keep=len(fed), tree=torch.tensor(parents), tree_cached=first).log_softmax(-1)
        self._tree = (start, nodes, parents, len(nodes) - len(frontier))  # the last level was never fed
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, device=tokens.device, dtype=tokens.dtype), None,
                     parents=torch.tensor(parents, device=tokens.device))

    def _keep_accepted(self, tokens: torch.Tensor) -> None:
        """Keep, in the drafter's cache, the context and the nodes of the last tree that the target
        accepted (the tokens after its start, followed down the tree), gathered into place."""
        if self._tree is None:
            return
        start, nodes, parents, fed = self._tree
        self._tree = None
        kept, node = [], -1
        for t in tokens[start:-1].tolist():  # not the round's own token: the next forward feeds it
            node = next((i for i in range(len(nodes)) if parents[i] == node and nodes[i] == t), None)
            if node is None or node >= fed:
                break
            kept.append(start + node)
        self.lm.keep_path(start, kept)
