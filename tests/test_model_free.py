"""The model-free drafters: longest-suffix lookup and the bigram chain on hand-made token
sequences, the bigram table's build and cache, and both drafters in the decode loop (greedy
output equal to the target's, no drafter forwards)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, make_tokenizer, random_model

from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.proposers import Bigram, LookupFirst, PromptLookup
from specexp.builds.build_bigram import build_bigram
from specexp.experiment.instantiate import provide_builds
from specexp.proposers.bigram import count_table, fit_table, load_table
from specexp.proposers.lookup import longest_suffix_match
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

T = torch.tensor
GREEDY = Sampling()


def lookup(seq, k, bigram=None, **kw):
    pl = PromptLookup(bigram=bigram, **kw)
    pl.reset(T(seq))
    d = pl.propose(T(seq), k, None, GREEDY, None)
    assert d.probs is None  # deterministic proposals
    return d.tokens.tolist()


# ------------------------------------------------------------------------------ the lookup


def test_longest_suffix_wins_over_earliest_occurrence():
    # suffix [1, 2]: "2" ends at 1 (after 7) and at 4 (after 1): the 2-gram occurs at 3..4 only
    seq = [7, 2, 5, 1, 2, 6, 1, 2]
    assert longest_suffix_match(T(seq)) == (2, 4)
    assert lookup(seq, 3) == [6, 1, 2]
    # capped at 1-grams, the earliest "2" (the prompt's) wins
    assert longest_suffix_match(T(seq), max_ngram=1) == (1, 1)
    assert lookup(seq, 3, max_ngram=1) == [5, 1, 2]


def test_earliest_or_latest_occurrence():
    seq = [5, 1, 9, 1, 7, 1]  # "1" at 1 and 3, neither extends to a 2-gram
    assert longest_suffix_match(T(seq)) == (1, 1)
    assert lookup(seq, 3) == [9, 1, 7]
    assert longest_suffix_match(T(seq), prefer="last") == (1, 3)
    assert lookup(seq, 3, prefer="last") == [7, 1]  # only 2 tokens follow; no bigram to fill


def test_whole_repeat_and_overlapping_match():
    assert longest_suffix_match(T([1, 2, 3, 4, 1, 2, 3])) == (3, 2)
    assert lookup([1, 2, 3, 4, 1, 2, 3], 4) == [4, 1, 2, 3]
    # a periodic text matches itself with overlap: the continuation runs into the suffix
    assert longest_suffix_match(T([8, 8, 8, 8])) == (3, 2)
    assert lookup([8, 8, 8, 8], 2) == [8]


def test_no_match_and_min_ngram():
    assert longest_suffix_match(T([1, 2, 3])) is None
    assert lookup([1, 2, 3], 4) == []
    assert longest_suffix_match(T([4, 1, 5, 1]), min_ngram=2) is None
    assert longest_suffix_match(T([3]) ) is None


def test_bigram_chain_fills_the_rest():
    table = Bigram.from_table([1, 2, 3, 0, 6, 4, 5])  # 0->1->2->3->0, 4->6->5->4
    # lookup finds [4, 3] after "3" ... then the chain continues from 3: 0, 1
    assert lookup([3, 4, 3], 4, bigram=table) == [4, 3, 0, 1]
    # no match at all: the whole draft is the chain from the last token
    assert lookup([2, 5], 3, bigram=table) == [4, 6, 5]
    assert table.propose(T([2, 5]), 3, None, GREEDY, None).tokens.tolist() == [4, 6, 5]
    pl = PromptLookup(bigram=table)
    pl.records = True
    pl.reset(T([3, 4, 3]))
    d = pl.propose(T([3, 4, 3]), 4, None, GREEDY, None)
    assert [r["source"] for r in d.records] == ["lookup", "lookup", "bigram", "bigram"]


def test_draft_sized_from_the_match():
    """Cost-aware lookup: a suffix of n tokens drafts ceil(draft_per_ngram * n), capped by max_len."""
    seq = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]  # suffix [1, 2, 3] matches at 0..2: 3-gram
    assert lookup(seq, 8) == [4, 5, 6, 7, 8, 9, 1, 2]
    assert lookup(seq, 8, draft_per_ngram=1.0) == [4, 5, 6]
    assert lookup(seq, 8, draft_per_ngram=1.5) == [4, 5, 6, 7, 8]  # ceil(4.5)
    assert lookup(seq, 4, draft_per_ngram=2.0) == [4, 5, 6, 7]  # capped by the policy's length
    # only a real match drafts: min_ngram 2 refuses a lone repeated token
    assert lookup([5, 1, 9, 1], 4, min_ngram=2) == []
    table = Bigram.from_table([1, 2, 3, 0])
    # no match: ceil(draft_per_ngram * 1) tokens of fill
    assert lookup([2, 1], 8, bigram=table, min_ngram=2, draft_per_ngram=2.0) == [2, 3]


def test_bigram_fill_only_when_its_corpus_fits_the_text():
    """fit = share of the prompt's next tokens the table predicts; below min_fit nothing is drafted."""
    table = [1, 2, 3, 0]  # 0->1->2->3->0
    b = Bigram.from_table(table)
    assert b.fit(T([0, 1, 2, 3, 0])) == 1.0
    assert b.fit(T([0, 2, 1, 3, 3])) == 0.0
    assert b.fit(T([0, 1, 3, 3, 0])) == 0.5  # 0->1 and 3->0 hit, 1->3 and 3->3 miss
    assert b.fit(T([2])) is None
    fitting = Bigram.from_table(table)
    fitting.min_fit = 0.5
    fitting.reset(T([0, 1, 3, 3, 0]))
    assert fitting.fits and fitting.propose(T([0, 1, 3]), 2, None, GREEDY, None).tokens.tolist() == [0, 1]
    fitting.reset(T([0, 2, 1, 3, 3]))
    assert not fitting.fits and fitting.propose(T([0, 1, 3]), 2, None, GREEDY, None).tokens.tolist() == []
    # the lookup's fill follows the same verdict; its own matches do not
    pl = PromptLookup(bigram=fitting)
    pl.reset(T([0, 2, 1, 3, 3]))
    assert pl.propose(T([0, 2, 1, 3, 3, 0, 2]), 4, None, GREEDY, None).tokens.tolist() == [1, 3, 3, 0]
    assert pl.propose(T([0, 2, 1, 3, 3, 1, 0]), 4, None, GREEDY, None).tokens.tolist() == [2, 1, 3, 3]
    assert pl.propose(T([0, 2, 1, 3, 3, 1, 3]), 4, None, GREEDY, None).tokens.tolist() == [3, 1, 3]  # no fill
    fitting.min_fit = 0.0  # no fit required: the fill is on
    pl.reset(T([0, 2, 1, 3, 3]))
    assert pl.propose(T([0, 2, 1, 3, 3, 1, 3]), 4, None, GREEDY, None).tokens.tolist() == [3, 1, 3, 0]


def test_encoder_decoder_lookup_searches_the_prompt_then_the_decoder_text():
    pl = PromptLookup(encoder_decoder=True)
    pl.reset(T([10, 11, 12, 13, 1]))  # the encoder prompt, ending in </s> (1)
    # decoder [0, 11]: "11" is found in the prompt; the continuation stops at the prompt's end
    assert pl.propose(T([0, 11]), 8, None, GREEDY, None).tokens.tolist() == [12, 13, 1]
    # the suffix comes from the decoder text only: [0] never matches the prompt's tokens
    assert pl.propose(T([0]), 3, None, GREEDY, None).tokens.tolist() == []
    # ... then the decoder text itself: "12 5" was generated before
    assert pl.propose(T([0, 12, 5, 7, 12, 5]), 2, None, GREEDY, None).tokens.tolist() == [7, 12]
    # nothing follows the prompt's last token inside the prompt
    assert pl.propose(T([0, 1]), 2, None, GREEDY, None).tokens.tolist() == []


# ------------------------------------------------------------------------------ the bigram


def test_bigram_table_counts_by_hand():
    nxt, info = count_table([[1, 2, 1, 2, 1, 3], [4, 6], [4, 5]], vocab_size=8)
    assert nxt[1] == 2  # 1->2 twice, 1->3 once
    assert nxt[2] == 1
    assert nxt[4] == 5  # tie 4->5 / 4->6: the smaller id
    assert nxt[3] == 1 and nxt[7] == 1  # never followed: the most frequent token (1, three times)
    assert info == {"n_tokens": 10, "n_pairs": 7, "ids_with_successor": 3, "fallback_token": 1}
    # fitted to a wider head: the extra ids chain to the fallback; to a narrower one, out-of-range successors too
    assert fit_table(T([3, 2, 0]), 5, fallback=2).tolist() == [3, 2, 0, 2, 2]
    assert fit_table(T([3, 2, 0]), 2, fallback=1).tolist() == [1, 1]


def test_build_bigram_caches_and_records_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer(300)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    path = build_bigram(tok, tokenizer_name="test-bpe", corpus=str(corpus))
    assert path.parent == tmp_path / "cache" / "bigram"
    nxt, meta = load_table(path)
    ids = tok(CORPUS, add_special_tokens=False)["input_ids"]
    assert meta["source"]["kind"] == "path" and meta["source"]["corpus"] == str(corpus)
    assert meta["source"]["bytes"] == len(CORPUS.encode()) and len(meta["source"]["sha256"]) == 64
    assert meta["tokenizer"] == "test-bpe" and meta["n_tokens"] == len(ids) and nxt.numel() == len(tok)
    assert nxt.tolist() == count_table([ids], len(tok))[0].tolist()
    assert tok.decode([int(nxt[tok.convert_tokens_to_ids("def")])]).startswith(" ")  # "def" -> a word after a space
    mtime = path.stat().st_mtime_ns
    assert build_bigram(tok, corpus=str(corpus)) == path and path.stat().st_mtime_ns == mtime  # reused
    corpus.write_text(CORPUS + "x = 1\n")
    assert build_bigram(tok, corpus=str(corpus)) != path  # another corpus, another table


def test_build_bigram_from_a_local_dataset_and_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer(300)
    tok.save_pretrained(tmp_path / "tok")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"body": line}) + "\n" for line in CORPUS.splitlines() if line))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import build_bigram as script

    out = tmp_path / "table.json"
    path = script.main(["--tokenizer", str(tmp_path / "tok"), "--dataset", "json", "--data-files", str(rows),
                        "--text-field", "body", "--out", str(out)])
    assert path == out
    nxt, meta = load_table(out)
    assert meta["source"]["kind"] == "dataset" and meta["source"]["dataset"] == "json"
    assert meta["source"]["text_field"] == "body" and meta["n_tokens"] > 0 and nxt.numel() == len(tok)


# ------------------------------------------------------------------------- in the loop


class _Pair:
    def __init__(self, target, tokenizer=None):
        self.target, self.tokenizer, self.vocab_size, self.specs = target, tokenizer, 300, {}


@pytest.fixture(scope="module")
def target():
    return random_model("llama", 300, 64, 2, 0)


def _greedy_table(model, V=300):
    """The target's own greedy successor of each token given a one-token context: a bigram table
    that often agrees with it."""
    with torch.no_grad():
        return model(input_ids=torch.arange(V)[:, None]).logits[:, -1].argmax(-1)


@pytest.mark.parametrize("make", [
    lambda t: Bigram.from_table(_greedy_table(t)),
    lambda t: PromptLookup(bigram=Bigram.from_table(_greedy_table(t))),
    lambda t: PromptLookup(max_ngram=2),
], ids=["bigram", "lookup+bigram", "lookup-only"])
def test_model_free_strategies_equal_target_greedy(target, make):
    proposer = make(target).bind(_Pair(target))
    stopper = Stopper()
    accepted = 0
    for seed in range(3):
        prompt = torch.randint(1, 300, (16,), generator=torch.Generator().manual_seed(seed))
        prompt = torch.cat([prompt, prompt])  # a repeat for the lookup
        base = generate(CachedLM(target), prompt, 24, GREEDY, stopper)
        g = generate(CachedLM(target), prompt, 24, GREEDY, stopper, proposer, Fixed(6))
        assert g.tokens == base.tokens
        assert g.drafter_forwards == 0 and g.model_forwards == {"target": len(g.drafted)}
        accepted += sum(g.accepted)
    assert accepted > 0


def test_a_run_builds_the_bigram_table_from_the_pair_tokenizer(tmp_path, monkeypatch, target):
    """A Bigram without a table never builds one itself (it drafts nothing but an error); the
    experiment layer builds it with the pair's tokenizer, cached, also inside a prompt lookup."""
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    pair = _Pair(target, make_tokenizer(300))
    with pytest.raises(RuntimeError, match="bind"):
        Bigram(corpus=str(corpus)).bind(pair).draft(5, 3)
    b = provide_builds(Bigram(corpus=str(corpus)), pair).bind(pair)
    assert b.table.numel() == 300 and b.meta["source"]["corpus"] == str(corpus)
    built = list((tmp_path / "cache" / "bigram").glob("*.json"))
    assert len(built) == 1 and b.meta["path"] == str(built[0])
    ids = pair.tokenizer(CORPUS, add_special_tokens=False)["input_ids"]
    assert b.table.tolist() == count_table([ids], 300)[0].tolist()  # the corpus' counts
    nested = provide_builds(PromptLookup(bigram=Bigram(corpus=str(corpus))), pair).bind(pair)
    assert nested.bigram.table.tolist() == b.table.tolist()
    assert len(list((tmp_path / "cache" / "bigram").glob("*.json"))) == 1  # reused


def test_per_token_policies_are_refused():
    """Model-free drafts have no distribution for a per-token length rule to read."""
    from specexp.length import LengthPolicy

    class PerToken(LengthPolicy):
        needs_steps = True

    for proposer in (Bigram.from_table([0, 1]), PromptLookup()):
        proposer.reset(T([1, 0]))
        with pytest.raises(ValueError, match="token by token"):
            proposer.propose(T([1, 0]), 2, PerToken(4), GREEDY, None)


def test_shipped_smollm2_model_free_pairs_are_cost_aware():
    """The shipped pairs draft only on a real match, sized from it, and fill only where the chain fits."""
    from conftest import compose
    from hydra.utils import instantiate

    cfg = compose(["model_pair=smollm2-135m__prompt_lookup"])
    pl = instantiate(cfg.strategy.proposer, _convert_="all")
    assert (pl.min_ngram, pl.draft_per_ngram, pl.bigram.min_fit) == (2, 1.0, 0.15)
    bg = instantiate(compose(["model_pair=smollm2-135m__bigram"]).strategy.proposer, _convert_="all")
    assert bg.min_fit == 0.15
    # a strategy chosen on the command line still wins over the pair's
    assert compose(["model_pair=smollm2-135m__bigram", "strategy=autoregressive"]).strategy.proposer is None
    # ... and gets none of the pair's cost-aware keys (they live in strategy/*_chat.yaml, not in the pair)
    for pair in ("smollm2-135m__prompt_lookup", "smollm2-135m__bigram"):
        assert set(compose([f"model_pair={pair}", "strategy=nasd"]).strategy) == set(compose(["strategy=nasd"]).strategy)


def test_lookup_first_sizes_its_draft_from_the_match_and_ends_it_at_eos():
    """LookupFirst's lookup round (no drafter involved): a match of n drafts n tokens
    (draft_per_ngram 1), or up to max_len (null), cut after an EOS as a drafter's draft is."""
    prompt = torch.tensor([1, 2, 3, 9, 4, 5])
    text = torch.cat([prompt, torch.tensor([1, 2])])  # "1 2" repeats: it was followed by 3 9 4 5 1 2
    sized = LookupFirst()
    sized.lookup.reset(prompt)
    assert sized.propose(text, 10, Fixed(10), Sampling(), None).tokens.tolist() == [3, 9]
    assert sized.drafted_by == "lookup"
    whole = LookupFirst(draft_per_ngram=None)
    whole.lookup.reset(prompt)
    assert whole.propose(text, 10, Fixed(10), Sampling(), None).tokens.tolist() == [3, 9, 4, 5, 1, 2]
    whole.eos = frozenset({9})
    assert whole.propose(text, 10, Fixed(10), Sampling(), None).tokens.tolist() == [3, 9]
