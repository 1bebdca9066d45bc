"""Token trees (specexp/core/tree.py, verify_tree in specexp/core/verify.py):

  * the tree forward: each root-to-leaf path's logits equal those of the path fed as a plain
    chain (Llama and GPT-2, eager and sdpa attention, float32; bfloat16 with a looser tolerance),
    and after keeping a path the cache continues as the chain's would;
  * sampling: the emitted tokens follow the target's distribution (chi-square on the joint of two
    consecutive tokens, small vocabulary) for each way children are drawn (independently,
    without replacement, deterministic top-k), after a power check that the same draws through a
    wrong rule are rejected;
  * greedy: a tree decode on a tiny model emits exactly the target's autoregressive output;
  * a chain given as a tree gives exactly what the chain path gives.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import check_pairs_follow, exact_joint, pair_counts_pvalue, noisy_copy, random_model

from specexp.core import tree, verify
from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.core.verify import verify_tree, verify_tree_sampling
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling

PARENTS = torch.tensor([-1, -1, 0, 0, 1, 2, 2, 4, -1, 5])  # 3 first-level nodes, 5 leaves, depth up to 4


def _model(arch: str, impl: str, dtype=torch.float32):
    model = random_model(arch, 50, 64, 2, seed=0).to(dtype)
    model.set_attn_implementation(impl)
    return model


# ============================================================ the forward and the cache ==========

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(("impl", "dtype"), [("eager", torch.float32), ("sdpa", torch.float32),
                                               ("eager", torch.bfloat16)])  # bf16: the mask's minimum added to bf16 scores
def test_tree_forward_equals_each_path_as_a_chain(arch, impl, dtype):
    """A cached prefix, two context tokens, then the tree: row 0 and each path's rows equal a plain
    forward of prompt + path; after keep_path, the next token's logits equal the chain's."""
    tol = 1e-4 if dtype is torch.float32 else 0.1
    model = _model(arch, impl, dtype)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 50, (7,), generator=g)
    tokens = torch.randint(0, 50, (10,), generator=g)
    paths = tree.leaf_paths(PARENTS.tolist())
    assert len(paths) == 5 and max(map(len, paths)) == 4
    for kept in paths:
        lm = CachedLM(model)
        lm.forward(prompt[:-2])
        logits = tree.forward(lm, prompt[-2:], tokens, PARENTS)
        assert logits.shape == (11, 50) and lm.length == 7 + 10
        for path in paths:
            chain = CachedLM(model).forward(torch.cat([prompt, tokens[path]]), keep=len(path) + 1)
            torch.testing.assert_close(logits[[0] + [i + 1 for i in path]], chain, atol=tol, rtol=0)
        # 3. keep one path: the cache is the prefix and that path, as if it had been fed as a chain
        tree.keep_path(lm, 7, kept)
        assert lm.length == 7 + len(kept) == lm.cache.get_seq_length()
        nxt = torch.tensor([3, 9])
        chain = CachedLM(model).forward(torch.cat([prompt, tokens[kept], nxt]), keep=2)
        torch.testing.assert_close(lm.forward(nxt), chain, atol=tol, rtol=0)


def test_tree_attention_mask_and_positions():
    """The mask's structure itself: the context is causal, a node sees its ancestors only."""
    from specexp.models.cached_lm import tree_attention

    mask, pos = tree_attention([-1, -1, 0, 2], n_cached=3, n_context=2, dtype=torch.float16, device="cpu")
    see = (mask[0, 0] == 0).int().tolist()  # additive mask: 0 = seen, the dtype's minimum = masked
    assert mask.dtype == torch.float16 and float(mask.min()) == torch.finfo(torch.float16).min
    assert see == [[1, 1, 1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 1, 1, 0, 0, 0, 0],
                   [1, 1, 1, 1, 1, 1, 0, 0, 0],   # node 0
                   [1, 1, 1, 1, 1, 0, 1, 0, 0],   # node 1: not its sibling
                   [1, 1, 1, 1, 1, 1, 0, 1, 0],   # node 2: node 0, itself
                   [1, 1, 1, 1, 1, 1, 0, 1, 1]]   # node 3: nodes 0, 2, itself
    assert pos.tolist() == [[3, 4, 5, 5, 6, 7]]


def test_malformed_trees_are_refused():
    with pytest.raises(ValueError, match="topological"):
        tree.check_tree(torch.tensor([1, 2]), torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="one parent per token"):
        tree.check_tree(torch.tensor([1, 2]), torch.tensor([-1]))


# ============================================================ sampling: the distribution ========

V = 6
DRAWS = 6000
POWER = 1e-4  # a wrong rule must score below this; the real ones above 1e-3


def _tables():
    """A bigram target P[prev] and drafter Q[prev] over V tokens, both distributions. Token 5 is
    ruled out by the target after every token (as top-k would): it must never be emitted, though
    the drafter proposes it."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(V, V, generator=g) * 1.5
    target[:, 5] = float("-inf")
    drafter = target.clamp_min(-3) + 1.2 * torch.randn(V, V, generator=g)
    return target.softmax(-1), drafter.softmax(-1)


def _draft_tree(last: int, Q: torch.Tensor, how: str, g: torch.Generator):
    """A tree of depth 2, 3 children at the first level and 2 under each: tokens, parents and the
    per-node q (the distribution each node was drawn from given its earlier siblings; None when
    deterministic)."""
    tokens, parents, probs = [], [], []

    def expand(parent: int, prev: int, k: int):
        q = Q[prev]
        if how == "independent":
            kids, rows = torch.multinomial(q, k, replacement=True, generator=g), q.expand(k, V)
        elif how == "without_replacement":
            kids = torch.multinomial(q, k, replacement=False, generator=g)
            rows = tree.without_replacement(q, kids)
        else:  # deterministic: the drafter's top-k
            kids, rows = q.topk(k).indices, torch.nn.functional.one_hot(q.topk(k).indices, V).float()
        first = len(tokens)
        tokens.extend(kids.tolist())
        parents.extend([parent] * k)
        probs.extend(rows)
        return range(first, first + k)

    for node in list(expand(-1, last, 3)):
        expand(node, tokens[node], 2)
    return tokens, parents, (None if how == "deterministic" else torch.stack(probs))


def _emit_pairs(P, Q, how, wrong=None, draws=DRAWS):
    """Counts of the first two emitted tokens over `draws` decodes after the token 0, each round a
    fresh tree verified by verify_tree_sampling (or by `wrong`, a plausible bug)."""
    counts, accepted, drafted = Counter(), 0, 0
    for i in range(draws):
        g = torch.Generator().manual_seed(i)
        out, last = [], 0
        while len(out) < 2:
            tokens, parents, probs = _draft_tree(last, Q, how, g)
            rows = torch.stack([P[last]] + [P[t] for t in tokens])  # row 0 after the context, 1 + i after node i
            if wrong == "drafter_q":  # top-k children verified as if sampled from q
                probs = torch.stack([Q[last if p < 0 else tokens[p]] for p in parents])
            if wrong == "shared_q":  # without-replacement children verified with q, not q given the siblings
                probs = torch.stack([Q[last if p < 0 else tokens[p]] for p in parents])
            path, nxt = verify_tree_sampling(tokens, parents, probs, rows, g)
            accepted, drafted = accepted + len(path), drafted + len(tokens)
            out += [tokens[c] for c in path] + [nxt]
            last = out[-1]
        counts[tuple(out[:2])] += 1
    return counts, accepted


def _pvalue(counts: Counter, P: torch.Tensor) -> float:
    return pair_counts_pvalue(counts, P[0][:, None] * P)  # P(x1, x2) after the token 0


# each way of drawing children, and the plausible bug its check must catch
RULES = {
    "independent": "no_residual",  # SpecInfer without the residual update between siblings
    "without_replacement": "shared_q",  # the independent rule applied to draws without replacement
    "deterministic": "drafter_q",  # top-k children verified as if sampled from the drafter's q
}


@pytest.mark.parametrize("how", list(RULES))
def test_tree_sampling_keeps_the_targets_distribution(how, monkeypatch):
    P, Q = _tables()
    wrong = RULES[how]
    with monkeypatch.context() as m:  # 1. power: the check rejects the plausible bug
        if wrong == "no_residual":
            m.setattr(verify, "residual", lambda p, q: p)
        broken, _ = _emit_pairs(P, Q, how, wrong=None if wrong == "no_residual" else wrong)
    assert _pvalue(broken, P) < POWER, f"{how}: the check cannot tell {wrong} apart"
    counts, accepted = _emit_pairs(P, Q, how)  # 2. the real rule
    assert _pvalue(counts, P) > 1e-3
    assert not any(5 in pair for pair in counts), "a token the target rules out was emitted"
    assert 0 < accepted


def test_a_ruled_out_child_is_never_accepted():
    """p(x) = 0 at every child: none is accepted whatever the draws, and the correction comes from
    p (here all on token 0)."""
    p = torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.0, 1.0, 0, 0], [0.0, 0, 1.0, 0]])
    for seed in range(200):
        path, nxt = verify_tree_sampling([1, 2], [-1, -1], q, p, torch.Generator().manual_seed(seed))
        assert path == [] and nxt == 0


# ============================================================ greedy, and chains ================

def _greedy_tree_decode(target, drafter, prompt, n_new, k=2, depth=3):
    """A tree decode by hand: the drafter's top-k at each node to `depth` (full forwards, no
    cache: only the target's cache is under test), one target forward, the greedy walk, the kept
    path. Returns the new tokens and the accepted counts per round."""
    lm, tokens, counts = CachedLM(target), prompt, []
    while (budget := n_new - (tokens.shape[0] - prompt.shape[0])) > 0:
        d = min(depth, budget - 1)
        nodes, parents, frontier = [], [], [(-1, [])]
        for _ in range(d):
            nxt_frontier = []
            for parent, path in frontier:
                top = drafter(torch.cat([tokens, torch.tensor(path, dtype=tokens.dtype)])[None]).logits[0, -1].topk(k)
                for t in top.indices.tolist():
                    nodes.append(t)
                    parents.append(parent)
                    nxt_frontier.append((len(nodes) - 1, path + [t]))
            frontier = nxt_frontier
        draft, par = torch.tensor(nodes, dtype=tokens.dtype), torch.tensor(parents)
        logits = tree.forward(lm, tokens[lm.length:], draft, par if nodes else None)
        path, nxt = verify_tree(draft, par if nodes else None, None, logits, Sampling(), None)
        tree.keep_path(lm, tokens.shape[0], path)
        tokens = torch.cat([tokens, draft[path], torch.tensor([nxt])])
        counts.append(len(path))
    return tokens[prompt.shape[0]:].tolist(), counts


def test_greedy_tree_decode_equals_autoregressive():
    target = random_model("llama", 50, 64, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)  # sharper: the drafter agrees often
    drafter = noisy_copy(target, 0.5, seed=1)
    for seed in range(2):
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(seed))
        reference = generate(CachedLM(target), prompt, 20, Sampling(), Stopper()).tokens
        with torch.inference_mode():
            out, counts = _greedy_tree_decode(target, drafter, prompt, 20)
        assert out == reference
        assert sum(counts) > 0 and len(counts) < 20  # drafts were accepted: the kept paths were exercised


def test_a_chain_as_a_tree_gives_the_chain_path():
    """verify_tree with chain parents (the tree walk) against the chain rules (verify): the same
    accepted count and token from the same generator, greedy and sampling, drafts from q or
    deterministic; and tree.forward of a chain is the plain forward."""
    g = torch.Generator().manual_seed(0)
    sampling = Sampling(temperature=0.9, top_k=5)
    for trial in range(400):
        k = trial % 5
        logits = torch.randn(k + 1, 8, generator=g) * 2
        q = sampling.probs(logits + torch.randn(k + 1, 8, generator=g))[:k]
        draft = torch.multinomial(q, 1, generator=g)[:, 0] if k else torch.zeros(0, dtype=torch.long)
        for probs in (q, None):
            for s in (sampling, Sampling()):
                seed = 1000 + trial
                n, nxt = verify.verify(draft, probs, logits, s, torch.Generator().manual_seed(seed))
                path, nxt2 = verify_tree(draft, tree.chain(k), probs, logits, s, torch.Generator().manual_seed(seed))
                assert (path, nxt2) == (list(range(n)), nxt)
    model = random_model("llama", 50, 32, 1, seed=0)
    ids = torch.arange(10)
    a, b = CachedLM(model), CachedLM(model)
    a.forward(ids[:4])
    b.forward(ids[:4])
    assert torch.equal(tree.forward(a, ids[4:6], ids[6:], tree.chain(4)), b.forward(ids[4:], keep=5))  # one code path


# ============================================================ the tree drafter in the loop ======

def test_a_drafter_tree_extended_level_by_level_equals_chains():
    """The drafter feeds its tree one level per forward (`tree_cached`: the earlier levels are in
    its cache): each new node's logits equal its path fed as a chain."""
    model = _model("llama", "sdpa")
    prompt = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(3))
    nodes, parents = [11, 12, 13, 14, 15], [-1, -1, 0, 1, 1]  # level 1: nodes 0, 1; level 2: 2, 3, 4
    lm = CachedLM(model)
    lm.forward(prompt)
    lm.forward(torch.tensor(nodes[:2]), tree=torch.tensor(parents[:2]))
    logits = lm.forward(torch.tensor(nodes[2:]), tree=torch.tensor(parents), tree_cached=2)
    for row, node in enumerate(range(2, 5)):
        path = tree.path_to(node, parents)
        chain = CachedLM(model).forward(torch.cat([prompt, torch.tensor([nodes[i] for i in path])]), keep=1)
        torch.testing.assert_close(logits[row:row + 1], chain, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tree_pair():
    from conftest import ModelsByRole

    from specexp.proposers.tree_drafter import TreeDrafter

    target = random_model("llama", 50, 64, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)  # sharper: the drafter agrees often
    pair = ModelsByRole(target, noisy_copy(target, 0.5, seed=1))
    return pair, TreeDrafter(branch=2, width=3).bind(pair)


def test_tree_strategy_greedy_equals_autoregressive(tree_pair):
    from specexp.length import Fixed

    pair, proposer = tree_pair
    for seed in range(2):
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(seed))
        reference = generate(CachedLM(pair.target), prompt, 24, Sampling(), Stopper()).tokens
        out = generate(CachedLM(pair.target), prompt, 24, Sampling(), Stopper(), proposer, Fixed(4))
        assert out.tokens == reference
        assert max(out.drafted) == 2 + 3 * 3 and sum(out.accepted) > 0  # depth 4: 2 first-level nodes, then 3 per level
        assert [e for e in out.emitted] == [a + 1 for a in out.accepted]
        assert all(len(r) == k - a for r, k, a in zip(out.rejected, out.drafted, out.accepted))


def test_tree_strategy_sampling_has_the_targets_distribution(monkeypatch):
    """The tree strategy through `generate` on a small-vocabulary Llama pair: the joint of the first
    two tokens against the target's exact joint, after the power check (no residual update)."""
    from conftest import ModelsByRole

    from specexp.length import Fixed
    from specexp.proposers.tree_drafter import TreeDrafter

    vs = 6
    target = random_model("llama", vs, 32, 1, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(4)
    proposer = TreeDrafter(branch=2, width=2).bind(ModelsByRole(target, noisy_copy(target, 0.8, seed=1)))
    sampling, prompt = Sampling(temperature=1.0, top_k=4), torch.tensor([1, 2, 3])
    lm, exact = CachedLM(target), exact_joint(target, prompt, sampling, vs)

    def emit(i):
        out = generate(lm, prompt, 2, sampling, Stopper(), proposer, Fixed(3), torch.Generator().manual_seed(i))
        return tuple(out.tokens), sum(out.accepted)

    check_pairs_follow(exact, emit, monkeypatch, power=POWER)


def test_batched_trees_are_refused(tree_pair):
    from specexp.core.batch_decode import check_supported

    pair, proposer = tree_pair
    with pytest.raises(ValueError, match="batch_size"):
        check_supported(proposer, pair.target)


# ============================================================ re-ranking and entropy gates =====

def _drafter_tree(pair, prompt, depth=4, **options):
    """One fresh TreeDrafter round on `prompt`: the proposer (its drafter cache as the round left
    it), the draft's tokens and parents (lists)."""
    from specexp.length import Fixed
    from specexp.proposers.tree_drafter import TreeDrafter

    proposer = TreeDrafter(**options).bind(pair)
    proposer.reset(prompt)
    draft = proposer.propose(prompt, depth, Fixed(depth), Sampling(), None)
    parents = [] if draft.parents is None else draft.parents.tolist()
    return proposer, draft.tokens.tolist(), parents


def _paths(nodes, parents):
    """Each node's path from the root, as a tuple of tokens."""
    return [tuple(nodes[i] for i in tree.path_to(n, parents)) for n in range(len(nodes))]


def _chain_logprobs(model, prompt, path):
    """The drafter's log-probs [len(path) + 1, V] after the prompt and each prefix of `path`, fed as a chain."""
    ids = torch.cat([prompt, torch.tensor(path, dtype=prompt.dtype)])
    return CachedLM(model).forward(ids, keep=len(path) + 1).log_softmax(-1).double()


def _greedy_equals_autoregressive(pair, **options):
    from specexp.length import Fixed
    from specexp.proposers.tree_drafter import TreeDrafter

    proposer = TreeDrafter(**options).bind(pair)
    drafted, accepted = [], 0
    for seed in range(4):
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(seed))
        reference = generate(CachedLM(pair.target), prompt, 24, Sampling(), Stopper()).tokens
        out = generate(CachedLM(pair.target), prompt, 24, Sampling(), Stopper(), proposer, Fixed(4))
        assert out.tokens == reference, f"prompt {seed}: the tree decode left the target's greedy output"
        assert [e for e in out.emitted] == [a + 1 for a in out.accepted]
        drafted, accepted = drafted + list(out.drafted), accepted + sum(out.accepted)
    return drafted, accepted


def test_reranked_tree_greedy_equals_autoregressive(tree_pair):
    pair, _ = tree_pair
    drafted, accepted = _greedy_equals_autoregressive(pair, branch=3, width=4, total=6)
    assert max(drafted) == 6 and accepted > 0


@pytest.fixture(scope="module")
def sharp_pair():
    """The tree pair's target, sharper still: the drafter's best paths run deep, so the re-ranking
    drops first-level nodes and keeps deeper ones (whose cache positions then move)."""
    from conftest import ModelsByRole

    target = random_model("llama", 50, 64, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(15)
    return ModelsByRole(target, noisy_copy(target, 0.5, seed=1))


def test_reranked_tree_keeps_the_top_paths(sharp_pair):
    """total=6 of a 4-level tree: the kept nodes are the 6 best of the whole tree by the drafter's
    path log-probability (computed here from chain forwards), each with its parent, in topological
    order, the siblings still most likely first."""
    pair = sharp_pair
    prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(1))
    _, full_nodes, full_parents = _drafter_tree(pair, prompt, branch=3, width=4)
    _, nodes, parents = _drafter_tree(pair, prompt, branch=3, width=4, total=6)
    assert len(full_nodes) == 3 + 4 * 3 and len(nodes) == 6
    assert all(-1 <= p < i for i, p in enumerate(parents))  # topological: every parent kept, before its child
    # 1. each path's score from plain chain forwards of the drafter
    score = {}
    for path in _paths(full_nodes, full_parents):
        logp = _chain_logprobs(pair.drafter, prompt, list(path))
        score[path] = float(sum(logp[d, t] for d, t in enumerate(path)))
    ranked = sorted(score, key=lambda p: (-score[p], len(p)))
    assert score[ranked[5]] - score[ranked[6]] > 1e-3  # no float edge between the 6th and the 7th
    kept = _paths(nodes, parents)
    assert set(kept) == set(ranked[:6])
    assert max(map(len, kept)) >= 2  # the re-ranking cut across levels, not only the last one
    # 2. the order is the full tree's (level by level), the kept subset of it
    order = {p: i for i, p in enumerate(_paths(full_nodes, full_parents))}
    assert [order[p] for p in kept] == sorted(order[p] for p in kept)


def test_reranked_tree_drafter_cache_keeps_the_accepted_path(sharp_pair):
    """After a re-ranked round, whichever kept node the target accepts up to, the drafter's cache is
    the context and that path, from where each node was fed before the re-ranking: the next
    forward equals a fresh drafter's over context + path + the target's token."""
    pair = sharp_pair
    prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(2))
    proposer, nodes, parents = _drafter_tree(pair, prompt, branch=3, width=4, total=6)
    cached = proposer._tree[3]
    moved = [i for i in range(len(nodes)) if cached[i] is not None and cached[i] != 8 + i]
    assert moved, "no kept node moved: the re-ranking's cache positions are not exercised"
    for node in range(len(nodes)):
        proposer, nodes, parents = _drafter_tree(pair, prompt, branch=3, width=4, total=6)
        path = [nodes[i] for i in tree.path_to(node, parents)]
        nxt = 7
        tokens = torch.cat([prompt, torch.tensor(path + [nxt])])
        proposer._keep_accepted(tokens)
        fed = len(path) if cached[node] is not None else len(path) - 1  # the last level was never fed
        assert proposer.lm.length == 8 + fed == proposer.lm.cache.get_seq_length()
        logits = proposer.lm.forward(tokens[proposer.lm.length:], keep=1)
        torch.testing.assert_close(logits, CachedLM(pair.drafter).forward(tokens, keep=1), atol=1e-4, rtol=0)


def _entropies(pair, prompt, nodes, parents):
    """The drafter's Shannon entropy (nats) after the prompt (key ()) and after each node's path."""
    from specexp.models import token_entropy

    out = {}
    for path in [()] + _paths(nodes, parents):
        logp = _chain_logprobs(pair.drafter, prompt, list(path))
        out[path] = float(token_entropy.shannon(logp[-1].exp()))
    return out


def test_entropy_gate_extremes(tree_pair):
    """max_entropy=0: the drafter is never that sure here, so the draft is empty; a huge
    threshold: exactly the ungated tree."""
    pair, _ = tree_pair
    for seed in range(3):
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(seed))
        full = _drafter_tree(pair, prompt, branch=3, width=4)[1:]
        assert _drafter_tree(pair, prompt, branch=3, width=4, max_entropy=1e9)[1:] == full
        entropy = _entropies(pair, prompt, *full)
        assert min(entropy.values()) > 1e-3  # far from the zero threshold
        assert _drafter_tree(pair, prompt, branch=3, width=4, max_entropy=0.0)[1:] == ([], [])


def test_entropy_gate_stops_uncertain_branches(tree_pair):
    """A threshold in a clear gap among the ungated tree's entropies: in the gated tree, every
    node with children (and the context, when anything is drafted) is at or under it, every node
    over it is a leaf, and the tree is smaller than the ungated one."""
    pair, _ = tree_pair
    gated_somewhere = False
    for seed in range(3):
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(seed))
        full = _drafter_tree(pair, prompt, branch=3, width=4)[1:]
        entropy = _entropies(pair, prompt, *full)
        inner = sorted(v for p, v in entropy.items() if len(p) < 4)  # nodes that could be expanded
        gaps = [(b - a, (a + b) / 2) for a, b in zip(inner, inner[1:])]
        gap, threshold = max(gaps[len(gaps) // 4: 3 * len(gaps) // 4 + 1])
        assert gap > 1e-2  # the threshold is far from every entropy
        nodes, parents = _drafter_tree(pair, prompt, branch=3, width=4, max_entropy=threshold)[1:]
        paths = _paths(nodes, parents)
        if nodes:
            assert entropy[()] <= threshold
        else:
            assert entropy[()] > threshold
        g_entropy = _entropies(pair, prompt, nodes, parents) if nodes else {}
        assert all(abs(v - threshold) > 1e-3 for v in g_entropy.values())  # no float edge in the tree drafted
        for i, path in enumerate(paths):
            has_children = i in parents
            if g_entropy[path] > threshold:
                assert not has_children, f"a node over the threshold was expanded: {path}"
            if has_children:
                assert g_entropy[path] <= threshold
        assert len(nodes) <= len(full[0])
        gated_somewhere |= len(nodes) < len(full[0])
    assert gated_somewhere


def test_entropy_gated_tree_greedy_equals_autoregressive(tree_pair):
    """A threshold between the drafter's entropies along the reference output: some rounds draft
    less (or nothing: one target token), the output is still the target's greedy one."""
    pair, _ = tree_pair
    prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(0))
    reference = generate(CachedLM(pair.target), prompt, 24, Sampling(), Stopper()).tokens
    from specexp.models import token_entropy

    ids = torch.cat([prompt, torch.tensor(reference)])
    h = token_entropy.of_logits(CachedLM(pair.drafter).forward(ids)[7:]).sort().values
    threshold = float(h[len(h) // 2])  # the median: gates some steps, not all
    for options in ({"max_entropy": threshold}, {"max_entropy": threshold, "total": 5}):
        drafted, accepted = _greedy_equals_autoregressive(pair, branch=3, width=4, **options)
        assert accepted > 0 and min(drafted) < max(drafted)


def test_tree_strategy_sampling_with_reranking_has_the_targets_distribution(monkeypatch):
    """As test_tree_strategy_sampling_has_the_targets_distribution, with the re-ranking cutting
    each 3-level tree (6 nodes) to 3."""
    from conftest import ModelsByRole

    from specexp.length import Fixed
    from specexp.proposers.tree_drafter import TreeDrafter

    vs = 6
    target = random_model("llama", vs, 32, 1, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(4)
    proposer = TreeDrafter(branch=2, width=2, total=3).bind(ModelsByRole(target, noisy_copy(target, 0.8, seed=1)))
    sampling, prompt = Sampling(temperature=1.0, top_k=4), torch.tensor([1, 2, 3])
    lm, exact = CachedLM(target), exact_joint(target, prompt, sampling, vs)

    def emit(i):
        out = generate(lm, prompt, 2, sampling, Stopper(), proposer, Fixed(3), torch.Generator().manual_seed(i))
        assert max(out.drafted) <= 3
        return tuple(out.tokens), sum(out.accepted)

    check_pairs_follow(exact, emit, monkeypatch, power=POWER)


def test_tree_drafter_options_are_checked():
    from specexp.proposers.tree_drafter import TreeDrafter

    with pytest.raises(ValueError, match="strategy.proposer.total must be >= 1"):
        TreeDrafter(total=0)
    with pytest.raises(ValueError, match="strategy.proposer.max_entropy must be >= 0"):
        TreeDrafter(max_entropy=-0.5)


def test_a_drafter_tree_sized_for_the_machine(tree_pair):
    """size=machine: with a free verification every re-ranked node is verified (total caps it);
    with a prohibitive one none is; with a cost that doubles past 4 tokens, at most 3 nodes; the
    output is the target's in each case, and the costs given are recorded for replay."""
    from specexp.length import Fixed
    from specexp.proposers.tree_drafter import TreeDrafter

    pair, _ = tree_pair
    widths = [1, 2, 4, 8, 11]
    cases = {"free": ([1.0] * 5, lambda k: k == 10), "prohibitive": ([1.0, 4.0, 10.0, 22.0, 31.0], lambda k: k == 0),
             "step": ([1.0, 1.0, 1.0, 3.0, 4.0], lambda k: 1 <= k <= 3)}
    for name, (costs, ok) in cases.items():
        proposer = TreeDrafter(branch=2, width=3, total=10, size="machine", verify_cost=costs,
                               cost_widths=widths, draft_cost=0.0).bind(pair)
        assert proposer.measured()["replay"] == {"proposer.verify_cost": costs, "proposer.cost_widths": widths,
                                                 "proposer.draft_cost": 0.0}
        prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(3))
        reference = generate(CachedLM(pair.target), prompt, 20, Sampling(), Stopper()).tokens
        out = generate(CachedLM(pair.target), prompt, 20, Sampling(), Stopper(), proposer, Fixed(4))
        assert out.tokens == reference, name
        assert ok(max(out.drafted)), (name, out.drafted)  # (the last rounds' budget may cut a tree)
    with pytest.raises(ValueError, match="strategy.proposer.size"):
        TreeDrafter(size="auto")
    with pytest.raises(ValueError, match="strategy.proposer.draft_cost must be >= 0"):
        TreeDrafter(size="machine", draft_cost=-1.0)


def test_a_drafter_trees_drafting_cost_is_measured_at_bind_and_given_back(tree_pair):
    """size=machine without draft_cost: one drafter level over `width` nodes is timed against a
    one-token target forward at bind and recorded for replay; given back, nothing is measured."""
    from specexp.proposers.tree_drafter import TreeDrafter

    pair, _ = tree_pair
    widths = [1, 2, 4, 8, 11]
    first = TreeDrafter(branch=2, width=3, total=10, size="machine", verify_cost=[1.0] * 5,
                        cost_widths=widths).bind(pair)
    m = first.measured()
    assert m["sources"] == {"verify_cost": "config", "draft_cost": "measured"}
    cost = m["replay"]["proposer.draft_cost"]
    assert isinstance(cost, float) and cost > 0
    again = TreeDrafter(branch=2, width=3, total=10, size="machine", verify_cost=[1.0] * 5, cost_widths=widths,
                        draft_cost=cost).bind(pair)
    assert again.measured()["replay"] == m["replay"] and again.measured()["sources"]["draft_cost"] == "config"


def test_a_tree_proposer_refuses_a_per_token_length_policy():
    """Every tree proposer takes its depth from the policy (check_depth_policy): a rule that decides
    token by token is refused naming the strategy; a per-round one passes."""
    from specexp.length import Fixed
    from specexp.length.entropy_rules import EntropyStatic
    from specexp.proposers.base import check_depth_policy

    for strategy in ("tree", "medusa_tree", "token_recycling", "lookup_trie"):
        with pytest.raises(ValueError, match=f"strategy={strategy}: the length policy must give a depth"):
            check_depth_policy(EntropyStatic(), strategy)
        check_depth_policy(Fixed(4), strategy)
        check_depth_policy(None, strategy)
