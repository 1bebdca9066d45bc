"""The datastore of the target's own replies (specexp/builds/build_datastore.py), its retrieval drafts
(specexp/proposers/retrieval.py) in the prompt lookup, its build for a run (specexp/experiment/instantiate.py)
and its command (`specexp-datastore`, specexp/experiment/build_commands.py)."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf
from conftest import CORPUS, ModelsByRole, compose, make_tokenizer, random_model

from specexp.experiment import instantiate as build
from specexp.builds.build_datastore import build_datastore
from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.loading import ModelSpec, load_model, load_tokenizer
from specexp.proposers import Datastore, PromptLookup
from specexp.proposers.retrieval import NGramTable, load_replies
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

DOCS = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [7, 2, 6], [8, 2, 9], [8, 2, 9]]


def test_the_table_counts_what_followed_each_context():
    t = NGramTable(DOCS, max_n=3)
    assert t.next[2][(2, 3)] == (4, pytest.approx(2 / 3), 3)  # 4 twice, 5 once
    assert t.next[1][(2,)] == (3, pytest.approx(0.5), 6)  # 3 three times, 9 twice, 6 once
    assert t.next[3][(1, 2, 3)] == (4, pytest.approx(2 / 3), 3)
    assert t.tokens == sum(map(len, DOCS))


def test_drafts_follow_the_longest_known_context_while_confident():
    t = NGramTable(DOCS, max_n=3)
    assert t.draft([0, 1, 2], 5, min_n=2, min_count=1, min_share=0.5) == [3, 4]  # nothing ever followed 4
    assert t.draft([0, 1, 2], 5, min_n=2, min_count=1, min_share=0.7) == [3]  # 4 follows (1, 2, 3) 2/3 of the time
    assert t.draft([0, 1, 2], 1, min_n=2, min_count=1, min_share=0.5) == [3]  # at most k
    assert t.draft([7, 2], 5, min_n=1, min_count=1, min_share=0.5) == [6]  # (7, 2) -> 6 wins over (2,) -> 3
    assert t.draft([8, 2], 5, min_n=2, min_count=1, min_share=0.5) == [9]
    assert t.draft([0, 2], 5, min_n=2, min_count=1, min_share=0.5) == []  # no context of 2+ tokens known
    assert t.draft([0, 2], 5, min_n=1, min_count=1, min_share=0.5) == [3, 4]  # (2,) -> 3, then (2, 3) -> 4
    assert t.draft([0, 1, 2], 5, min_n=2, min_count=4, min_share=0.5) == []  # (1, 2) seen 3 times only
    assert t.draft([0, 1, 2], 5, min_n=2, min_count=1, min_share=0.5, eos={3}) == [3]  # ends after an EOS


def test_ties_go_to_the_smaller_id_and_bad_settings_are_refused():
    assert NGramTable([[1, 5], [1, 4]], max_n=1).next[1][(1,)] == (4, 0.5, 2)
    with pytest.raises(ValueError, match="min_n"):
        Datastore(min_n=5, max_n=4)
    with pytest.raises(ValueError, match="min_share"):
        Datastore(min_share=1.5)
    with pytest.raises(RuntimeError, match="bind"):
        Datastore().draft(torch.tensor([1, 2]), 3)
    with pytest.raises(RuntimeError, match="bind"):  # bound without a folder: a proposer never builds one
        Datastore().bind(object()).draft(torch.tensor([1, 2]), 3)


@pytest.fixture(scope="module")
def pair():
    """A random-init Llama target (sharpened head) and the test tokenizer."""
    tok = make_tokenizer()
    target = random_model("llama", len(tok), 64, 2, seed=0, eos=tok.eos_token_id)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)
    return target, tok


def test_prompt_lookup_drafts_from_the_datastore_and_stays_lossless(pair):
    """Greedy: the target's own replies to the first halves of the prompts make the datastore;
    decoding the prompts drafts from it where the text does not repeat, those drafts are accepted,
    and the output is the target's. A datastore of junk changes nothing but the speed."""
    target, tok = pair
    lm, stopper = CachedLM(target), Stopper()
    prompts = [torch.tensor(tok(CORPUS[i * 37: i * 37 + 40])["input_ids"]) for i in range(3)]
    refs = [generate(lm, p, 24, Sampling(), stopper).tokens for p in prompts]
    for store, accepted in ((Datastore.from_replies([r[:16] for r in refs], min_n=2, min_count=1), True),
                            (Datastore.from_replies([[5, 6, 7, 8] * 20], min_n=1, min_count=1), False)):
        proposer = PromptLookup(min_ngram=2, draft_per_ngram=1.0, datastore=store)
        proposer.records = True
        sources = Counter()
        for p, ref in zip(prompts, refs):
            g = generate(lm, p, 24, Sampling(), stopper, proposer, Fixed(4), records=True)
            assert g.tokens == ref
            sources.update((r["source"], r["accepted"]) for r in g.records)
        assert sources["datastore", True] > 0 if accepted else sources["datastore", False] > 0


def test_a_user_datastore_composes_and_drafts(pair, tmp_path):
    """strategy=prompt_lookup_store with strategy.store=<folder>: the folder's replies draft."""
    target, tok = pair
    (tmp_path / "replies.json").write_text(json.dumps({"replies": [[10, 11, 12, 13, 14]] * 4}))
    cfg = compose(["strategy=prompt_lookup_store", f"strategy.store={tmp_path}", "strategy.proposer.bigram=null"]).strategy
    proposer, policy = build.strategy(cfg, ModelsByRole(target))
    assert isinstance(proposer.datastore, Datastore) and proposer.datastore.min_n == 2
    draft = proposer.propose(torch.tensor([40, 41, 12]), 4, policy, Sampling(), None)
    assert draft.tokens.tolist() == []  # only a 1-token context is known: below min_n = 2
    draft = proposer.propose(torch.tensor([40, 11, 12]), 4, policy, Sampling(), None)
    assert draft.tokens.tolist() == [13, 14]  # (11, 12) -> 13 -> 14, then nothing followed 14


def test_build_datastore_writes_the_targets_greedy_replies(random_pair_dir, tmp_path, monkeypatch):
    """A small build on a tiny target (code stubs only: no shared data needed): the replies are the
    target's greedy continuations of the prompts, build.json counts them, a rerun reuses the folder,
    and other parameters build elsewhere."""
    from specexp.builds.train_distilled_drafter import reply_prompts

    spec = ModelSpec(name=str(random_pair_dir / "target"))
    kw = dict(replies=3, reply_mix={"code": 1}, reply_tokens=6, reply_batch=1)
    out = build_datastore(spec, out_dir=str(tmp_path / "store"), progress=False, **kw)
    info = json.loads((tmp_path / "store" / "build.json").read_text())
    replies = load_replies(out)
    assert info["replies"] == 3 and info["reply_tokens"] == sum(map(len, replies))
    tok, model = load_tokenizer(spec), load_model(spec, torch.float32, torch.device("cpu"))
    for q, reply in zip(reply_prompts(500, 3, {"code": 1}), replies):
        ids = torch.tensor([tok(q, add_special_tokens=False)["input_ids"]])  # no chat template: the text as is
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id, top_k=None, top_p=None, temperature=None)
        want = ref[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in want:  # the reply ends with its EOS (kept), as generate's output does
            want = want[: want.index(tok.eos_token_id) + 1]
        assert reply == want and 1 <= len(reply) <= 6  # the exact reply: every token, no shorter prefix
    stamp = (tmp_path / "store" / "replies.json").stat().st_mtime_ns
    assert build_datastore(spec, out_dir=str(tmp_path / "store"), progress=False, **kw) == out
    assert (tmp_path / "store" / "replies.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    default = build_datastore(spec, progress=False, **kw)  # under $SPECEXP_CACHE/datastore/<key>
    other = build_datastore(spec, progress=False, **{**kw, "replies": 2})
    assert default.startswith(str(tmp_path / "cache" / "datastore")) and load_replies(default) == replies
    assert default != other and len(load_replies(other)) == 2


def test_the_command_builds_the_pairs_datastore(random_pair_dir, tmp_path, monkeypatch, capsys):
    """`specexp-datastore` composes the pair and the strategy as a run does and builds the datastore
    where the strategy will look for it; a strategy without one is refused by name."""
    import sys

    from specexp.experiment.build_commands import datastore as main

    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path))
    args = ["model_pair=tiny", f"model_pair.target.name={random_pair_dir / 'target'}",
            "strategy.proposer.datastore.replies=2", "strategy.proposer.datastore.reply_mix={code: 1}",
            "strategy.proposer.datastore.reply_tokens=4"]
    monkeypatch.setattr(sys, "argv", ["specexp-datastore", *args])
    main()
    folder = capsys.readouterr().out.strip().split(" at ")[-1]
    assert folder.startswith(str(tmp_path / "datastore")) and len(load_replies(folder)) == 2
    node = compose(["strategy=prompt_lookup_store", *args[2:]]).strategy.proposer.datastore
    assert build_datastore(ModelSpec(name=str(random_pair_dir / "target")), progress=False,
                           **{k: node[k] for k in ("replies", "reply_mix", "reply_tokens")}) == folder  # the same key
    monkeypatch.setattr(sys, "argv", ["specexp-datastore", "strategy=entropy_static"])
    with pytest.raises(SystemExit, match="no proposer.datastore"):
        main()


def test_a_run_builds_the_datastore_a_nested_proposer_reads(random_pair_dir, tmp_path, monkeypatch):
    """strategy=prompt_lookup_store with no store folder: the experiment layer builds the datastore
    for the pair's target (the datastore sits inside the prompt lookup) before binding, in the
    cache folder `build_datastore` gives for the same settings, and the proposer drafts from it."""
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path))
    spec = ModelSpec(name=str(random_pair_dir / "target"))
    cfg = compose(["strategy=prompt_lookup_store", "strategy.proposer.bigram=null", "strategy.proposer.datastore.replies=2",
                   "strategy.proposer.datastore.reply_mix={code: 1}", "strategy.proposer.datastore.reply_tokens=4"]).strategy
    settings = {k: OmegaConf.to_container(cfg.proposer.datastore, resolve=True)[k]
                for k in ("replies", "reply_mix", "reply_tokens")}
    models = ModelsByRole(load_model(spec, torch.float32, torch.device("cpu")))
    models.specs = {"target": spec}
    proposer, _ = build.strategy(cfg, models)
    store = proposer.datastore
    assert store.dir == build_datastore(spec, progress=False, **settings)  # the same key: built once, reused
    assert store.dir.startswith(str(tmp_path / "datastore"))
    replies = load_replies(store.dir)
    assert len(replies) == 2 and store.table.tokens == sum(map(len, replies))

