"""Entropy measures on distributions whose entropies are known in closed form, and which
distribution a policy measures (greedy: softmax of the logits; sampling: the sampling
distribution; or a configured temperature)."""
from __future__ import annotations

import math

import pytest
import torch

from specexp.models import token_entropy as entropy
from specexp.length import DraftStep, EntropyAbsolute, EntropyStatic

V = 12
NEG = float("-inf")


def uniform_logits(n: int, v: int = V) -> torch.Tensor:
    """Uniform over the first n of v tokens: every entropy type gives ln n."""
    x = torch.full((v,), NEG)
    x[:n] = 0.0
    return x


def dist_logits(probs: list[float], v: int = V) -> torch.Tensor:
    x = torch.full((v,), NEG)
    x[: len(probs)] = torch.tensor(probs).log()
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("kind", ["shannon", "renyi", "topk"])
def test_uniform_has_entropy_ln_n_for_every_type(n, kind):
    h = entropy.of_logits(uniform_logits(n), kind, alpha=2.0, k=50)
    assert float(h) == pytest.approx(math.log(n), abs=1e-6)


def test_shannon_of_a_two_point_distribution():
    a = 0.8
    expected = -(a * math.log(a) + (1 - a) * math.log(1 - a))  # 0.5004 nats
    assert float(entropy.of_logits(dist_logits([a, 1 - a]))) == pytest.approx(expected, abs=1e-6)


def test_renyi_orders():
    p = torch.tensor([0.5, 0.25, 0.25])
    assert float(entropy.renyi(p, 2.0)) == pytest.approx(-math.log(0.25 + 0.0625 + 0.0625), abs=1e-6)  # 0.9808
    assert float(entropy.renyi(p, 0.5)) == pytest.approx(2 * math.log(math.sqrt(0.5) + 2 * 0.5), abs=1e-6)
    assert float(entropy.renyi(p, 1.0)) == pytest.approx(float(entropy.shannon(p)), abs=1e-12)
    assert float(entropy.renyi(p, math.inf)) == pytest.approx(math.log(2), abs=1e-12)  # min-entropy -ln max p
    # Renyi entropy is non-increasing in its order
    assert float(entropy.renyi(p, 0.5)) > float(entropy.shannon(p)) > float(entropy.renyi(p, 2.0))


def test_topk_renormalises_the_top_k():
    assert float(entropy.of_logits(uniform_logits(10), "topk", k=4)) == pytest.approx(math.log(4), abs=1e-6)
    # top-2 of (0.6, 0.2, 0.2): renormalised (0.75, 0.25)
    h = float(entropy.measure(torch.tensor([0.6, 0.2, 0.2]), "topk", k=2))
    assert h == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)


def test_temperature_scales_the_logits():
    x = torch.tensor([2.0, 0.0, 0.0, -1.0])
    assert float(entropy.of_logits(x, temperature=2.0)) == pytest.approx(float(entropy.shannon((x / 2).softmax(-1))))
    assert float(entropy.of_logits(x, temperature=2.0)) > float(entropy.of_logits(x, temperature=1.0))


def test_bad_parameters_fail_loudly():
    with pytest.raises(ValueError, match="unknown entropy type"):
        entropy.measure(torch.ones(3) / 3, "tsallis")
    with pytest.raises(ValueError, match="alpha > 0"):
        EntropyStatic(entropy_type="renyi", renyi_alpha=0.0)
    with pytest.raises(ValueError, match="k >= 1"):
        EntropyStatic(entropy_type="topk", entropy_top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        EntropyStatic(temperature=0.0)


def _step(logits, probs, greedy):
    return DraftStep(0, logits, probs, int(probs.argmax()), greedy=greedy)


def test_greedy_measures_the_softmax_not_the_one_hot():
    logits = uniform_logits(4)
    one_hot = torch.nn.functional.one_hot(torch.tensor(0), V).float()
    for flag in (True, None):  # told greedy, or inferred from the one-hot distribution
        assert EntropyStatic().step_entropy(_step(logits, one_hot, flag)) == pytest.approx(math.log(4))


def test_sampling_measures_the_sampling_distribution():
    """Under sampling the rule sees the processed distribution (here: top-k 2 of a uniform 4)."""
    logits = uniform_logits(4)
    q = uniform_logits(2).softmax(-1)
    assert EntropyStatic().step_entropy(_step(logits, q, False)) == pytest.approx(math.log(2))
    assert EntropyStatic().step_entropy(_step(logits, q, None)) == pytest.approx(math.log(2))  # inferred
    # a configured temperature measures softmax(logits / T) whatever the sampling
    x = torch.tensor([3.0, 1.0, 0.0] + [NEG] * (V - 3))
    pol = EntropyStatic(temperature=0.5)
    assert pol.step_entropy(_step(x, q, False)) == pytest.approx(float(entropy.of_logits(x, temperature=0.5)))


def test_policy_entropy_hook_uses_its_type():
    """What the analysis records report as the drafter's entropy: the policy's own measure."""
    logits = uniform_logits(8)
    assert EntropyAbsolute().entropy(logits) == pytest.approx(math.log(8))
    assert EntropyAbsolute(entropy_type="topk", entropy_top_k=2).entropy(logits) == pytest.approx(math.log(2))
    assert EntropyAbsolute(entropy_type="renyi", renyi_alpha=3.0).entropy(dist_logits([0.5, 0.5])) == \
        pytest.approx(math.log(2))
