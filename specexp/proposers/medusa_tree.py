"""Medusa's token tree (Cai et al. 2024, arXiv 2401.10774, Sec. 2.1.2 "tree attention"): the heads'
top-k candidates combined into one tree, verified in one target forward. Head d proposes the token
d + 2 places after h_t (specexp/proposers/medusa.py); a node at depth d with rank path
(r_0, ..., r_d) drafts head d's rank-r_d candidate after the path (r_0, ..., r_{d-1}). Medusa's
candidates at depth d do not depend on the path above them, so the tree is a subset of the
Cartesian product of the heads' top-k lists.

Which subset: Medusa picks a sparse tree from each rank's accuracy on a calibration set, best
nodes first (its "optimal sparse tree"). Here the same construction runs on the acceptance by
depth and rank measured as the run goes (specexp/proposers/tree_sizing.py: TreeSizer): after each
round, at every depth the accepted path reached, the rank of the emitted token among that head's
candidates (or a miss). size "fixed": the best tree of `max_nodes` nodes; "machine": of the size
whose expected tokens per measured verification cost is highest.

The children are deterministic (the heads' top-k), so the draft carries no probabilities and the
target verifies it with the deterministic rule (specexp.core.verify): greedy and sampling stay
lossless. The decode loop gathers the target's hidden states of the accepted path like its logits
(specexp/core/decode.py step 4), so the next h_t is the path's last.
"""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, check_depth_policy
from specexp.proposers.medusa import Medusa
from specexp.proposers.tree_sizing import TreeSizer


class MedusaTree(Medusa):
    """Medusa heads drafting a token tree (module docstring). Medusa's options, and: size
    ("fixed" or "machine"), max_nodes (the most nodes per tree), verify_cost / cost_widths (the
    target's verification cost at those widths, relative to one token; null: measured at bind),
    carry (keep the acceptance estimates across samples)."""

    drafts_trees = True  # batch_size 1, decoder-only targets (refused before loading)
    ranks_siblings = True  # siblings come in rank order (metrics.json tree.accepted_by_rank)

    def __init__(self, model: str | None = None, checkpoint: str | None = None, num_heads: int = 4,
                 num_layers: int = 1, topk: int = 10, size: str = "fixed", max_nodes: int = 32,
                 verify_cost: list[float] | None = None, cost_widths: list[int] | None = None, carry: bool = False,
                 draft_cost: float | None = None):
        super().__init__(model, checkpoint, num_heads, num_layers, topk)
        self.sizer = TreeSizer(topk, size, max_nodes, verify_cost, cost_widths, "medusa_tree", draft_cost)
        self.carry = carry
        self._round: tuple[int, list[list[int]], set] | None = None  # (start, candidates per head, rank paths)

    def bind(self, pair) -> "MedusaTree":
        super().bind(pair)
        self.sizer.bind(pair.target, pair.vocab_size, self._heads_step())
        return self

    def _heads_step(self):
        """A round of drafting to time (TreeSizer.bind): every head's top-k on one hidden state, its
        LM-head projection included (what Medusa adds to each target forward)."""
        h = self.lm_head.weight.new_zeros(self.lm_head.weight.shape[1])

        @torch.inference_mode()
        def step():
            for i in range(self.heads.num_heads):
                self.heads.head_logits(i, h, self.lm_head).float().log_softmax(-1).topk(self.topk)

        return step

    def measured(self) -> dict:
        return self.sizer.measured()

    def reset(self, prompt: torch.Tensor) -> None:
        super().reset(prompt)
        self._round = None
        if not self.carry:
            self.sizer.acceptance.reset()

    def _learn(self, tokens: torch.Tensor) -> None:
        """The last round's acceptance by depth and rank: the emitted token at each depth the path
        reached (its rank among that head's candidates, or a miss)."""
        if self._round is None:
            return
        start, candidates, paths = self._round
        self._round = None
        prefix: tuple[int, ...] = ()
        for d, actual in enumerate(tokens[start:].tolist()[: len(candidates)]):
            if d and prefix not in paths:
                break  # the path did not reach depth d
            row = candidates[d]
            rank = row.index(actual) if actual in row else None
            self.sizer.acceptance.observe(d, rank)
            if rank is None:
                break
            prefix += (rank,)

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy, sampling: Sampling,
                generator: torch.Generator | None) -> Draft:
        check_depth_policy(policy, "medusa_tree")
        self._learn(tokens)
        depth = min(max_len, self.heads.num_heads)
        if self.hidden is None or depth < 1:  # the first round: the target reads the prompt first
            return Draft(tokens.new_empty(0), None)
        # 1. Every head's candidates; 2. the best tree of rank paths (a node after an EOS has no children).
        candidates = self.head_topk(self.topk)[0][:depth].tolist()
        eos = self.eos

        def exists(path: tuple[int, ...]) -> bool:  # (a vocabulary smaller than topk has fewer candidates)
            return path[-1] < len(candidates[0]) and not any(candidates[d][r] in eos for d, r in enumerate(path[:-1]))

        paths = self.sizer.paths(depth, exists)
        # 3. The paths as nodes: node i drafts head (depth - 1)'s candidate of its last rank.
        index: dict[tuple[int, ...], int] = {(): -1}
        nodes, parents = [], []
        for p in paths:
            index[p] = len(nodes)
            nodes.append(candidates[len(p) - 1][p[-1]])
            parents.append(index[p[:-1]])
        self._round = (tokens.shape[0], candidates, set(paths))
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, dtype=tokens.dtype, device=tokens.device), None,
                     parents=torch.tensor(parents, device=tokens.device))
