"""A drafter with another tokenizer than the target's drafts through text
(specexp/proposers/cross_tokenizer.py): greedy output identical to the target alone, drafts made
and accepted, sampling and the strategies that cannot bridge refused before any weights load, and
a full command-line run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specexp.experiment import validate
from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import cached_lm
from specexp.models.loading import LOAD_COUNT, ModelSpec, Pair
from specexp.models.prompt_ids import encode_prompt
from specexp.proposers import DraftModel
from specexp.proposers.cross_tokenizer import CrossTokenizerDrafter, _after_suffix, _Decoded, _Encoded
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper
from conftest import compose

# The text both models learn by heart (code, prose, and characters of 2, 3 and 4 bytes in UTF-8).
TEXT = ("def area(r):\n    return 3.14159 * r * r\n\n"
        "# naïve café: π ≈ 3.14, “quoted” ✓ 🙂\n"
        "class Circle:\n    def __init__(self, r):\n        self.r = r\n\n"
        "for i in range(10):\n    print(area(i))\n\n")
EOS = "<|endoftext|>"

PROMPTS = [
    "def area(r):\n",  # on the learnt text: most drafts are accepted
    "class Circle:\n    def __init__(",  # ends inside a word of the text
    "# naïve café: π",  # unicode
    "🙂 “",  # off the text, unicode only
    " ",  # an almost empty prompt
    "zzz qqq 12345",  # nothing like the text
]


def _tokenizer(vocab_size: int, split_newlines: bool):
    """A byte-level BPE trained on TEXT; the two settings give different vocabularies and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex("\n"), behavior="isolated"), byte_level])
                         if split_newlines else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS)


def _trained_model(tok, hidden: int, layers: int, steps: int, seed: int):
    """A tiny Llama trained to continue TEXT (repeated, EOS between copies) by heart."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    eos = tok.convert_tokens_to_ids(EOS)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=eos, eos_token_id=eos)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    stream = torch.tensor(([eos] + tok(TEXT)["input_ids"]) * 8)
    n = len(tok(TEXT)["input_ids"]) + 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, stream.numel() - n - 1, (8,), generator=gen).tolist()
        batch = torch.stack([stream[s: s + n + 1] for s in starts])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


@pytest.fixture(scope="module")
def cross_pair(tmp_path_factory) -> dict[str, Path]:
    """A target and two drafters, each with a tokenizer of its own (the target's: 320 tokens,
    newlines split; the drafters': 280, GPT-2's pre-tokenizer): `drafter` learnt the same text as
    the target, `random` is untrained."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cross_pair")
    tok_t, tok_d = _tokenizer(320, split_newlines=True), _tokenizer(280, split_newlines=False)
    assert tok_t.get_vocab() != tok_d.get_vocab()
    target, loss_t = _trained_model(tok_t, 64, 2, 150, seed=0)
    drafter, loss_d = _trained_model(tok_d, 48, 1, 150, seed=1)
    assert loss_t < 0.5 and loss_d < 0.5, (loss_t, loss_d)  # both know the text
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    random = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok_d), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=512))
    dirs = {}
    for name, model, tok in (("target", target, tok_t), ("drafter", drafter, tok_d), ("random", random, tok_d)):
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    return dirs


def _pair(dirs, drafter: str = "drafter") -> Pair:
    return Pair(ModelSpec(name=str(dirs["target"])), {"drafter": ModelSpec(name=str(dirs[drafter]))},
                dtype="float32", device="cpu")


def _decode(pair, proposer, prompt: str, sampling=Sampling(), gamma: int = 4, max_new: int = 40):
    ids = encode_prompt(pair.tokenizer, prompt, None, torch.device("cpu"))
    stopper = Stopper([pair.tokenizer.eos_token_id], [], pair.tokenizer)
    target = cached_lm(pair.target)
    gen = torch.Generator().manual_seed(0)
    if proposer is None:
        return generate(target, ids, max_new, sampling, stopper, generator=gen)
    return generate(target, ids, max_new, sampling, stopper, proposer, Fixed(gamma), gen)


@pytest.mark.parametrize("drafter", ["drafter", "random"])
def test_greedy_output_is_the_targets_token_for_token(cross_pair, drafter):
    pair = _pair(cross_pair, drafter)
    assert not pair.shares_tokenizer("drafter")
    proposer = DraftModel().bind(pair)
    assert isinstance(proposer, CrossTokenizerDrafter)  # handed over at bind
    drafted = accepted = 0
    for prompt in PROMPTS:
        for gamma in (1, 3, 6):
            base = _decode(pair, None, prompt)
            spec = _decode(pair, proposer, prompt, gamma=gamma)
            assert spec.tokens == base.tokens, (prompt, gamma)
            assert all(k <= gamma for k in spec.drafted)  # the draft is cut to the policy's length
            assert spec.model_forwards["drafter"] == spec.drafter_forwards > 0
            drafted, accepted = drafted + sum(spec.drafted), accepted + sum(spec.accepted)
    assert drafted > 0
    if drafter == "drafter":  # it knows the target's text: the bridge carries its drafts across
        assert accepted > 0.5 * drafted, (accepted, drafted)


def test_drafts_on_the_learnt_text_are_accepted_and_the_cache_is_reused(cross_pair):
    pair = _pair(cross_pair)
    proposer = DraftModel().bind(pair)
    out = _decode(pair, proposer, PROMPTS[0], gamma=4, max_new=60)
    assert out.tokens == _decode(pair, None, PROMPTS[0], max_new=60).tokens
    assert sum(out.accepted) / sum(out.drafted) > 0.6, (out.drafted, out.accepted)
    assert len(out.drafted) < 60 / 2  # well over one token per target forward
    # the drafter's cache is cropped to the part still consistent with the accepted text, never
    # rebuilt: one forward from an empty cache (the prompt), then only new text
    assert out.model_prefills["drafter"] == 1


def test_the_draft_follows_the_context_across_a_word_cut_by_the_round(cross_pair):
    """The target's tail is re-encoded with the drafted text: a word split between the context and
    the draft becomes the target's tokens after the tail, not a re-tokenized word."""
    pair = _pair(cross_pair)
    proposer = DraftModel().bind(pair)
    tok_t = pair.tokenizer
    context = tok_t("    def __ini")["input_ids"]
    drafts = pair.tokenizer_of("drafter")("t__(self", add_special_tokens=False)["input_ids"]
    proposer.eos = {tok_t.eos_token_id}
    ids = proposer.to_target(context, 0, proposer.drafter_context("    def __ini"), drafts, max_len=20)
    assert tok_t.decode(context + ids) == "    def __init__(self"
    assert _after_suffix([1, 2, 3, 4, 5], [9, 2, 3]) == [4, 5]  # the tail's first token re-encoded otherwise
    assert _after_suffix([1, 2, 3, 2, 3], [2, 3]) == [2, 3]  # its first occurrence
    assert _after_suffix([7, 8], [5]) is None  # merged away: the caller encodes the text alone


@pytest.mark.parametrize("text", [TEXT, "# naïve café: π ≈ 3.14, “quoted” ✓ 🙂 done"])
def test_the_bridge_continues_any_prefix_of_the_targets_tokens(cross_pair, text):
    """Cut the target's tokens of a text anywhere (inside words, inside characters of several
    bytes), draft the rest of the text with the drafter's tokens: the bridge gives the target's
    tokens of the rest, so that the context and the draft spell the text again."""
    pair = _pair(cross_pair)
    proposer = DraftModel().bind(pair)
    tok_t, tok_d = pair.tokenizer, pair.tokenizer_of("drafter")
    proposer.eos = {tok_t.eos_token_id}
    ids = tok_t(text)["input_ids"]
    cut_in_a_character = 0
    for n in range(1, len(ids)):
        whole, pending = proposer.context_text(torch.tensor(ids[:n]))
        cut_in_a_character += pending > 0
        assert not whole.endswith("\ufffd") and text.startswith(whole)
        proposer.reset(None)  # the incremental decoder starts over for each cut
        drafts = tok_d(text[len(whole):], add_special_tokens=False)["input_ids"]
        draft = proposer.to_target(ids[:n], pending, proposer.drafter_context(whole), drafts, max_len=1000)
        assert ids[:n] + draft == ids, (n, tok_t.decode(ids[:n]), tok_t.decode(draft))
    assert cut_in_a_character > 0 or text == TEXT


def test_incremental_decoding_and_encoding_equal_the_whole_texts(cross_pair):
    """Round after round, the context's text and its drafter ids are computed from a frozen prefix
    and the part after it: equal to decoding / encoding everything again, through characters of
    several bytes and tokens cut in the middle of them."""
    import random

    pair = _pair(cross_pair)
    tok_t, tok_d = pair.tokenizer, pair.tokenizer_of("drafter")
    ids = tok_t(TEXT * 6)["input_ids"]
    text_of, ids_of = _Decoded(tok_t), _Encoded(tok_d)
    rng, n = random.Random(0), 1
    while n <= len(ids):
        text = text_of(ids[:n])
        assert text == tok_t.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False), n
        assert ids_of(text) == tok_d(text, add_special_tokens=False)["input_ids"], n
        n += rng.randint(1, 6)
    assert len(text_of.ids) > len(ids) // 2 and len(ids_of.ids) > 0  # most of it was frozen
    assert ids_of("x = 1") == tok_d("x = 1", add_special_tokens=False)["input_ids"]  # another text: starts over


def test_a_drafter_eos_ends_the_draft_with_the_targets_eos(cross_pair):
    pair = _pair(cross_pair)
    proposer = DraftModel().bind(pair)
    tok_t, tok_d = pair.tokenizer, pair.tokenizer_of("drafter")
    proposer.eos = {tok_t.eos_token_id}
    context = tok_t("x = 1")["input_ids"]
    drafts = tok_d("\nprint(x)", add_special_tokens=False)["input_ids"] + [tok_d.eos_token_id]
    ids = proposer.to_target(context, 0, proposer.drafter_context("x = 1"), drafts, max_len=20)
    assert ids[-1] == tok_t.eos_token_id and tok_t.decode(ids[:-1]) == "\nprint(x)"
    assert all(i < pair.vocab_size for i in ids)


@pytest.mark.parametrize("proposer", ["entropy", "lookup_first"])
def test_per_token_length_rules_and_lookup_first_draft_through_text(cross_pair, proposer):
    """A length rule deciding per drafter token (stop when the drafter's entropy reaches tau), and
    prompt lookup in front of the drafter: both keep the target's greedy output."""
    from specexp.length import EntropyStatic
    from specexp.proposers import LookupFirst

    pair = _pair(cross_pair, "random")  # an untrained drafter: its entropy is high, so the rule stops it often
    prop = (DraftModel() if proposer == "entropy" else LookupFirst()).bind(pair)
    stopper = Stopper([pair.tokenizer.eos_token_id], [], pair.tokenizer)
    drafted = 0
    for prompt in PROMPTS[:4]:
        ids = encode_prompt(pair.tokenizer, prompt, None, torch.device("cpu"))
        base = generate(cached_lm(pair.target), ids, 30, Sampling(), stopper)
        policy = EntropyStatic(tau=5.0, max_len=6) if proposer == "entropy" else Fixed(4)
        spec = generate(cached_lm(pair.target), ids, 30, Sampling(), stopper, prop, policy)
        assert spec.tokens == base.tokens, prompt
        drafted += sum(spec.drafted)
    assert drafted > 0


def test_sampling_is_refused_naming_the_fix(cross_pair):
    pair = _pair(cross_pair)
    proposer = DraftModel().bind(pair)
    with pytest.raises(ValueError, match="sampling=greedy.*or a drafter with the target's tokenizer"):
        _decode(pair, proposer, PROMPTS[0], sampling=Sampling(temperature=1.0))


def _cfg(dirs, *overrides):
    cfg = compose(["model_pair.build=null", f"model_pair.target.name={dirs['target']}",
                   f"model_pair.drafter.name={dirs['drafter']}", "dataset=prompt", "prompt='def area('", *overrides])
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.create(OmegaConf.to_container(cfg))  # as run.run sees it (no hydra node)


@pytest.mark.parametrize("overrides, says", [
    (["sampling=sample"], "sampling.*use sampling=greedy"),
    (["strategy.proposer.vocab=100"], "strategy.proposer.vocab: .*set strategy.proposer.vocab=null"),
    (["strategy=cascade"], "strategy=cascade: Cascade compares the drafter's token ids .* strategy=speculative"),
    (["strategy=oracle"], "strategy.length"),
    (["records=true"], "records: .*set records=false"),
    (["batch_size=2"], "batch_size: .*use batch_size=1"),
])
def test_what_cannot_bridge_is_refused_before_any_weights_load(cross_pair, overrides, says):
    loads = LOAD_COUNT["models"]
    with pytest.raises(validate.ConfigError, match=says):
        validate.check(_cfg(cross_pair, *overrides))
    assert LOAD_COUNT["models"] == loads


def test_the_default_strategy_with_another_tokenizer_passes_the_check(cross_pair):
    validate.check(_cfg(cross_pair))  # speculative, greedy: drafts through text


def test_command_line_run_matches_the_target_alone(cross_pair, run_specexp):
    proc, run_dir = run_specexp("model_pair=hf", f"model_pair.target.name={cross_pair['target']}",
                                f"model_pair.drafter.name={cross_pair['drafter']}",
                                "prompt=def area(r):", "max_new_tokens=16", "model_pair.device=cpu")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["all_match_baseline"] is True
    sample = metrics["samples"][0]
    assert sample["matches_baseline"] is True and sample["drafted"] > 0 and sample["accepted"] > 0, sample
