"""A token tree sized for the machine that verifies it (Sequoia, Chen et al. 2024, arXiv 2402.12374,
Sec. 3.1-3.2: the tree that maximises the expected accepted tokens for its size under the
positional acceptance model, and the size chosen from measured verification times).

The math, per round:
1. Acceptance by depth and rank. q[d][r] = P(the target's next token is the parent's rank-r
   candidate | the path reached depth d and the parent has candidates) (d = 0: after the
   context's last token; a proposer whose candidates exist for some tokens only, as Token
   Recycling's rows, counts the rounds where they existed). Under the
   deterministic-children rule (specexp/core/verify.py) the path goes to the rank-r child with
   probability p(candidate r), greedy or sampling, so q[d][r] is estimated from the emitted text:
   at every depth the path reached, the emitted token's rank among the parent's candidates (or a
   miss). Counts by depth are shrunk toward the counts pooled over depths, and those toward a
   prior (`RankAcceptance`), so that a depth seldom reached borrows from the others.
2. The best tree of n nodes. A node's value is the probability that its path is accepted, the
   product of q along it; the expected tokens of a round are E(n) = 1 + the sum of its nodes'
   values. Values never grow down a path (every q <= 1), so the n best nodes of the whole
   (depth-limited) candidate tree form a tree, and taking them best first (`best_tree`) maximises
   E(n) for every n at once (Medusa's and Sequoia's greedy construction; exact under the model).
3. The size. A round over n nodes costs v(n + 1) one-token target forwards (the context's token
   and the n nodes, measured on this machine by width: cost_aware.measure_verify_cost with a tree) plus the
   drafting's: its steps (a drafter's levels, or one round of heads) times one step's cost,
   measured against a one-token target forward (cost_aware.relative_cost; nothing for a lookup).
   The rate E(n) / cost(n) is maximised over n <= max_nodes (`choose_size`): the drafting is the
   same whatever n, yet it weighs in, since a round that costs more anyway pays for more nodes.
   The estimates of step 1 change as the run goes, so the tree is chosen again every round; the
   costs are fixed at bind and recorded (metrics.json "measured"), so a run given them back
   measures nothing and decides identically.
"""
from __future__ import annotations

import heapq
from typing import Callable

import numpy as np

from specexp.length.cost_aware import measure_verify_cost, monotone_cost, relative_cost


class VerifyCost:
    """v(w): the verification cost of a forward over w tokens, relative to one token, from costs
    measured at a few widths: made non-decreasing (cost_aware.monotone_cost), linear between the measured widths, and extended past the widest at its slope."""

    def __init__(self, widths: list[int], costs: list[float]):
        if len(widths) != len(costs) or len(widths) < 2 or widths[0] != 1:
            raise ValueError(f"a tree's verify_cost needs one cost per width, the first at width 1 and at least two: "
                             f"widths {widths}, costs {costs}")
        self.widths, self.costs = [int(w) for w in widths], monotone_cost(costs)

    def __call__(self, w: int) -> float:
        ws, cs = self.widths, self.costs
        if w <= ws[-1]:
            return float(np.interp(w, ws, cs))
        slope = (cs[-1] - cs[-2]) / (ws[-1] - ws[-2])
        return cs[-1] + slope * (w - ws[-1])


class RankAcceptance:
    """q[d][r]: the estimated probability that the target's next token at depth d is the parent's
    rank-r candidate (module docstring, step 1). Counts of outcomes (ranks 0..k-1, or a miss) per
    depth; the estimate at depth d is (counts[d] + shrink * pooled) / (n[d] + shrink), the pooled
    one (all depths) is (counts + weight * prior) / (n + weight)."""

    def __init__(self, k: int, prior: list[float], weight: float = 4.0, shrink: float = 8.0, depths: int = 16):
        if len(prior) > k or sum(prior) > 1 or min(prior, default=0) < 0:
            raise ValueError(f"the tree's acceptance prior needs at most k={k} probabilities summing to <= 1, "
                             f"got {prior}")
        self.k, self.weight, self.shrink = k, weight, shrink
        self.prior = np.array(list(prior) + [0.0] * (k - len(prior)))
        self.counts = np.zeros((depths, k + 1))  # [:, k]: misses

    def reset(self) -> None:
        self.counts[:] = 0

    def observe(self, depth: int, rank: int | None) -> None:
        """At `depth` (past the last tracked depth: counted there), the emitted token was the
        parent's rank-`rank` candidate (None: none of them)."""
        self.counts[min(depth, len(self.counts) - 1), self.k if rank is None else rank] += 1

    def q(self) -> np.ndarray:
        """[depths, k]: the estimates."""
        total = self.counts.sum(0)
        pooled = (total[: self.k] + self.weight * self.prior) / (total.sum() + self.weight)
        n = self.counts.sum(1, keepdims=True)
        return (self.counts[:, : self.k] + self.shrink * pooled) / (n + self.shrink)


def best_tree(q: np.ndarray, max_depth: int, max_nodes: int,
              exists: Callable[[tuple[int, ...]], bool] = lambda path: True
              ) -> tuple[list[tuple[int, ...]], list[float]]:
    """The rank paths of the `max_nodes` most valuable nodes (value: the product of q[d][r] along
    the path, depth <= max_depth), best first, with their values (module docstring, step 2): a
    tree of the first n paths is the best of n nodes, for every n. `exists(path)`: whether that
    node can be drafted at all (a proposer's candidates: e.g. its parent has candidates); a node
    that cannot is skipped with its subtree."""
    depths = q.shape[0]
    qd = lambda d: q[min(d, depths - 1)]  # noqa: E731
    heap: list = []

    def push(parent: tuple[int, ...], value: float) -> None:
        if len(parent) < max_depth:
            for r, qr in enumerate(qd(len(parent))):
                if qr > 0 and exists(parent + (r,)):
                    heapq.heappush(heap, (-value * float(qr), parent + (r,)))

    push((), 1.0)
    paths, values = [], []
    while heap and len(paths) < max_nodes:
        neg, path = heapq.heappop(heap)
        paths.append(path)
        values.append(-neg)
        push(path, -neg)
    return paths, values


def choose_size(values: list[float], cost: VerifyCost, draft_cost: float = 0.0, drafted: int = 0) -> tuple[int, float]:
    """(n, rate): the number of best-first nodes whose round gives the most expected tokens per
    unit of cost, (1 + values[0] + ... + values[n-1]) / (v(drafted + n + 1) + draft_cost), over
    n = 0 (no node verified) .. len(values); rate in tokens per one-token target forward.
    `draft_cost`: the round's drafting, already spent whatever n (the tree is drafted before it is
    sized); `drafted`: nodes the round verifies besides these (their tokens are not counted, their
    width is)."""
    best, rate, expected = 0, 1.0 / (cost(drafted + 1) + draft_cost), 1.0
    for n, value in enumerate(values, start=1):
        expected += value
        r = expected / (cost(drafted + n + 1) + draft_cost)
        if r > rate:
            best, rate = n, r
    return best, rate


# The acceptance by rank assumed before a sample has taught anything: P(the target's next token is
# the rank-r candidate), weighted as PRIOR_WEIGHT observations.
PRIOR = [0.3, 0.1, 0.05, 0.03, 0.02, 0.02, 0.01, 0.01]
PRIOR_WEIGHT = 4.0


def default_widths(widest: int) -> list[int]:
    """1, 2, 4, 8, ... up to and including `widest`: where a machine-sized tree's cost is measured."""
    widths = [1]
    while widths[-1] < widest:
        widths.append(min(widths[-1] * 2, widest))
    return widths


class TreeSizer:
    """What a proposer needs to draft the best tree for its size (steps 1-3 of the module
    docstring): the acceptance by depth and rank, and, for size "machine", the verification cost
    by width (measured at bind unless given; `measured()` records it for replay). size "fixed":
    always the best tree of max_nodes nodes; "machine": of the size that pays best.
    `strategy`: the strategy's name, for errors."""

    def __init__(self, k: int, size: str = "fixed", max_nodes: int = 48, verify_cost: list[float] | None = None,
                 cost_widths: list[int] | None = None, strategy: str = "tree", draft_cost: float | None = None):
        if size not in ("fixed", "machine") or max_nodes < 1:
            raise ValueError(f"{strategy}: strategy.proposer.size must be fixed or machine and max_nodes >= 1, "
                             f"got size={size!r}, max_nodes={max_nodes}")
        self.size, self.max_nodes = size, int(max_nodes)
        self.widths = [int(w) for w in cost_widths] if cost_widths else default_widths(self.max_nodes + 1)
        if self.widths[0] != 1 or self.widths != sorted(set(self.widths)):
            raise ValueError(f"{strategy}: strategy.proposer.cost_widths must rise from 1, got {self.widths}")
        if verify_cost is not None and len(verify_cost) != len(self.widths):
            raise ValueError(f"{strategy}: strategy.proposer.verify_cost needs one cost per width of cost_widths "
                             f"{self.widths}, got {len(verify_cost)}")
        self.verify_cost = [float(c) for c in verify_cost] if verify_cost is not None else None
        self.source = "config" if verify_cost is not None else None
        if draft_cost is not None and draft_cost < 0:
            raise ValueError(f"{strategy}: strategy.proposer.draft_cost must be >= 0 or null, got {draft_cost}")
        # one drafting step's cost (a drafter level, or a round of heads) relative to a one-token
        # target forward: given, or measured at bind from the proposer's step (0: a proposer without one)
        self.draft_cost = None if draft_cost is None else float(draft_cost)
        self.draft_source = "config" if draft_cost is not None else None
        self.cost: VerifyCost | None = None
        self.acceptance = RankAcceptance(k, PRIOR[:k], PRIOR_WEIGHT)

    def bind(self, target, vocab_size: int | None = None, draft_step: Callable[[], object] | None = None) -> None:
        """Measure what was not given, once, on this machine (recorded: measured()): the
        verification cost by width, and one drafting step's cost when the proposer hands over
        `draft_step` (cost_aware.relative_cost; without one drafting costs nothing here)."""
        if self.size != "machine":
            return
        if self.verify_cost is None:
            self.verify_cost, _ = measure_verify_cost(target, self.widths, repeats=3, vocab_size=vocab_size, tree=True)
            self.source = "measured"
        if self.draft_cost is None:
            self.draft_cost = relative_cost(target, draft_step, repeats=3, vocab_size=vocab_size) if draft_step else 0.0
            self.draft_source = "measured" if draft_step else "none"
        self.cost = VerifyCost(self.widths, self.verify_cost)

    def choose(self, values: list[float], steps: int = 1, drafted: int = 0) -> int:
        """How many of the best-first nodes (their `values`) to verify: choose_size with the round's
        drafting cost, `steps` drafting steps (a drafter's levels; 1 for heads)."""
        return choose_size(values, self.cost, self.draft_cost * steps, drafted)[0]

    def measured(self) -> dict:
        """What steers a machine-sized tree, as plain data (metrics.json "measured"): "replay" gives
        back the config keys that make a run measure nothing and decide identically."""
        if self.size != "machine" or self.verify_cost is None:
            return {}
        replay = {"proposer.verify_cost": list(self.verify_cost), "proposer.cost_widths": self.widths}
        if self.draft_source != "none":  # a proposer with a drafting step (a lookup has none, nor the key)
            replay["proposer.draft_cost"] = self.draft_cost
        return {"replay": replay, "sources": {"verify_cost": self.source, "draft_cost": self.draft_source}}

    def paths(self, depth: int, exists: Callable[[tuple[int, ...]], bool] = lambda path: True,
              drafted: int = 0) -> list[tuple[int, ...]]:
        """This round's tree as rank paths in BFS order (by depth, then ranks: a parent before its
        children, better ranks first); `drafted`: nodes the round verifies besides (size machine)."""
        paths, values = best_tree(self.acceptance.q(), depth, self.max_nodes, exists)
        n = self.choose(values, 1, drafted) if self.size == "machine" else len(paths)
        return sorted(paths[:n], key=lambda p: (len(p), p))
