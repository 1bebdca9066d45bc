"""Beam search (strategy=beam) gives transformers' generate(num_beams=...) output token for token,
with EOS hits and each early-stopping rule; and runs end to end like any strategy."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import pair_overrides, random_model

from specexp.core.beam_search import BeamSearch
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper


@pytest.fixture(scope="module")
def model():
    m = random_model("llama", vocab=48, hidden=32, layers=2, seed=5)
    m.lm_head.weight.data *= 4  # peaked enough that beams disagree with greedy and EOS gets chosen
    return m


def _eos_for(model, prompt):
    """A token greedy decoding emits after a few steps: beams meet it (and end) early."""
    out = model.generate(prompt[None], max_new_tokens=6, do_sample=False, num_beams=1,
                         pad_token_id=0, eos_token_id=None)
    return int(out[0, prompt.shape[0] + 3])


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping",
                         [(4, 1.0, False), (3, 2.0, True), (4, -0.5, False), (2, 0.7, "never"), (1, 1.0, False)])
def test_same_output_as_transformers_generate(model, num_beams, length_penalty, early_stopping):
    for seed in range(4):
        prompt = torch.randint(1, 48, (5 + seed,), generator=torch.Generator().manual_seed(seed))
        eos = _eos_for(model, prompt) if seed % 2 == 0 else 47  # half the prompts end early on EOS
        ref = model.generate(prompt[None], max_new_tokens=12, do_sample=False, num_beams=num_beams,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             eos_token_id=eos, pad_token_id=eos)[0, prompt.shape[0]:].tolist()
        if eos in ref:  # generate pads the best sequence after its EOS
            ref = ref[: ref.index(eos) + 1]
        g = BeamSearch(num_beams, length_penalty, early_stopping).generate(
            CachedLM(model), prompt, 12, Stopper(eos_ids=[eos]))
        assert g.tokens == ref, (seed, g.tokens, ref)
        assert g.target_forwards <= 12 and g.model_forwards == {"target": g.target_forwards}


def test_beam_differs_from_greedy_and_rejects_sampling(model):
    prompt = torch.tensor([3, 9, 27, 4, 11])
    greedy = BeamSearch(1).generate(CachedLM(model), prompt, 12, Stopper())
    beams = [BeamSearch(4).generate(CachedLM(model), torch.tensor(p), 12, Stopper()).tokens
             for p in ([3, 9, 27, 4, 11], [5, 6, 7], [1, 2, 40, 41], [30, 31, 2, 9, 9])]
    greedys = [BeamSearch(1).generate(CachedLM(model), torch.tensor(p), 12, Stopper()).tokens
               for p in ([3, 9, 27, 4, 11], [5, 6, 7], [1, 2, 40, 41], [30, 31, 2, 9, 9])]
    assert len(greedy.tokens) == 12 and beams != greedys  # the search finds other sequences somewhere
    with pytest.raises(ValueError, match="sampling=greedy"):
        BeamSearch(2).generate(CachedLM(model), prompt, 4, Stopper(), Sampling(1.0))
    with pytest.raises(ValueError, match="early_stopping"):
        BeamSearch(2, early_stopping="sometimes")


def test_strategy_beam_runs_end_to_end(random_pair_dir, run_specexp):
    _, run_dir = run_specexp("strategy=beam", "strategy.search.num_beams=3", "debug=fast",
                             "prompt=def add(a, b):", *pair_overrides(random_pair_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["strategy"] == "beam"
    assert m["tokens_per_second"] > 0 and m["acceptance_rate"] is None
    assert "n_matches_baseline" not in m and "matches_baseline" not in m["samples"][0]
    assert m["samples"][0]["new_tokens"] == len(m["samples"][0]["tokens"]) > 0
