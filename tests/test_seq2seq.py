"""Encoder-decoder pairs (T5): encode once, decode with the decoder's cache; autoregressive,
classic speculative decoding and the cascade all give the target's greedy output (and the
target's own `generate`), on random-init tiny T5 models sharing a vocabulary."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import CORPUS, make_tokenizer, pair_overrides
from test_cascade import FakePair, perturbed

from specexp.core.decode import generate
from specexp.length import Fixed, LengthPolicy
from specexp.models.cached_lm import CachedLM, Seq2SeqLM, cached_lm
from specexp.models.loading import ModelSpec, load_model
from specexp.proposers import Bigram, Cascade, DraftModel, PromptLookup
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

V = 64
GREEDY = Sampling()


def tiny_t5(vocab: int = V, d_model: int = 32, layers: int = 2, seed: int = 0, eos: int = 1):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
                   num_decoder_layers=layers, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=eos, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   initializer_factor=10.0)  # a large init: random T5s otherwise emit pad forever
    return T5ForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def t5():
    target = tiny_t5()
    return {"target": target, "drafter": perturbed(target, 0.3, 1), "drafter2": perturbed(target, 0.7, 2)}


def prompts(n=3):
    out = []
    for s in range(n):
        p = torch.randint(2, V, (10,), generator=torch.Generator().manual_seed(s))
        out.append(torch.cat([p, p[:4], torch.tensor([1])]))  # a repeat, and T5's closing </s>
    return out


def test_seq2seq_cache_roll_back_matches_full_forwards(t5):
    lm = Seq2SeqLM(t5["target"])
    prompt = prompts(1)[0]
    start = lm.start(prompt)
    assert start.tolist() == [0] and lm.encoder_forwards == 1 and lm.length == 0
    seq = torch.cat([start, torch.randint(2, V, (9,), generator=torch.Generator().manual_seed(7))])
    full = Seq2SeqLM(t5["target"])
    full.start(prompt)
    ref = full.forward(seq)
    a = lm.forward(seq[:6], keep=2)
    assert torch.allclose(a, ref[4:6], atol=1e-5)
    lm.crop(3)  # roll back three positions and feed a different continuation
    b = lm.forward(seq[3:], keep=7)
    assert torch.allclose(b, ref[3:], atol=1e-5)
    assert lm.forwards == 2 and lm.length == 10


def test_factory_and_loader_pick_the_seq2seq_wrapper(tmp_path, t5):
    t5["target"].save_pretrained(tmp_path / "t5")
    model = load_model(ModelSpec(str(tmp_path / "t5")), torch.float32, torch.device("cpu"))
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert isinstance(cached_lm(model), Seq2SeqLM)
    assert type(cached_lm(torch.nn.Linear(1, 1))) is CachedLM


def _hf_greedy(model, prompt, n):
    out = model.generate(input_ids=prompt[None], max_new_tokens=n, do_sample=False, num_beams=1)
    return out[0, 1:].tolist()  # drop the decoder start token


def test_autoregressive_equals_generate(t5):
    stopper = Stopper([1])
    for prompt in prompts():
        g = generate(cached_lm(t5["target"]), prompt, 20, GREEDY, stopper)
        assert g.tokens == _hf_greedy(t5["target"], prompt, 20)
        assert g.target_forwards == len(g.tokens)


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_classic_speculative_equals_target_greedy(t5, gamma):
    pair = FakePair(V, **t5)
    proposer = DraftModel().bind(pair)
    assert isinstance(proposer.lm, Seq2SeqLM)
    accepted = 0
    for prompt in prompts():
        ref = _hf_greedy(t5["target"], prompt, 20)
        g = generate(cached_lm(t5["target"]), prompt, 20, GREEDY, Stopper([1]), proposer, Fixed(gamma))
        assert g.tokens == ref
        accepted += sum(g.accepted)
    assert accepted > 0


@pytest.mark.parametrize("drafters,k,l", [
    (["drafter", "drafter2"], [[5, 14, 10], [0, 1, 10], [0, 0, 10]], 2),
    (["drafter", "drafter2"], [[5, 8, 10], [0, 1, 10], [0, 0, 10]], 5),
    (["drafter"], [[3, 4], [0, 5]], 1),
])
def test_cascade_equals_target_greedy(t5, drafters, k, l):
    pair = FakePair(V, **t5)
    table = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(5))
    lookup = PromptLookup(bigram=Bigram.from_table(table))
    casc = Cascade(drafters, lookup, k, lenience=l).bind(pair)
    assert lookup.encoder_decoder is True  # the lookup searches the encoder prompt, then the decoder text
    target = cached_lm(t5["target"])
    for prompt in prompts():
        ref = _hf_greedy(t5["target"], prompt, 24)
        g = generate(target, prompt, 24, GREEDY, Stopper([1]), casc, LengthPolicy(64))
        assert g.tokens == ref
        assert g.target_forwards == len(g.drafted)
    for lv in casc.levels:  # each drafter encoded each prompt once
        assert isinstance(lv.lm, Seq2SeqLM) and lv.lm.encoder_forwards == 3
    assert target.encoder_forwards == 3


def test_cli_model_free_and_cascade_on_a_t5_pair(tmp_path, run_specexp, monkeypatch):
    """The real CLI on an encoder-decoder pair of three models (target, drafter, drafter2), one
    process sweeping bigram, prompt_lookup and the FLAN-T5 cascade preset: each matches the
    autoregressive baseline and reports per-model forwards and the cost-model speedups."""
    tok = make_tokenizer(300)
    root = tmp_path / "pair"
    target = tiny_t5(vocab=len(tok), seed=0, eos=tok.eos_token_id)
    for role, model in (("target", target), ("drafter", target), ("drafter2", perturbed(target, 0.2, 1))):
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    run_specexp(*pair_overrides(root), f"model_pair.drafter2.name={root}/drafter2",
                "strategy=bigram,prompt_lookup,cascade_flan_t5", f"++strategy.corpus={corpus}", "debug=fast",
                "model_pair.dtype=float32", "model_pair.device=cpu", multirun=True)
    runs = {m["strategy"]: m for m in (json.loads(f.read_text()) for f in (tmp_path / "sweep").glob("*/metrics.json"))}
    assert set(runs) == {"bigram", "prompt_lookup", "cascade_flan_t5"}
    for name, m in runs.items():
        assert m["status"] == "ok" and m["all_match_baseline"], name
        assert set(m["cost_model_speedup"]) >= {"params", "previous_work", "measured", "leviathan_predicted"}
        assert m["cost_model_speedup"]["previous_work"] is None  # tiny T5s are no released size
        assert m["cost_model_speedup"]["leviathan_predicted"] is None  # not the classic algorithm
        assert m["model_forwards"]["target"] == m["target_forwards"]
    for name in ("bigram", "prompt_lookup"):  # model-free: no drafter forwards, the params SWI = mean accepted length
        m = runs[name]
        assert m["drafter_forwards"] == 0 and set(m["model_forwards"]) == {"target"}
        assert m["cost_model_speedup"]["params"] == pytest.approx(m["mean_accepted_length"])
    m = runs["cascade_flan_t5"]
    assert set(m["model_forwards"]) == {"target", "drafter", "drafter2"}
    assert m["drafter_forwards"] == m["model_forwards"]["drafter"] + m["model_forwards"]["drafter2"] > 0
    assert m["accepted_tokens"] > 0  # the drafter is the target itself
    assert len(list((tmp_path / "cache" / "bigram").glob("*.json"))) == 1  # one table, built once, reused
