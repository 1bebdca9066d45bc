"""Speculative sampling preserves the target's distribution (temperature, top-k, top-p), and the
verification rules do exactly what the papers say."""
from __future__ import annotations

import itertools

import pytest
import torch
from conftest import ModelsByRole, exact_joint, pooled_chisquare, random_model
from scipy.stats import chisquare

from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.proposers import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper
from specexp.core.verify import verify_greedy, verify_sampling

V = 8  # a small vocabulary: the joint of the first two tokens has 64 cells


def test_top_k_and_top_p_filters():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    # top_p off the cumulative masses (0.5, 0.8, 0.95), which float32 computes a few ulps either side
    torch.testing.assert_close(Sampling(1.0, top_p=0.79).probs(logits), torch.tensor([0.625, 0.375, 0, 0]))
    torch.testing.assert_close(Sampling(1.0, top_p=0.81).probs(logits), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    torch.testing.assert_close(Sampling(1.0, top_k=1).probs(logits), torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(Sampling(1.0, top_k=2, top_p=0.5).probs(logits), torch.tensor([1.0, 0, 0, 0]))
    # a mass that reaches top_p exactly drops the next token: uniform over 4 is exact in float32
    # (mass 0.5 before the third token); ties may sort either way, so the values are compared sorted
    assert sorted(Sampling(1.0, top_p=0.5).probs(torch.zeros(4)).tolist()) == [0, 0, 0.5, 0.5]
    t2 = Sampling(2.0).probs(logits)
    torch.testing.assert_close(t2, torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt() / torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt().sum())
    assert Sampling().probs(logits).tolist() == [1.0, 0, 0, 0]  # greedy: one-hot of the argmax
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(-1.0)


def test_verify_greedy_accepts_exactly_the_matching_prefix():
    logits = torch.full((4, 5), -1.0)
    logits[0, 2] = logits[1, 4] = logits[2, 1] = logits[3, 0] = 1.0  # target argmax: 2, 4, 1, 0
    assert verify_greedy(torch.tensor([2, 4, 1]), logits) == (3, 0)  # all accepted + bonus
    assert verify_greedy(torch.tensor([2, 3, 1]), logits) == (1, 4)  # correction at position 1
    assert verify_greedy(torch.tensor([0, 4, 1]), logits) == (0, 2)  # later matches do not count
    assert verify_greedy(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 2)


def test_verify_sampling_single_position_matches_target():
    """Accept/resample at one position: P(emitted = x) = p(x) exactly (Leviathan et al., Thm 1)."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    gen = torch.Generator().manual_seed(0)
    n_draws, counts = 20000, torch.zeros(4)
    for _ in range(n_draws):
        x = torch.multinomial(q, 1, generator=gen)
        n, nxt = verify_sampling(x, q[None], torch.stack([p, p]), gen)
        counts[x[0] if n == 1 else nxt] += 1
    assert chisquare(counts.numpy(), (p * n_draws).numpy()).pvalue > 1e-3
    # a deterministic (one-hot) proposal: accept with p(x), else resample p without x
    counts = torch.zeros(4)
    for _ in range(n_draws):
        n, nxt = verify_sampling(torch.tensor([3]), None, torch.stack([p, p]), gen)
        counts[3 if n == 1 else nxt] += 1
    assert chisquare(counts.numpy(), (p * n_draws).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_k=5), Sampling(1.3, top_p=0.8)],
                         ids=["T1", "T0.7-topk5", "T1.3-topp0.8"])
def test_speculative_sampling_preserves_target_distribution(sampling):
    """Chi-square goodness of fit of the first two emitted tokens (both drafted, gamma 2) against
    the target's exact joint, with a fixed seed; the drafter's own joint is far from it, so a
    verifier that let drafts through unchecked would fail."""
    target = random_model("llama", vocab=V, hidden=32, layers=2, seed=10)
    drafter = random_model("llama", vocab=V, hidden=32, layers=1, seed=11)
    for m in (target, drafter):  # sharpen the random models so the distributions differ visibly
        m.lm_head.weight.data *= 8
    prompt = torch.tensor([1, 2, 3])
    p = exact_joint(target, prompt, sampling, V)
    q = exact_joint(drafter, prompt, sampling, V)
    assert 0.5 * (p - q).abs().sum() > 0.2  # the test has power: drafter and target disagree

    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    lm, policy, stopper = CachedLM(target), Fixed(2), Stopper()
    n_draws, counts, accepted = 3000, torch.zeros(V, V), 0
    for i in range(n_draws):
        g = generate(lm, prompt, 3, sampling, stopper, proposer, policy, torch.Generator().manual_seed(i))
        counts[g.tokens[0], g.tokens[1]] += 1
        accepted += sum(g.accepted)
    assert 0 < accepted < 2 * n_draws  # both acceptance and rejection paths were exercised
    assert counts.flatten()[p.flatten() == 0].sum() == 0  # never a token the filters removed
    assert pooled_chisquare(counts, p, n_draws) > 1e-3


def test_stopper_finds_stop_strings_across_tokens():
    from conftest import make_tokenizer

    tok = make_tokenizer()
    ids = tok("x = 1\ndef add(a, b):\n    return a + b")["input_ids"]
    stopper = Stopper(eos_ids=[tok.eos_token_id], stop_strings=["\ndef"], tokenizer=tok)
    i = stopper.first_stop(ids, 0)
    assert "\ndef" in tok.decode(ids[: i + 1]) and "\ndef" not in tok.decode(ids[:i])
    assert stopper.first_stop(ids[:i], 0) is None
    assert Stopper(eos_ids=[ids[2]]).first_stop(ids, 0) == 2
    # the window check gives the same answer as decoding the whole text at every step
    for s in itertools.islice(itertools.combinations(["\n", "return", "a +", " b"], 1), 4):
        st = Stopper(stop_strings=list(s), tokenizer=tok)
        brute = next((j for j in range(len(ids)) if s[0] in tok.decode(ids[: j + 1])), None)
        assert st.first_stop(ids, 0) == brute
