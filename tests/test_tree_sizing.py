"""A token tree sized for the machine (specexp/proposers/tree_sizing.py) and Token Recycling's
size=machine (specexp/proposers/token_recycling.py):

  * best_tree: the n best nodes by path value, against brute force over every path (exact sets);
  * choose_size: the size of the best expected tokens per cost, against brute force;
  * VerifyCost: a monotone fit, linear between widths, extended at the last slope;
  * RankAcceptance: the shrunk estimates, by hand;
  * in the decode loop: greedy output equals autoregressive whatever the cost; a free verification
    drafts trees, a prohibitive one drafts nothing; the ranks the round observes are the ones
    the target emitted; the costs are measured at bind when not given and recorded for replay;
  * a sampled run reproduces token for token from its recorded costs (`specexp reproduce`).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, pair_overrides, random_model
from test_model_free_trees import _onehot_logits, _repeating_prompt, _sharp_target

from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers.token_recycling import TokenRecycling
from specexp.proposers.tree_sizing import RankAcceptance, VerifyCost, best_tree, choose_size, default_widths

# Acceptance by depth (rows) and rank (columns), values far apart so that no two paths tie.
Q = np.array([[0.52, 0.21, 0.07], [0.43, 0.17, 0.05], [0.33, 0.11, 0.03]])


def _all_paths(q: np.ndarray, depth: int) -> dict[tuple[int, ...], float]:
    out = {}
    for d in range(1, depth + 1):
        for path in itertools.product(range(q.shape[1]), repeat=d):
            out[path] = float(np.prod([q[i][r] for i, r in enumerate(path)]))
    return out


@pytest.mark.parametrize("n", [1, 3, 7, 12])
def test_best_tree_is_the_n_most_valuable_paths_and_a_tree(n):
    paths, values = best_tree(Q, max_depth=3, max_nodes=n)
    every = _all_paths(Q, 3)
    assert set(paths) == set(sorted(every, key=every.get, reverse=True)[:n])
    assert values == sorted(values, reverse=True) and values == pytest.approx([every[p] for p in paths])
    assert all(p[:-1] in set(paths) for p in paths if len(p) > 1)  # every parent kept


def test_best_tree_respects_depth_and_repeats_the_last_depth():
    paths, _ = best_tree(Q[:1], max_depth=2, max_nodes=50)
    assert max(map(len, paths)) == 2 and len(paths) == 3 + 9  # depth 1 reuses row 0 for every depth


def _linear(slope: float, widest: int = 40) -> VerifyCost:
    widths = default_widths(widest)
    return VerifyCost(widths, [1 + slope * (w - 1) for w in widths])


@pytest.mark.parametrize("slope", [0.0, 0.05, 0.3, 2.0])
def test_choose_size_maximises_expected_tokens_per_cost(slope):
    _, values = best_tree(Q, max_depth=3, max_nodes=30)
    cost = _linear(slope)
    n, rate = choose_size(values, cost)
    rates = [(1 + sum(values[:m])) / cost(m + 1) for m in range(len(values) + 1)]
    assert n == int(np.argmax(rates)) and rate == pytest.approx(max(rates))
    if slope == 0.0:
        assert n == len(values)  # free verification: every node with a chance
    if slope == 2.0:
        assert n == 0  # a node costs more than it can return: no draft


def test_choose_size_counts_the_width_of_nodes_drafted_besides():
    cost = VerifyCost([1, 2, 4, 8, 16], [1.0, 1.0, 1.0, 1.0, 3.0])  # flat to 8 tokens, then steep
    values = [0.5, 0.3, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05]
    assert choose_size(values, cost)[0] == 7  # 8 tokens wide: the flat part, all of it
    assert choose_size(values, cost, drafted=5)[0] == 2  # 5 lookup nodes already fill most of it
    n, rate = choose_size(values, cost, drafted=5)
    assert rate == pytest.approx(1.8 / cost(8))


def test_a_costlier_drafting_round_pays_for_a_bigger_tree():
    """The drafting is spent whatever the size, so it dilutes the verification's cost by width:
    with slope 0.3 per node, no drafting cost verifies few nodes, a drafting cost of 3 forwards more."""
    _, values = best_tree(Q, max_depth=3, max_nodes=30)
    cost = _linear(0.3)
    sizes = [choose_size(values, cost, draft_cost=d)[0] for d in (0.0, 1.0, 3.0, 10.0)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    n, rate = choose_size(values, cost, draft_cost=3.0)
    rates = [(1 + sum(values[:m])) / (cost(m + 1) + 3.0) for m in range(len(values) + 1)]
    assert n == int(np.argmax(rates)) and rate == pytest.approx(max(rates))


def test_verify_cost_is_monotone_interpolated_and_extended():
    v = VerifyCost([1, 2, 4, 8], [1.0, 1.5, 1.3, 2.5])  # noise: 4 tokens measured cheaper than 2
    assert v.costs == pytest.approx([1.0, 1.4, 1.4, 2.5])  # pooled (isotonic), v(1) = 1
    assert v(3) == pytest.approx(1.4) and v(6) == pytest.approx(1.95) and v(12) == pytest.approx(3.6)
    with pytest.raises(ValueError, match="width 1"):
        VerifyCost([2, 4], [1.0, 2.0])


def test_rank_acceptance_shrinks_depths_toward_the_pool_and_the_prior():
    acc = RankAcceptance(k=2, prior=[0.5, 0.25], weight=4.0, shrink=2.0, depths=3)
    for rank in (0, 0, 1, None):
        acc.observe(0, rank)
    acc.observe(5, 1)  # past the last tracked depth: counted at depth 2
    pooled = np.array([(2 + 4 * 0.5) / 9, (2 + 4 * 0.25) / 9])
    q = acc.q()
    assert q[0] == pytest.approx((np.array([2, 1]) + 2 * pooled) / 6)
    assert q[1] == pytest.approx(pooled)  # never observed: the pool
    assert q[2] == pytest.approx((np.array([0, 1]) + 2 * pooled) / 3)
    acc.reset()
    assert acc.q()[0] == pytest.approx([0.5, 0.25])


def _bound(size="machine", verify_cost=None, **kw) -> TokenRecycling:
    target = random_model("llama", 20, 32, 1, seed=0)
    tr = TokenRecycling(k=3, branching=[2, 1], size=size, verify_cost=verify_cost, **kw)
    return tr.bind(SimpleNamespace(target=target, vocab_size=20))


def test_a_round_observes_the_emitted_tokens_ranks():
    widths = default_widths(49)
    tr = _bound(verify_cost=[1.0] * len(widths))  # free verification: every node the matrix allows
    tr.reset(torch.tensor([1, 2]))
    # 1. An empty matrix: no draft; the target then says 5 after 2.
    tr.propose(torch.tensor([1, 2]), 3, Fixed(3), Sampling(), None)
    tr.observe_target(_onehot_logits([[5, 6, 7]]), 0)
    # 2. Learned: row 2 = [5, 6, 7]; the row of 2 was unseen when drafted: no candidates, nothing counted.
    tr.propose(torch.tensor([1, 2, 5]), 3, Fixed(3), Sampling(), None)
    assert tr.sizer.acceptance.counts.sum() == 0
    tr.observe_target(_onehot_logits([[2, 6, 7]]), 0)  # after 5 the target says 2
    # 3. Row 5 = [2, 6, 7]. The context ends in 2 (row [5, 6, 7]): a tree, of the nodes that exist.
    d = tr.propose(torch.tensor([1, 2, 5, 2]), 3, Fixed(3), Sampling(), None)
    assert tr.sizer.acceptance.counts.sum() == 0
    nodes, parents = d.tokens.tolist(), d.parents.tolist()
    assert (nodes, parents) == ([5, 6, 7, 2, 6, 7, 5, 6, 7], [-1, -1, -1, 0, 0, 0, 3, 3, 3])
    # 4. The target accepts 5 (rank 0 after 2), then says 9 after it (not in the row of 5: a miss).
    tr.observe_target(_onehot_logits([[9, 8, 3]] * (len(nodes) + 1)), 1)  # rows' content: not under test
    tr.propose(torch.tensor([1, 2, 5, 2, 5, 9]), 3, Fixed(3), Sampling(), None)
    assert tr.sizer.acceptance.counts[0].tolist() == [1, 0, 0, 0]
    assert tr.sizer.acceptance.counts[1].tolist() == [0, 0, 0, 1]
    assert tr.sizer.acceptance.counts[2:].sum() == 0


@pytest.mark.parametrize("slope,drafts", [(0.0, True), (3.0, False)], ids=["free_verify", "prohibitive_verify"])
def test_machine_sized_greedy_equals_autoregressive(slope, drafts):
    target = _sharp_target()
    widths = default_widths(17)
    for seed in range(2):
        prompt = _repeating_prompt(target, seed)
        reference = generate(CachedLM(target), prompt, 30, Sampling(), Stopper()).tokens
        tr = TokenRecycling(k=4, prompt_init=True, size="machine", max_nodes=16,
                            verify_cost=[1 + slope * (w - 1) for w in widths])
        tr.bind(SimpleNamespace(target=target, vocab_size=50))
        out = generate(CachedLM(target), prompt, 30, Sampling(), Stopper(), tr, Fixed(6))
        assert out.tokens == reference
        assert max(out.drafted) <= 16
        if drafts:
            assert sum(out.accepted) >= 5 and max(out.drafted) > 6  # trees, accepted
        else:
            assert max(out.drafted) == 0  # every round autoregressive
        assert tr.sizer.acceptance.counts.sum() >= 10  # the rounds taught it (those whose rows were seen)


def test_costs_measured_at_bind_and_given_back():
    tr = _bound(max_nodes=6)
    m = tr.measured()
    assert m["sources"] == {"verify_cost": "measured", "draft_cost": "none"}  # a lookup: no drafting step
    assert m["replay"]["proposer.cost_widths"] == [1, 2, 4, 7] and "proposer.draft_cost" not in m["replay"]
    costs = m["replay"]["proposer.verify_cost"]
    assert len(costs) == 4 and costs[0] == 1.0 and min(costs) > 0
    again = _bound(max_nodes=6, verify_cost=costs)
    assert again.measured() == {**m, "sources": {"verify_cost": "config", "draft_cost": "none"}}
    assert _bound(size="fixed").measured() == {}
    with pytest.raises(ValueError, match="verify_cost needs one cost per width"):
        TokenRecycling(size="machine", max_nodes=6, verify_cost=[1.0, 2.0])
    with pytest.raises(ValueError, match="strategy.proposer.size"):
        TokenRecycling(size="auto")


@pytest.mark.slow
def test_a_sampled_machine_sized_run_reproduces(random_pair_dir, run_specexp):
    """strategy=token_recycling_sized measures the verification cost at start; metrics.json records
    it and `specexp reproduce` gives it back (strategy.proposer.verify_cost), so a sampled decode
    repeats token for token although the clock differs."""
    _, run_dir = run_specexp("strategy=token_recycling_sized", "strategy.proposer.max_nodes=8", "sampling=sample",
                             "debug=fast", "dataset=jsonl", f"dataset.path={ROOT / 'tests' / 'data' / 'prompts.jsonl'}",
                             *pair_overrides(random_pair_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["measured"]["sources"] == {"verify_cost": "measured", "draft_cost": "none"}
    assert m["measured"]["replay"]["proposer.cost_widths"] == [1, 2, 4, 8, 9]
    ok = subprocess.run([sys.executable, "-m", "specexp", "reproduce", str(run_dir)], capture_output=True,
                        text=True, cwd=ROOT, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "strategy.proposer.verify_cost=[" in ok.stdout and "reproduced: identical tokens" in ok.stdout


def test_replay_puts_a_proposers_costs_in_the_proposer():
    from conftest import compose
    from omegaconf import OmegaConf

    from specexp.experiment.rerun import replay_measured

    config = OmegaConf.to_container(compose(["strategy=token_recycling_sized"]), resolve=False)
    config.pop("hydra", None)
    lines = replay_measured(config, {"replay": {"proposer.verify_cost": [1.0, 1.5], "proposer.cost_widths": [1, 2]}})
    assert lines == ["strategy.proposer.verify_cost=[1.0, 1.5]", "strategy.proposer.cost_widths=[1, 2]"]
    proposer = OmegaConf.create(config).strategy.proposer
    assert list(proposer.verify_cost) == [1.0, 1.5] and list(proposer.cost_widths) == [1, 2]
    config = OmegaConf.to_container(compose(["strategy=tree", "strategy.proposer.size=machine"]), resolve=False)
    config.pop("hydra", None)
    lines = replay_measured(config, {"replay": {"proposer.verify_cost": [1.0, 1.5], "proposer.cost_widths": [1, 2],
                                                "proposer.draft_cost": 0.25}})
    assert lines[-1] == "strategy.proposer.draft_cost=0.25"
    assert OmegaConf.create(config).strategy.proposer.draft_cost == 0.25  # a tree drafter's level, given back
