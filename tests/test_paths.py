"""Paths that no other test walked, each with a test named after what it proves: length state
carried across samples and reset after the warm-up (end to end), the analysis records' target
side, a stop string that spans two rounds, prompt encoding at the edges, policies that really
reset, and report joins that refuse mismatched runs."""
from __future__ import annotations

import copy
import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tokenizer, pair_overrides, random_model

from specexp import length as L
from specexp.core.decode import generate
from specexp.models.cached_lm import CachedLM
from specexp.proposers import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper


# ----------------------------------------------------------------- state across samples, end to end

def _run(tmp_path: Path, name: str, pair_dir: Path, *overrides: str) -> dict:
    from specexp.experiment.run import run_cli

    out = tmp_path / name
    code = run_cli([*pair_overrides(pair_dir), "dataset=humaneval", "dataset.limit=3", "max_new_tokens=12",
                    "baseline=false", "summary=false", "timing.repeats=1", f"hydra.run.dir={out}", *overrides])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def _replay_random_gamma(samples: list[dict], max_new: int, carry: bool, seed: int = 0, lo: int = 1, hi: int = 8):
    """The draft lengths RandomGamma(lo, hi, seed) must produce: one `randint` per round that
    drafts (budget > 1), the draft capped at budget - 1; the generator re-seeded per sample unless
    `carry`. Returns the expected lengths per sample."""
    rng, out = random.Random(seed), []
    for s in samples:
        if not carry:
            rng = random.Random(seed)
        budget, lengths = max_new, []
        for n in s["accepted_per_round"]:
            lengths.append(min(rng.randint(lo, hi), budget - 1) if budget > 1 else 0)
            budget -= n + 1
        out.append(lengths)
    return out


def test_carry_length_state_continues_across_samples_and_warmup_is_reset(tmp_path, random_pair_dir):
    """random_gamma draws one length per round from its own seeded generator. With
    carry_length_state=true the lengths of all samples are ONE stream from the seed (the warm-up's
    draws were undone by the reset after it); with false every sample restarts the stream."""
    carried = _run(tmp_path, "carry", random_pair_dir, "strategy=random_gamma", "carry_length_state=true")
    fresh = _run(tmp_path, "fresh", random_pair_dir, "strategy=random_gamma", "carry_length_state=false")
    for m, carry in ((carried, True), (fresh, False)):
        got = [s["draft_lengths"] for s in m["samples"]]
        assert got == _replay_random_gamma(m["samples"], 12, carry), f"carry={carry}"
    # the two settings really differ (else the test would prove nothing)
    assert [s["draft_lengths"] for s in carried["samples"]][1:] != [s["draft_lengths"] for s in fresh["samples"]][1:]
    assert carried["samples"][0]["draft_lengths"][0] == fresh["samples"][0]["draft_lengths"][0]  # warm-up undone


# ----------------------------------------------------------------- records: the target's side

@pytest.fixture(scope="module")
def llama_pair():
    target = random_model("llama", 64, 32, 2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)
    drafter = copy.deepcopy(target)  # a noisy copy: it agrees with the target part of the time
    torch.manual_seed(1)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(0.3 * p.std().nan_to_num() * torch.randn_like(p))
    return SimpleNamespace(target=target, drafter=drafter, vocab_size=64, get=lambda r: {"drafter": drafter}[r])


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.7, top_k=20)], ids=["greedy", "sampling"])
def test_records_carry_the_round_and_the_targets_entropy_recomputed_from_scratch(llama_pair, sampling):
    """Every record's `round` is its round's index, and `target_entropy` is the Shannon entropy
    (nats) of the distribution the target verified that position with, recomputed here by a
    cache-free forward over prompt + output so far + the round's drafts before it."""
    prompt = torch.tensor([5, 9, 13, 2])
    proposer = DraftModel().bind(llama_pair)
    proposer.records = True
    out = generate(CachedLM(llama_pair.target), prompt, 24, sampling, Stopper(), proposer, L.Fixed(3),
                   torch.Generator().manual_seed(0), records=True)
    assert len(out.records) == sum(out.drafted) > 0
    recs, done = iter(out.records), 0
    for r, (k, n) in enumerate(zip(out.drafted, out.accepted)):
        drafts = out.tokens[done: done + n] + out.rejected[r]  # this round's drafts, in order
        assert len(drafts) == k
        for i in range(k):
            rec = next(recs)
            assert rec["round"] == r and rec["position"] == i and rec["accepted"] == (i < n)
            seq = torch.cat([prompt, torch.tensor(out.tokens[:done] + drafts[:i], dtype=torch.long)])
            with torch.no_grad():
                logits = llama_pair.target(input_ids=seq[None]).logits[0, -1].double()
            p = (sampling.probs(logits) if not sampling.greedy else logits.softmax(-1)).double()
            h = float(-(p * p.clamp_min(1e-300).log()).sum())
            assert rec["target_entropy"] == pytest.approx(h, abs=1e-4)
        done += out.emitted[r]
    assert 0 < sum(out.accepted) < sum(out.drafted)  # both outcomes were recorded


# ----------------------------------------------------------------- a stop string across two rounds

class ScriptLM(torch.nn.Module):
    """A causal LM that emits a fixed script after a prompt of length P: at absolute position t it
    predicts script[t + 1 - P] (then EOS 0). Its cache only counts positions."""

    def __init__(self, script: list[int], prompt_len: int, vocab: int):
        super().__init__()
        self.script, self.P, self.V = script, prompt_len, vocab
        self.lm_head = torch.nn.Linear(1, vocab, bias=False)

    def get_output_embeddings(self):
        return self.lm_head

    def get_input_embeddings(self):
        return torch.nn.Embedding(self.V, 1)

    def __call__(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        cache = past_key_values or _Cache()
        start = cache.n
        cache.n += input_ids.shape[1]
        pos = range(start, cache.n)
        nxt = [self.script[t + 1 - self.P] if 0 <= t + 1 - self.P < len(self.script) else 0 for t in pos]
        logits = torch.nn.functional.one_hot(torch.tensor(nxt), self.V).float()[None] * 10
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=cache)


class _Cache:
    def __init__(self):
        self.n = 0

    def crop(self, k):
        self.n += k


def test_a_stop_string_spanning_two_rounds_ends_generation_inside_generate():
    """The script's "\\n" is the last token of round 1 (3 accepted drafts + bonus) and "def" the
    first of round 2: only the two rounds together contain "\\ndef". The generation must end at
    the "def" token, and count only what it emitted."""
    tok = make_tokenizer()
    pieces = ["x = 1 + 2", "\n", "def", " add(a, b):", "\n"]
    ids = [tok(p)["input_ids"] for p in pieces]
    head = ids[0][-3:] if len(ids[0]) >= 3 else ids[0]
    assert len(head) == 3 and len(ids[1]) == 1 and len(ids[2]) == 1, "the tokenizer split the pieces unexpectedly"
    script = head + ids[1] + ids[2] + ids[3] + ids[4]  # x x x \n | def ...
    prompt = torch.tensor(tok("y = 0\n")["input_ids"])
    V = len(tok)
    target = ScriptLM(script, prompt.shape[0], V)
    pair = SimpleNamespace(target=target, vocab_size=V, get=lambda r: ScriptLM(script, prompt.shape[0], V))
    proposer = DraftModel().bind(pair)
    stopper = Stopper(stop_strings=["\ndef"], tokenizer=tok)
    out = generate(CachedLM(target), prompt, 20, Sampling(), stopper, proposer, L.Fixed(3), torch.Generator())
    assert out.tokens == head + ids[1] + ids[2]  # cut right after "def"
    assert "\ndef" in tok.decode(out.tokens) and "\ndef" not in tok.decode(out.tokens[:-1])
    assert out.drafted[:2] == [3, 3] and len(out.drafted) == 2  # round 1: 3 drafts + bonus "\n"; round 2 stops
    assert out.emitted == [4, 1]  # round 2 emits only "def"
    assert out.accepted == [3, 0]  # "def" was an accepted draft, but the stop token is the round's own token


# ----------------------------------------------------------------- prompts and EOS ids

def test_encode_prompt_keeps_the_end_of_a_long_prompt_and_a_bos_for_an_empty_one():
    from specexp.models.prompt_ids import encode_prompt

    tok = make_tokenizer()
    text = "def add(a, b):\n    return a + b\n" * 20
    full = tok(text)["input_ids"]
    assert encode_prompt(tok, text, None, "cpu").tolist() == full
    assert encode_prompt(tok, text, 7, "cpu").tolist() == full[-7:]  # the end: what the model continues
    assert encode_prompt(tok, text, len(full) + 5, "cpu").tolist() == full
    assert encode_prompt(tok, "", None, "cpu").tolist() == [tok.bos_token_id]
    no_bos = make_tokenizer()
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="BOS"):
        encode_prompt(no_bos, "", None, "cpu")


def test_eos_ids_merges_the_tokenizers_and_a_list_in_the_generation_config():
    from specexp.models.prompt_ids import eos_ids

    tok = make_tokenizer()
    gen = SimpleNamespace(eos_token_id=[7, tok.eos_token_id, 3])
    pair = SimpleNamespace(tokenizer=tok, target=SimpleNamespace(generation_config=gen))
    assert eos_ids(pair) == sorted({7, 3, tok.eos_token_id})
    pair.target.generation_config = SimpleNamespace(eos_token_id=11)
    assert eos_ids(pair) == sorted({11, tok.eos_token_id})
    pair.target.generation_config = SimpleNamespace(eos_token_id=None)
    assert eos_ids(pair) == [tok.eos_token_id]


# ----------------------------------------------------------------- stateful policies really reset

def _logits_with_entropy(h: float, V: int = 8) -> torch.Tensor:
    """Logits whose softmax has Shannon entropy h nats (bisection on the scale of a fixed shape)."""
    base = torch.tensor([3.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])[:V].double()
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        p = (base * mid).softmax(-1)
        if float(-(p * p.log()).sum()) > h:
            lo = mid
        else:
            hi = mid
    return base * lo


def _trace(policy, steps: list[torch.Tensor], accepted, rounds: int) -> list[int]:
    """Drive `rounds` rounds: each drafts along `steps` until the policy stops, then observes
    accepted(k) acceptances. Returns the draft length of each round."""
    out = []
    for r in range(rounds):
        cap, k = policy.begin(), 0
        for j, logits in enumerate(steps[:cap]):
            q = torch.nn.functional.one_hot(logits.argmax(), logits.shape[0]).float()
            d = policy.decide(L.DraftStep(j, logits, q, int(logits.argmax()), torch.tensor([1]),
                                          [torch.tensor(0)] * j, True))
            if d is L.Decision.STOP_BEFORE:
                break
            k += 1
            if d is L.Decision.STOP_AFTER:
                break
        out.append(k)
        if k:
            policy.observe(k, accepted(r, k))
    return out


STATEFUL = {
    # AdaEDL: lambda rises while the acceptance average is under alpha; entropies just under the
    # initial threshold's bound, so a higher lambda stops earlier
    "adaedl": (lambda: L.AdaEDL(lambda_init=0.5, max_len=6),
               [_logits_with_entropy(h) for h in (0.2, 1.2, 1.2, 1.2, 1.2, 1.2)], lambda r, k: 0),
    # Confidence with adapt: the threshold is re-tuned from the drafts' probabilities and outcomes
    "confidence": (lambda: L.Confidence(threshold=0.4, max_len=6, adapt=True),
                   [_logits_with_entropy(h) for h in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8)],
                   lambda r, k: min(k, 1 + r % 3)),
    "heuristic": (lambda: L.Heuristic(start=2), [_logits_with_entropy(0.5)] * 12, lambda r, k: k),
}


@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_policy_reset_restores_its_initial_behaviour(name):
    """A policy driven through rounds behaves differently afterwards (its state moved: the test
    has power), and after reset() it repeats its first behaviour exactly."""
    make, steps, accepted = STATEFUL[name]
    policy = make()
    first = _trace(policy, steps, accepted, 30)
    again_without_reset = _trace(policy, steps, accepted, 30)
    assert again_without_reset != first, f"{name}: its state did not change the lengths; the test proves nothing"
    policy.reset()
    assert _trace(policy, steps, accepted, 30) == first
    assert _trace(make(), steps, accepted, 30) == first  # and equals a fresh policy's


# ----------------------------------------------------------------- report joins refuse mismatches

@pytest.fixture(scope="module")
def ar_and_spec_runs(tmp_path_factory, random_pair_dir):
    """A speculative run without its own baseline and a separate autoregressive run of the same
    samples, budget and settings (real runs on the random pair)."""
    root = tmp_path_factory.mktemp("join")
    for name, strategy in (("ar", "autoregressive"), ("spec", "speculative")):
        _run(root, name, random_pair_dir, f"strategy={strategy}")
    return root


def _collect_spec_row(*dirs):
    from specexp.report.collect_runs import collect

    df = collect(dirs)
    return df[df["strategy"] == "speculative"].iloc[0]


def _edit(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    edit(m)
    (dst / "metrics.json").write_text(json.dumps(m))
    return dst


def test_report_joins_a_separate_autoregressive_run_of_the_same_setting(ar_and_spec_runs):
    row = _collect_spec_row(ar_and_spec_runs / "ar", ar_and_spec_runs / "spec")
    ar = json.loads((ar_and_spec_runs / "ar" / "metrics.json").read_text())
    spec = json.loads((ar_and_spec_runs / "spec" / "metrics.json").read_text())

    def tps(m):
        return sum(s["new_tokens"] for s in m["samples"]) / sum(s["wall_time_s"] for s in m["samples"])
    assert row["speedup_source"] == f"ar_run:{ar_and_spec_runs / 'ar'}"
    assert row["speedup"] == pytest.approx(tps(spec) / tps(ar))  # by hand, from the per-sample records


@pytest.mark.parametrize("what", ["max_new_tokens", "dataset_version"])
def test_report_refuses_to_join_runs_with_another_budget_or_dataset_version(ar_and_spec_runs, tmp_path, what):
    def edit(m):
        if what == "max_new_tokens":
            m["config"]["max_new_tokens"] = 11
        else:
            m["dataset"]["version"] = f"{m['dataset']['version']}-other"
    other = _edit(ar_and_spec_runs / "ar", tmp_path / "ar_other", edit)
    row = _collect_spec_row(other, ar_and_spec_runs / "spec")
    assert not (isinstance(row["speedup_source"], str) and row["speedup_source"]), row["speedup_source"]
    assert row["speedup"] is None or math.isnan(row["speedup"])
