"""The feature drafter (EAGLE-style, specexp/proposers/feature_drafter.py) and its training (specexp/builds/train_feature_drafter.py):
greedy output equal to the target's own under every length policy, the target's distribution
kept under sampling, reproducible training, and a small build end to end."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from conftest import CONF, CORPUS, ModelsByRole, compose, pooled_chisquare, random_model

from specexp.experiment import instantiate as build
from specexp.core.decode import generate
from specexp.builds.train_distilled_drafter import teacher_read
from specexp.builds.train_feature_drafter import build_feature_drafter, chain_acceptance, heldout_agreement, init_feature_drafter, train
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.loading import ModelSpec, load_model
from specexp.builds.target_replies import chat_ids, replies_with_reads
from specexp.proposers import Datastore, DraftModel, FeatureDrafter, LookupFirst
from specexp.proposers.feature_drafter import FeatureDrafterModel, FeatureTreeDrafter
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

V = 64
TRAIN = dict(lr=3e-3, epochs=20.0, batch=8, seed=0, unroll=2, feature_weight=1.0, token_weight=0.5)


def quick_train(target, seed: int = 0, epochs: float = 20.0):
    """A feature drafter for `target` trained for seconds on the target's reads of random windows."""
    w = torch.randint(0, target.config.vocab_size, (64, 32), generator=torch.Generator().manual_seed(0))
    ids, probs, hidden = teacher_read(target, w, 8, 16, False)
    data = {"windows": w, "ids": ids, "probs": probs, "hidden": hidden}
    drafter = init_feature_drafter(target, seed)
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    for q in (*embed.parameters(), *head.parameters()):
        q.requires_grad_(False)
    curve = train(drafter, embed, head.weight.detach(), data, torch.arange(8, 64), torch.arange(V),
                  {**TRAIN, "seed": seed, "epochs": epochs}, progress=False)
    return drafter, data, curve


@pytest.fixture(scope="module")
def tiny():
    """A random Llama target with a sharpened head (peaked distributions) and a quickly trained
    feature drafter for it."""
    target = random_model("llama", vocab=V, hidden=64, layers=2, seed=0)
    target.lm_head.weight.data *= 8
    drafter, data, _ = quick_train(target)
    return target, drafter, data


def strategies_drafting_with_the_drafter() -> list[str]:
    """Every shipped strategy whose proposer is the pair's drafter model: one per length policy."""
    return sorted(p.stem for p in (CONF / "strategy").glob("*.yaml")
                  if "specexp.proposers.DraftModel" in (t := p.read_text()) and "specexp.length." in t)


def test_training_lowers_the_loss_and_raises_agreement(tiny):
    target, drafter, data = tiny
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    untrained = init_feature_drafter(target, 0)
    held = torch.arange(8)
    assert heldout_agreement(drafter, embed, head, data, held, 8) > heldout_agreement(untrained, embed, head, data,
                                                                                      held, 8) + 0.1
    chain = chain_acceptance(drafter, embed, head, data, held, gamma=4, stride=2)
    assert chain["gamma"] == 4 and len(chain["acceptance_per_position"]) == 4
    assert 1.0 <= chain["mean_accepted_length"] <= 5.0


def test_chain_acceptance_from_the_reply_on(tiny):
    """On the target's own greedy reply every position from the prompt's last token on starts a
    round (`first`), and the counts add up to the mean accepted length."""
    target, drafter, _ = tiny
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    prompt = torch.tensor([5, 17, 42, 8, 9, 30, 2, 11, 40, 7])
    x = torch.tensor(generate(CachedLM(target), prompt, 30, Sampling(), Stopper()).tokens)  # its greedy reply
    x = torch.cat([prompt, x])
    ids, probs, hidden = teacher_read(target, x[None], 4, 1, False)
    data = {"windows": x[None], "ids": ids, "probs": probs, "hidden": hidden}
    chain = chain_acceptance(drafter, embed, head, data, torch.tensor([0]), gamma=4, stride=1, first=[len(prompt) - 1])
    assert chain["rounds"] == len(x) - 4 - (len(prompt) - 1)
    at_least = chain["rounds_accepting_at_least"]
    assert at_least[0] == chain["rounds"] and all(a >= b for a, b in zip(at_least, at_least[1:]))
    assert chain["mean_accepted_length"] == pytest.approx(sum(at_least[1:]) / at_least[0] + 1, abs=1e-4)
    assert at_least[1] > 0  # the trained drafter gets some right


@pytest.mark.parametrize("name", strategies_drafting_with_the_drafter())
def test_greedy_output_equals_the_target_for_every_length_policy(tiny, name):
    """The shipped strategy, built as a run builds it, on a pair whose drafter is a feature drafter:
    DraftModel hands over to FeatureDrafter, and greedy output is the target's own."""
    target, drafter, _ = tiny
    cfg = compose([f"strategy={name}"])
    proposer, policy = build.strategy(cfg.strategy, ModelsByRole(target, drafter))
    assert isinstance(proposer, FeatureDrafter) and proposer.needs_features
    lm, stopper, drafted, accepted = CachedLM(target), Stopper(), 0, 0
    for seed in range(3):
        prompt = torch.randint(0, V, (6 + seed,), generator=torch.Generator().manual_seed(seed))
        ref = generate(lm, prompt, 40, Sampling(), stopper)
        assert lm.hidden is None  # the autoregressive run keeps no hidden states
        policy.start_sample()
        g = generate(lm, prompt, 40, Sampling(), stopper, proposer, policy, torch.Generator().manual_seed(seed))
        assert g.tokens == ref.tokens
        assert g.drafted[0] == 0  # the first round reads the prompt: no features to draft from yet
        drafted, accepted = drafted + sum(g.drafted), accepted + sum(g.accepted)
    assert drafted > 0 and 0 < accepted  # drafts were made and some were accepted


@pytest.mark.parametrize("name", strategies_drafting_with_the_drafter())
def test_lookup_first_output_equals_the_target(tiny, name):
    """Every drafter strategy with a prompt lookup in front (strategy.proposer._target_=LookupFirst)
    on a feature drafter: greedy output is the target's own, and both the lookup and the drafter
    drafted (prompts whose tail repeats; the drafter's features stay in step across lookup rounds)."""
    target, drafter, _ = tiny
    # cost_aware with costs given, not timed: timed on a loaded machine it may leave the drafter idle
    costs = [f"strategy.verify_cost=[{','.join(['1.0'] + ['1.05'] * 8)}]", "strategy.drafter_cost=0.05"]
    cfg = compose([f"strategy={name}", "strategy.proposer._target_=specexp.proposers.LookupFirst",
                   *(costs if name == "cost_aware" else [])])
    proposer, policy = build.strategy(cfg.strategy, ModelsByRole(target, drafter))
    assert isinstance(proposer, LookupFirst) and isinstance(proposer.drafter, FeatureDrafter)
    assert proposer.needs_features
    proposer.records = True
    lm, stopper, sources = CachedLM(target), Stopper(), Counter()
    for seed in range(3):
        head = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([head, head[:3]])  # its last 3 tokens occurred before: the lookup drafts at once
        ref = generate(lm, prompt, 40, Sampling(), stopper)
        policy.start_sample()
        g = generate(lm, prompt, 40, Sampling(), stopper, proposer, policy, torch.Generator().manual_seed(seed),
                     records=True)
        assert g.tokens == ref.tokens
        assert g.records[0]["source"] == "lookup" and g.drafted[0] > 0
        sources.update((r["source"], r["accepted"]) for r in g.records)
    assert sources["drafter", True] > 0 and sources["lookup", True] > 0


def test_lookup_first_with_a_datastore_on_a_feature_drafter(tiny, tmp_path):
    """strategy=lookup_store_entropy on a feature drafter: the lookup, the datastore (here the
    target's own replies to the first halves of the prompts) and the drafter each draft and get
    drafts accepted, and greedy output is the target's own (the drafter's features stay in step
    across the rounds others drafted)."""
    target, drafter, _ = tiny
    lm, stopper, sources = CachedLM(target), Stopper(), Counter()
    prompts = []
    for seed in range(3):
        head = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(seed))
        prompts.append(torch.cat([head, head[:3]]))  # the tail repeats: the lookup drafts first
    refs = [generate(lm, p, 40, Sampling(), stopper).tokens for p in prompts]
    (tmp_path / "replies.json").write_text(json.dumps({"replies": [r[:20] for r in refs]}))
    cfg = compose(["strategy=lookup_store_entropy", f"strategy.store={tmp_path}", "strategy.store_min_n=2",
                   "strategy.store_min_count=1"])
    proposer, policy = build.strategy(cfg.strategy, ModelsByRole(target, drafter))
    assert isinstance(proposer.lookup.datastore, Datastore)
    proposer.records = True
    for seed, (p, ref) in enumerate(zip(prompts, refs)):
        policy.start_sample()
        g = generate(lm, p, 40, Sampling(), stopper, proposer, policy, torch.Generator().manual_seed(seed), records=True)
        assert g.tokens == ref
        sources.update((r["source"], r["accepted"]) for r in g.records)
    assert all(sources[s, True] > 0 for s in ("lookup", "datastore", "drafter")), sources


def test_lookup_first_strategy_composes():
    cfg = compose(["model_pair=smollm2-135m__eagle", "strategy=lookup_entropy"])
    assert cfg.strategy.proposer._target_ == "specexp.proposers.LookupFirst"
    assert cfg.strategy.length._target_ == "specexp.length.EntropyStatic"
    proposer, _ = build.strategy_objects(cfg.strategy)
    assert proposer.lookup.min_ngram == 2 and proposer.lookup.bigram is None


def test_lookup_first_with_a_plain_drafter():
    """In front of an ordinary drafter model: greedy output is the target's, and the drafter's
    drafts are what it proposes reading the whole text afresh (its cache stays a prefix of the
    text across the lookup's rounds)."""
    target = random_model("llama", vocab=V, hidden=64, layers=2, seed=0)
    target.lm_head.weight.data *= 8
    small = random_model("llama", vocab=V, hidden=32, layers=1, seed=5)
    proposer = LookupFirst().bind(ModelsByRole(target, small))
    assert type(proposer.drafter) is DraftModel and not proposer.needs_features
    lm, stopper, who = CachedLM(target), Stopper(), Counter()
    real_propose = proposer.propose

    def propose(tokens, *a):
        d = real_propose(tokens, *a)
        who[proposer.drafted_by] += 1
        if proposer.drafted_by == "drafter":
            assert d.tokens.tolist() == generate(CachedLM(small), tokens, len(d.tokens), Sampling(), stopper).tokens
        return d

    proposer.propose = propose
    for seed in range(3):
        head = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([head, head[:2]])
        ref = generate(lm, prompt, 30, Sampling(), stopper)
        assert generate(lm, prompt, 30, Sampling(), stopper, proposer, Fixed(3)).tokens == ref.tokens
    assert who["lookup"] > 0 and who["drafter"] > 0


def test_drafter_passes_its_cache_as_its_transformers_takes_it(tiny):
    """The drafter's layer gets its KV cache through specexp.models.cached_lm.cache_arg (`cache=` in transformers
    5.x, where `past_key_values=` is deprecated and goes in 5.40), and decoding with the cache gives
    the same features as one pass over the whole sequence."""
    import warnings

    _, drafter, data = tiny
    f, e = data["hidden"][:1, :6].float(), torch.randn(1, 6, drafter.config.hidden_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        whole, _ = drafter(f, e, None, use_cache=False)
        first, cache = drafter(f[:, :4], e[:, :4], None, use_cache=True)
        rest, _ = drafter(f[:, 4:], e[:, 4:], cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lookup_first", [False, True], ids=["drafter", "lookup-first"])
def test_drafter_cache_is_rolled_back_to_the_target_features(tiny, lookup_first):
    """After every round the drafter's cache holds exactly the positions fed with the target's
    features: tokens[:-1] of the sequence (the last token's feature is not known yet); with a
    lookup in front, also after the rounds the lookup drafted."""
    target, drafter, _ = tiny
    proposer = (LookupFirst() if lookup_first else DraftModel()).bind(ModelsByRole(target, drafter))
    feature_lm = proposer.drafter.lm if lookup_first else proposer.lm
    lm, policy, stopper = CachedLM(target), Fixed(3), Stopper()
    prompt = torch.tensor([5, 9, 2, 7, 1, 5, 9])
    seen, who = [], Counter()
    real_observe = proposer.observe

    def observe(n):
        real_observe(n)
        seen.append((feature_lm.length, feature_lm.pending.shape[0]))
        who[getattr(proposer, "drafted_by", "drafter")] += 1

    proposer.observe = observe
    g = generate(lm, prompt, 30, Sampling(), stopper, proposer, policy)
    assert who["lookup"] > 0 if lookup_first else not who["lookup"]
    lengths = [prompt.shape[0] + sum(g.emitted[:i]) for i in range(len(g.emitted))]  # tokens before each round
    for (cached, pending), before, n in zip(seen, lengths, g.accepted):
        # round start: `before` tokens; the target kept features for before + n of them (all but the new last)
        assert cached + pending == before + n + 1  # cached + unfed real features (f_{-1} counts once)
        assert cached <= before


def _joint23(model, prompt, sampling, v):
    """Exact distribution [v, v] of the 2nd and 3rd sampled tokens (the 1st marginalised out)."""
    def probs(seq):
        return sampling.probs(CachedLM(model).forward(torch.tensor(seq))[-1])

    p1 = probs(prompt)
    out = torch.zeros(v, v)
    for a in range(v):
        if p1[a] == 0:
            continue
        p2 = probs(prompt + [a])
        for b in range(v):
            if p2[b] > 0:
                out[b] += p1[a] * p2[b] * probs(prompt + [a, b])
    return out


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_k=5)], ids=["T1", "T0.7-topk5"])
def test_feature_drafter_sampling_preserves_target_distribution(sampling):
    """Chi-square goodness of fit of the 2nd and 3rd tokens (both drafted by the feature drafter,
    gamma 2, after the first round read the prompt) against the target's exact joint."""
    v = 8
    target = random_model("llama", vocab=v, hidden=32, layers=2, seed=10)
    target.lm_head.weight.data *= 8
    drafter = init_feature_drafter(target, 1)
    prompt = [1, 2, 3]
    p = _joint23(target, prompt, sampling, v)
    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    lm, policy, stopper = CachedLM(target), Fixed(2), Stopper()
    n_draws, counts, accepted = 2000, torch.zeros(v, v), 0
    for i in range(n_draws):
        g = generate(lm, torch.tensor(prompt), 4, sampling, stopper, proposer, policy, torch.Generator().manual_seed(i))
        assert g.drafted[:2] == [0, 2]
        counts[g.tokens[1], g.tokens[2]] += 1
        accepted += g.accepted[1]
    assert 0 < accepted < 2 * n_draws  # both acceptance and rejection paths were exercised
    assert counts.flatten()[p.flatten() == 0].sum() == 0  # never a token the filters removed
    assert pooled_chisquare(counts, p, n_draws) > 1e-3


@pytest.mark.parametrize("sampling, source", [  # one setting per source in the fast suite, the other two slow
    pytest.param(Sampling(1.0), "lookup", id="T1-lookup", marks=pytest.mark.slow),
    pytest.param(Sampling(0.7, top_k=5), "lookup", id="T0.7-topk5-lookup"),
    pytest.param(Sampling(1.0), "datastore", id="T1-datastore"),
    pytest.param(Sampling(0.7, top_k=5), "datastore", id="T0.7-topk5-datastore", marks=pytest.mark.slow)])
def test_lookup_first_sampling_preserves_target_distribution(sampling, source):
    """The same chi-square with a prompt lookup (and a datastore) in front of the feature drafter:
    the prompt's tail repeats (or the datastore knows it), so the one-hot retrieval drafts and the
    drafter's sampled ones both decide tokens 2-3."""
    v = 8
    target = random_model("llama", vocab=v, hidden=32, layers=2, seed=10)
    target.lm_head.weight.data *= 8
    store = None
    if source == "datastore":  # knows what follows (4, 5) and some other pairs, not all
        store = Datastore.from_replies([[4, 5, 6, 7, 1], [3, 6, 2, 0], [6, 7, 5, 5], [0, 3, 1, 1]], min_n=2, min_count=1)
    proposer = LookupFirst(datastore=store).bind(ModelsByRole(target, init_feature_drafter(target, 1)))
    prompt = [1, 2, 3, 1, 2] if source == "lookup" else [1, 2, 3, 4, 5]
    p = _joint23(target, prompt, sampling, v)
    lm, policy, stopper = CachedLM(target), Fixed(2), Stopper()
    n_draws, counts, who = 2000, torch.zeros(v, v), Counter()
    for i in range(n_draws):
        g = generate(lm, torch.tensor(prompt), 4, sampling, stopper, proposer, policy, torch.Generator().manual_seed(i))
        counts[g.tokens[1], g.tokens[2]] += 1
        who[proposer.drafted_by] += 1  # the last round's drafter
    assert who[source] > 100 and who["drafter"] > 100, who
    assert counts.flatten()[p.flatten() == 0].sum() == 0
    assert pooled_chisquare(counts, p, n_draws) > 1e-3


def test_training_is_reproducible():
    target = random_model("llama", vocab=V, hidden=64, layers=2, seed=0)
    a, _, curve_a = quick_train(target, seed=3, epochs=2)
    b, _, curve_b = quick_train(target, seed=3, epochs=2)
    c, _, _ = quick_train(target, seed=4, epochs=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and curve_a == curve_b
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_small_build_end_to_end(random_pair_dir, tmp_path):
    """specexp-eagle's build on a tiny target: build.json, reuse, the teacher cache, and the built
    folder loads as the pair's drafter and drafts (with an 8k-style subset head) losslessly."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    spec = ModelSpec(name=str(random_pair_dir / "target"))
    kw = dict(corpus=(str(corpus),), corpus_tokens=2000, replies=0, seq_len=32, topk=4, subset=64, epochs=2.0,
              batch=8, progress=False)
    out = Path(build_feature_drafter(spec, str(tmp_path / "eagle"), **kw))
    info = json.loads((out / "build.json").read_text())
    assert info["params"]["subset"] == 64 and info["steps"] >= 1 and info["training_curve"]
    assert set(info["heldout_corpus_top1_agreement"]) == {"untrained", "trained", "positions"}
    assert info["heldout_corpus_chain_acceptance"]["gamma"] == 4
    assert "heldout_reply_top1_agreement" not in info  # no replies: corpus text only
    assert len(list(tmp_path.glob(".eagle-teacher-*.pt"))) == 1  # the target's reads, kept for reruns
    stamp = (out / "build.json").stat().st_mtime_ns
    assert build_feature_drafter(spec, str(out), **kw) == str(out)  # same parameters: reused
    assert (out / "build.json").stat().st_mtime_ns == stamp
    longer = Path(build_feature_drafter(spec, str(tmp_path / "eagle-longer"), **(kw | {"epochs": 3.0})))
    assert len(list(tmp_path.glob(".*-teacher-*.pt"))) == 1  # other training, same data: the same reads
    assert json.loads((longer / "build.json").read_text())["windows"] == info["windows"]

    target = load_model(spec, torch.float32, torch.device("cpu"))
    drafter = load_model(ModelSpec(name=str(out)), torch.float32, torch.device("cpu"))
    assert isinstance(drafter, FeatureDrafterModel)
    proposer = DraftModel(vocab=32).bind(ModelsByRole(target, drafter))
    assert isinstance(proposer, FeatureDrafter) and proposer.lm.ids.numel() == 32
    lm, stopper = CachedLM(target), Stopper()
    prompt = torch.tensor([5, 17, 42, 8, 99])
    ref = generate(lm, prompt, 24, Sampling(), stopper)
    g = generate(lm, prompt, 24, Sampling(), stopper, proposer, Fixed(3))
    assert g.tokens == ref.tokens and sum(g.drafted) > 0


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_target(random_pair_dir, tmp_path):
    """The random pair's target with a chat template (its tokenizer has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_pair_dir / "target")
    tok.chat_template = CHAT
    target = load_model(ModelSpec(name=str(random_pair_dir / "target")), torch.float32, torch.device("cpu"))
    target.save_pretrained(tmp_path / "chat-target")
    tok.save_pretrained(tmp_path / "chat-target")
    return target, tok, ModelSpec(name=str(tmp_path / "chat-target"))


def test_replies_are_read_while_the_target_writes_them(random_pair_dir, tmp_path):
    """Batched, left-padded generation with a hook on the final norm keeps, at every position of
    prompt + reply, what the target computes reading that text alone: the same hidden state and
    top-k; and the reply is the target's greedy continuation."""
    target, tok, _ = chat_target(random_pair_dir, tmp_path)
    prompts = ["hi", "the quick brown fox jumps over the lazy dog and runs far away", "one two three"]
    reads = replies_with_reads(target, chat_ids(tok, prompts), tok.eos_token_id, tok.eos_token_id, 10, 2, 4,
                               False)  # batches of unequal prompt lengths
    assert len(reads) == 3
    for q, r in zip(prompts, reads):
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        assert r["ids"][: r["prompt_tokens"]].tolist() == tok(text, add_special_tokens=False)["input_ids"]
        ids, probs, hidden = teacher_read(target, r["ids"][None], 4, 1, False)
        assert torch.equal(ids[0, :, 0], r["top_ids"][:, 0])
        torch.testing.assert_close(hidden[0].float(), r["hidden"].float(), atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(probs[0].float(), r["top_probs"].float(), atol=2e-3, rtol=1e-2)
        p = r["prompt_tokens"]
        assert len(r["ids"]) > p and torch.equal(r["ids"][p:], r["top_ids"][p - 1: -1, 0])  # greedy replies


def test_reply_prompts_follow_the_mix():
    from specexp.builds.corpus import code_stubs
    from specexp.builds.train_distilled_drafter import SUMMARIZE, reply_prompts

    stubs = code_stubs()
    assert len(stubs) > 100 and all(s.startswith("def ") and s.rstrip().endswith('"""') for s in stubs)
    assert reply_prompts(500, 7, {"code": 3}) == stubs[:7]
    with pytest.raises(ValueError, match="unknown kind.*reply_mix"):
        reply_prompts(500, 3, {"sharegpt": 1})
    assert reply_prompts(500, 5000, {"code": 1, "gsm8k": 0}) == stubs  # a 0 source is left out (it used to hang)
    mixed = reply_prompts(500, 10, {"xsum": 1, "gsm8k": 2, "code": 2}, article_chars=100)
    if not mixed[0].startswith(SUMMARIZE):
        pytest.skip("no shared data (../shared/data): XSum and GSM8K prompts are absent")
    assert [m.startswith(SUMMARIZE) for m in mixed] == [True, False, False, False, False] * 2
    assert mixed[3:5] == stubs[:2] and mixed[8:10] == stubs[2:4]
    assert all(len(m) <= len(SUMMARIZE) + 100 for m in mixed[::5])


def test_build_from_the_targets_replies(random_pair_dir, tmp_path):
    """A build whose text is the target's replies to stdlib stubs (no shared data needed)."""
    _, _, spec = chat_target(random_pair_dir, tmp_path)
    out = Path(build_feature_drafter(spec, str(tmp_path / "eagle"), replies=6, reply_mix={"code": 1},
                                     reply_tokens=8, reply_batch=3, seq_len=16, topk=4, subset=64, epochs=1.0,
                                     batch=4, progress=False))
    info = json.loads((out / "build.json").read_text())
    replies = info["corpus_documents"]["replies"]
    assert replies["prompts"] == 6 and 0 < replies["reply_tokens"] <= 6 * 8
    assert info["windows"]["tokens"] == 16 * (info["windows"]["train"] + info["windows"]["heldout"])


def strategies_taking_a_drafter() -> list[str]:
    """Every shipped strategy whose proposer drafts with the pair's drafter model (DraftModel, or
    a lookup in front of it), whatever its length policy."""
    return sorted(p.stem for p in (CONF / "strategy").glob("*.yaml")
                  if (compose([f"strategy={p.stem}"]).strategy.get("proposer") or {}).get("model") == "drafter")


def test_strategies_taking_a_drafter_are_the_drafter_and_lookup_ones():
    names = strategies_taking_a_drafter()
    assert set(strategies_drafting_with_the_drafter()) < set(names)
    assert {"lookup_entropy", "lookup_store_entropy", "lookup_store_cost", "cost_aware", "adaedl"} <= set(names)


@pytest.mark.parametrize("name", strategies_taking_a_drafter())
def test_eagle_pair_composes_with_any_strategy(tiny, name, tmp_path):
    """`model_pair=smollm2-135m__eagle strategy=<name>` for every strategy that takes a drafter: the
    config composes with the feature drafter as the pair's drafter, the strategy builds as a run
    builds it on a feature drafter (the tiny one: DraftModel hands over to FeatureDrafter), and it
    decodes: greedy output is the target's own, with drafts made. A token-tree strategy drafts
    its tree from the features (FeatureTreeDrafter)."""
    target, drafter, _ = tiny
    (tmp_path / "replies.json").write_text(json.dumps({"replies": [[10, 11, 12, 13, 14]] * 4}))
    overrides = ["model_pair=smollm2-135m__eagle", f"strategy={name}"]
    cfg = compose(overrides)
    if "store" in cfg.strategy:  # the datastore: a folder of replies instead of a build for SmolLM2
        cfg = compose([*overrides, f"strategy.store={tmp_path}"])
    assert cfg.model_pair.build._target_ == "specexp.builds.train_feature_drafter.build_feature_drafter"
    assert cfg.model_pair.drafter.name == cfg.model_pair.dir
    assert cfg.strategy.proposer.model == "drafter"
    strategy = OmegaConf.to_container(cfg.strategy)
    strategy["proposer"].pop("vocab", None)  # the pair's subset head is sized for SmolLM2's vocabulary
    proposer, policy = build.strategy(OmegaConf.create(strategy), ModelsByRole(target, drafter))
    if getattr(get_object(strategy["proposer"]["_target_"]), "drafts_trees", False):
        # strategy=tree hands over to EAGLE-2's tree drafted from the target's features
        assert isinstance(proposer, FeatureTreeDrafter)
    assert isinstance(getattr(proposer, "drafter", proposer), FeatureDrafter) and proposer.needs_features
    lm, stopper, drafted = CachedLM(target), Stopper(), 0
    for seed in range(2):
        prompt = torch.randint(0, V, (6 + seed,), generator=torch.Generator().manual_seed(seed))
        ref = generate(lm, prompt, 24, Sampling(), stopper)
        policy.start_sample()
        g = generate(lm, prompt, 24, Sampling(), stopper, proposer, policy, torch.Generator().manual_seed(seed))
        assert g.tokens == ref.tokens
        drafted += sum(g.drafted)
    assert drafted > 0


@pytest.mark.slow
def test_full_smollm2_build():
    """The default build (19 minutes on 2 CPU cores; reused when built): needs the SmolLM2 GGUF (specexp-fetch)."""
    from hydra.utils import instantiate

    cfg = compose(["model_pair=smollm2-135m__eagle", "model_pair.build.threads=2"])  # the suite runs on one thread
    if not Path(cfg.model_pair.target.local).exists():
        pytest.skip("SmolLM2 GGUF not fetched (specexp-fetch)")
    out = Path(instantiate(cfg.model_pair.build))
    info = json.loads((out / "build.json").read_text())
    agree = info["heldout_reply_top1_agreement"]
    assert agree["trained"] > agree["untrained"] + 0.2
    assert info["heldout_reply_chain_acceptance"]["rounds"] > 0
    assert info["heldout_leak_check"]["heldout_replies_in_training_windows"] == 0
