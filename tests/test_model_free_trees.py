"""Model-free tree proposers: Token Recycling (specexp/proposers/token_recycling.py) and the
lookup trie (specexp/proposers/lookup_trie.py).

  * the adjacency matrix: rows written from the target's top-k after every verification, mapped
    back to the right tokens through the loop's reordered logits (exact ids);
  * the template and its expansion over the matrix (exact trees);
  * the trie: every occurrence's continuation and the datastore's merged, counted, cut at the node
    budget (exact trees);
  * greedy: both proposers in `generate` on a tiny model emit exactly the autoregressive output,
    with drafts accepted (prompts that repeat what the target says);
  * sampling: the joint of the first two tokens follows the target's exact joint (chi-square on a
    6-token vocabulary), after a power check that the same draws without the residual fail it.
"""
from __future__ import annotations


import pytest
import torch
from conftest import check_pairs_follow, exact_joint, random_model

from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers.lookup_trie import LookupTrie, Trie, suffix_occurrences
from specexp.proposers.retrieval import Datastore
from specexp.proposers.token_recycling import TokenRecycling, check_template, template_from_branching


def _onehot_logits(rows: list[list[int]], v: int = 20) -> torch.Tensor:
    """Logits whose top-k ids are exactly `rows[i]`, in order (well-separated values)."""
    out = torch.zeros(len(rows), v)
    for i, ids in enumerate(rows):
        for rank, t in enumerate(ids):
            out[i, t] = 10.0 * (len(ids) - rank)
    return out


# ============================================================ Token Recycling: the matrix =======

def test_template_from_branching_and_checks():
    assert template_from_branching([2, 1], 3) == [(0,), (1,), (0, 0), (1, 0), (0, 0, 0), (1, 0, 0)]
    assert len(template_from_branching([4, 2, 1], 4)) == 4 + 8 + 8 + 8
    assert check_template([[0, 1], [0], [1]], 2) == [(0,), (1,), (0, 1)]
    with pytest.raises(ValueError, match="no parent"):
        check_template([[0], [1, 0]], 2)
    with pytest.raises(ValueError, match="ranks"):
        check_template([[2]], 2)


def test_matrix_updated_from_every_fed_token_and_the_tree_built_over_it():
    tr = TokenRecycling(k=3, branching=[2, 1])
    tr.reset(torch.tensor([1, 2]))
    # 1. An empty matrix drafts nothing; the round's row 0 (after the context's last token 2) is learned.
    d = tr.propose(torch.tensor([1, 2]), 3, Fixed(3), Sampling(), None)
    assert d.tokens.numel() == 0
    tr.observe_target(_onehot_logits([[5, 6, 7]]), 0)
    # 2. The target emitted 5: the next propose learns adj[2] = [5, 6, 7] first; the context is now 5,
    #    whose row is unseen: still nothing to draft, and row 0 now follows the token 5.
    d = tr.propose(torch.tensor([1, 2, 5]), 3, Fixed(3), Sampling(), None)
    assert tr.adj[2].tolist() == [5, 6, 7] and tr.seen.nonzero().flatten().tolist() == [2]
    assert d.tokens.numel() == 0
    tr.observe_target(_onehot_logits([[2, 9, 3]]), 0)
    # 3. Context ...5, 2: adj[5] = [2, 9, 3]; the tree from the last token 2: ranks 0, 1 -> 5, 6;
    #    under each, rank 0 of its row: 5 -> adj[5][0] = 2; 6 is unseen (no child); 2 -> adj[2][0] = 5.
    d = tr.propose(torch.tensor([1, 2, 5, 2]), 3, Fixed(3), Sampling(), None)
    assert d.tokens.tolist() == [5, 6, 2, 5] and d.parents.tolist() == [-1, -1, 0, 2] and d.probs is None
    # 4. The target accepted 5, 2 (nodes 0, 2) and added 11. The loop's rows: [context, path (0, 2),
    #    the rest in index order (1, 3)]: row 0 follows 2, row 1 node 0 (5), row 2 node 2 (2),
    #    row 3 node 1 (6), row 4 node 3 (5).
    tr.observe_target(_onehot_logits([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]]), 2)
    tr.propose(torch.tensor([1, 2, 5, 2, 5, 2, 11]), 3, Fixed(3), Sampling(), None)
    # rejected nodes written first (6 <- row 3, 5 <- row 4), then the real text: 2 <- row 0,
    # 5 <- row 1 (overwrites row 4's), 2 <- row 2 (overwrites row 0's)
    assert tr.adj[6].tolist() == [10, 11, 12]
    assert tr.adj[5].tolist() == [4, 5, 6]
    assert tr.adj[2].tolist() == [7, 8, 9]
    assert tr.seen.nonzero().flatten().tolist() == [2, 5, 6]
    # 5. reset: a fresh matrix per sample unless carried
    tr.reset(torch.tensor([1]))
    assert not tr.seen.any() and not tr.adj.any()
    kept = TokenRecycling(k=3, branching=[2, 1], carry=True)
    kept.write([4], torch.tensor([[1, 2, 3]]))
    kept.reset(torch.tensor([1]))
    assert kept.adj[4].tolist() == [1, 2, 3]


def test_prompt_init_and_eos_and_duplicate_siblings():
    tr = TokenRecycling(k=3, branching=[3, 1], prompt_init=True)
    tr.eos = {9}
    tr.reset(torch.tensor([4, 5, 4, 9, 4, 5]))
    # the prompt's bigrams, most recent successor first; a short row is padded with its best
    assert tr.adj[4].tolist() == [5, 9, 5] and tr.adj[5].tolist() == [4, 4, 4] and tr.adj[9].tolist() == [4, 4, 4]
    nodes, parents = tr.expand(4, 2)
    # level 1 from 4: 5, 9 (the padded second 5 dropped); level 2: 5 -> 4; after the EOS 9 nothing
    assert nodes == [5, 9, 4] and parents == [-1, -1, 0]


# ============================================================ the lookup trie ===================

def test_a_lookup_trie_merged_into_the_recycled_tree():
    """lookup_nodes: the prompt-lookup trie's nodes join the recycled tree; a node whose token is
    already its parent's child is shared, the others appended after their parents."""
    tr = TokenRecycling(k=2, branching=[2, 1], prompt_init=True, lookup_nodes=5)
    tr.eos = set()
    text = [3, 4, 5, 3, 6, 7, 3]  # 3 -> 4 and 3 -> 6 in the prompt: row 3 = [6, 4]; the lookup: 6 7 3 | 4 5 3
    tr.reset(torch.tensor(text))
    d = tr.propose(torch.tensor(text), 3, Fixed(3), Sampling(), None)
    nodes, parents = d.tokens.tolist(), d.parents.tolist()
    recycled = ([6, 4, 7, 5, 3, 3], [-1, -1, 0, 1, 2, 3])  # rows: 6 -> [7], 4 -> [5], 7 -> [3], 5 -> [3]
    assert (nodes, parents) == recycled  # both continuations were already in it: shared, nothing added
    tr2 = TokenRecycling(k=2, branching=[1], lookup_nodes=5)
    tr2.eos = set()
    tr2.reset(torch.tensor(text))
    tr2.write([3], torch.tensor([[9, 8]]))  # the row of 3: neither continuation of the lookup
    d = tr2.propose(torch.tensor(text), 3, Fixed(3), Sampling(), None)
    # The recycled chain [9]; then the lookup trie (most recent occurrence first: 6 7 3, then 4 5 3),
    # cut at 5 nodes by count, depth, insertion: 6, 4, 7, 5, 3 (of 6 7).
    assert d.tokens.tolist() == [9, 6, 4, 7, 5, 3] and d.parents.tolist() == [-1, -1, -1, 1, 2, 3]


def test_suffix_occurrences_finds_every_earlier_occurrence():
    assert suffix_occurrences([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3]) == (3, [2, 6])
    assert suffix_occurrences([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], max_ngram=2) == (2, [2, 6])
    assert suffix_occurrences([1, 2, 8, 2], min_ngram=2) == (0, [])
    assert suffix_occurrences([1, 2, 8, 2]) == (1, [1])


def test_trie_counts_and_node_budget():
    t = Trie()
    for seq in ([4, 5, 6], [4, 5, 7], [4, 8], [9]):
        t.insert(seq)
    assert t.counts == [3, 2, 1, 1, 1, 1]  # 4, 5, 6, 7, 8, 9 in insertion order
    # all: BFS, siblings by count (ties: inserted first)
    assert t.best(10) == ([4, 9, 5, 8, 6, 7], [-1, -1, 0, 0, 2, 2])
    # budget 3: the highest counts (4: 3, 5: 2), then the shallowest of the count-1 nodes (9)
    assert t.best(3) == ([4, 9, 5], [-1, -1, 0])


def test_lookup_trie_merges_every_occurrence_and_the_datastore():
    text = [1, 2, 3, 4, 5, 1, 2, 3, 4, 6, 1, 2, 3, 7, 1, 2, 3]
    store = Datastore.from_replies([[2, 3, 8, 8]] * 4, min_n=2, min_count=2, min_share=0.5)
    lt = LookupTrie(min_ngram=2, max_matches=8, max_nodes=20, datastore=store)
    lt.eos = {6}
    # occurrences of [1, 2, 3] end at 2, 7, 11: continuations (most recent first) [7, 1], [4, 6] (cut
    # after the EOS 6), [4, 5]; the datastore continues "2 3" with [8, 8]
    assert lt.continuations(text, 2) == [[7, 1], [4, 6], [4, 5], [8, 8]]
    d = lt.propose(torch.tensor(text), 2, Fixed(2), Sampling(), None)
    # 4 (count 2) first, then 7, 8 (count 1, inserted in that order); level 2: under 4: 6, 5; 7 -> 1; 8 -> 8
    assert d.tokens.tolist() == [4, 7, 8, 6, 5, 1, 8]
    assert d.parents.tolist() == [-1, -1, -1, 0, 0, 1, 2]
    lt.max_nodes = 2
    d = lt.propose(torch.tensor(text), 2, Fixed(2), Sampling(), None)
    assert d.tokens.tolist() == [4, 7] and d.parents.tolist() == [-1, -1]
    lt.max_matches = 1  # only the most recent occurrence, and the datastore
    assert lt.continuations(text, 3) == [[7, 1, 2], [8, 8]]


# ============================================================ in the decode loop ================

def _sharp_target(vocab: int = 50):
    target = random_model("llama", vocab, 64, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)
    return target


def _repeating_prompt(target, seed: int) -> torch.Tensor:
    """A random start, then the target's own greedy continuation of it twice over: its text repeats
    what the target says, so lookups and recycled rows are accepted."""
    start = torch.randint(1, 50, (4,), generator=torch.Generator().manual_seed(seed))
    cont = generate(CachedLM(target), start, 12, Sampling(), Stopper()).tokens
    return torch.cat([start, torch.tensor(cont), start, torch.tensor(cont[:6])])


@pytest.mark.parametrize("make", [lambda: TokenRecycling(k=4, branching=[2, 1], prompt_init=True),
                                  lambda: TokenRecycling(k=4, branching=[3, 2, 1]),
                                  lambda: TokenRecycling(k=4, branching=[2, 1], lookup_nodes=8),
                                  lambda: LookupTrie(min_ngram=1, max_nodes=12)],
                         ids=["recycling_prompt_init", "recycling", "recycling_lookup", "lookup_trie"])
def test_greedy_equals_autoregressive_with_drafts_accepted(make):
    target = _sharp_target()
    for seed in range(2):
        prompt = _repeating_prompt(target, seed)
        reference = generate(CachedLM(target), prompt, 30, Sampling(), Stopper()).tokens
        proposer = make()
        out = generate(CachedLM(target), prompt, 30, Sampling(), Stopper(), proposer, Fixed(4))
        assert out.tokens == reference
        assert sum(out.accepted) >= 5, out.accepted  # the tree paths were exercised
        assert max(out.drafted) > 4 or isinstance(proposer, LookupTrie)  # a real tree, not a chain
        assert out.emitted == [a + 1 for a in out.accepted]
        assert all(len(r) == k - a for r, k, a in zip(out.rejected, out.drafted, out.accepted))


V = 6
POWER = 1e-4


@pytest.mark.parametrize("make", [lambda: TokenRecycling(k=3, branching=[3, 2], prompt_init=True),
                                  lambda: TokenRecycling(k=3, branching=[2], prompt_init=True, lookup_nodes=4),
                                  lambda: LookupTrie(min_ngram=1, max_nodes=8)],
                         ids=["recycling", "recycling_lookup", "lookup_trie"])
def test_sampling_keeps_the_targets_distribution(make, monkeypatch):
    """The joint of the first two tokens after a repeating prompt, through `generate`, against the
    target's exact joint; first the power check (no residual update between siblings)."""
    target = random_model("llama", V, 32, 1, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(4)
    sampling, prompt = Sampling(temperature=1.0, top_k=4), torch.tensor([1, 2, 3, 1, 2, 4, 1, 2, 5, 3, 1, 2])
    lm, exact = CachedLM(target), exact_joint(target, prompt, sampling, V)

    def emit(i):
        # 3 tokens: the second round is verified after the first round's update (the matrix)
        out = generate(lm, prompt, 3, sampling, Stopper(), make(), Fixed(2), torch.Generator().manual_seed(i))
        return tuple(out.tokens[:2]), sum(out.accepted)

    check_pairs_follow(exact, emit, monkeypatch, power=POWER)


def test_refused_where_trees_do_not_run():
    with pytest.raises(ValueError, match="branching"):
        TokenRecycling(k=2, branching=[3])
    with pytest.raises(ValueError, match="min_ngram"):
        LookupTrie(min_ngram=0)
    with pytest.raises(ValueError, match="depth"):
        TokenRecycling().propose(torch.tensor([1, 2]), 3, _PerToken(), Sampling(), None)


class _PerToken(Fixed):
    needs_steps = True


def test_batched_model_free_trees_are_refused():
    from specexp.core.batch_decode import check_supported

    target = random_model("llama", 20, 32, 1, seed=0)
    for proposer in (TokenRecycling(), LookupTrie()):
        with pytest.raises(ValueError, match="batch_size"):
            check_supported(proposer, target)
