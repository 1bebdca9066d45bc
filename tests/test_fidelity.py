"""Numbers that mean what they say (issue 12, items 1-6 and 10-13): each test here failed on the
code before the fix (commit 7c6e1ab)."""
from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import ModelsByRole, noisy_copy, random_model
from test_length import C, BEFORE, run

from specexp.models import token_entropy as entropy
from specexp import length as L
from specexp.report.token_records import aggregate
from specexp.core.decode import generate
from specexp.length import Fixed, Heuristic
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.proposers import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

ROOT = Path(__file__).resolve().parents[1]
GREEDY = Sampling()


@pytest.fixture(scope="module")
def llama():
    target = random_model("llama", vocab=64, hidden=64, layers=2, seed=0)
    return {"target": target, "noisy": noisy_copy(target, 0.5, seed=2)}


def spec(target, drafter, prompt, n, policy, stopper=None, sampling=GREEDY, records=False, pair=None):
    proposer = DraftModel().bind(pair or ModelsByRole(target, drafter))
    proposer.records = records
    return generate(CachedLM(target), prompt, n, sampling, stopper or Stopper(), proposer, policy,
                    torch.Generator().manual_seed(0), records=records)


# --- 1. encoder-decoder timing, and no models <-> seq2seq import cycle ----------------------------

def test_encoder_passes_are_timed_and_counted_on_both_sides():
    """The encoders run inside the timed region: a 0.3 s encoder per model shows in wall_time
    (the old loop started its clock after them: wall_time of a few ms)."""
    from test_seq2seq import prompts, tiny_t5

    from test_cascade import perturbed

    target = tiny_t5()
    drafter = perturbed(target, 0.3, 1)
    slow = []
    for m in (target, drafter):
        slow.append(m.get_encoder().register_forward_hook(lambda *a: time.sleep(0.3)))
    try:
        prompt = prompts(1)[0]
        base = generate(cached_lm(target), prompt, 2, GREEDY, Stopper([1]))
        proposer = DraftModel().bind(ModelsByRole(target, drafter))
        fast = generate(cached_lm(target), prompt, 2, GREEDY, Stopper([1]), proposer, Fixed(2))
    finally:
        for h in slow:
            h.remove()
    assert base.model_encoder_forwards == {"target": 1}
    assert fast.model_encoder_forwards == {"target": 1, "drafter": 1}
    assert base.wall_time >= 0.3 and base.model_encoder_seconds["target"] >= 0.3
    assert fast.wall_time >= 0.6 and min(fast.model_encoder_seconds.values()) >= 0.3
    assert fast.start_time >= 0.6 and fast.wall_time >= fast.start_time + sum(fast.round_times)


def test_no_import_cycles_in_the_package():
    graph = {}
    for path in (ROOT / "specexp").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[mod] = {d for d in deps if d.startswith("specexp")}
    graph = {m: {d for d in ds if d in graph and d != m} for m, ds in graph.items()}
    seen, done = set(), set()

    def visit(m, stack):
        assert m not in seen - done, f"import cycle: {' -> '.join(stack + [m])}"
        if m in done:
            return
        seen.add(m)
        for d in graph[m]:
            visit(d, stack + [m])
        done.add(m)

    for m in graph:
        visit(m, [])


# --- 2. drafts after a stop -----------------------------------------------------------------------

def test_drafts_after_a_stop_are_not_counted_and_the_drafter_stops_at_eos(llama):
    """Target = drafter: every draft matches. With EOS = the first token, the output is [EOS]:
    the drafter stops after drafting it, and no draft counts as accepted (the EOS is the round's
    token, as transformers counts it). The old loop drafted 6 and reported accepted 6."""
    target = llama["target"]
    prompt = torch.tensor([5, 9, 11, 3])
    full = generate(CachedLM(target), prompt, 12, GREEDY, Stopper()).tokens
    out = spec(target, target, prompt, 12, Fixed(6), Stopper([full[0]]), records=True)
    assert out.tokens == [full[0]]
    assert (out.drafted, out.accepted, out.emitted) == ([1], [0], [1])
    assert [r["accepted"] for r in out.records] == [False]
    eos = full[3]  # an EOS inside the draft: drafted up to and including it, then the draft ends
    first = full.index(eos)
    out = spec(target, target, prompt, 12, Fixed(8), Stopper([eos]))
    assert out.tokens == full[: first + 1]
    assert out.drafted == [first + 1] and out.accepted == [first] and out.emitted == [first + 1]


# --- 3. the heuristic over consecutive generate() calls -------------------------------------------

def test_heuristic_carried_across_samples_matches_transformers(llama):
    """One assistant serving consecutive generate() calls (transformers keeps its
    num_assistant_tokens) against specexp with carry_length_state: same outputs and the same
    schedule after every call, including budget-1 calls (a round with no draft still updates)
    and calls cut at EOS (an accepted EOS draft is no match)."""
    target, drafter = llama["target"], llama["noisy"]
    probe = generate(CachedLM(target), torch.tensor([7, 8, 9]), 30, GREEDY, Stopper()).tokens
    eos = probe[12]
    cfg = drafter.generation_config
    cfg.num_assistant_tokens, cfg.num_assistant_tokens_schedule, cfg.assistant_confidence_threshold = 5, "heuristic", 0.0
    policy = Heuristic(start=5)
    budgets = [1, 1, 2, 3, 12, 5, 30, 1, 8, 30]
    for i, budget in enumerate(budgets):
        prompt = torch.randint(1, 64, (6 + i % 3,), generator=torch.Generator().manual_seed(i))
        if i == 6:
            prompt = torch.tensor([7, 8, 9])  # this call meets the EOS
        hf = target.generate(prompt[None], assistant_model=drafter, max_new_tokens=budget, do_sample=False,
                             eos_token_id=eos, pad_token_id=0)[0, prompt.shape[0]:].tolist()
        policy.start_sample(carry=True)
        ours = spec(target, drafter, prompt, budget, policy, Stopper([eos]))
        assert ours.tokens == hf, i
        assert policy.current == cfg.num_assistant_tokens, (i, budget)


def test_heuristic_rule_of_transformers_4():
    """transformers 4.x: +2 only when the matches equal the scheduled number of tokens."""
    p = Heuristic(start=5, rule="scheduled")
    p.observe(0, 0)  # no draft (budget 1): 0 != 5 -> 4
    p.observe(3, 3)  # budget-capped round, all accepted: 3 != 4 -> 3
    p.observe(3, 3)  # 3 == 3 -> 5
    assert p.current == 5
    q = Heuristic(start=5)  # 5.x: matches == drafts
    q.observe(0, 0)
    q.observe(3, 3)
    assert q.current == 9


# --- 4. context length ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_refuses_to_decode_past_the_position_limit(arch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=40))
    model.eval()
    prompt = torch.randint(1, 64, (30,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\(30 tokens\) \+ max_new_tokens \(20\).*at most 40"):
        generate(CachedLM(model), prompt, 20, GREEDY, Stopper())
    assert len(generate(CachedLM(model), prompt, 10, GREEDY, Stopper()).tokens) == 10  # 40 positions fit
    drafter = random_model("llama", vocab=64, hidden=32, layers=1, seed=1)  # 1024 positions
    with pytest.raises(ValueError, match="target model reads at most 40"):
        spec(model, drafter, prompt, 20, Fixed(3))


# --- 5. a drafter with another vocabulary size ----------------------------------------------------

def test_drafter_with_a_smaller_vocabulary_is_refused_at_bind(llama):
    small = random_model("llama", vocab=48, hidden=32, layers=1, seed=1)
    with pytest.raises(ValueError, match="embeds 48 token ids but the target's vocabulary has 64"):
        DraftModel().bind(ModelsByRole(llama["target"], small))


def test_drafter_with_a_larger_vocabulary_is_lossless(llama):
    target = llama["target"]
    big = random_model("llama", vocab=80, hidden=32, layers=1, seed=1)
    prompt = torch.tensor([3, 4, 5, 6])
    ref = generate(CachedLM(target), prompt, 20, GREEDY, Stopper()).tokens
    assert spec(target, big, prompt, 20, Fixed(3)).tokens == ref


def test_drafter_covering_the_tokenizer_but_not_the_padded_head_drafts_nothing_past_it(llama):
    """A drafter table that holds the tokenizer's ids (40) but not the target's padded head (64):
    a context with an id it cannot embed gets no drafts, and the output stays the target's."""
    target = llama["target"]
    small = random_model("llama", vocab=48, hidden=32, layers=1, seed=1)
    pair = ModelsByRole(target, small)
    pair.tokenizer = list(range(40))  # len() is what bind reads
    prompt = torch.tensor([3, 50, 5])  # 50: a padding id the drafter cannot embed
    ref = generate(CachedLM(target), prompt, 10, GREEDY, Stopper()).tokens
    out = spec(target, small, prompt, 10, Fixed(3), pair=pair)
    assert out.tokens == ref and set(out.drafted) == {0}


# --- 6. entropy under sampling --------------------------------------------------------------------

def test_records_hold_the_entropy_the_rule_used_under_sampling(llama):
    from specexp.experiment.console import entropy_legend

    target, drafter = llama["target"], llama["noisy"]
    sampling = Sampling(temperature=0.5)
    prompt = torch.tensor([3, 4, 5, 6])
    out = spec(target, drafter, prompt, 6, L.EntropyStatic(tau=100.0), sampling=sampling, records=True)
    first = out.records[0]
    logits = CachedLM(drafter).forward(prompt, keep=1)[-1]
    h_rule = float(entropy.shannon(sampling.probs(logits)))
    h_t1 = float(entropy.of_logits(logits))
    assert first["drafter_entropy"] == pytest.approx(h_rule, rel=1e-4)
    assert first["drafter_entropy_t1"] == pytest.approx(h_t1, rel=1e-4)
    assert abs(h_rule - h_t1) > 0.05  # the two measures differ at T=0.5
    assert first["drafter_entropy_of"] == "shannon of the sampling distribution q"
    t_logits = CachedLM(target).forward(prompt, keep=1)[-1]
    assert first["target_entropy"] == pytest.approx(float(entropy.shannon(sampling.probs(t_logits))), rel=1e-4)
    assert aggregate(out.records, [out.drafted])["drafter_entropy_of"] == ["shannon of the sampling distribution q"]
    assert "H drafter: shannon of the sampling distribution q" in entropy_legend(out, sampling)
    greedy = spec(target, drafter, prompt, 6, L.EntropyStatic(tau=100.0), records=True)
    assert greedy.records[0]["drafter_entropy_of"] == "shannon of softmax(logits / 1)"
    assert greedy.records[0]["drafter_entropy"] == pytest.approx(h_t1, rel=1e-4)


# --- 10. AdaEDL -----------------------------------------------------------------------------------

def test_adaedl_lambda_moves_the_right_way_and_adapts_over_the_run():
    """Rejections (AR below alpha) raise lambda, so drafts get shorter; acceptance at the target
    lowers it, so drafts get longer. The old rule lowered lambda after a rejection and left it
    unchanged after a fully accepted round, and reset it every sample."""
    low = L.AdaEDL(lambda_init=0.5, ar_init=0.0)
    low.observe(4, 1)  # AR = 0.125 < 0.9
    assert low.lam == pytest.approx(0.501)
    high = L.AdaEDL(lambda_init=0.5, ar_init=1.0)
    high.observe(4, 4)  # AR = 1.0 >= 0.9
    assert high.lam == pytest.approx(0.499)
    high.start_sample(carry=False)  # kept across samples by default
    assert high.lam == pytest.approx(0.499)


def test_adaedl_follows_the_papers_algorithm_1():
    """Agrawal, Jeon, Lee 2024 (PMLR v262), Algorithm 1 with Sec. 4.4's b1 0.5, b2 0.9, eps 0.01,
    alpha 0.9, worked by hand. Line 11: once AR reaches alpha, lambda drops only while the round
    did not accept the maximum draft length L; a round that accepted all L keeps lambda (the old
    rule lowered it)."""
    p = L.AdaEDL(lambda_init=0.5, ar_init=1.0, max_len=4)
    p.observe(4, 4)  # AR = 0.5 + 0.5 * 1 = 1 >= 0.9, n_acc = L: lambda' = lambda
    assert (p.ar, p.lam) == (pytest.approx(1.0), pytest.approx(0.5))
    p.observe(4, 3)  # AR = 0.5 + 0.375 = 0.875 < 0.9: lambda' = 0.51, lambda = 0.45 + 0.051
    assert (p.ar, p.lam) == (pytest.approx(0.875), pytest.approx(0.501))
    p.observe(2, 2)  # AR = 0.4375 + 0.5 = 0.9375 >= 0.9, n_acc 2 != 4: lambda' = 0.491
    assert (p.ar, p.lam) == (pytest.approx(0.9375), pytest.approx(0.9 * 0.501 + 0.1 * 0.491))
    # a draft capped below L by the budget that is fully accepted still lowers lambda (n_acc != L)
    q = L.AdaEDL(lambda_init=0.5, ar_init=1.0, max_len=4)
    q.observe(3, 3)
    assert q.lam == pytest.approx(0.499)


# --- 11-13. claims checked against their sources --------------------------------------------------

def test_strategy_docs_cite_sources_and_match_the_installed_transformers():
    from transformers import GenerationConfig

    doc = (ROOT / "docs" / "strategies.md").read_text()
    assert "as given in the issue" not in doc
    assert "github.com/" in doc.split("**SVIP**")[1].split("\n- **")[0]  # SVIP: the official code
    defaults = GenerationConfig()._get_default_generation_params()
    assert f"num_assistant_tokens={defaults['num_assistant_tokens']}" in doc
    assert f"num_assistant_tokens_schedule=\"{defaults['num_assistant_tokens_schedule']}\"" in doc
    assert "only `num_assistant_tokens` persists" in doc


# --- 12. the window rule at window=1 --------------------------------------------------------------

def test_window_rule_offers_the_frameworks_slicing_at_window_1():
    """Entropies ln 1.2 then ln 7.4 (0.18, 2.0), theta 1.5: the current entropy alone (2.0)
    stops; the framework's hist[-0:] averages the whole history ((0.18 + 2.0) / 2 = 1.09) and goes on."""
    assert run(L.EntropyWindow(theta_abs=1.5, window=1), [1.2, 7.4]) == [C, BEFORE]
    assert run(L.EntropyWindow(theta_abs=1.5, window=1, framework_slice=True), [1.2, 7.4]) == [C, C]
    # window >= 2: the two slicings agree
    for ns in ([2, 9, 9], [9, 1.5, 9, 9]):
        assert run(L.EntropyWindow(window=3), ns) == run(L.EntropyWindow(window=3, framework_slice=True), ns)
    assert math.isclose(math.log(7.4), 2.0, abs_tol=0.01)
