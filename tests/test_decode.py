"""The decode loop is lossless under greedy decoding, agrees with transformers' assisted
generation, never overshoots its budget and stops on EOS wherever it appears."""
from __future__ import annotations


import pytest
import torch
from conftest import ModelsByRole, noisy_copy, random_model

from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.proposers import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

GAMMAS = [1, 2, 3, 5, 8]
GREEDY = Sampling()




def spec(target, drafter, prompt, n, gamma, sampling=GREEDY, stopper=None, generator=None):
    return generate(CachedLM(target), prompt, n, sampling, stopper or Stopper(),
                    DraftModel().bind(ModelsByRole(target, drafter)), Fixed(gamma), generator)


def ar(target, prompt, n, sampling=GREEDY, stopper=None, generator=None):
    return generate(CachedLM(target), prompt, n, sampling, stopper or Stopper(), generator=generator)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def models(request):
    target = random_model(request.param, vocab=64, hidden=64, layers=2, seed=0)
    return {
        "independent": (target, random_model(request.param, vocab=64, hidden=32, layers=1, seed=1)),
        "noisy": (target, noisy_copy(target, 0.5 if request.param == "llama" else 2.0, seed=2)),  # partial acceptance
        "identical": (target, target),  # every draft accepted: exercises the bonus token and cache catch-up
    }


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("kind", ["independent", "noisy", "identical"])
def test_greedy_speculative_equals_autoregressive(models, kind, gamma):
    target, drafter = models[kind]
    accepted = drafted = 0
    for seed in range(3):
        prompt = torch.randint(1, 64, (5 + 3 * seed,), generator=torch.Generator().manual_seed(seed))
        ref = ar(target, prompt, 40)
        out = spec(target, drafter, prompt, 40, gamma)
        assert out.tokens == ref.tokens
        assert len(out.tokens) == 40
        # bookkeeping: one target forward per round; each round emits its accepted drafts + 1
        assert out.target_forwards == len(out.drafted)
        assert sum(out.accepted) + len(out.drafted) == 40
        assert all(0 <= n <= k <= gamma for n, k in zip(out.accepted, out.drafted))
        accepted, drafted = accepted + sum(out.accepted), drafted + sum(out.drafted)
    if kind == "identical":
        assert accepted == drafted > 0
    if kind == "noisy":
        assert 0 < accepted < drafted


def test_autoregressive_equals_transformers_generate(models):
    target, _ = models["independent"]
    prompt = torch.randint(1, 64, (9,), generator=torch.Generator().manual_seed(0))
    ref = target.generate(prompt[None], max_new_tokens=30, min_new_tokens=30, do_sample=False,
                          pad_token_id=0)[0, 9:].tolist()
    assert ar(target, prompt, 30).tokens == ref


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_agrees_with_transformers_assisted_generation(models, gamma):
    """Same output as `generate(assistant_model=...)` with the constant schedule, and the same
    number of accepted drafts (HF's target forwards = rounds; accepted = new tokens - rounds)."""
    target, drafter = models["noisy"]
    drafter.generation_config.num_assistant_tokens = gamma
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = 0.0  # draft exactly gamma tokens
    calls = []
    hook = target.register_forward_hook(lambda *a: calls.append(1))
    try:
        prompt = torch.randint(1, 64, (7,), generator=torch.Generator().manual_seed(1))
        hf = target.generate(prompt[None], assistant_model=drafter, max_new_tokens=32, min_new_tokens=32,
                             do_sample=False, pad_token_id=0)[0, 7:].tolist()
    finally:
        hook.remove()
    ours = spec(target, drafter, prompt, 32, gamma)
    assert ours.tokens == hf
    hf_accepted = len(hf) - len(calls)
    assert sum(ours.accepted) == hf_accepted
    assert ours.target_forwards == len(calls)


@pytest.mark.parametrize("budget", [1, 2, 3, 7])
def test_never_overshoots_the_budget(models, budget):
    target, drafter = models["identical"]  # all drafts accepted: the case that would overshoot
    prompt = torch.tensor([3, 4, 5])
    out = spec(target, drafter, prompt, budget, gamma=8)
    assert len(out.tokens) == budget
    assert out.tokens == ar(target, prompt, budget).tokens


@pytest.mark.parametrize("where", ["draft", "correction"])
def test_stops_on_eos_anywhere(models, where):
    """EOS inside an accepted draft, or as the target's own token, ends the sample there."""
    target, drafter = models["identical" if where == "draft" else "independent"]
    prompt = torch.randint(1, 64, (6,), generator=torch.Generator().manual_seed(3))
    full = ar(target, prompt, 30).tokens
    eos = full[10]
    first = full.index(eos)
    stopper = Stopper(eos_ids=[eos])
    out = spec(target, drafter, prompt, 30, gamma=4, stopper=stopper)
    assert out.tokens == full[: first + 1]
    assert ar(target, prompt, 30, stopper=stopper).tokens == out.tokens
    if where == "draft":  # the EOS was drafted and accepted: it ends the draft and counts as the round's token;
        # the target agreed with it, so nothing of that round is recorded as rejected (the drafts after it are cut)
        assert out.drafted[-1] >= out.accepted[-1] + 1  # the EOS was a draft (the drafter stops after it)
        assert out.rejected[-1] == [] and out.emitted[-1] == out.accepted[-1] + 1


def test_trained_pair_is_lossless_and_accepts(trained_pair_dir):
    """On the trained tiny pair: greedy speculative == autoregressive for every gamma, and
    acceptance is clearly above chance (mean accepted length > 1.5 at gamma 4)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specexp.tasks.humaneval import HumanEval

    tok = AutoTokenizer.from_pretrained(trained_pair_dir / "target")
    target = AutoModelForCausalLM.from_pretrained(trained_pair_dir / "target").eval()
    drafter = AutoModelForCausalLM.from_pretrained(trained_pair_dir / "drafter").eval()
    prompts = [torch.tensor(tok(s.prompt)["input_ids"]) for s in HumanEval(limit=3).samples()]
    stopper = Stopper(eos_ids=[tok.eos_token_id])
    tokens = forwards = 0
    for prompt in prompts:
        ref = ar(target, prompt, 48, stopper=stopper).tokens
        for gamma in [*GAMMAS, 4]:
            out = spec(target, drafter, prompt, 48, gamma, stopper=stopper)
            assert out.tokens == ref, f"gamma={gamma}"
        tokens, forwards = tokens + len(out.tokens), forwards + out.target_forwards  # gamma 4
    assert tokens / forwards > 1.5


def test_cached_forward_after_crop_matches_full_recompute(models):
    """Rollback is exact: logits after crop + re-feed equal a fresh forward over the sequence."""
    target, _ = models["independent"]
    seq = torch.randint(1, 64, (20,), generator=torch.Generator().manual_seed(4))
    lm = CachedLM(target)
    lm.forward(seq[:12])
    lm.forward(torch.tensor([7, 8, 9, 10]))  # a draft that gets rejected
    lm.crop(12)
    assert lm.length == 12
    got = lm.forward(seq[12:], keep=8)
    fresh = CachedLM(target).forward(seq)[12:]
    torch.testing.assert_close(got, fresh, rtol=1e-4, atol=1e-4)
