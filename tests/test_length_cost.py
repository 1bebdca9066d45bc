"""The cost-aware length rule (specexp/length/cost_aware.py) on hand-computed numbers: each decision is
worked out next to its test from E(k) - lam C(k) (module docstring), then the calibration, the
rate, the measured verification cost, and the rule inside the decode loop."""
from __future__ import annotations

import math

import pytest
import torch

from specexp.length import Decision, DraftStep
from specexp.length.cost_aware import EDGE_TOL, CostAware, calibration_bin, measure_verify_cost, monotone_cost

V = 40
C, BEFORE = Decision.CONTINUE, Decision.STOP_BEFORE
CPU_LIKE = [1.0, 1.1, 1.2, 2.0, 2.0, 2.0]  # a cost step at 4 tokens, as on the 2-core CPU
FLAT = [1.0, 1.02, 1.04, 1.06, 1.08, 1.1]  # GPU-like: verifying more costs little more


def step(j: int, p: float, greedy: bool = True) -> DraftStep:
    """A draft position whose drafted token (id 0) has probability p under the drafter."""
    probs = torch.full((V,), (1 - p) / (V - 1))
    probs[0] = p
    logits = probs.log()
    q = torch.nn.functional.one_hot(logits.argmax(), V).float() if greedy else probs
    return DraftStep(j, logits, q, 0, greedy=greedy)


def rule(v=CPU_LIKE, c=0.0, **kw) -> CostAware:
    kw = {"max_len": 5, "verify_cost": v, "drafter_cost": c, "calibrate": False, "prior_rounds": 1e9} | kw
    return CostAware(**kw)  # prior_rounds huge: the rate stays 1 (autoregressive) for these decisions


def decisions(policy: CostAware, ps: list[float], greedy: bool = True) -> list[Decision]:
    policy.begin()
    out = []
    for j, p in enumerate(ps):
        out.append(policy.decide(step(j, p, greedy)))
        if out[-1] is not C:
            break
    return out


def test_a_first_draft_starts_only_when_it_pays_for_the_wider_forward():
    # lam = 1, stop now: E(0) - C(0) = 1 - 1 = 0.
    # p 0.05: k=1: 1.05 - 1.1 < 0; k=2: 1.0525 - 1.2 < 0; k>=3: < 1.06 - 2.0: stop.
    assert decisions(rule(), [0.05]) == [BEFORE]
    # p 0.2: k=1: 1.2 - 1.1 = 0.1 > 0: draft it.
    assert decisions(rule(), [0.2, 0.05]) == [C, BEFORE]
    # with a drafter costing 0.3 a forward: k=1: 1.2 - (1.1 + 0.3) < 0, k=2: 1.24 - (1.2 + 0.6) < 0: stop.
    assert decisions(rule(c=0.3), [0.2]) == [BEFORE]


def test_the_cost_step_is_crossed_only_when_the_drafts_behind_it_are_likely():
    # Two drafts at 0.9: E(2) = 1 + 0.9 + 0.81 = 2.71, stop now: 2.71 - 1.2 = 1.51.
    # Third at 0.5: k=3: 2.71 + 0.405 - 2 = 1.115; k=4: + 0.2025 -> 1.3175; k=5: + 0.10125 -> 1.41875 < 1.51: stop.
    assert decisions(rule(), [0.9, 0.9, 0.5]) == [C, C, BEFORE]
    # Third at 0.8: k=4: 2.71 + 0.648 + 0.5184 - 2 = 1.8764 > 1.51: go on, though k=3 alone (1.358) would not pay.
    assert decisions(rule(), [0.9, 0.9, 0.8])[-1] is C
    # On a flat cost curve the 0.5 draft pays: k=3: 3.115 - 1.06 = 2.055 > 2.71 - 1.04 = 1.67.
    assert decisions(rule(v=FLAT), [0.9, 0.9, 0.5])[-1] is C


def test_a_higher_rate_asks_more_of_a_draft():
    # After rounds emitting 3 tokens at cost C(2) = 1.2 each, lam = (4 + 3n) / (4 + 1.2n) -> 2.5.
    # p 0.2 at lam = 1 drafts (above); at lam ~ 2.3: k=1: 1.2 - 2.3 * 1.1 < 1 - 2.3: stop.
    p = rule(prior_rounds=4.0)
    for _ in range(20):
        p.begin()
        p.observe(2, 2)
    assert p.rate() == pytest.approx((4 + 60) / (4 + 24))
    assert decisions(p, [0.2]) == [BEFORE]


def test_calibration_counts_the_accepted_drafts_and_the_first_rejected_one():
    p = rule(calibrate=True, prior=4.0)
    assert p.acceptance(0.95) == pytest.approx(0.95)  # the prior: the bin's centre
    assert decisions(p, [0.95, 0.95, 0.95, 0.95]) == [C, C, C, C]
    p.observe(4, 1)  # draft 1 accepted, draft 2 rejected, drafts 3-4 unknown
    assert (p.hits[9], p.trials[9]) == (1, 2)
    assert p.acceptance(0.95) == pytest.approx((1 + 4 * 0.95) / (2 + 4))
    p.begin()
    p.observe(3, 3)  # a round this rule did not draft (a lookup's): the rate learns, the bins do not
    assert p.trials[9] == 2 and p.tokens == 2 + 4


def test_calibration_bins_say_which_side_of_an_edge_a_value_falls_on():
    assert [calibration_bin(p, 10) for p in (0.0, 0.05, 0.15, 0.95, 1.0)] == [0, 0, 1, 9, 9]
    assert calibration_bin(-1e-9, 10) == 0 and calibration_bin(1 + 1e-9, 10) == 9  # clamped
    # Python floats (float64, the same on every CPU): an edge and values just below it, as a float32
    # softmax meaning 0.9 may give, fall in the bin above; values clearly below stay below.
    assert [calibration_bin(0.9 - d, 10) for d in (0.0, 6e-8, EDGE_TOL / 2)] == [9, 9, 9]
    assert calibration_bin(0.9 - 1e-4, 10) == 8
    grid = [i / 997 for i in range(998)]
    bins = [calibration_bin(p, 10) for p in grid]
    assert bins == sorted(bins) and set(bins) == set(range(10))  # monotone, every bin reached


def test_the_drafter_cost_is_drafter_cost_init_until_bind_measures_it():
    p = rule(c=None, drafter_cost_init=0.25)
    assert p.c() == 0.25
    decisions(p, [0.9, 0.9, 0.2])
    assert p.c() == 0.25  # drafting never times anything: the cost changes at bind only


def test_the_measured_curve_is_made_monotone():
    # two binds on a 2-core CPU measured [1.0, 1.375, 1.121, 1.643, 1.262] (drafting 2 looked cheaper
    # than 1, 4 cheaper than 3); the isotonic fit pools each violating pair into its mean
    v = monotone_cost([1.0, 1.375, 1.121, 1.643, 1.262])
    assert v == pytest.approx([1.0, 1.248, 1.248, 1.4525, 1.4525])
    assert monotone_cost([1.0, 1.049, 1.265, 1.155, 1.71]) == pytest.approx([1.0, 1.049, 1.21, 1.21, 1.71])
    # a first width measured dearer than the second: pooled, then scaled back to v(1) = 1
    assert monotone_cost([1.0, 0.9, 1.5]) == pytest.approx([1.0, 1.0, 1.5 / 0.95])
    assert monotone_cost(CPU_LIKE) == CPU_LIKE  # already monotone: unchanged


def test_invalid_parameters_name_the_key():
    with pytest.raises(ValueError, match="verify_cost needs max_len \\+ 1 = 6"):
        CostAware(max_len=5, verify_cost=[1.0, 1.1])
    with pytest.raises(ValueError, match="drafter_cost must be >= 0"):
        CostAware(drafter_cost=-1)
    with pytest.raises(RuntimeError, match="call bind"):
        CostAware(drafter_cost=0.1).observe(2, 1)


def test_measured_verification_cost_has_a_width_each(random_pair_dir):
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(random_pair_dir / "target").eval()
    v, one = measure_verify_cost(target, widths=4, context=16, repeats=2)
    assert len(v) == 4 and v[0] == 1.0 and all(x > 0 and math.isfinite(x) for x in v) and one > 0


def test_under_sampling_the_decision_never_reads_the_drawn_token():
    # A rule that dropped a drawn token for its own (low) probability would draft tokens that are no
    # longer distributed as q, and verification would stop being exact: same distribution, any drawn
    # token, same decision (the estimate is the top probability, 0.3 here: k=1 pays 1.3 - 1.1 > 0).
    q = torch.full((V,), 0.7 / (V - 1))
    q[0] = 0.3
    made = set()
    for token in (0, 1, 7):
        p = rule()
        p.begin()
        made.add(p.decide(DraftStep(0, q.log(), q, token, greedy=False)))
    assert made == {C}


def test_after_explore_idle_rounds_it_drafts_one_token_and_learns():
    p = rule(calibrate=True, explore=3)
    for _ in range(3):  # p 0.05: never pays (first test), so three rounds without a draft
        assert decisions(p, [0.05]) == [BEFORE]
        p.observe(0, 0)
    assert decisions(p, [0.05, 0.05]) == [C, BEFORE]  # the fourth drafts one token regardless
    p.observe(1, 1)  # and it was accepted: the low bin learns it
    assert p.idle == 0 and p.acceptance(0.05) == pytest.approx((1 + 4 * 0.05) / (1 + 4))
    assert decisions(p, [0.05]) == [C]  # 0.24: k=1 pays 1.24 - 1.1 > 0


def test_under_greedy_a_declined_token_is_scored_once_the_target_passes_its_position():
    p = rule(calibrate=True)  # 0.95 and 0.05: well inside bins 9 and 0 on any CPU's float32 softmax
    prefix = torch.tensor([5, 6, 7])
    p.begin()
    assert p.decide(DraftStep(0, step(0, 0.95).logits, None, 0, prefix=prefix, greedy=True)) is C
    assert p.decide(DraftStep(1, step(1, 0.05).logits, None, 0, prefix=prefix, greedy=True)) is BEFORE
    p.observe(1, 1)  # the draft before it was accepted: the target's next token sits at index 4
    assert (p.trials[9], p.trials[0]) == (1, 0)
    p.begin()
    p.decide(DraftStep(0, step(0, 0.95).logits, None, 0, prefix=torch.tensor([5, 6, 7, 0, 0]), greedy=True))
    assert (p.hits[0], p.trials[0]) == (1, 1)  # index 4 holds 0: the declined token would have been accepted
    r = rule(calibrate=True)  # declined at the round's first position: scored in any case
    r.begin()
    assert r.decide(DraftStep(0, step(0, 0.05).logits, None, 0, prefix=prefix, greedy=True)) is BEFORE
    r.observe(0, 0)
    assert r.declined == (3, 0, pytest.approx(0.05))
    # a rejected draft before the declined token: its position never comes, nothing is scored
    q = rule(calibrate=True)
    q.begin()
    assert q.decide(DraftStep(0, step(0, 0.95).logits, None, 0, prefix=prefix, greedy=True)) is C
    q.decide(DraftStep(1, step(1, 0.05).logits, None, 0, prefix=prefix, greedy=True))
    q.observe(1, 0)
    assert q.declined is None


def test_measured_rule_in_the_decode_loop_keeps_greedy_output():
    """Defaults (costs measured at bind and as it drafts) inside `generate`: the output is the
    target's, the measured curve has a width per draft length, and the drafter's cost was timed."""
    from conftest import ModelsByRole, noisy_copy, random_model

    from specexp.core.decode import generate
    from specexp.models.cached_lm import CachedLM
    from specexp.proposers import DraftModel
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper

    target = random_model("llama", 64, 32, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)  # sharp: the noisy copy agrees often
    pair = ModelsByRole(target, noisy_copy(target, 0.05, seed=1))
    policy = CostAware(max_len=4, measure_repeats=2).bind(pair)
    assert len(policy.verify_cost) == 5 and policy.one_token_seconds > 0
    assert policy.verify_cost == sorted(policy.verify_cost) and policy.verify_cost[0] == 1.0  # monotone
    assert policy.sources == {"verify_cost": "measured", "drafter_cost": "measured"} and policy.drafter_cost > 0
    proposer = DraftModel().bind(pair)
    prompt = torch.arange(1, 9)
    ar = generate(CachedLM(target), prompt, 32, Sampling(), Stopper())
    out = generate(CachedLM(target), prompt, 32, Sampling(), Stopper(), proposer, policy)
    assert out.tokens == ar.tokens and sum(out.drafted) > 0


def test_replayed_costs_decide_identically():
    """Under sampling: the costs a bind measured, given back as config (through JSON, as
    metrics.json and `specexp reproduce` carry them), make a policy that measures nothing and
    decides as the first did, token for token and draft for draft; the same bound policy decodes
    the same way twice (no clock while decoding)."""
    import json

    from conftest import ModelsByRole, noisy_copy, random_model

    from specexp.core.decode import generate
    from specexp.models.cached_lm import CachedLM
    from specexp.proposers import DraftModel
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper

    target = random_model("llama", 64, 32, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)
    pair = ModelsByRole(target, noisy_copy(target, 0.05, seed=1))
    proposer = DraftModel().bind(pair)
    prompts = [torch.arange(1, 9), torch.arange(20, 31), torch.tensor([5, 9, 5, 9, 5])]

    def run(policy):
        outs = []
        for i, p in enumerate(prompts):
            policy.start_sample(carry=False)
            g = torch.Generator().manual_seed(i)
            o = generate(CachedLM(target), p, 40, Sampling(temperature=0.8), Stopper(), proposer, policy, g)
            outs.append((o.tokens, o.drafted, o.accepted))
        return outs

    first = CostAware(max_len=4, measure_repeats=2).bind(pair)
    recorded = json.loads(json.dumps(first.measured()))
    assert recorded["sources"] == {"verify_cost": "measured", "drafter_cost": "measured"}
    assert len(recorded["raw_verify_cost"]) == 5
    again = CostAware(max_len=4, **recorded["replay"]).bind(pair)
    assert again.sources == {"verify_cost": "config", "drafter_cost": "config"} and again.one_token_seconds is None
    assert again.measured()["replay"] == recorded["replay"]
    ref = run(first)
    assert sum(sum(d) for _, d, _ in ref) > 0  # it drafted
    assert run(again) == ref
    assert run(first) == ref


def test_verify_cost_profile_groups_every_operator_of_a_forward(random_pair_dir):
    # scripts/verify_cost.py --profile: operators fall in their groups by name, and at each width the
    # linear layers' matrix multiplies and the rest are found, every forward cropped back after
    from transformers import AutoModelForCausalLM

    from conftest import load_script
    from specexp.models.cached_lm import cached_lm

    script = load_script("verify_cost")
    assert script.group_of("aten::mm") == "matrix multiplies" and script.group_of("aten::addmm") == "matrix multiplies"
    assert script.group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert script.group_of("aten::cat") == "cache and copies" and script.group_of("aten::rsqrt") == "rest"
    target = cached_lm(AutoModelForCausalLM.from_pretrained(random_pair_dir / "target").eval())
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, 200, (n,), generator=gen)  # noqa: E731
    with torch.inference_mode():
        target.reset()
        target.forward(ids(16), keep=1)
        out = script.profile_widths(target, [1, 3], ids, 16, repeats=2)
    assert set(out) == {"1", "3"}
    for groups in out.values():
        assert set(groups) == {"matrix multiplies", "attention", "cache and copies", "rest"}
        assert groups["matrix multiplies"] > 0 and groups["rest"] > 0 and all(v >= 0 for v in groups.values())
    assert target.length == 16  # every profiled forward was cropped back to the context
