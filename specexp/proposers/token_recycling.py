"""Token Recycling (Luo et al. 2024, arXiv 2408.08696): a model-free tree proposer that recycles
the candidate tokens the target's own verification forwards produce.

1. The adjacency matrix `adj` [V, k] (int32): row t holds the target's k most likely next tokens
   the last time it was seen right after the token t (most likely first). It starts empty (no row
   seen) and is updated after every verification forward from that forward's logits: every token
   fed in it (the context's last token and every tree node) gets its row overwritten by the top-k
   of the target's distribution right after it, accepted or not.
2. The draft tree: a static template (a list of rank paths: (0, 2) = the best next token of the
   last token, then the third best after that one) instantiated by BFS from the last token over
   the matrix, level by level: a node's token is adj[its parent's token, its rank]. Its shape is
   the `branching` per depth (every node at depth d gets branching[d] children; levels past the
   list repeat its last entry) or explicit `paths`; it is cut at the length policy's depth.
3. The tree's children are deterministic (matrix rows), so the draft carries no probabilities and
   the target verifies it with the deterministic rule (specexp.core.verify.verify_tree_sampling):
   greedy and sampling are lossless.

What was read of the authors' code (github.com/Luowaterbi/TokenRecycling, evaluation/
inference_recycling.py and model/recycling/tree_template_.py; nothing copied): their matrix is
[V, 8] of zeros created once per process and kept across questions; after each forward every fed
token's row is overwritten with torch.topk(logits, 8) of its position; their tree ("2.2.2") is a
list of 80 rank paths, depth up to 6, skewed toward the best ranks (8 first-level nodes, 21 at depth
2, 25 at depth 3, then 15, 8, 3), built level by level by indexing the flattened matrix with
parent * 8 + rank. Where this one differs, and why:
  * rows never written are not expanded (their zeros would draft token 0): a node whose parent's
    row is unseen, or whose parent is an EOS, gets no children, so the tree shrinks instead of
    verifying junk (verification cost grows with tree size, on a CPU nearly linearly);
  * when a token occurs at several nodes of one tree, the rows are written in the order
    rejected nodes, then the context's last token and the accepted path, so the row that
    survives is the one after the text that really happened (theirs: a scatter with duplicate
    indices, whose winner is unspecified on a GPU);
  * `carry` (default false): the matrix is reset per sample, so a sample's speed does not depend
    on which samples (or warm-up and repeated decodes of the same sample) ran before it; true
    keeps it across samples as the paper does;
  * `prompt_init`: optionally seed the rows from the prompt's own bigrams (the paper does not);
  * `size: machine`: instead of a static template, the tree is chosen every round for this
    machine (specexp/proposers/tree_sizing.py: Sequoia's best tree for its size under the measured
    acceptance by depth and rank, and the size whose expected tokens per measured verification
    cost is highest); the paper tunes one static tree per GPU by hand;
  * `lookup_nodes`: optionally merge a prompt-lookup trie of that many nodes into the tree (the
    continuations of the text's suffix where it occurred before: specexp/proposers/lookup_trie.py),
    so that long copied spans (numbers, names) reach past the template's depth (not in the paper).

How the loop's logits map to nodes: the decode loop hands `observe_target` the rows reordered as
[context, accepted path..., other nodes in index order] (specexp/core/decode.py step 4) without the
path itself; the path is read back at the next `propose` from the tokens the round appended (a
child's token is unique among its siblings, and the target's own token is never one of the last
accepted node's children), and the update is applied then. A sample's last round is not learned
from (no next propose), which matters only under `carry`.
"""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer, check_depth_policy
from specexp.proposers.lookup_trie import LookupTrie, Trie
from specexp.proposers.tree_sizing import TreeSizer


def template_from_branching(branching: list[int], depth: int) -> list[tuple[int, ...]]:
    """The rank paths of a full tree `depth` levels deep in which every node at depth d (the
    context: d = 0) has branching[d] children (past the list: its last entry), in BFS order."""
    paths, level = [], [()]
    for d in range(depth):
        b = branching[min(d, len(branching) - 1)]
        level = [p + (r,) for p in level for r in range(b)]
        paths += level
    return paths


def check_template(paths: list[tuple[int, ...]], k: int) -> list[tuple[int, ...]]:
    """Refuse a template with a rank >= k or a path whose parent is missing; return it in BFS order
    (by depth, then lexicographically: a parent before its children, better ranks first)."""
    paths = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
    have = set(paths)
    for p in paths:
        if not p or min(p) < 0 or max(p) >= k:
            raise ValueError(f"token_recycling: tree path {list(p)} needs ranks in [0, k={k})")
        if len(p) > 1 and p[:-1] not in have:
            raise ValueError(f"token_recycling: tree path {list(p)} has no parent {list(p[:-1])} in the template")
    return paths


class TokenRecycling(Proposer):
    """Token Recycling's adjacency matrix and static tree (module docstring).

    k: top-k next tokens kept per token (the matrix's width); branching: children per node at each
    depth (the template, cut at the policy's depth); paths: an explicit template of rank paths
    instead (null: from branching); carry: keep the matrix across samples; prompt_init: seed the
    rows from the prompt's bigrams (the most recent successor first)."""

    forwards = 0
    drafts_trees = True  # batch decoding runs chains only (specexp/core/batch_decode.py check_supported)

    def __init__(self, k: int = 8, branching: list[int] | tuple[int, ...] = (4, 2, 1), paths: list | None = None,
                 carry: bool = False, prompt_init: bool = False, size: str = "fixed", max_nodes: int = 48,
                 verify_cost: list[float] | None = None, cost_widths: list[int] | None = None,
                 lookup_nodes: int = 0):
        branching = [int(b) for b in branching]
        if k < 1 or not branching or min(branching) < 1 or max(branching) > k:
            raise ValueError(f"token_recycling: need k >= 1 and 1 <= branching[d] <= k, got k={k}, branching={branching}")
        self.k, self.branching, self.carry, self.prompt_init = k, branching, carry, prompt_init
        self.paths = check_template([tuple(p) for p in paths], k) if paths else None
        self.size = size  # fixed: the template; machine: self.sizer's tree every round
        self.sizer = TreeSizer(k, size, max_nodes, verify_cost, cost_widths, strategy="token_recycling")
        if lookup_nodes < 0:
            raise ValueError(f"token_recycling: strategy.proposer.lookup_nodes must be >= 0, got {lookup_nodes}")
        self.lookup = LookupTrie(max_nodes=lookup_nodes) if lookup_nodes else None
        self.adj = torch.zeros(0, k, dtype=torch.int32)  # [V, k]: grown to the target's logit width
        self.seen = torch.zeros(0, dtype=torch.bool)  # [V]: rows written at least once
        self._round: tuple[int, int, list[int], list[int]] | None = None  # (start, context's last token, nodes, parents)
        self._pending: tuple[torch.Tensor, int] | None = None  # (the target's top-k per row, n accepted)

    def bind(self, pair) -> Proposer:
        if getattr(getattr(getattr(pair, "target", None), "config", None), "is_encoder_decoder", False):
            raise ValueError("strategy=token_recycling needs a decoder-only target (token trees)")
        self._grow(int(getattr(pair, "vocab_size", 0) or 0))
        self.sizer.bind(pair.target, getattr(pair, "vocab_size", None))
        return self

    def measured(self) -> dict:
        """The verification costs a machine-sized tree was chosen by (TreeSizer.measured)."""
        return self.sizer.measured()

    # ------------------------------------------------------------------ 1. the matrix
    def _grow(self, v: int) -> None:
        if v > self.adj.shape[0]:
            grown = torch.zeros(v, self.k, dtype=torch.int32)
            grown[: self.adj.shape[0]] = self.adj
            seen = torch.zeros(v, dtype=torch.bool)
            seen[: self.seen.shape[0]] = self.seen
            self.adj, self.seen = grown, seen

    def reset(self, prompt: torch.Tensor) -> None:
        self._round, self._pending = None, None
        if not self.carry:
            self.adj.zero_()
            self.seen.zero_()
            self.sizer.acceptance.reset()
        if self.prompt_init:
            self._seed_from(prompt.tolist())

    def _seed_from(self, ids: list[int]) -> None:
        """Each prompt bigram (a, b), in order: b moves to the front of a's row (most recent first)."""
        self._grow(max(ids, default=-1) + 1)
        for a, b in zip(ids, ids[1:]):
            row = self.adj[a].tolist() if self.seen[a] else []
            row = [b] + [t for t in row if t != b]
            row += [b] * (self.k - len(row))  # pad a short row with its best (never drafted twice: see _expand)
            self.adj[a] = torch.tensor(row[: self.k], dtype=torch.int32)
            self.seen[a] = True

    def write(self, tokens: list[int], top: torch.Tensor) -> None:
        """Row tokens[i] <- top[i] ([m, k] ids), in order: a later write of the same token wins."""
        last = {t: i for i, t in enumerate(tokens)}
        ids = torch.tensor(list(last), dtype=torch.long)
        self._grow(max(last) + 1)
        self.adj[ids] = top[list(last.values())].to(torch.int32)
        self.seen[ids] = True

    def observe_target(self, logits: torch.Tensor, n_accepted: int) -> None:
        """Keep the top-k of every row (context, accepted path, other nodes): applied at the next
        propose, once the path is known (module docstring)."""
        k = min(self.k, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices.to("cpu", torch.int32)
        if k < self.k:  # a vocabulary smaller than k: repeat the last id (only ever drafted once, see _expand)
            top = torch.cat([top, top[:, -1:].expand(-1, self.k - k)], 1)
        self._pending = (top, n_accepted)

    def _learn(self, tokens: torch.Tensor) -> None:
        """Apply the last round's update: map its logits' rows back to the tokens they follow."""
        pending, rnd = self._pending, self._round
        self._pending, self._round = None, None
        if pending is None or rnd is None:
            return
        (top, n), (start, last, nodes, parents) = pending, rnd
        # 1. The accepted path, read from the tokens the round appended (first matching child).
        path, node = [], -1
        for t in tokens[start:].tolist():
            node = next((i for i in range(len(nodes)) if parents[i] == node and nodes[i] == t), None)
            if node is None:
                break
            path.append(node)
        if len(path) != n:  # cannot happen (module docstring); learn nothing rather than something wrong
            return
        # 2a. What the round says of the acceptance by depth and rank, from the rows it drafted
        #     from (before they are overwritten): at each depth the path reached, the emitted token's rank.
        emitted = tokens[start:].tolist()
        for d, actual in enumerate(emitted[: n + 1]):
            prev = last if d == 0 else nodes[path[d - 1]]
            if prev < self.seen.shape[0] and self.seen[prev]:  # (an unseen row has no candidates: nothing to learn)
                row = self.adj[prev].tolist()
                self.sizer.acceptance.observe(d, row.index(actual) if actual in row else None)
        # 2b. Row 0: after the context's last token; rows 1..n: the path; then the rest in index order.
        on_path = set(path)
        rest = [i for i in range(len(nodes)) if i not in on_path]
        row_of = {node: 1 + j for j, node in enumerate(path + rest)}
        # 3. Write the rejected nodes first, then the real text (context, path): it wins on a repeat.
        order = [(nodes[i], row_of[i]) for i in rest] + [(last, 0)] + [(nodes[i], row_of[i]) for i in path]
        self.write([t for t, _ in order], top[[r for _, r in order]])

    # ------------------------------------------------------------------ 2. the tree
    def template(self, depth: int, last: int | None = None, drafted: int = 0) -> list[tuple[int, ...]]:
        if self.size == "machine":  # this round's best tree for this machine (tree_sizing, steps 2-3)
            return self.sizer.paths(depth, self._exists(last), drafted)
        if self.paths is not None:
            return [p for p in self.paths if len(p) <= depth]
        return template_from_branching(self.branching, depth)

    def _expandable(self, prev: int, is_root: bool) -> bool:
        """Whether the token `prev` can have children: its row was written, and (below the
        context) it is not an EOS."""
        return prev < self.seen.shape[0] and bool(self.seen[prev]) and (is_root or prev not in self.eos)

    def _exists(self, last: int | None):
        """exists(rank path) for best_tree: the node `expand` would draft from the token `last`
        (its parent expandable, its token not an earlier rank's of the same row: a padded row)."""
        token: dict[tuple[int, ...], int] = {(): last}

        def exists(path: tuple[int, ...]) -> bool:
            prev = token.get(path[:-1])
            if prev is None or not self._expandable(prev, not path[:-1]):
                return False
            row = self.adj[prev].tolist()
            if row[path[-1]] in row[: path[-1]]:
                return False
            token[path] = row[path[-1]]
            return True

        return exists

    def expand(self, last: int, depth: int, drafted: int = 0) -> tuple[list[int], list[int]]:
        """The template instantiated from the token `last` over the matrix: (tokens, parents), BFS
        order. A node is dropped when its parent cannot be expanded (`_expandable`: its row never
        written, or an EOS) or its token repeats an earlier sibling's (a padded row). `drafted`:
        nodes drafted besides (the lookup trie's), which a machine-sized tree's cost counts."""
        nodes, parents, at = [], [], {(): -1}  # at: template path -> node index (-1: the context)
        for p in self.template(depth, last, drafted):
            parent = at.get(p[:-1])
            if parent is None:
                continue  # its parent was dropped
            prev = last if parent < 0 else nodes[parent]
            if not self._expandable(prev, parent < 0):
                continue
            tok = int(self.adj[prev, p[-1]])
            if any(parents[i] == parent and nodes[i] == tok for i in range(len(nodes))):
                continue
            at[p] = len(nodes)
            nodes.append(tok)
            parents.append(parent)
        return nodes, parents

    def lookup_trie(self, text: list[int], depth: int) -> tuple[list[int], list[int]]:
        """The prompt-lookup trie of `text`: at most lookup_nodes nodes, `depth` deep (BFS order)."""
        self.lookup.eos = self.eos
        trie = Trie()
        for seq in self.lookup.continuations(text, depth):
            trie.insert(seq)
        return trie.best(self.lookup.max_nodes)

    @staticmethod
    def merge(nodes: list[int], parents: list[int], other: tuple[list[int], list[int]]) -> None:
        """Merge the tree `other` into (nodes, parents), in place: a node of it whose parent
        already has a child of its token is that child; any other is appended (after its parent:
        the order stays topological)."""
        at = {}  # other's node -> merged node
        for i, (tok, p) in enumerate(zip(*other)):
            parent = at[p] if p >= 0 else -1
            same = next((j for j in range(len(nodes)) if parents[j] == parent and nodes[j] == tok), None)
            if same is None:
                same = len(nodes)
                nodes.append(tok)
                parents.append(parent)
            at[i] = same

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy | None, sampling: Sampling | None,
                generator: torch.Generator | None) -> Draft:
        check_depth_policy(policy, "token_recycling")
        self._learn(tokens)
        last = int(tokens[-1])
        # The lookup trie first (size=machine sizes the recycled nodes on top of its nodes), then the recycled tree.
        lookup = self.lookup_trie(tokens.tolist(), max_len) if self.lookup is not None and max_len > 0 else ([], [])
        nodes, parents = self.expand(last, max_len, len(lookup[0])) if max_len > 0 else ([], [])
        self.merge(nodes, parents, lookup)
        self._round = (tokens.shape[0], last, nodes, parents)
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, dtype=tokens.dtype, device=tokens.device), None,
                     parents=torch.tensor(parents, device=tokens.device))
