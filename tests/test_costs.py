"""Cost models and forward counts, checked by hand on small runs of rule models whose every
round is worked out in the docstrings."""
from __future__ import annotations

import pytest
import torch
from test_cascade import FakePair, RuleLM, succ

from specexp.experiment.metrics_json import classic_gamma
from specexp.models.loading import n_params
from specexp.report import forward_costs
from specexp.core.decode import generate
from specexp.length import Fixed, LengthPolicy
from specexp.models.cached_lm import CachedLM
from specexp.proposers import Bigram, Cascade, DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

V = 20


def _step_seconds(g):
    """Seconds per forward of each model, its prefill forward left out (the measured cost model)."""
    return {r: (g.model_forward_seconds[r] - g.model_prefill_seconds[r]) / (g.model_forwards[r] - g.model_prefills[r])
            for r in g.model_forwards}


def _params(models: dict) -> dict[str, int]:
    """Each role's parameter count, as the run passes them (metrics_json.run_record)."""
    return {r: n_params(getattr(m, "model", m)) for r, m in models.items()}


def test_formulas_by_hand():
    # SWI = N c_t / sum F c: 10 tokens, 3 target forwards (cost 1000), 3 drafter forwards (100)
    assert forward_costs.swi(10, {"target": 3, "drafter": 3}, {"target": 1000, "drafter": 100}) == pytest.approx(10000 / 3300)
    assert forward_costs.swi(10, {"target": 3, "drafter": 0}, {"target": 1.0, "drafter": None}) == pytest.approx(10 / 3)
    assert forward_costs.swi(10, {"target": 3, "drafter": 3}, None) is None
    # Leviathan et al.: (1 - a^(g+1)) / ((1 - a)(g c + 1))
    assert forward_costs.leviathan_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8 ** 5) / (0.2 * 1.4))  # 2.4012
    assert forward_costs.leviathan_speedup(0.8, 4, 0.1) == pytest.approx(2.40114, abs=1e-5)
    assert forward_costs.leviathan_speedup(1.0, 4, 0.0) == 5.0
    # measured per-forward cost: 4 forwards in 10 s, of which 1 prefill of 4 s -> 6 s / 3 = 2 s
    assert forward_costs.measured_costs({"target": 4}, {"target": 10.0}, {"target": 1}, {"target": 4.0}) == {"target": 2.0}
    assert forward_costs.measured_costs({"target": 1}, {"target": 3.0}, {"target": 1}, {"target": 3.0}) == {"target": 3.0}
    assert forward_costs.measured_costs({"target": 0}, {}, {}, {}) == {"target": None}


def test_t5_sizes_and_previous_work_ratios():
    t5 = {r: RuleLM(V, succ(V), model_type="t5") for r in ("target", "drafter", "drafter2")}
    names = {"target": "google/flan-t5-xxl", "drafter": "google/flan-t5-base", "drafter2": "/models/t5-small"}
    assert forward_costs.previous_work_costs(t5, names) == {"target": 1.0, "drafter": 0.04, "drafter2": 0.02}
    assert forward_costs.t5_size(t5["target"], "google/flan-t5-xl") == "xl"  # not "xxl": whole words
    assert forward_costs.previous_work_costs(t5, {**names, "drafter": "google/flan-t5-xl"}) is None  # no ratio for xl
    assert forward_costs.previous_work_costs({"target": RuleLM(V, succ(V)), "drafter": t5["drafter"]}, names) is None
    from transformers import T5Config

    t5["drafter"].config = T5Config(d_model=768)  # unnamed: recognised by its width
    assert forward_costs.t5_size(t5["drafter"]) == "base"


def test_cascade_forward_counts_and_cost_models_by_hand():
    """The run of test_cascade.test_two_levels_traced_by_hand: 10 tokens, 3 target forwards and
    3 drafter forwards. Parameters 1000 and 100: SWI = 10*1000 / (3*1000 + 3*100) = 3.0303.
    As FLAN-T5-XXL and -small (1 and 0.02): 10 / (3 + 3*0.02) = 3.2680. Measured: the same
    formula with each model's seconds per forward from this run."""
    target = RuleLM(V, succ(V), n_params=1000, model_type="t5")
    drafter = RuleLM(V, lambda x: 9 if x == 5 else (x + 1) % V, n_params=100, model_type="t5")
    table = [0 if x == 3 else (x + 1) % V for x in range(V)]
    casc = Cascade(["drafter"], Bigram.from_table(table), [[2, 3], [0, 2]]).bind(FakePair(V, target=target, drafter=drafter))
    lm = CachedLM(target)
    g = generate(lm, torch.tensor([0]), 10, Sampling(), Stopper(), casc, LengthPolicy(64))
    assert g.model_forwards == {"target": 3, "drafter": 3} and len(g.tokens) == 10
    assert all(s > 0 for s in g.model_forward_seconds.values())
    assert g.model_prefills == {"target": 1, "drafter": 1}  # each model's first forward fed the prompt
    models = {"target": lm, **casc.cached_models}
    rep = forward_costs.report([g], models, {"target": "google/flan-t5-xxl", "drafter": "google/flan-t5-small"},
                               classic_gamma(casc, None), params=_params(models))
    cms = rep["cost_model_speedup"]
    assert cms["params"] == pytest.approx(10000 / 3300) == pytest.approx(3.0303, abs=1e-4)
    assert cms["previous_work"] == pytest.approx(10 / 3.06) == pytest.approx(3.2680, abs=1e-4)
    # the CS-Drafting paper's table: xxl 11300, small 60 -> 10*11300 / (3*11300 + 3*60) = 3.3157
    assert cms["csd_paper"] == pytest.approx(113000 / 34080) == pytest.approx(3.3157, abs=1e-4)
    t = _step_seconds(g)
    assert cms["measured"] == pytest.approx(10 * t["target"] / (3 * t["target"] + 3 * t["drafter"]))
    assert cms["leviathan_predicted"] is None
    assert rep["cost_model"]["forwards"] == {"target": 3, "drafter": 3}
    assert rep["cost_model"]["costs"]["params"] == {"target": 1000.0, "drafter": 100.0}


def test_csd_paper_cost_table():
    """The original's TIME_COST['model_parameters']: FLAN-T5 xxl 11300, xl 3000, large 770, base 220,
    small 60; llama-160m 160, llama-68m 68, LLaMA-7B 70000 (the table's value); others: none."""
    t5 = {r: RuleLM(V, succ(V), model_type="t5") for r in ("target", "drafter", "drafter2")}
    names = {"target": "google/flan-t5-xxl", "drafter": "google/flan-t5-base", "drafter2": "google/flan-t5-small"}
    assert forward_costs.csd_paper_costs(t5, names) == {"target": 11300, "drafter": 220, "drafter2": 60}
    assert forward_costs.csd_paper_costs(t5, {**names, "drafter": "google/flan-t5-xl"})["drafter"] == 3000
    llama = {"target": RuleLM(V, succ(V), model_type="llama"), "drafter": RuleLM(V, succ(V), model_type="llama")}
    assert forward_costs.csd_paper_costs(llama, {"target": "huggyllama/llama-7b", "drafter": "JackFram/llama-160m"}) == \
        {"target": 70000, "drafter": 160}
    assert forward_costs.csd_paper_costs(llama, {"target": "meta-llama/Llama-3.2-1B", "drafter": "JackFram/llama-68m"}) is None
    opt = {"target": RuleLM(V, succ(V), model_type="opt")}
    assert forward_costs.csd_paper_costs(opt, {"target": "facebook/opt-2.7b"}) is None  # "7b" in the name is not enough
    # FLAN-T5 forward counts of one round of the paper's matrix (target 1, base 1, small 2) over 30 tokens
    assert forward_costs.swi(30, {"target": 1, "drafter": 1, "drafter2": 2}, forward_costs.csd_paper_costs(t5, names)) == \
        pytest.approx(30 * 11300 / (11300 + 220 + 120))


def test_classic_forward_counts_alpha_and_leviathan_by_hand():
    """Classic speculative decoding, gamma 3; the target says x+1, the drafter too except after 4
    (says 9). Prompt [0], 12 tokens:
      round 1: drafts 1 2 3 (3 drafter forwards), all accepted + bonus 4
      round 2: drafts 9 10 11 (3), rejected at once; the target emits 5
      round 3: drafts 6 7 8 (3), all accepted + bonus 9
      round 4: budget 3 -> 2 drafts: 10 11 (2), accepted + bonus 12
    Target forwards 4, drafter forwards 11; accepted 3+0+3+2 = 8 with one rejection:
    alpha = 8 / 9. Parameters 1000 / 100: SWI = 12*1000 / (4*1000 + 11*100) = 2.3529.
    Leviathan: (1 - alpha^4) / ((1 - alpha)(3c + 1)), c = the measured drafter/target ratio."""
    target = RuleLM(V, succ(V), n_params=1000)
    drafter = RuleLM(V, lambda x: 9 if x == 4 else (x + 1) % V, n_params=100)
    proposer, policy = DraftModel().bind(FakePair(V, target=target, drafter=drafter)), Fixed(3)
    lm = CachedLM(target)
    g = generate(lm, torch.tensor([0]), 12, Sampling(), Stopper(), proposer, policy)
    assert g.tokens == list(range(1, 13))
    assert g.drafted == [3, 3, 3, 2] and g.accepted == [3, 0, 3, 2]
    assert g.model_forwards == {"target": 4, "drafter": 11}
    assert forward_costs.acceptance_alpha([g]) == pytest.approx(8 / 9)
    gamma = classic_gamma(proposer, policy)
    assert gamma == 3
    models = {"target": lm, **proposer.cached_models}
    rep = forward_costs.report([g], models, None, gamma, params=_params(models))
    cms = rep["cost_model_speedup"]
    assert cms["params"] == pytest.approx(12000 / 5100) == pytest.approx(2.3529, abs=1e-4)
    assert cms["previous_work"] is None  # not T5
    t = _step_seconds(g)
    c = t["drafter"] / t["target"]
    a = 8 / 9
    assert cms["leviathan_predicted"] == pytest.approx((1 - a ** 4) / ((1 - a) * (3 * c + 1)))
    assert rep["cost_model"]["leviathan"] == pytest.approx({"gamma": 3, "alpha": a, "cost_ratio": c})
    assert cms["measured"] == pytest.approx(12 * t["target"] / (4 * t["target"] + 11 * t["drafter"]))
    # with the autoregressive baseline, its one-token target step is the target's cost on the
    # autoregressive side and in Leviathan's c
    base = generate(CachedLM(target), torch.tensor([0]), 12, Sampling(), Stopper())
    assert base.model_forwards == {"target": 12} and base.model_prefills == {"target": 1}
    t_ar = _step_seconds(base)["target"]
    rep = forward_costs.report([g], models, None, gamma, base=[base], params=_params(models))
    cms = rep["cost_model_speedup"]
    assert rep["cost_model"]["measured_target_autoregressive"] == pytest.approx(t_ar)
    assert cms["measured"] == pytest.approx(12 * t_ar / (4 * t["target"] + 11 * t["drafter"]))
    c = t["drafter"] / t_ar
    assert cms["leviathan_predicted"] == pytest.approx((1 - a ** 4) / ((1 - a) * (3 * c + 1)))
    assert cms["params"] == pytest.approx(12000 / 5100)  # the forward-count models do not change


def test_autoregressive_costs_are_one():
    target = RuleLM(V, succ(V), n_params=1000)
    lm = CachedLM(target)
    g = generate(lm, torch.tensor([0]), 7, Sampling(), Stopper())
    cms = forward_costs.report([g], {"target": lm}, params=_params({"target": lm}))["cost_model_speedup"]
    assert cms["params"] == pytest.approx(1.0) and cms["measured"] == pytest.approx(1.0)


def test_measured_cost_model_counts_encoder_passes():
    """Issue 12 item 1 for the cost models: an encoder-decoder pair's encoder passes are time on
    both sides. 10 tokens; strategy: target 3 forwards of 1 s, drafter 3 of 0.1 s, encoders 2 s
    (target) and 0.5 s (drafter); baseline: 10 target steps of 1 s and its 2 s encoder pass:
    (10*1 + 2) / (3*1 + 3*0.1 + 2 + 0.5) = 12 / 5.8 = 2.0690 (without encoders: 10 / 3.3 = 3.03)."""
    from specexp.core.decode import Generation

    zero = {"target": 0, "drafter": 0}
    g = Generation(tokens=[1] * 10, model_forwards={"target": 3, "drafter": 3},
                   model_forward_seconds={"target": 3.0, "drafter": 0.3}, model_prefills=dict(zero),
                   model_prefill_seconds={"target": 0.0, "drafter": 0.0},
                   model_encoder_seconds={"target": 2.0, "drafter": 0.5})
    b = Generation(tokens=[1] * 10, model_forwards={"target": 10}, model_forward_seconds={"target": 10.0},
                   model_prefills={"target": 0}, model_prefill_seconds={"target": 0.0},
                   model_encoder_seconds={"target": 2.0})
    models = {"target": RuleLM(V, succ(V), n_params=1000), "drafter": RuleLM(V, succ(V), n_params=100)}
    rep = forward_costs.report([g], models, base=[b], params=_params(models))
    assert rep["cost_model_speedup"]["measured"] == pytest.approx(12 / 5.8) == pytest.approx(2.0690, abs=1e-4)
    assert rep["cost_model"]["encoder_seconds"] == {"target": 2.0, "drafter": 0.5}
    assert rep["cost_model_speedup"]["params"] == pytest.approx(10000 / 3300)  # decoder forwards only
