"""Batched decoding (specexp/core/batch_decode.py): each row's output equals its batch-1 decode token for token
(greedy, fp32, tiny random Llama models), for a mix of prompt lengths and early stops, for
autoregressive, the drafter model, prompt lookup and bigram; the sampling distribution per row
is the target's (chi-square at batch 4); bad batch sizes and unsupported proposers are refused."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ModelsByRole, noisy_copy, pooled_chisquare, random_model

from specexp.core.batch_decode import check_batch_size, generate_batch
from specexp.core.decode import generate
from specexp.length import Fixed, LengthPolicy
from specexp.models.cached_lm import CachedLM
from specexp.proposers import DraftModel
from specexp.proposers.bigram import Bigram
from specexp.proposers.retrieval import Datastore
from specexp.proposers.lookup import PromptLookup
from specexp.models.ragged_cache import RaggedCache
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

V = 64
GREEDY = Sampling()




@pytest.fixture(scope="module")
def target():
    return random_model("llama", vocab=V, hidden=64, layers=2, seed=0)


def _greedy_table(model):
    with torch.no_grad():
        return model(input_ids=torch.arange(V)[:, None]).logits[:, -1].argmax(-1)


def _prompts(n: int = 7) -> list[torch.Tensor]:
    """Ragged prompts (2 to 20 tokens), some with a repeat for prompt lookup."""
    out = []
    for i in range(n):
        p = torch.randint(1, V, (2 + (i * 5) % 19,), generator=torch.Generator().manual_seed(100 + i))
        out.append(torch.cat([p, p]) if i % 2 else p)
    return out


def _proposer(kind: str, target):
    pair = ModelsByRole(target, noisy_copy(target, 0.5, seed=2) if kind == "noisy" else
                        random_model("llama", vocab=V, hidden=32, layers=1, seed=1))
    return {
        "ar": lambda: None,
        "noisy": lambda: DraftModel().bind(pair),  # partial acceptance
        "independent": lambda: DraftModel().bind(pair),
        "lookup": lambda: PromptLookup(max_ngram=3).bind(pair),
        "bigram": lambda: Bigram.from_table(_greedy_table(target)).bind(pair),
        "datastore": lambda: PromptLookup(min_ngram=2, datastore=Datastore.from_replies(  # the target's own text
            [generate(CachedLM(target), p, 12, GREEDY, Stopper()).tokens for p in _prompts(4)],
            min_n=1, min_count=1, min_share=0.0)).bind(pair),
    }[kind]()


def _reference(target, prompts, n, sampling, stopper, proposer, policy, seeds=None):
    """Each prompt decoded alone by the batch-1 loop (specexp.core.decode.generate), as run.py runs it:
    one policy for the whole dataset, told `start_sample(carry=False)` before each sample (never a
    fresh copy per sample, which would hide state a policy carries from one sample to the next)."""
    out = []
    for i, p in enumerate(prompts):
        if policy is not None:
            policy.start_sample(carry=False)
        gen = torch.Generator().manual_seed(seeds[i]) if seeds else None
        out.append(generate(CachedLM(target), p, n, sampling, stopper, proposer, policy, gen))
    return out


@pytest.mark.parametrize("batch_size", [3, 7])
@pytest.mark.parametrize("kind", ["ar", "noisy", "independent", "lookup", "bigram", "datastore"])
def test_greedy_rows_equal_batch_one(target, kind, batch_size):
    """Token-for-token identity with batch 1 per row, and the same per-round counts; an EOS taken
    from one reference output stops some rows early (ragged finishing, continuous batching)."""
    prompts = _prompts()
    proposer = _proposer(kind, target)
    policy = Fixed(4) if proposer is not None else None
    free = _reference(target, prompts, 24, GREEDY, Stopper(), proposer, policy)
    eos = free[1].tokens[6]  # appears in some outputs, not in others
    stopper = Stopper(eos_ids=[eos])
    ref = _reference(target, prompts, 24, GREEDY, stopper, proposer, policy)
    got = generate_batch(target, prompts, 24, GREEDY, stopper, proposer, policy, batch_size=batch_size)
    lengths = {len(r.tokens) for r in ref}
    assert len(lengths) > 1 and 24 in lengths  # early stops and full budgets both happen
    for r, g in zip(ref, got):
        assert g.tokens == r.tokens
        assert (g.drafted, g.accepted, g.emitted, g.rejected) == (r.drafted, r.accepted, r.emitted, r.rejected)
        assert g.target_forwards == len(g.drafted) and g.wall_time > 0
    if kind == "datastore":  # every row's copy shares the one read-only table
        assert copy.deepcopy(proposer).datastore.table is proposer.datastore.table
    if kind in ("noisy", "lookup", "bigram", "datastore"):
        accepted, drafted = sum(sum(g.accepted) for g in got), sum(sum(g.drafted) for g in got)
        assert 0 < accepted < drafted  # rows accept different numbers of drafts


@pytest.mark.parametrize("budget", [1, 2, 3, 7])
def test_never_overshoots_the_budget(target, budget):
    """An identical drafter (every draft accepted, the case that would overshoot): each row emits
    exactly `budget` tokens, its batch-1 output."""
    proposer = DraftModel().bind(ModelsByRole(target, target))
    prompts = _prompts(4)
    ref = _reference(target, prompts, budget, GREEDY, Stopper(), None, None)
    got = generate_batch(target, prompts, budget, GREEDY, Stopper(), proposer, Fixed(8), batch_size=3)
    assert [g.tokens for g in got] == [r.tokens for r in ref]
    assert all(len(g.tokens) == budget for g in got)


class _Alternating(LengthPolicy):
    """A stateful per-round policy (draft 1, then 5, then 1...): per-row policy copies must keep
    each row's own schedule."""

    def __init__(self):
        super().__init__(max_len=5)
        self.i = 0

    def begin(self):
        self.i += 1
        return 1 if self.i % 2 else 5

    def reset(self):
        self.i = 0


def test_per_row_policies_and_per_row_lengths(target):
    prompts = _prompts(5)
    proposer = _proposer("noisy", target)
    ref = _reference(target, prompts, 20, GREEDY, Stopper(), proposer, _Alternating())
    got = generate_batch(target, prompts, 20, GREEDY, Stopper(), proposer, _Alternating(), batch_size=5)
    for r, g in zip(ref, got):
        assert g.tokens == r.tokens and g.drafted == r.drafted and g.accepted == r.accepted


def test_ragged_cache_rollback_and_compaction_are_exact(target):
    """Rows with holes (rejected drafts, pads) and after compaction give the logits of a fresh
    batch-1 forward over each row's sequence."""
    seqs = [torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 14)]
    cache = RaggedCache(target)
    cache.add_rows(3)
    cache.forward([s[:-1] for s in seqs], [1, 1, 1])
    cache.forward([torch.tensor([5, 6, 7]), None, torch.tensor([8])], [1, 0, 1])  # drafts, then rejected
    cache.drop_last(0, 3)
    cache.drop_last(2, 1)
    assert cache.length == [2, 8, 13] and cache.mask.shape[1] == 13 + 3
    for compact in (False, True):
        c = copy.deepcopy(cache)
        if compact:
            c.mask = torch.cat([c.mask, c.mask.new_zeros(3, 40)], 1)  # force it past the threshold
            c._set_kv([(torch.cat([k, k.new_zeros(3, k.shape[1], 40, k.shape[3])], 2),
                        torch.cat([v, v.new_zeros(3, v.shape[1], 40, v.shape[3])], 2)) for k, v in c._kv()])
            c.compact()
            assert c.mask.shape[1] == 13 and c.mask.sum(1).tolist() == [2, 8, 13]
        got = c.forward([s[-1:] for s in seqs], [1, 1, 1])
        for s, g in zip(seqs, got):
            torch.testing.assert_close(g[0], CachedLM(target).forward(s)[-1], rtol=1e-4, atol=1e-4)


def _joint(model, prompt, sampling, v):
    p1 = sampling.probs(CachedLM(model).forward(prompt)[-1])
    p2 = torch.stack([sampling.probs(CachedLM(model).forward(torch.cat([prompt, torch.tensor([t])]))[-1])
                      for t in range(v)])
    return p1[:, None] * p2


def test_sampling_rows_keep_the_target_distribution():
    """Batch 4, speculative sampling (T=1, gamma 2): for each row, the first two emitted tokens
    follow the target's exact joint for that row's prompt (chi-square), while the drafter's joint
    is far from it (the test has power). Every row draws from its own generator."""
    v = 8
    target = random_model("llama", vocab=v, hidden=32, layers=2, seed=10)
    drafter = random_model("llama", vocab=v, hidden=32, layers=1, seed=11)
    for m in (target, drafter):
        m.lm_head.weight.data *= 8
    sampling = Sampling(1.0)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7, 1, 2, 5]), torch.tensor([3])]
    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    n_draws = 1200
    counts = torch.zeros(len(prompts), v, v)
    for i in range(n_draws):
        gens = [torch.Generator().manual_seed(i * 10 + r) for r in range(4)]
        for r, g in enumerate(generate_batch(target, prompts, 3, sampling, Stopper(), proposer, Fixed(2), gens,
                                             batch_size=4)):
            counts[r, g.tokens[0], g.tokens[1]] += 1
    for r, prompt in enumerate(prompts):
        p, q = _joint(target, prompt, sampling, v), _joint(drafter, prompt, sampling, v)
        assert 0.5 * (p - q).abs().sum() > 0.2
        assert pooled_chisquare(counts[r], p, n_draws) > 1e-3
        assert pooled_chisquare(counts[r], q, n_draws) < 1e-6  # power: the same counts against the drafter's joint


def test_sampling_rows_equal_batch_one_draws(target):
    """Stronger than the distribution: with the same per-row generator, a row draws the same
    tokens as its batch-1 decode (the same generator calls in the same order)."""
    prompts = _prompts(4)
    proposer = _proposer("noisy", target)
    sampling = Sampling(1.0)
    ref = _reference(target, prompts, 16, sampling, Stopper(), proposer, Fixed(3), seeds=[7, 8, 9, 10])
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9, 10)]
    got = generate_batch(target, prompts, 16, sampling, Stopper(), proposer, Fixed(3), gens, batch_size=4)
    assert [g.tokens for g in got] == [r.tokens for r in ref]


def test_bad_batch_sizes_and_unsupported_proposers_are_refused(target):
    assert check_batch_size(1, 1) == 1 and check_batch_size(4, 10) == 4
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            check_batch_size(bad, 10)
    with pytest.raises(ValueError, match="larger than the dataset"):
        check_batch_size(8, 3)

    class Featured(PromptLookup):
        needs_features = True

    with pytest.raises(ValueError, match="feature drafter"):
        generate_batch(target, _prompts(2), 4, GREEDY, Stopper(), Featured(), Fixed(2))
    pair = ModelsByRole(target, target)

    class WithModels(PromptLookup):
        cached_models = {"drafter": CachedLM(target)}

    with pytest.raises(ValueError, match="WithModels runs models of its own: use batch_size=1"):
        generate_batch(target, _prompts(2), 4, GREEDY, Stopper(), WithModels().bind(pair), Fixed(2))


def test_lookup_then_drafter_is_refused_for_what_it_is(target):
    """strategy=lookup_entropy (LookupFirst) at batch_size > 1: the message names the lookup
    strategies and why, not the cascade."""
    from specexp.proposers import LookupFirst

    proposer = LookupFirst().bind(ModelsByRole(target, target))
    with pytest.raises(ValueError) as err:
        generate_batch(target, _prompts(2), 4, GREEDY, Stopper(), proposer, Fixed(2), batch_size=2)
    msg = str(err.value)
    assert "lookup_entropy" in msg and "LookupFirst" in msg and "use batch_size=1" in msg
    assert "cascade" not in msg


def test_cli_batched_run_writes_batch_metrics(run_specexp, random_pair_dir):
    """`specexp batch_size=2` on 3 samples (one slot refilled): per-sample records as at batch 1,
    outputs identical to the baseline and to batch-1 autoregressive, the batch block present."""
    import json

    from conftest import pair_overrides

    _, run_dir = run_specexp(*pair_overrides(random_pair_dir), "dataset.limit=3", "dataset.max_new_tokens=12",
                             "warmup=1", "batch_size=2", "strategy.gamma=3", "summary=false")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["batch_size"] == 2 and m["n_samples"] == 3
    assert m["all_match_baseline"] is True
    b = m["batch"]
    assert b["batch_size"] == 2 and b["outputs_identical_to_batch1_autoregressive"] == 3
    assert set(b["tokens_per_second"]) == {"strategy", "autoregressive", "autoregressive_batch1"}
    assert b["speedup_vs_autoregressive_same_batch"] > 0 and b["speedup_vs_autoregressive_batch1"] > 0
    assert all(s["new_tokens"] == len(s["tokens"]) for s in m["samples"])


@pytest.mark.parametrize("size,message", [("0", "batch_size must be an integer >= 1"),  # (negative: unit test)
                                          ("5", "larger than the dataset")])
def test_cli_refuses_bad_batch_sizes(run_specexp, random_pair_dir, size, message):
    from conftest import pair_overrides

    proc, run_dir = run_specexp(*pair_overrides(random_pair_dir), "dataset.limit=2", f"batch_size={size}",
                                check=False)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout


def test_trained_pair_rows_equal_batch_one(trained_pair_dir):
    """The trained tiny pair on HumanEval prompts (ragged, EOS stops): batched greedy rows equal
    the batch-1 outputs, autoregressive and with the drafter (which here accepts often)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specexp.tasks.humaneval import HumanEval

    tok = AutoTokenizer.from_pretrained(trained_pair_dir / "target")
    target = AutoModelForCausalLM.from_pretrained(trained_pair_dir / "target").eval()
    drafter = AutoModelForCausalLM.from_pretrained(trained_pair_dir / "drafter").eval()
    prompts = [torch.tensor(tok(s.prompt)["input_ids"]) for s in HumanEval(limit=5).samples()]
    stopper = Stopper(eos_ids=[tok.eos_token_id])
    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    ref = _reference(target, prompts, 40, GREEDY, stopper, None, None)
    for p, pol in ((None, None), (proposer, Fixed(4))):
        got = generate_batch(target, prompts, 40, GREEDY, stopper, p, pol, batch_size=3)
        assert [g.tokens for g in got] == [r.tokens for r in ref]
    assert sum(sum(g.accepted) for g in got) > 0.3 * sum(sum(g.drafted) for g in got)


@pytest.mark.slow
def test_smollm2_rows_equal_batch_one():
    """SmolLM2-135M in fp32 (offline GGUF) with its layer-truncated self-drafter and prompt
    lookup, HumanEval prompts with the dataset's stop strings: batched greedy rows equal batch 1."""
    from conftest import compose

    from specexp.experiment import instantiate
    from specexp.models.fetch import artifact_path
    from specexp.tasks.humaneval import HumanEval

    if not artifact_path("smollm2-135m").exists():
        pytest.skip("SmolLM2 GGUF not fetched; run specexp-fetch")
    pair = instantiate.pair(compose(["model_pair=smollm2-135m__truncated", "model_pair.dtype=float32",
                               "model_pair.device=cpu"]).model_pair)
    task = HumanEval(limit=4)
    prompts = [torch.tensor(pair.tokenizer(s.prompt)["input_ids"]) for s in task.samples()]
    stopper = Stopper([pair.tokenizer.eos_token_id], task.stop, pair.tokenizer)
    ref = _reference(pair.target, prompts, 32, GREEDY, stopper, None, None)
    for proposer in (DraftModel().bind(pair), PromptLookup(max_ngram=3).bind(pair)):
        got = generate_batch(pair.target, prompts, 32, GREEDY, stopper, proposer, Fixed(4), batch_size=4)
        assert [g.tokens for g in got] == [r.tokens for r in ref]


def test_reports_and_statistics_group_by_batch_size(run_specexp, random_pair_dir, tmp_path):
    """A sweep over batch_size 1,2 x {autoregressive, speculative} without in-run baselines: each
    speculative run is joined with, and compared against, the autoregressive run of ITS batch
    size (never the other one), and the tables name the batch size."""
    from conftest import pair_overrides

    from specexp.report import collect_runs
    from specexp.report import paired
    from specexp.report import per_sample
    from specexp.report import tables

    run_specexp(*pair_overrides(random_pair_dir), "strategy=autoregressive,speculative", "batch_size=1,2",
                "dataset.limit=2", "dataset.max_new_tokens=8", "warmup=0", "baseline=false", "summary=false",
                multirun=True)
    sweep = tmp_path / "sweep"
    runs = collect_runs.load_runs([sweep])
    df = collect_runs.collect([sweep], runs)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert sorted(df["batch_size"]) == [1, 1, 2, 2]
    ar = {int(r["batch_size"]): r["run_dir"] for _, r in df[df["strategy"] == "autoregressive"].iterrows()}
    for _, r in df[df["strategy"] == "speculative"].iterrows():
        assert r["speedup_source"] == f"ar_run:{ar[int(r['batch_size'])]}"
    spec2 = df[(df["strategy"] == "speculative") & (df["batch_size"] == 2)].iloc[0]
    assert spec2["batch_tokens_per_second"] > 0 and spec2["batch_speedup_same_batch"] is None  # no AR in-run

    samples = per_sample.collect_samples(runs, df)
    st = paired.compare_runs(df, samples, reference={"strategy": "autoregressive"})
    names = dict(zip(df["run_dir"], paired.run_names(df)))
    assert len(st) == 2
    for _, r in st.iterrows():
        run_dir = next(d for d, n in names.items() if n == r["run"])
        b = int(df.set_index("run_dir").loc[run_dir, "batch_size"])
        assert r["reference"].startswith(names[ar[b]] + " ")

    runs_md = tables.render(df, "runs")
    assert "| B |" in runs_md and "vs AR@B" in runs_md
    bench = tables.render(df, "specbench", samples=samples)
    assert bench.count("Spec-Bench style: ") == 2 and "batch 2" in bench
