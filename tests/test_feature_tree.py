"""EAGLE-2's dynamic tree drafted by the feature drafter (FeatureTreeDrafter in
specexp/proposers/feature_drafter.py; strategy=tree hands over to it on a feature drafter):

  * the tree forward: each node, fed with its parent's predicted feature under the tree mask
    (level by level, or the whole tree in one forward), gets the logits its path gets fed one
    token at a time through the feature drafter's chain path;
  * greedy: a tree decode emits exactly the target's autoregressive output, with trees drafted and
    accepted (plain, re-ranked, entropy-gated);
  * sampling: the first two drafted tokens follow the target's distribution (chi-square, after a
    power check that a wrong rule is caught);
  * after each round the drafter's cache holds only the positions fed with the target's features.
"""
from __future__ import annotations

import pytest
import torch
from conftest import ModelsByRole, check_pairs_follow, exact_joint, random_model
from test_eagle import quick_train

from specexp.builds.train_feature_drafter import init_feature_drafter
from specexp.core import tree
from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers.feature_drafter import FeatureLM, FeatureTreeDrafter
from specexp.proposers.tree_drafter import TreeDrafter

V = 64
NODES, PARENTS = [11, 12, 13, 14, 15, 16], [-1, -1, 0, 0, 1, 2]  # levels: {0, 1}, {2, 3, 4}, {5}
LEVELS = [(0, 2), (2, 5), (5, 6)]


@pytest.fixture(scope="module")
def tiny():
    """A random Llama target with a sharpened head and a feature drafter trained on it for seconds."""
    target = random_model("llama", vocab=V, hidden=64, layers=2, seed=0)
    target.lm_head.weight.data *= 8
    drafter, _, _ = quick_train(target)
    return target, drafter


def fed_context(target, drafter, context: torch.Tensor) -> FeatureLM:
    """A FeatureLM that has read `context` with the target's features (f_{-1} = 0, then f_0..f_{L-2})."""
    lm = FeatureLM(drafter, target.get_input_embeddings(), target.get_output_embeddings())
    with torch.inference_mode():
        lm.add_features(target.get_decoder()(input_ids=context[None]).last_hidden_state[0, :-1])
        lm.forward(context, keep=1)
    assert lm.real_length == lm.length == context.shape[0]
    return lm


def chain(target, drafter, context: torch.Tensor, path: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The path's last token fed one token at a time after the context (each with the drafter's
    own last prediction): (its logits [1, V], the feature it was fed with [1, H])."""
    lm = fed_context(target, drafter, context)
    for t in path:
        feature = lm.hidden[-1:]
        logits = lm.forward(torch.tensor([t]), keep=1)
    return logits, feature


def test_tree_forward_equals_each_path_as_a_chain(tiny):
    target, drafter = tiny
    context = torch.randint(0, V, (8,), generator=torch.Generator().manual_seed(3))
    chains = [chain(target, drafter, context, [NODES[i] for i in tree.path_to(node, PARENTS)])
              for node in range(len(NODES))]
    # 1. Level by level, as the drafter grows its tree: node i fed with its parent's predicted feature.
    lm = fed_context(target, drafter, context)
    predicted = lm.hidden[-1:]  # row 0: the context's last; row 1 + i: node i's
    for first, end in LEVELS:
        features = predicted[[p + 1 for p in PARENTS[first:end]]]
        logits = lm.forward_tree(torch.tensor(NODES[first:end]), features, torch.tensor(PARENTS[:end]),
                                 tree_cached=first)
        predicted = torch.cat([predicted, lm.hidden])
        for row, node in enumerate(range(first, end)):
            torch.testing.assert_close(logits[row:row + 1], chains[node][0], atol=1e-4, rtol=0)
    assert lm.length == 8 + len(NODES) and lm.real_length == 8 and lm.forwards == 1 + len(LEVELS)
    lm.crop(lm.real_length)  # what `observe` does: the tree's positions were all predicted-feature ones
    assert lm.length == 8 and lm.hidden is None
    # 2. The whole tree in one forward, each node with the feature its chain fed it.
    lm = fed_context(target, drafter, context)
    features = torch.cat([f for _, f in chains])
    logits = lm.forward_tree(torch.tensor(NODES), features, torch.tensor(PARENTS))
    torch.testing.assert_close(logits, torch.cat([c for c, _ in chains]), atol=1e-4, rtol=0)


def test_strategy_tree_hands_over_to_the_feature_tree(tiny):
    target, drafter = tiny
    pair = ModelsByRole(target, drafter)
    proposer = TreeDrafter(branch=3, width=5, total=7, max_entropy=2.0).bind(pair)
    assert isinstance(proposer, FeatureTreeDrafter) and proposer.needs_features and proposer.drafts_trees
    assert (proposer.branch, proposer.width, proposer.total, proposer.max_entropy) == (3, 5, 7, 2.0)
    with pytest.raises(ValueError, match="strategy.proposer.total must be >= 1"):
        FeatureTreeDrafter(total=0)


def test_a_feature_tree_sized_for_the_machine(tiny):
    """size=machine on a feature drafter: the drafter level is timed at bind and recorded; a free
    verification verifies every re-ranked node (total caps it), a prohibitive one none; greedy
    output is the target's either way."""
    target, drafter = tiny
    pair = ModelsByRole(target, drafter)
    widths = [1, 2, 4, 8]
    timed = TreeDrafter(branch=2, width=3, total=7, size="machine", verify_cost=[1.0] * 4, cost_widths=widths)
    timed = timed.bind(pair)
    m = timed.measured()
    assert isinstance(timed, FeatureTreeDrafter) and m["sources"] == {"verify_cost": "config", "draft_cost": "measured"}
    assert m["replay"]["proposer.draft_cost"] > 0
    lm, stopper = CachedLM(target), Stopper()
    prompt = torch.randint(0, V, (7,), generator=torch.Generator().manual_seed(1))
    ref = generate(lm, prompt, 24, Sampling(), stopper).tokens
    for costs, ok in (([1.0] * 4, lambda n: n == 7), ([1.0, 4.0, 10.0, 22.0], lambda n: n == 0)):
        proposer = TreeDrafter(branch=2, width=3, total=7, size="machine", verify_cost=costs, cost_widths=widths,
                               draft_cost=0.0).bind(pair)
        g = generate(lm, prompt, 24, Sampling(), stopper, proposer, Fixed(4))
        assert g.tokens == ref and ok(max(g.drafted[1:-1])), (costs, g.drafted)


def median_entropy(target, drafter) -> float:
    """The median of the drafter's entropies (nats) along a random text: a gate that shuts some
    nodes, not all."""
    from specexp.models import token_entropy

    text = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(9))
    lm = fed_context(target, drafter, text[:1])  # then the rest, with the target's features
    with torch.inference_mode():
        lm.add_features(target.get_decoder()(input_ids=text[None]).last_hidden_state[0, :-1])
        h = token_entropy.of_logits(lm.forward(text[1:])).sort().values
    return float(h[len(h) // 2])


@pytest.mark.parametrize("options", [{}, {"total": 5}, {"max_entropy": "median"}], ids=["plain", "total5", "gated"])
def test_greedy_tree_decode_equals_autoregressive(tiny, options):
    target, drafter = tiny
    if options.get("max_entropy") == "median":
        options = {"max_entropy": median_entropy(target, drafter)}
    proposer = TreeDrafter(branch=2, width=3, **options).bind(ModelsByRole(target, drafter))
    lm, stopper, drafted, accepted = CachedLM(target), Stopper(), [], 0
    for seed in range(3):
        prompt = torch.randint(0, V, (6 + seed,), generator=torch.Generator().manual_seed(seed))
        ref = generate(lm, prompt, 32, Sampling(), stopper)
        g = generate(lm, prompt, 32, Sampling(), stopper, proposer, Fixed(4), torch.Generator().manual_seed(seed))
        assert g.tokens == ref.tokens
        assert g.drafted[0] == 0  # the first round reads the prompt: no features to draft from yet
        assert all(n <= (options.get("total") or 2 + 3 * 3) for n in g.drafted)
        drafted, accepted = drafted + g.drafted[1:-1], accepted + sum(g.accepted)  # (the last: a short budget)
    assert max(drafted) > 4  # trees, not chains: more nodes than levels
    assert accepted > 0
    assert (0 in drafted) == ("max_entropy" in options)  # the gate shut the context in some rounds, only the gate


def test_drafter_cache_keeps_only_the_target_features(tiny):
    """After every round the drafter's cache holds the positions fed with the target's features
    (the context at the round's start), the tree's nodes, fed with predicted features, cropped;
    the unfed real features make up the rest of the text (f_{-1} counts once)."""
    target, drafter = tiny
    proposer = TreeDrafter(branch=2, width=3).bind(ModelsByRole(target, drafter))
    seen, observe = [], proposer.observe

    def watched(n):
        fed = proposer.lm.length
        observe(n)
        seen.append((fed, proposer.lm.length, proposer.lm.real_length, proposer.lm.pending.shape[0]))

    proposer.observe = watched
    prompt = torch.tensor([5, 9, 2, 7, 1, 5, 9])
    g = generate(CachedLM(target), prompt, 30, Sampling(), Stopper(), proposer, Fixed(3))
    starts = [prompt.shape[0] + sum(g.emitted[:i]) for i in range(len(g.emitted))]  # tokens before each round
    assert len(seen) >= len(starts) - 1  # (a last round with a 1-token budget proposes nothing)
    depths = iter(g.tree_depth)  # one per round that drafted a tree
    for (fed, cached, real, pending), before, n, k in zip(seen, starts, g.accepted, g.drafted):
        if k:
            assert cached == real == before  # the context, every position with the target's features
            if next(depths) > 1:
                assert fed > before  # the tree's first levels were fed (then cropped)
        assert cached + pending == before + n + 1
    assert max(g.tree_depth) == 3 and sum(g.accepted) > 0


def test_tree_sampling_has_the_targets_distribution(monkeypatch):
    """Tokens 2 and 3 (drafted as a 2-level tree after the first round read the prompt) against
    the target's exact joint, the first token marginalised out; after the power check (no
    residual update after a rejected sibling)."""
    vs = 6
    target = random_model("llama", vs, 32, 1, seed=10)
    with torch.no_grad():
        target.lm_head.weight.mul_(4)
    proposer = TreeDrafter(branch=2, width=2).bind(ModelsByRole(target, init_feature_drafter(target, 1)))
    assert isinstance(proposer, FeatureTreeDrafter)
    sampling, prompt = Sampling(temperature=1.0, top_k=4), torch.tensor([1, 2, 3])
    p1 = sampling.probs(CachedLM(target).forward(prompt)[-1])
    exact = sum(p1[a] * exact_joint(target, torch.cat([prompt, torch.tensor([a])]), sampling, vs)
                for a in range(vs) if p1[a] > 0)
    lm = CachedLM(target)

    def emit(i):
        out = generate(lm, prompt, 4, sampling, Stopper(), proposer, Fixed(3), torch.Generator().manual_seed(i))
        assert out.drafted[0] == 0 and out.tree_depth[0] == 2  # round 2 drafts the tree deciding tokens 2-3
        return tuple(out.tokens[1:3]), sum(out.accepted)

    check_pairs_follow(exact, emit, monkeypatch, power=1e-4)
