"""Every shipped strategy decodes at batch_size=3 exactly as at batch_size=1, or is refused with a
reason: batch 1 as run.py runs it (ONE policy and ONE proposer for the whole dataset, the policy
told `start_sample(carry=False)` before each sample, so whatever a policy keeps from one sample
to the next is kept), batch 3 as specexp/core/batch_decode.py runs it; equal tokens, draft lengths and
accepted counts per sample, greedy and seeded sampling. A policy that carries state across
samples (AdaEDL's lambda, by default) cannot be batched and is refused, naming the fix."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF, compose, pair_overrides

from specexp.core import batch_decode as batch
from specexp.core import beam_search as beam
from specexp.experiment import instantiate
from specexp.core.batch_decode import generate_batch
from specexp.core.decode import generate
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
# refused at batch_size > 1, and the words the reason must hold
REFUSED = {"beam": "strategy=beam", "cascade": "cascade", "cascade_llama": "cascade",
           "cascade_flan_t5": "cascade", "cascade_flan_t5_prevwork": "cascade",
           "lookup_entropy": "lookup_entropy", "lookup_store_entropy": "lookup_entropy",
           "lookup_store_cost": "lookup_entropy", "adaedl": "strategy.per_sample=true", "medusa": "Medusa"}


def drafts_trees(name: str) -> bool:
    """Whether conf/strategy/<name>.yaml's proposer drafts token trees (its class's `drafts_trees`)."""
    from hydra.utils import get_object

    target = (compose([f"strategy={name}"]).strategy.get("proposer") or {}).get("_target_")
    return bool(target) and bool(getattr(get_object(target), "drafts_trees", False))


# token trees (strategy=tree, ...): batching verifies chains only; found from the files, so a new
# tree strategy is expected refused without editing this list
REFUSED.update({n: "token trees" for n in STRATEGIES if drafts_trees(n)})
SAMPLINGS = {"greedy": Sampling(), "sample": Sampling(temperature=0.8, top_k=40)}


@pytest.fixture(scope="module")
def pair(random_pair_dir):
    return instantiate.pair(compose(pair_overrides(random_pair_dir)).model_pair)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A datastore folder of replies (the strategies with a datastore read it instead of building one)."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "replies.json").write_text(json.dumps({"replies": [[10, 11, 12, 13, 14], [40, 41, 42]] * 4}))
    (folder / "corpus.txt").write_text("def add(a, b):\n    return a + b\n" * 50)
    return folder


def strategy(name: str, pair, store, *extra: str):
    """(proposer, policy, search) of conf/strategy/<name>.yaml on the random pair, built as a run
    builds them; None when the pair lacks a model the strategy needs (a third cascade model)."""
    cfg = compose([f"strategy={name}", *extra])
    if "store" in cfg.strategy:
        extra = (f"strategy.store={store}", *extra)
    if "corpus" in cfg.strategy:  # a bigram bottom drafter: its table from a small text, not a corpus in ../shared/data
        extra = (f"strategy.corpus={store / 'corpus.txt'}", "strategy.table=null", *extra)
    cfg = compose([f"strategy={name}", *extra])
    try:
        proposer, policy = instantiate.strategy(cfg.strategy, pair)
    except ValueError as e:
        if "needs a 'drafter2' model" in str(e):
            return None
        raise
    return proposer, policy, beam.from_strategy(cfg.strategy)


def prompts(n: int, vocab: int) -> list[torch.Tensor]:
    """Ragged prompts (3 to 17 tokens), every other one repeating itself (for the lookups)."""
    out = []
    for i in range(n):
        p = torch.randint(3, vocab, (3 + (i * 7) % 15,), generator=torch.Generator().manual_seed(50 + i))
        out.append(torch.cat([p, p]) if i % 2 else p)
    return out


def batch_one(pair, ps, n, sampling, stopper, proposer, policy, seed=0):
    """run.decode_dataset's batch-1 loop: one policy, `start_sample(carry=False)` per sample."""
    target = CachedLM(pair.target)
    out = []
    for i, p in enumerate(ps):
        if policy is not None:
            policy.start_sample(carry=False)
        gen = torch.Generator().manual_seed(seed + i)
        out.append(generate(target, p, n, sampling, stopper, proposer, policy, gen))
    return out


def batched(pair, ps, n, sampling, stopper, proposer, policy, seed=0, batch_size=3):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(ps))]
    return generate_batch(pair.target, ps, n, sampling, stopper, proposer, policy, gens, batch_size=batch_size)


def same(a, b) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.tokens == y.tokens, f"sample {i}: tokens differ"
        assert x.drafted == y.drafted, f"sample {i}: draft lengths differ"
        assert x.accepted == y.accepted, f"sample {i}: acceptance differs"


@pytest.mark.parametrize("mode", list(SAMPLINGS))
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_at_batch_3_equals_batch_1_or_is_refused(pair, store, name, mode):
    built = strategy(name, pair, store)
    if built is None:  # a cascade of three models: the random pair has two; the cascade is refused below
        assert REFUSED[name] == "cascade"
        return
    proposer, policy, search = built
    if mode == "sample" and policy is not None and policy.greedy_only:
        return  # the oracle: greedy only (validate refuses it under sampling)
    try:
        batch.check_run(3, proposer, pair.target, search, False, policy, name)
    except ValueError as e:
        assert name in REFUSED, f"{name} is refused at batch_size=3: {e}"
        assert REFUSED[name] in str(e) and "batch_size=1" in str(e)
        return
    assert name not in REFUSED, f"{name} is not refused at batch_size=3"
    ps, sampling = prompts(6, pair.vocab_size), SAMPLINGS[mode]
    stopper = Stopper(eos_ids=[7])
    got = batched(pair, ps, 24, sampling, stopper, proposer, policy)  # first: the freshly built template
    ref = batch_one(pair, ps, 24, sampling, stopper, proposer, policy)
    same(ref, got)
    if proposer is not None and name != "bigram_chat":  # bigram_chat: its table fits no random prompt, no drafts
        assert sum(sum(g.drafted) for g in got) > 0


@pytest.mark.parametrize("mode", list(SAMPLINGS))
def test_adaedl_is_refused_while_it_carries_lambda_and_equal_per_sample(pair, store, mode):
    """strategy=adaedl carries lambda from sample to sample by default: at batch 1 sample i starts
    from the lambda sample i-1 left (so batch 3, where rows start together, decoded otherwise);
    batching refuses it, naming strategy.per_sample=true, and with it 8 samples of 64 tokens at
    batch 3 equal batch 1 in tokens, draft lengths and acceptance."""
    proposer, policy, search = strategy("adaedl", pair, store, "strategy.lambda_init=-0.1")
    ps, sampling = prompts(8, pair.vocab_size), SAMPLINGS[mode]
    ref = batch_one(pair, ps, 64, sampling, Stopper(), proposer, policy)
    lams = set()
    policy.reset()
    for i, p in enumerate(ps):  # the state batch 1 carries: lambda moves on from sample to sample
        policy.start_sample(carry=False)
        lams.add(round(policy.lam, 12))
        generate(CachedLM(pair.target), p, 64, sampling, Stopper(), proposer, policy, torch.Generator().manual_seed(i))
    assert len(lams) == 8  # each sample started from another lambda
    with pytest.raises(ValueError, match=r"strategy=adaedl .*strategy\.per_sample=true.*batch_size=1"):
        batch.check_run(3, proposer, pair.target, search, False, policy, "adaedl")
    with pytest.raises(ValueError, match=r"strategy\.per_sample=true"):
        batched(pair, ps, 64, sampling, Stopper(), proposer, policy)
    assert ref  # batch 1 runs it as before

    proposer, policy, search = strategy("adaedl", pair, store, "strategy.lambda_init=-0.1", "strategy.per_sample=true")
    batch.check_run(3, proposer, pair.target, search, False, policy, "adaedl")
    got = batched(pair, ps, 64, sampling, Stopper(), proposer, policy)
    ref = batch_one(pair, ps, 64, sampling, Stopper(), proposer, policy)
    same(ref, got)
    drafted = [k for g in got for k in g.drafted[:-1]]
    assert len(set(drafted)) >= 2  # lambda (from -0.1, rising as drafts are rejected) cut some drafts short


def test_carry_length_state_is_refused_and_heuristic_transient_carries_nothing(pair, store):
    _, policy, _ = strategy("heuristic", pair, store)
    assert policy.carried_state(True) and policy.carried_state(False) is None
    _, transient, _ = strategy("heuristic_transient", pair, store)
    assert transient.carried_state(True) is None  # reset at every sample whatever the run carries
