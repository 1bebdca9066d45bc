"""A real pretrained target: SmolLM2-135M-Instruct from its offline GGUF copy (`specexp-fetch`).

Greedy speculative decoding must give the target's greedy output token for token with every
drafter the project offers for it: the layer-truncated self-drafter, a drafter distilled by
`specexp.builds.train_distilled_drafter` (a small budget here: losslessness does not depend on its quality), bigram and
prompt lookup. Skips cleanly when the GGUF has not been fetched. Also here: where weights come
from (`resolve_source`), layer truncation and distillation on small models (no GGUF needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import pair_overrides, random_model
from specexp.experiment import instantiate as build
from specexp.core.decode import generate
from specexp.models.fetch import artifact_path
from specexp.models.cached_lm import cached_lm
from specexp.models.loading import ModelSpec, load_model, resolve_source, truncate_layers
from specexp.models.prompt_ids import encode_prompt, eos_ids
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper
from specexp.tasks.dataset_sources import DataUnavailable

GGUF = artifact_path("smollm2-135m")
needs_gguf = pytest.mark.skipif(not GGUF.exists(), reason=f"SmolLM2 GGUF not fetched ({GGUF}); run specexp-fetch")


# ------------------------------------------------------------------------ where weights come from
def test_resolve_prefers_the_offline_copy_when_the_hub_has_nothing_cached(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    spec = resolve_source(ModelSpec(name="nobody/not-a-model-xyz", local=str(f)))
    assert (spec.name, spec.gguf_file, spec.source) == (str(tmp_path), "m.gguf", "local")
    d = tmp_path / "dir_model"
    d.mkdir()
    spec = resolve_source(ModelSpec(name="nobody/not-a-model-xyz", local=str(d)))
    assert (spec.name, spec.gguf_file, spec.source) == (str(d), None, "local")


def test_resolve_hub_when_forced_or_when_the_offline_copy_is_missing(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    assert resolve_source(ModelSpec(name="nobody/x", local=str(f), source="hub")).name == "nobody/x"
    spec = resolve_source(ModelSpec(name="nobody/x", local=str(tmp_path / "absent.gguf")))
    assert (spec.name, spec.source) == ("nobody/x", "hub")
    local_dir = tmp_path / "here"
    local_dir.mkdir()  # a local path as the name wins over the offline copy
    assert resolve_source(ModelSpec(name=str(local_dir), local=str(f))).name == str(local_dir)


def test_missing_everywhere_names_both(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    absent = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        resolve_source(ModelSpec(name="nobody/x", local=str(absent), source="local"))
    with pytest.raises(ValueError) as err:
        load_model(ModelSpec(name="nobody/not-a-model-xyz", local=str(absent)), torch.float32, torch.device("cpu"))
    assert "nobody/not-a-model-xyz" in str(err.value) and str(absent) in str(err.value)
    assert "specexp-fetch" in str(err.value)
    with pytest.raises(ValueError, match="auto, hub or local"):
        resolve_source(ModelSpec(name="x", source="cloud"))


# ------------------------------------------------------------------------------ layer truncation
def test_truncated_model_is_the_first_layers_sharing_weights():
    from transformers import LlamaForCausalLM

    model = random_model("llama", 300, 64, 4, seed=0)
    x = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    short = truncate_layers(model, 2)
    config = model.config.__class__(**{**model.config.to_dict(), "num_hidden_layers": 2})
    ref = LlamaForCausalLM(config).eval()
    ref.load_state_dict(model.state_dict(), strict=False)  # layers 2, 3 are dropped
    with torch.no_grad():
        assert torch.allclose(short(x).logits, ref(x).logits, atol=1e-5)
        assert torch.equal(truncate_layers(model, 4)(x).logits, model(x).logits)
    assert short.model.layers[0] is model.model.layers[0] and short.lm_head is model.lm_head
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4  # the original is untouched
    # with a KV cache and a rollback, as the decoder uses it
    lm = cached_lm(short)
    lm.forward(x[0, :8])
    lm.forward(x[0, 8:])
    lm.crop(10)
    with torch.no_grad():
        assert torch.allclose(lm.forward(x[0, 10:]), ref(x).logits[0, 10:], atol=1e-5)
    with pytest.raises(ValueError, match="has 4 decoder layers"):
        truncate_layers(model, 5)


# ---------------------------------------------------------------------------------- distillation
def test_distill_raises_agreement_with_the_target(trained_pair_dir, tmp_path):
    """On the tiny trained target: the drafter starts as its first layer and the distillation
    raises held-out top-1 agreement clearly; the result loads as a drafter sharing the tokenizer,
    and a second call reuses the build."""
    from specexp.builds.train_distilled_drafter import distill_drafter

    target = ModelSpec(name=str(trained_pair_dir / "target"))
    out = distill_drafter(target, str(tmp_path / "d"), layers=1, corpus=("code",), tokens=24_000, seq_len=128,
                          epochs=2.0, batch=8, lr=3e-3, progress=False)
    info = json.loads((Path(out) / "build.json").read_text())
    agree = info["heldout_top1_agreement"]
    assert agree["distilled"] > agree["untrained"] + 0.1, agree
    assert info["parameters"]["drafter"] < info["parameters"]["target"]
    mtime = (Path(out) / "model.safetensors").stat().st_mtime
    assert distill_drafter(target, out, layers=1, corpus=("code",), tokens=24_000, seq_len=128, epochs=2.0,
                           batch=8, lr=3e-3, progress=False) == out
    assert (Path(out) / "model.safetensors").stat().st_mtime == mtime  # reused, not rebuilt
    from conftest import compose

    cfg = compose([*pair_overrides(trained_pair_dir), f"model_pair.drafter.name={out}"])
    pair = build.pair(cfg.model_pair)
    assert pair.get("drafter").config.num_hidden_layers == 1


# ------------------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol():
    from conftest import compose

    cfg = compose(["model_pair=smollm2-135m__truncated"])
    return build.pair(cfg.model_pair)


def _prompts(tok) -> list[str]:
    """Real prompts: two XSum articles (from shared/data when present) and a HumanEval problem,
    in the model's chat template."""
    from specexp.tasks.humaneval import HumanEval

    texts = [HumanEval(limit=1).samples()[0].prompt]
    try:
        from specexp.tasks.xsum import XSum

        texts += [s.prompt for s in XSum(limit=2, max_prompt_tokens=None).samples()]
    except (DataUnavailable, ValueError, OSError):  # no shared data beside this checkout
        texts.append("The history of the Roman Empire begins with")
    return [tok.apply_chat_template([{"role": "user", "content": t[:1500]}], tokenize=False,
                                    add_generation_prompt=True) for t in texts]


@needs_gguf
def test_smollm2_loads_offline_and_answers(smol):
    assert smol.specs["target"].source == "local" and smol.specs["target"].gguf_file == GGUF.name
    ids = encode_prompt(smol.tokenizer, "The capital of France is", None, smol.device)
    out = generate(cached_lm(smol.target), ids, 3, Sampling(), Stopper([], [], smol.tokenizer))
    assert smol.tokenizer.decode(out.tokens).startswith(" Paris")


@needs_gguf
def test_smollm2_greedy_speculative_equals_greedy_for_every_drafter(smol, tmp_path):
    from specexp.builds.train_distilled_drafter import distill_drafter
    from specexp.experiment.instantiate import provide_builds
    from specexp.length import Fixed
    from specexp.proposers import Bigram, DraftModel, PromptLookup

    distilled = distill_drafter(smol.specs["target"], str(tmp_path / "distilled"), layers=2, corpus=("code",),
                                tokens=2048, seq_len=256, epochs=1.0, batch=8, progress=False)
    smol.specs["distilled"] = ModelSpec(name=distilled)
    proposers = {
        "truncated": DraftModel("drafter"),
        "distilled": DraftModel("distilled"),
        "bigram": Bigram(),
        "prompt_lookup": PromptLookup(bigram=Bigram()),
    }
    target = cached_lm(smol.target)
    stopper = Stopper(eos_ids(smol), [], smol.tokenizer)
    prompts = [encode_prompt(smol.tokenizer, p, None, smol.device) for p in _prompts(smol.tokenizer)]
    reference = [generate(target, p, 24, Sampling(), stopper).tokens for p in prompts]
    assert all(len(r) > 5 for r in reference)
    accepted = {}
    for name, proposer in proposers.items():
        provide_builds(proposer, smol).bind(smol)  # the bigram tables, built as a run builds them
        policy = Fixed(gamma=4).bind(smol)
        outs = [generate(target, p, 24, Sampling(), stopper, proposer, policy) for p in prompts]
        assert [o.tokens for o in outs] == reference, name
        accepted[name] = sum(sum(o.accepted) for o in outs)
    assert accepted["prompt_lookup"] > 0  # the summaries copy words from their articles


@needs_gguf
@pytest.mark.slow
def test_smollm2_distilled_drafter_beats_the_untrained_one():
    """The full distilled drafter (model_pair smollm2-135m__distilled, ~17 min to build; built by
    `specexp-distill` or the first run) agrees with the target far more often than the
    layer-truncated self-drafter it started from."""
    from conftest import compose
    from hydra.utils import instantiate

    cfg = compose(["model_pair=smollm2-135m__distilled"])
    out = Path(instantiate(cfg.model_pair.build))
    agree = json.loads((out / "build.json").read_text())["heldout_top1_agreement"]
    assert agree["distilled"] > agree["untrained"] + 0.3, agree


def test_resolve_is_idempotent(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    d = tmp_path / "model_dir"
    d.mkdir()
    for spec in (ModelSpec(name="nobody/x", local=str(f)), ModelSpec(name=str(d)), ModelSpec(name="nobody/x"),
                 ModelSpec(name="nobody/x", local=str(d), source="local"), ModelSpec(name=str(d), source="local")):
        once = resolve_source(spec)
        assert resolve_source(once) == once


def test_subset_head_drafter_is_lossless_and_drafts_from_the_subset(random_pair_dir, tmp_path):
    """DraftModel(vocab=N): the drafter's head scores only the first N ids of draft_vocab.json;
    drafts come from that subset, and greedy output still equals the target's."""
    import shutil

    from conftest import ModelsByRole
    from specexp.length import Fixed
    from specexp.proposers import DraftModel

    drafter_dir = tmp_path / "drafter"
    shutil.copytree(random_pair_dir / "drafter", drafter_dir)
    rng = torch.Generator().manual_seed(0)
    ids = torch.randperm(300, generator=rng).tolist()
    (drafter_dir / "draft_vocab.json").write_text(json.dumps({"ids": ids}))
    target = load_model(ModelSpec(name=str(random_pair_dir / "target")), torch.float32, torch.device("cpu"))
    drafter = load_model(ModelSpec(name=str(drafter_dir)), torch.float32, torch.device("cpu"))
    pair = ModelsByRole(target, drafter)
    stopper = Stopper([], [], None)
    prompt = torch.tensor([5, 17, 42, 7, 99, 3])
    reference = generate(cached_lm(target), prompt, 30, Sampling(), stopper).tokens
    subset = set(ids[:40])
    small = DraftModel(vocab=40).bind(pair)
    policy = Fixed(gamma=3).bind(pair)
    drafted = []
    orig = small.propose

    def spy(*a, **k):
        d = orig(*a, **k)
        drafted.extend(d.tokens.tolist())
        return d

    small.propose = spy
    assert generate(cached_lm(target), prompt, 30, Sampling(), stopper, small, policy).tokens == reference
    assert drafted and set(drafted) <= subset
    # N = the whole vocabulary: the same logits as the full head
    full, whole = DraftModel().bind(pair), DraftModel(vocab=300).bind(pair)
    a, b = full.lm.forward(prompt), whole.lm.forward(prompt)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="draft_vocab.json"):
        DraftModel(vocab=10).bind(ModelsByRole(target, target))
