"""NASD (n-gram assisted speculative decoding): the store's counts by hand, greedy output identical
to autoregressive decoding, and sampling that keeps the target's exact distribution."""
from __future__ import annotations

import torch
from conftest import compose, exact_joint, pooled_chisquare, random_model

from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.proposers.nasd import NASD, NGramStore
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

V = 8


def test_store_counts_kgrams_and_prefers_the_longest_context():
    s = NGramStore(n=3)
    s.add_text([1, 2, 3, 1, 2, 4, 9, 2, 5])
    # contexts of 2 tokens: (1,2) -> 3 once, 4 once: a tie goes to the first seen
    assert s.counts[(1, 2)] == {3: 1, 4: 1}
    assert s.next_token([7, 1, 2]) == (3, 2)
    # context of 1 token: 2 -> 3, 4, 5 once each; (9, 2) -> 5 is longer and wins
    assert s.counts[(2,)] == {3: 1, 4: 1, 5: 1}
    assert s.next_token([9, 2]) == (5, 2)
    assert s.next_token([8, 2]) == (3, 1)  # (8, 2) unseen: fall back to the 1-token context
    assert s.next_token([8]) is None  # 8 never seen: no draft
    s.add([1, 2], [4, 4])  # counts add up: now (1, 2) -> 4 is the most frequent
    assert s.next_token([1, 2]) == (4, 2)


def test_proposer_drafts_the_chain_and_counts_the_target_filler():
    p = NASD(n=3, filler_top_k=3)
    prompt = torch.tensor([1, 2, 3, 4, 1, 2])
    p.reset(prompt)
    d = p.propose(prompt, 4, Fixed(4), None, None)
    assert d.probs is None and d.tokens.tolist() == [3, 4, 1, 2]  # (1,2)->3, (2,3)->4, (3,4)->1, (4,1)->2
    # the target accepted 1 draft, then said 7; its top-3 at the two positions are the filler
    logits = torch.zeros(5, V)
    logits[0, [3, 5, 6]] = torch.tensor([3.0, 2.0, 1.0])
    logits[1, [7, 6, 5]] = torch.tensor([3.0, 2.0, 1.0])
    p.observe_target(logits, 1)
    p.observe(1)
    seq = torch.tensor([1, 2, 3, 4, 1, 2, 3, 7])
    d = p.propose(seq, 3, Fixed(3), None, None)
    assert p.store.counts[(1, 2)] == {3: 3, 5: 1, 6: 1}  # prompt 1 + emitted 1 + filler 1
    assert p.store.counts[(2, 3)] == {4: 1, 7: 2, 6: 1, 5: 1}
    assert d.tokens.tolist() == []  # context (3, 7) and 7 unseen: nothing to draft


def _pair_run(model, proposer, prompt, sampling, budget, seed):
    return generate(CachedLM(model), prompt, budget, sampling, Stopper(), proposer, Fixed(4),
                    torch.Generator().manual_seed(seed))


def test_greedy_output_identical_to_autoregressive():
    target = random_model("llama", vocab=64, hidden=32, layers=2, seed=3)
    prompt = torch.tensor([5, 6, 7, 8, 5, 6, 7, 9, 5, 6])
    base = generate(CachedLM(target), prompt, 40, Sampling(), Stopper())
    g = _pair_run(target, NASD(), prompt, Sampling(), 40, 0)
    assert g.tokens == base.tokens
    assert sum(g.drafted) > 0 and sum(g.accepted) > 0  # the store drafted and some drafts passed
    assert g.target_forwards < base.target_forwards


def test_sampling_preserves_target_distribution():
    """Chi-square of the first two emitted tokens against the target's exact joint. The prompt
    makes the store draft 3 then 4 (a trigram and a bigram seen in it), which the target rarely
    says: a sampler biased towards the draft (romsto/Speculative-Decoding's) would over-count those
    cells."""
    target = random_model("llama", vocab=V, hidden=32, layers=2, seed=10)
    target.lm_head.weight.data *= 8
    sampling = Sampling(1.0)
    prompt = torch.tensor([1, 2, 3, 4, 1, 2])
    p = exact_joint(target, prompt, sampling, V)
    n_draws, counts, drafted, accepted = 3000, torch.zeros(V, V), 0, 0
    for i in range(n_draws):
        g = _pair_run(target, NASD(), prompt, sampling, 3, i)
        counts[g.tokens[0], g.tokens[1]] += 1
        drafted, accepted = drafted + sum(g.drafted), accepted + sum(g.accepted)
    assert drafted >= 2 * n_draws and 0 < accepted < drafted  # drafts were proposed, some rejected
    assert pooled_chisquare(counts, p, n_draws) > 1e-3


def _resampled_from_p(p: torch.Tensor, draft: int) -> torch.Tensor:
    """The joint of the first two tokens when the first one's one-hot draft `draft` is verified
    by a sampler that, on a rejection, resamples from the target's p instead of the residual
    norm(max(0, p - q)) (the bias towards the draft the test above guards against): the draft
    gets p(x) + (1 - p(x)) p(x), every other first token (1 - p(x)) p(y); the second token
    follows the target."""
    p1 = p.sum(1)
    first = p1 * (1 - p1[draft])
    first[draft] = p1[draft] + (1 - p1[draft]) * p1[draft]
    return first[:, None] * (p / p1[:, None])


def test_the_sampling_check_has_power():
    """The chi-square above, at its 3000 draws, rejects the draft-biased sampler's distribution
    (drawn exactly from it): the check would catch the bias it is there for."""
    target = random_model("llama", vocab=V, hidden=32, layers=2, seed=10)
    target.lm_head.weight.data *= 8
    p = exact_joint(target, torch.tensor([1, 2, 3, 4, 1, 2]), Sampling(1.0), V)
    biased = _resampled_from_p(p, 3)  # the store drafts 3 first (the trigram 1 2 -> 3)
    assert torch.allclose(biased.sum(), torch.tensor(1.0)) and float(biased[3].sum() - p[3].sum()) > 0.1
    for seed in range(3):
        draws = torch.multinomial(biased.flatten(), 3000, replacement=True, generator=torch.Generator().manual_seed(seed))
        counts = torch.bincount(draws, minlength=V * V).reshape(V, V).float()
        assert pooled_chisquare(counts, p, 3000) < 1e-6
    draws = torch.multinomial(p.flatten(), 3000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert pooled_chisquare(torch.bincount(draws, minlength=V * V).reshape(V, V).float(), p, 3000) > 1e-3  # size


def test_config_composes_and_builds():
    from hydra.utils import instantiate

    cfg = compose(["strategy=nasd"])
    p = instantiate(cfg.strategy.proposer)
    assert isinstance(p, NASD) and (p.n, p.filler_top_k) == (3, 3) and cfg.strategy.gamma == 5
