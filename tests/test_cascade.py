"""Cascade Speculative Drafting: the k-matrix recursion traced by hand, lenience, greedy output
equal to the target's for every configuration, and the target's distribution preserved under
sampling (chi-square, as for the classic algorithm)."""
from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import exact_joint, pooled_chisquare, random_model
from scipy.stats import chisquare

from specexp.core.decode import generate
from specexp.length import LengthPolicy
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.proposers import Bigram, Cascade, PromptLookup
from specexp.proposers.cascade import _Items
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

GREEDY = Sampling()


# ------------------------------------------------------------------------------------- helpers


class _NullCache:
    def crop(self, n):  # a rule model keeps no state: any prefix is "cached"
        pass


class RuleLM(torch.nn.Module):
    """A stand-in causal LM whose next token depends on the current token only: logit `hi` for
    rule[x], `mid` for alt[x] (when given), 0 elsewhere. `n_params` parameters (for cost models);
    `model_type`/`name` make it pass for a T5 in the cost models."""

    def __init__(self, vocab: int, rule, n_params: int = 10, alt=None, hi: float = 8.0, mid: float = 0.0,
                 model_type: str = "rule", name: str = ""):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n_params))
        self.vocab, self.hi, self.mid = vocab, hi, mid
        self.rule = torch.tensor([rule(x) for x in range(vocab)])
        self.alt = None if alt is None else torch.tensor([alt(x) for x in range(vocab)])
        self.config = SimpleNamespace(is_encoder_decoder=False, model_type=model_type, _name_or_path=name)

    def get_input_embeddings(self):  # only its row count is read (the drafter's vocabulary check)
        return SimpleNamespace(weight=torch.empty(self.vocab, 0))

    def forward(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        ids = input_ids[0]
        logits = torch.zeros(ids.shape[0], self.vocab)
        rows = torch.arange(ids.shape[0])
        if self.alt is not None:
            logits[rows, self.alt[ids]] = self.mid
        logits[rows, self.rule[ids]] = self.hi
        if logits_to_keep:
            logits = logits[-logits_to_keep:]
        return SimpleNamespace(logits=logits[None], past_key_values=past_key_values or _NullCache())


class FakePair:
    """What proposers bind to: models by role, the target's logit width."""

    def __init__(self, vocab: int, **models):
        self.models, self.vocab_size, self.target = models, vocab, models["target"]
        self.tokenizer, self.specs = None, {}

    def get(self, role):
        return self.models[role]


def perturbed(model, scale: float, seed: int):
    """A copy of `model` with noise on every weight: a drafter that often agrees with it."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p += scale * p.std() * torch.randn(p.shape, generator=g)
    return m


def run(target, proposer, prompt, n, sampling=GREEDY, max_len=64, seed=0):
    return generate(CachedLM(target), prompt, n, sampling, Stopper(), proposer, LengthPolicy(max_len),
                    torch.Generator().manual_seed(seed))


def succ(v):
    return lambda x: (x + 1) % v


# ---------------------------------------------------------------------------- the k-matrix


def test_k_matrix_is_validated():
    bottom = Bigram.from_table([0])
    with pytest.raises(ValueError, match="3x3"):
        Cascade(["drafter", "drafter2"], bottom, [[13, 10], [0, 10]])
    with pytest.raises(ValueError, match="below the diagonal"):
        Cascade(["drafter"], bottom, [[13, 10], [1, 10]])
    with pytest.raises(ValueError, match="lenience"):
        Cascade(["drafter"], bottom, [[13, 10], [0, 10]], lenience=0.5)


def test_two_levels_traced_by_hand():
    """k = [[2, 3], [0, 2]], drafter over a bigram bottom, greedy, lenience 1. The target says x+1;
    the drafter too except after 5 (says 9); the bigram too except after 3 (says 0).
    Round 1 (budget 10, cap 9): the drafter reviews bigram [1, 2] -> accepts both + bonus 3; the
    bigram tops up to 5 tokens: [0, 1]. Draft [1,2,3,0,1]: the target accepts 3, corrects 4.
    Round 2 (budget 6, cap 5): the drafter reviews [5, 6] -> accepts 5, corrects 9; the bigram
    adds [10, 11, 12]. Draft [5,9,10,11,12]: the target accepts 1, corrects 6.
    Round 3 (budget 4, cap 3): the drafter reviews [7, 8] -> accepts both + bonus 9 (cap 3 reached).
    The target accepts all 3 + bonus 10. 10 tokens, 3 target and 3 drafter forwards."""
    V = 20
    target = RuleLM(V, succ(V))
    drafter = RuleLM(V, lambda x: 9 if x == 5 else (x + 1) % V)
    table = [0 if x == 3 else (x + 1) % V for x in range(V)]
    casc = Cascade(["drafter"], Bigram.from_table(table), [[2, 3], [0, 2]]).bind(FakePair(V, target=target, drafter=drafter))
    g = run(target, casc, torch.tensor([0]), 10)
    assert g.tokens == list(range(1, 11))
    assert g.drafted == [5, 5, 3] and g.accepted == [3, 1, 3]
    assert g.model_forwards == {"target": 3, "drafter": 3}
    assert g.drafter_forwards == 3


def test_three_levels_flan_t5_matrix_traced_by_hand():
    """k = [[5,14,10],[0,1,10],[0,0,10]] over (base, small, bigram), everyone says x+1.
    Base's first call (its share: 5): base reviews small's row-1 draft, which is small reviewing 10
    bigram tokens (11 tokens with its bonus; row 1's bigram share, 11, is already reached) -> 12
    tokens with base's bonus. Small's share (up to 19): small reviews 10 bigram tokens -> 23. The
    bigram tops up to 29. The target accepts 29 + bonus: 30 tokens; the 31st is the target's own
    (budget 1: no draft). Forwards: target 2, base 1, small 2."""
    V = 64
    models = {r: RuleLM(V, succ(V)) for r in ("target", "drafter", "drafter2")}
    casc = Cascade(["drafter", "drafter2"], Bigram.from_table([(x + 1) % V for x in range(V)]),
                   [[5, 14, 10], [0, 1, 10], [0, 0, 10]], lenience=2).bind(FakePair(V, **models))
    casc.records = True
    g = generate(CachedLM(models["target"]), torch.tensor([0]), 31, GREEDY, Stopper(), casc, LengthPolicy(64),
                 records=True)
    assert g.tokens == list(range(1, 32))
    assert g.drafted == [29, 0] and g.accepted == [29, 0]
    assert g.model_forwards == {"target": 2, "drafter": 1, "drafter2": 2}
    sources = [r["source"] for r in g.records]
    assert sources == ["drafter"] * 12 + ["drafter2"] * 11 + ["bigram"] * 6


def test_policy_cap_and_budget_cut_the_cascade_draft():
    V = 64
    models = {r: RuleLM(V, succ(V)) for r in ("target", "drafter")}
    casc = Cascade(["drafter"], Bigram.from_table([(x + 1) % V for x in range(V)]), [[13, 10], [0, 10]])
    casc.bind(FakePair(V, **models))
    g = run(models["target"], casc, torch.tensor([0]), 40, max_len=7)
    assert set(g.drafted) == {7} and g.tokens == list(range(1, 41))
    g = run(models["target"], casc, torch.tensor([0]), 10)  # budget 10: at most 9 drafts
    assert g.drafted == [9] and len(g.tokens) == 10


def test_greedy_lenience_uses_the_vouching_probability():
    """A reviewer accepts a non-argmax token when its probability exceeds the drafter's / l."""
    V = 5
    casc = Cascade(["drafter"], Bigram.from_table([0] * V), [[1, 1], [0, 1]], lenience=3)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05],
                                     [0.5, 0.3, 0.1, 0.05, 0.05],
                                     [0.1, 0.2, 0.3, 0.2, 0.2]]))
    sub = _Items([1, 2], [None, None], [1.0, 0.9], ["bigram", "drafter2"])
    out = casc._review_greedy("drafter", sub, logits)
    assert out.tokens == [0]  # 0.3 > 1/3? no: rejected at position 0 -> its correction, 0
    sub = _Items([1, 2], [None, None], [0.6, 0.2], ["drafter2", "drafter2"])
    out = casc._review_greedy("drafter", sub, logits)
    assert out.tokens == [1, 2, 2]  # 0.3 > 0.6/3 and 0.1 > 0.2/3: both accepted, then the bonus
    assert out.s == pytest.approx([0.3, 0.1, 0.3])  # the reviewer now vouches for them


def test_lenient_review_changes_reviews_not_the_output():
    """The drafter's second choice (probability ~0.24) is the bigram's guess: with l=1 it is
    rejected, with l=5 accepted (0.24 > 1 / 5), and the target still corrects it."""
    V = 20
    target = RuleLM(V, succ(V))
    drafter = RuleLM(V, succ(V), alt=lambda x: (x + 2) % V, hi=3.0, mid=2.5)  # p(x+1) ~ .40, p(x+2) ~ .24
    bottom = Bigram.from_table([(x + 2) % V for x in range(V)])
    res = {}
    for l in (1, 5):
        casc = Cascade(["drafter"], bottom, [[1, 0], [0, 1]], lenience=l).bind(FakePair(V, target=target, drafter=drafter))
        g = run(target, casc, torch.tensor([0]), 12)
        assert g.tokens == list(range(1, 13))
        res[l] = (g.drafted, g.accepted)
    # l=1: the drafter rejects the bigram's x+2 and drafts its correction x+1 (one token, its share);
    # the target accepts it and adds x+2: 2 tokens a round
    assert res[1] == ([1] * 6, [1] * 6)
    # l=5: the drafter lets x+2 through and adds its bonus x+3; the target rejects x+2 and emits x+1:
    # 1 token a round (budget 2 -> a 1-token draft; budget 1 -> no draft)
    assert res[5] == ([2] * 10 + [1, 0], [0] * 12)


# --------------------------------------------------------------------- greedy = target greedy


CONFIGS = [
    (["drafter", "drafter2"], [[5, 14, 10], [0, 1, 10], [0, 0, 10]], 2),  # FLAN-T5 preset
    (["drafter", "drafter2"], [[5, 8, 10], [0, 1, 10], [0, 0, 10]], 5),  # previous-work preset
    (["drafter"], [[13, 10], [0, 10]], 3),  # LLaMA preset
    (["drafter"], [[2, 3], [0, 4]], 1),
    (["drafter2", "drafter"], [[1, 2, 3], [0, 2, 1], [0, 0, 3]], 1.5),
    ([], [[6]], 1),  # the bottom drafter alone
]


@pytest.fixture(scope="module")
def models():
    V = 96
    target = random_model("llama", V, 64, 2, 0)
    return {"target": target, "drafter": perturbed(target, 0.4, 1), "drafter2": perturbed(target, 0.9, 2), "V": V}


@pytest.mark.parametrize("compat", ["specexp", "original"])
@pytest.mark.parametrize("drafters,k,l", CONFIGS, ids=lambda x: str(x).replace(" ", ""))
def test_cascade_greedy_equals_target_greedy(models, drafters, k, l, compat):
    """Either protocol emits the target's greedy output (compat=original may run past the budget
    in its last round: its first 24 tokens are compared, the rest continue the same greedy text)."""
    V = models["V"]
    pair = FakePair(V, **{r: models[r] for r in ("target", "drafter", "drafter2")})
    bottom = PromptLookup(bigram=Bigram.from_table(torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(3))))
    casc = Cascade(drafters, bottom, k, lenience=l, compat=compat).bind(pair)
    total_acc = 0
    for seed in range(2):
        prompt = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([prompt, prompt[:6]])  # a repeat for the lookup to find
        g = run(models["target"], casc, prompt, 24)
        base = generate(CachedLM(models["target"]), prompt, len(g.tokens), GREEDY, Stopper())
        assert len(g.tokens) >= 24 and g.tokens == base.tokens
        assert g.target_forwards == len(g.drafted) and g.drafter_forwards == sum(
            v for r, v in g.model_forwards.items() if r != "target")
        total_acc += sum(g.accepted)
    if drafters:
        assert total_acc > 0  # the drafts were not all thrown away


# -------------------------------------------------------------------- sampling: lossless


def _review_step_counts(q, r, l, draws, seed=0):
    casc = Cascade(["drafter"], Bigram.from_table([0]), [[1, 0], [0, 1]], lenience=l)
    casc._sampling, casc._gen = Sampling(1.0), torch.Generator().manual_seed(seed)
    logits = torch.stack([r.log(), r.log()])
    counts = torch.zeros(q.shape[0])
    q_out = None
    for x in torch.multinomial(q, draws, replacement=True, generator=torch.Generator().manual_seed(seed + 1)).tolist():
        out = casc._review_sampling("drafter", _Items([x], [q], [1.0], ["d"]), logits)
        counts[out.tokens[0]] += 1
        q_out = out.q[0]
    return counts, q_out


@pytest.mark.parametrize("l", [1.0, 2.0, 4.0])
def test_lenient_review_emits_its_reported_distribution(l):
    """One review step: draft x ~ q, reviewer r, lenience l. The emitted token's frequencies
    match the Q' the cascade reports (= r when l = 1)."""
    q = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    r = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    draws = 6000
    counts, q_out = _review_step_counts(q, r, l, draws)
    assert q_out.sum().item() == pytest.approx(1.0, abs=1e-5)
    if l == 1.0:
        assert torch.allclose(q_out, r, atol=1e-6)
    else:
        assert (q_out - r).abs().sum() > 0.05  # lenience moves the distribution towards q
    assert chisquare(counts.numpy(), (q_out * draws).numpy()).pvalue > 1e-3


V_CHI = 6


def _chi_square_cascade(n_draws, sampling, cascade_cls=Cascade):
    """p-value of the first two emitted tokens (drawn through a 3-level lenient cascade, drafts
    of up to 3 tokens) against the target's exact joint; and the mean accepted drafts."""
    target = random_model("llama", vocab=V_CHI, hidden=32, layers=2, seed=10)
    target.lm_head.weight.data *= 8  # sharp, so that the drafters visibly differ
    d1, d2 = perturbed(target, 0.6, 1), perturbed(target, 1.2, 2)
    prompt = torch.tensor([1, 2, 3, 1, 2])
    p = exact_joint(target, prompt, sampling, V_CHI)
    assert 0.5 * (p - exact_joint(d2, prompt, sampling, V_CHI)).abs().sum() > 0.3  # the test has power
    bottom = PromptLookup(bigram=Bigram.from_table([2, 3, 4, 5, 0, 1]))
    casc = cascade_cls(["drafter", "drafter2"], bottom, [[1, 2, 2], [0, 1, 2], [0, 0, 2]], lenience=3)
    casc.bind(FakePair(V_CHI, target=target, drafter=d1, drafter2=d2))
    lm, policy, stopper = CachedLM(target), LengthPolicy(64), Stopper()
    counts, accepted = torch.zeros(V_CHI, V_CHI), 0
    for i in range(n_draws):
        g = generate(lm, prompt, 3, sampling, stopper, casc, policy, torch.Generator().manual_seed(i))
        counts[g.tokens[0], g.tokens[1]] += 1
        accepted += sum(g.accepted)
    assert counts.flatten()[p.flatten() == 0].sum() == 0
    return pooled_chisquare(counts, p, n_draws), accepted / n_draws


class _NaiveQ(Cascade):
    """A plausible mistake: report the last reviewer's distribution r as each token's q."""

    def _review_sampling(self, role, sub, logits):
        out = super()._review_sampling(role, sub, logits)
        r = self._sampling.probs(logits)
        out.q = [r[i] for i in range(len(out))]
        return out


def test_cascade_sampling_preserves_target_distribution_quick():
    pvalue, acc = _chi_square_cascade(700, Sampling(1.0))
    assert acc > 0.5 and pvalue > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.8, top_k=4)], ids=["T1", "T0.8-topk4"])
def test_cascade_sampling_preserves_target_distribution(sampling):
    pvalue, acc = _chi_square_cascade(3000, sampling)
    assert acc > 0.5 and pvalue > 1e-3


@pytest.mark.slow
def test_chi_square_detects_a_wrong_q():
    """The harness has power: reporting the reviewer's r instead of the exact Q' is caught."""
    pvalue, _ = _chi_square_cascade(3000, Sampling(1.0), _NaiveQ)
    assert pvalue < 1e-6


# ------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name,drafters,k,l", [
    ("cascade", ["drafter"], [[4, 6], [0, 8]], 1),
    ("cascade_flan_t5", ["drafter", "drafter2"], [[5, 14, 10], [0, 1, 10], [0, 0, 10]], 2),
    ("cascade_flan_t5_prevwork", ["drafter", "drafter2"], [[5, 8, 10], [0, 1, 10], [0, 0, 10]], 5),
    ("cascade_llama", ["drafter"], [[13, 10], [0, 10]], 3),
])
def test_strategy_presets_compose(name, drafters, k, l):
    from conftest import compose
    from hydra.utils import instantiate

    cfg = compose([f"strategy={name}"])
    casc = instantiate(cfg.strategy.proposer, _convert_="all")
    policy = instantiate(cfg.strategy.length, _convert_="all")
    assert isinstance(casc, Cascade) and isinstance(casc.bottom, PromptLookup) and isinstance(casc.bottom.bigram, Bigram)
    assert (casc.roles, casc.k, casc.lenience) == (drafters, k, l)
    assert type(policy) is LengthPolicy and policy.begin() == 64
    assert casc.bottom.bigram.source["corpus"] == cfg.strategy.corpus
    assert casc.compat == "specexp" and not casc.overshoots  # specexp's protocol is the default
    original = instantiate(compose([f"strategy={name}", "strategy.compat=original"]).strategy.proposer, _convert_="all")
    assert original.compat == "original" and original.overshoots


# ------------------------------------------------------------- compat="original" (CS-Drafting's protocol)


def test_original_bottom_searches_prompt_and_text_with_wrap_around():
    """mag.py's rule, traced by hand. Decoder-only: the prompt [5,6,7] is also the start of the
    text, so step 1 searches [5,6,7] ++ [5,6]: the whole text [5,6,7] matches at 0..2 and its
    continuation runs into the prompt's second copy: [5,6] (wrap-around). Fewer than k=4, so step 2
    searches x[:-1] ++ x[:-1] for x = [5,6,7,5,6]: the suffix [5,6] first ends at 1, whose next 4
    tokens are [7,5,5,6]. 6 tokens in all (between k and 2k-1); the bigram chain is not needed."""
    from specexp.proposers.cascade import continuation_of_longest_suffix, original_bottom

    chain = Bigram.from_table([0] * 10)
    t = torch.tensor
    assert original_bottom(t([5, 6, 7]), t([5, 6, 7]), 4, chain) == [5, 6, 7, 5, 5, 6]
    # nothing found: the bigram chain fills exactly k
    assert original_bottom(t([1]), t([1, 2]), 3, Bigram.from_table([(x + 1) % 10 for x in range(10)])) == [3, 4, 5]
    # the longest suffix of the text ([1, 2], not [3, 1, 2]: that does not occur), earliest
    # occurrence; an occurrence at the very end of text[:-1] gives nothing
    assert continuation_of_longest_suffix(t([1, 2, 9, 1, 2, 3, 1, 2]), 3, 8) == [9, 1, 2]
    assert continuation_of_longest_suffix(t([1, 2, 9, 1, 2, 3, 1, 2]), 2, 1) == [9, 1]  # suffix [2]: first at 1
    assert continuation_of_longest_suffix(t([4, 2, 2]), 3, 1) == []
    assert continuation_of_longest_suffix(t([4, 5, 2]), 3, 1) is None


def _succ_cascade(V, compat, k, lenience=1, **over):
    models = {r: RuleLM(V, succ(V)) for r in ("target", "drafter", "drafter2")}
    models.update(over)
    roles = ["drafter", "drafter2"][: len(k) - 1]
    casc = Cascade(roles, PromptLookup(bigram=Bigram.from_table([(x + 1) % V for x in range(V)])), k,
                   lenience=lenience, compat=compat).bind(FakePair(V, **models))
    return models, casc


def test_original_bottom_always_proposes_ten_and_the_share_only_decides_the_call():
    """k = [[2, 3], [0, 2]], everyone says x+1, prompt [0], compat=original. Each round: the drafter
    (share 2) reviews ONE bottom call of 10 tokens (not 2) -> 11 tokens; 11 >= the bottom's share 5,
    so the bottom is not called again: the target gets 11 drafts, accepts all + bonus = 12 tokens.
    Budget 30: 12, 24, then a full round at budget 6 overshoots to 36 (the original's
    `while generated < max_length`). Budget 25: the round at budget 1 is still a cascade round.
    specexp's protocol instead drafts 2 bottom tokens (+1) and tops up to 5, capped by the budget."""
    V = 64
    models, casc = _succ_cascade(V, "original", [[2, 3], [0, 2]])
    g = run(models["target"], casc, torch.tensor([0]), 30)
    assert g.tokens == list(range(1, 37))
    assert g.drafted == [11, 11, 11] and g.accepted == [11, 11, 11]
    assert g.model_forwards == {"target": 3, "drafter": 3}
    g = run(models["target"], casc, torch.tensor([0]), 25)
    assert len(g.tokens) == 36 and g.model_forwards == {"target": 3, "drafter": 3}
    models, casc = _succ_cascade(V, "specexp", [[2, 3], [0, 2]])
    g = run(models["target"], casc, torch.tensor([0]), 30)
    assert g.tokens == list(range(1, 31)) and g.drafted[:2] == [5, 5]


def test_original_lenience_reads_the_last_subcall_shifted_by_one():
    """Three levels, k = [[1,0,0],[0,1,0],[0,0,10]], lenience 2, prompt [0]: base reviews small,
    small reviews 10 bottom tokens [1..10] and accepts them (+ bonus 11). Base's argmax after 1 is
    9, but it gives 2 the probability e^7/(e^8+e^7+14) = 0.268.
    specexp: s(2) = small's probability of 2 at 2's position, e^8/(e^8+15) = 0.995; 0.268 < 0.995/2:
    base rejects 2 and writes 9; the target accepts [1], corrects 9 -> drafted 2, accepted 1.
    original: s(2) = small's distribution at the PREVIOUS position read at 2, 1/(e^8+15) = 3e-4:
    base accepts 2 and everything after (+ bonus 12): the target accepts 12 drafts."""
    V = 16
    base = RuleLM(V, lambda x: 9 if x == 1 else (x + 1) % V, alt=lambda x: 2 if x == 1 else (x + 1) % V, mid=7.0)
    k = [[1, 0, 0], [0, 1, 0], [0, 0, 10]]
    models, casc = _succ_cascade(V, "original", k, lenience=2, drafter=base)
    g = run(models["target"], casc, torch.tensor([0]), 13)
    assert g.tokens == list(range(1, 14)) and g.drafted == [12] and g.accepted == [12]
    assert g.model_forwards == {"target": 1, "drafter": 1, "drafter2": 1}
    models, casc = _succ_cascade(V, "specexp", k, lenience=2, drafter=base)
    g = run(models["target"], casc, torch.tensor([0]), 13)
    assert g.tokens == list(range(1, 14)) and g.drafted[0] == 2 and g.accepted[0] == 1


def test_original_compat_is_greedy_only_and_validated():
    V = 16
    models, casc = _succ_cascade(V, "original", [[2, 3], [0, 2]])
    with pytest.raises(ValueError, match="greedily"):
        run(models["target"], casc, torch.tensor([0]), 5, sampling=Sampling(temperature=1.0))
    with pytest.raises(ValueError, match="compat"):
        Cascade(["drafter"], Bigram.from_table([0]), [[1, 1], [0, 1]], compat="paper")
    with pytest.raises(ValueError, match="bigram"):
        Cascade(["drafter"], PromptLookup(), [[1, 1], [0, 1]], compat="original")


def test_cascade_draft_ends_at_its_first_eos():
    """Issue 12 item 2 for the cascade: everyone says x+1, EOS = 4, prompt [0], k [[2,3],[0,2]]:
    the assembled draft [1,2,3,4,5] ends after 4 -> [1,2,3,4]; the target emits 1..4 and stops
    (4 is the round's own token: 3 accepted drafts). compat=original drafts on past EOS, as the
    original does (11 drafts), and emits the same text."""
    V = 64
    for compat, drafted in (("specexp", 4), ("original", 11)):
        models, casc = _succ_cascade(V, compat, [[2, 3], [0, 2]])
        g = generate(CachedLM(models["target"]), torch.tensor([0]), 20, GREEDY, Stopper([4]), casc, LengthPolicy(64))
        assert g.tokens == [1, 2, 3, 4] and g.drafted == [drafted] and g.accepted == [3], compat


ORIGINAL = os.environ.get("CSD_ORIGINAL")  # a checkout of github.com/lfsszd/CS-Drafting (05b22e1)
SIDE_BY_SIDE = [
    (["drafter", "drafter2"], [[5, 14, 10], [0, 1, 10], [0, 0, 10]], 2),
    (["drafter", "drafter2"], [[5, 8, 10], [0, 1, 10], [0, 0, 10]], 500),  # lenience that bites
    (["drafter"], [[13, 10], [0, 10]], 3),
    (["drafter"], [[13, 10], [0, 10]], 100),
    (["drafter2", "drafter"], [[1, 2, 3], [0, 2, 1], [0, 0, 3]], 30),
]


def _original_code(monkeypatch):
    """The original's csd.py and model.py, imported as they are from CSD_ORIGINAL."""
    import sys

    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **kw: None)  # model.py loads one at import
    monkeypatch.syspath_prepend(ORIGINAL)
    for name in ("csd", "mag", "model"):  # the original's top-level module names, imported afresh
        sys.modules.pop(name, None)
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)  # removed again at teardown
    import csd
    import model
    return csd, model


def _side_by_side(monkeypatch, models, V, roles, k, l, seq2seq):
    """Decode 3 prompts with the original's `csd()` (main.py's model classes, an uncached target)
    and with compat=original; the same tokens (up to the original's EOS: 1 for T5, else 2) and the
    same forward count of every model."""
    orig_csd, orig_model = _original_code(monkeypatch)
    cls = orig_model.CountedCSDraftingEncoderDecoderModel if seq2seq else orig_model.CountedCSDraftingDecoderModel
    eos, tag = (1, "t5-") if seq2seq else (2, "")  # csd() takes EOS 1 when "t5" is in the target's name, else 2
    table = torch.randint(2, V, (V,), generator=torch.Generator().manual_seed(3))
    for seed in range(3):
        prompt = torch.randint(3, V, (12,), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([prompt, prompt[:6]])
        drafts = [cls(models[r], name=tag + r) for r in roles]
        mag = orig_model.CSDraftingMaGModel(table.clone(), name="mag")
        target = cls(models["target"], name=tag + "target")
        for m in drafts + [mag, target]:
            m.vocab_size = V
        start = torch.zeros(1, 1, dtype=torch.long) if seq2seq else prompt[None]  # T5: the decoder start id 0
        out = orig_csd.csd(drafts + [mag], target, prompt[None], start, torch.tensor(k), max_length=40, leniency=l)
        theirs = out[0, start.shape[1]:].tolist()
        theirs = theirs[: theirs.index(eos) + 1] if eos in theirs else theirs
        pair = FakePair(V, **{r: models[r] for r in ("target", "drafter", "drafter2")})
        casc = Cascade(roles, PromptLookup(bigram=Bigram.from_table(table)), k, lenience=l, compat="original").bind(pair)
        g = generate(cached_lm(models["target"]), prompt, 40, GREEDY, Stopper([eos]), casc, LengthPolicy(64))
        assert g.tokens == theirs
        assert g.model_forwards == {"target": target.forward_count, **{r: d.forward_count for r, d in zip(roles, drafts)}}


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL, reason="set CSD_ORIGINAL to a checkout of lfsszd/CS-Drafting to run the original")
@pytest.mark.parametrize("roles,k,l", SIDE_BY_SIDE)
def test_compat_original_matches_the_original_code_side_by_side(models, monkeypatch, roles, k, l):
    _side_by_side(monkeypatch, models, models["V"], roles, k, l, seq2seq=False)


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL, reason="set CSD_ORIGINAL to a checkout of lfsszd/CS-Drafting to run the original")
@pytest.mark.parametrize("roles,k,l", SIDE_BY_SIDE[:3])
def test_compat_original_matches_the_original_code_side_by_side_t5(monkeypatch, roles, k, l):
    """The same on random-init T5 models (the original's encoder-decoder path: FLAN-T5)."""
    from transformers import T5Config, T5ForConditionalGeneration

    V = 96
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=V, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, decoder_start_token_id=0,
                   eos_token_id=1, pad_token_id=0)
    target = T5ForConditionalGeneration(cfg).eval()
    models = {"target": target, "drafter": perturbed(target, 0.3, 1), "drafter2": perturbed(target, 0.6, 2)}
    _side_by_side(monkeypatch, models, V, roles, k, l, seq2seq=True)
