"""The embedded tiny model pair (specexp/builds/train_tiny_pair.py): build, reuse, determinism, crash safety, and the
random-init pairs unit tests use. The full default build and its acceptance are `slow`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from conftest import ModelsByRole

import pytest
import torch

from specexp.builds import train_tiny_pair as tiny
from specexp.builds.corpus import load_corpus
from specexp.builds.train_tiny_pair import build_tiny_pair, default_tiny_dir, random_tiny_pair

# A build small enough for unit tests (a few seconds): 1-layer models on a 150 kB corpus.
SMALL = dict(corpus_max_bytes=150_000, vocab_size=320, seq_len=64, batch_size=2, steps=4, distill_steps=2,
             warmup=1, eval_windows=2, target_hidden=32, target_layers=1, target_heads=2, target_ffn=64,
             drafter_hidden=16, drafter_layers=1, drafter_heads=1, drafter_ffn=32)

CODE = 'def f(x: int) -> str:\n    """Docstring — with ünïcode ✓."""\n\treturn  str(x)  # tabs,  spaces\n\n\n'


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name != d.name and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> Path:
    """Built once: the build runs exactly one `_build` (counted, not timed)."""
    out = tmp_path_factory.mktemp("tiny") / "pair"
    builds = []
    real_build = tiny._build
    mp = pytest.MonkeyPatch()
    mp.setattr(tiny, "_build", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    try:
        assert build_tiny_pair(str(out), seed=0, progress=False, **SMALL) == str(out)
    finally:
        mp.undo()
    assert len(builds) == 1 and (out / "build.json").is_file()
    return out


def test_default_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path))
    assert default_tiny_dir() == os.path.join(str(tmp_path), "tiny-v1")
    monkeypatch.delenv("SPECEXP_CACHE")
    assert default_tiny_dir() == os.path.join(os.path.expanduser("~"), ".cache", "specexp", "tiny-v1")


def test_build_layout_and_loading(small_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tgt_dir, drf_dir = small_pair / "target", small_pair / "drafter"
    umask = os.umask(0)
    os.umask(umask)
    assert (small_pair.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's private 0o700
    assert ((tgt_dir / "model.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
    # the tokenizer files are the same bytes in both directories
    tok_files = sorted(f.name for f in tgt_dir.iterdir() if f.name.startswith("tokenizer"))
    assert "tokenizer.json" in tok_files
    for name in tok_files:
        assert (tgt_dir / name).read_bytes() == (drf_dir / name).read_bytes(), name
    tok = AutoTokenizer.from_pretrained(tgt_dir)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    eos = tok.eos_token_id
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(drf_dir).get_vocab()
    assert len(tok) == SMALL["vocab_size"]
    assert tok.model_max_length == SMALL["seq_len"]
    target = AutoModelForCausalLM.from_pretrained(tgt_dir)
    drafter = AutoModelForCausalLM.from_pretrained(drf_dir)
    for m, hidden, layers in ((target, 32, 1), (drafter, 16, 1)):
        assert m.config.model_type == "llama"
        assert (m.config.hidden_size, m.config.num_hidden_layers) == (hidden, layers)
        assert m.config.vocab_size == len(tok)
        assert m.config.eos_token_id == eos and m.config.max_position_embeddings == SMALL["seq_len"]
        assert GenerationConfig.from_pretrained(m.name_or_path).eos_token_id == eos
        assert m.generation_config.eos_token_id == eos
    n_t = sum(p.numel() for p in target.parameters())
    n_d = sum(p.numel() for p in drafter.parameters())
    assert n_d < n_t
    # the saved models compute: a forward gives finite logits over the shared vocabulary
    ids = torch.tensor([tok(CODE).input_ids])
    with torch.no_grad():
        for m in (target, drafter):
            logits = m(input_ids=ids).logits
            assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_tokenizer_round_trip(small_pair):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_pair / "drafter")
    ids = tok(CODE).input_ids
    assert tok.eos_token_id not in ids  # nothing added: prompts are encoded as they are
    assert tok.decode(ids) == CODE
    assert len(ids) < len(CODE.encode())  # merges were learned
    assert tok.decode(tok("x" + tok.eos_token).input_ids[-1:]) == tok.eos_token
    # a newline is always a token of its own (never glued to the next line's indentation)
    nl = tok("\n").input_ids
    assert len(nl) == 1
    ids = tok('    """\n    return x\n\n\ndef f():\n').input_ids
    assert ids.count(nl[0]) == 5 and all(tok.decode([i]) == "\n" or "\n" not in tok.decode([i]) for i in ids)


def test_build_json_records_the_build(small_pair):
    info = json.loads((small_pair / "build.json").read_text())
    p = info["params"]
    assert p["seed"] == 0 and p["corpus"] is None and p["name"] == "tiny-v1" and p["recipe"] == tiny.RECIPE
    for k, v in SMALL.items():
        assert p[k] == v, k
    assert set(tiny.DEFAULTS) <= set(p)
    c = info["corpus"]
    assert c["files"] > 1 and 0 < c["bytes"] <= SMALL["corpus_max_bytes"] and len(c["sha256"]) == 64
    assert c["tokens"] > 0 and "stdlib" in c["source"]
    assert info["n_params"]["target"] > info["n_params"]["drafter"] > 0
    losses = info["losses"]
    for k in ("target_train_loss", "drafter_train_loss", "drafter_train_kl", "target_loss", "drafter_loss"):
        assert isinstance(losses[k], float) and losses[k] == losses[k], k  # a number, not NaN
    assert 0 <= losses["top1_agreement"] <= 1
    assert info["wall_time_s"] > 0 and {"torch", "transformers", "tokenizers"} <= set(info["versions"])
    assert info["eos_token_id"] == 0
    # the recorded file hashes are those of the files on disk
    import hashlib

    for rel, digest in info["files"].items():
        assert hashlib.sha256((small_pair / rel).read_bytes()).hexdigest() == digest, rel


def test_second_call_reuses_without_training(small_pair, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in small_pair.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("a matching pair must be reused, not rebuilt")

    monkeypatch.setattr(tiny, "_build", boom)
    monkeypatch.setattr(tiny, "load_corpus", boom)  # reuse reads no corpus either (an event, not a clock)
    assert build_tiny_pair(str(small_pair), seed=0, progress=False, **SMALL) == str(small_pair)
    assert {p: p.stat().st_mtime_ns for p in small_pair.rglob("*")} == before
    # a different parameter does not reuse it
    with pytest.raises(AssertionError, match="reused, not rebuilt"):
        build_tiny_pair(str(small_pair), seed=1, progress=False, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in small_pair.rglob("*")} == before


def test_bad_arguments_are_errors(tmp_path):
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        build_tiny_pair(str(tmp_path / "x"), stpes=3)
    with pytest.raises(ValueError, match="precision"):
        build_tiny_pair(str(tmp_path / "x"), precision="fp8")
    assert not (tmp_path / "x").exists()
    # a directory that is not a tiny pair is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_pair(str(tmp_path / "mine"), progress=False, **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_drafter_embeddings_start_from_the_target_head():
    """drafter_init="svd": the drafter's tied embeddings are U_k S_k of the target's head W = U S V^T,
    i.e. its best rank-k factor (E @ V_k^T is the best rank-k approximation of W)."""
    target, _ = random_tiny_pair("llama", vocab=50, seed=0)
    drafter = tiny._llama(50, 8, 1, 1, 16, 32, 0, tie=True)
    tiny._init_drafter_from_target(drafter, target)
    w = target.get_output_embeddings().weight.detach()
    e = drafter.get_input_embeddings().weight.detach()
    assert drafter.get_output_embeddings().weight.data_ptr() == e.data_ptr()  # tied
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    assert torch.allclose(e.norm(dim=0), sv[:8], rtol=1e-4)
    assert torch.allclose(e @ vh[:8], (u[:, :8] * sv[:8]) @ vh[:8], atol=1e-5)


def test_determinism(small_pair, tmp_path):
    """Same seed: the same files, byte for byte (tokenizer, configs, weights). On CPU with a fixed
    thread count the training is bitwise reproducible; a different seed gives other weights."""
    from safetensors.torch import load_file

    again = tmp_path / "again"
    build_tiny_pair(str(again), seed=0, progress=False, **SMALL)
    a, b = _files(small_pair), _files(again)
    a.pop("build.json"), b.pop("build.json")  # holds wall times
    assert sorted(a) == sorted(b)
    assert a["target/tokenizer.json"] == b["target/tokenizer.json"]
    for sub in ("target", "drafter"):
        wa, wb = load_file(small_pair / sub / "model.safetensors"), load_file(again / sub / "model.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{sub}/{k}"
    assert a == b
    info_a = json.loads((small_pair / "build.json").read_text())
    info_b = json.loads((again / "build.json").read_text())
    assert info_a["files"] == info_b["files"] and info_a["losses"] == info_b["losses"]

    other = tmp_path / "other"
    build_tiny_pair(str(other), seed=1, progress=False, **SMALL)
    c = _files(other)
    assert c["target/tokenizer.json"] == a["target/tokenizer.json"]  # the tokenizer does not depend on the seed
    assert c["target/model.safetensors"] != a["target/model.safetensors"]


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "pair"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_pair(str(out), progress=False, **SMALL)
    assert not out.exists() and _siblings(out) == []


def test_rebuild_replaces_atomically(tmp_path, monkeypatch):
    """A pair built with other parameters is replaced by a new build; a rebuild that crashes leaves
    the old pair as it was."""
    out = tmp_path / "pair"
    build_tiny_pair(str(out), progress=False, **SMALL)
    old = _files(out)
    real_train = tiny._train

    def crash(*a, **k):
        raise RuntimeError("crash")

    monkeypatch.setattr(tiny, "_train", crash)
    with pytest.raises(RuntimeError, match="crash"):
        build_tiny_pair(str(out), progress=False, **{**SMALL, "steps": 5})
    assert _files(out) == old and _siblings(out) == []
    monkeypatch.setattr(tiny, "_train", real_train)
    build_tiny_pair(str(out), progress=False, **{**SMALL, "steps": 5})
    assert json.loads((out / "build.json").read_text())["params"]["steps"] == 5
    assert _siblings(out) == []
    # force rebuilds a matching pair (same result, deterministic)
    before = (out / "build.json").stat().st_mtime_ns
    build_tiny_pair(str(out), progress=False, force=True, **{**SMALL, "steps": 5})
    assert (out / "build.json").stat().st_mtime_ns != before


def test_corpus_file_and_directory(tmp_path):
    d = tmp_path / "corpus"
    (d / "pkg").mkdir(parents=True)
    (d / "b.py").write_text("def b():\n    return 2\n" * 50)
    (d / "pkg" / "a.txt").write_text("alpha beta gamma\n" * 50)
    (d / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)  # binary: skipped
    (d / ".hidden").write_text("skipped")
    docs, info = load_corpus(str(d))
    assert info["files"] == 2 and docs[0].startswith("def b()") and docs[1].startswith("alpha")
    docs2, info2 = load_corpus(str(d))
    assert docs2 == docs and info2["sha256"] == info["sha256"]
    one, info_f = load_corpus(str(d / "b.py"), max_bytes=100)
    assert info_f["files"] == 1 and len(one[0]) == 100
    with pytest.raises(FileNotFoundError):
        load_corpus(str(tmp_path / "missing"))
    # a build on a custom corpus records it
    out = build_tiny_pair(str(tmp_path / "pair"), corpus=str(d), progress=False,
                          **{**SMALL, "vocab_size": 280, "seq_len": 32})
    info = json.loads((Path(out) / "build.json").read_text())
    assert info["params"]["corpus"] == str(d.resolve()) and info["corpus"]["files"] == 2


def test_default_corpus_is_the_stdlib():
    docs, info = load_corpus(None, max_bytes=300_000)
    assert info["files"] == len(docs) > 5 and info["bytes"] <= 300_000
    assert all("/test/" not in f and "site-packages" not in f for f in info["first_files"])
    assert any("def " in d for d in docs)
    assert load_corpus(None, max_bytes=300_000)[1] == info  # deterministic selection


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_tiny_pair(arch):
    target, drafter = random_tiny_pair(arch, vocab=97, seed=3)
    assert not target.training and not drafter.training
    assert target.get_output_embeddings().weight.shape[0] == drafter.get_output_embeddings().weight.shape[0] == 97
    assert sum(p.numel() for p in drafter.parameters()) < sum(p.numel() for p in target.parameters())
    t2, _ = random_tiny_pair(arch, vocab=97, seed=3)
    t3, _ = random_tiny_pair(arch, vocab=97, seed=4)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = target(input_ids=ids).logits
        assert out.shape == (1, 12, 97)
        assert torch.equal(out, t2(input_ids=ids).logits)
        assert not torch.equal(out, t3(input_ids=ids).logits)
    _, wide = random_tiny_pair(arch, vocab=97, drafter_vocab=128)
    assert wide.get_output_embeddings().weight.shape[0] == 128
    with pytest.raises(ValueError, match="arch"):
        random_tiny_pair("mamba")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_pair_decodes_speculatively(arch):
    """The helper's models work with the project's decoder: greedy speculative == autoregressive."""
    from specexp.core.decode import generate
    from specexp.length import Fixed
    from specexp.models.cached_lm import CachedLM
    from specexp.proposers import DraftModel
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper

    target, drafter = random_tiny_pair(arch, vocab=64, seed=0)
    pair = ModelsByRole(target, drafter)
    prompt = torch.randint(1, 64, (10,), generator=torch.Generator().manual_seed(1))
    ar = generate(CachedLM(target), prompt, 24, Sampling(), Stopper())
    sd = generate(CachedLM(target), prompt, 24, Sampling(), Stopper(), DraftModel().bind(pair), Fixed(3))
    assert len(ar.tokens) == 24 and sd.tokens == ar.tokens
    assert sd.target_forwards <= ar.target_forwards


# ------------------------------------------------------------------------------------------------
# The real default pair (a few minutes to build once; reused from the cache afterwards).


@pytest.mark.slow
def test_default_pair_quality():
    """The default pair drafts well on HumanEval: greedy acceptance clearly above chance (mean
    accepted length > 1.5 at gamma 4), and greedy speculative output equals autoregressive."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specexp.core.decode import generate
    from specexp.length import Fixed
    from specexp.models.cached_lm import CachedLM
    from specexp.proposers import DraftModel
    from specexp.models.sampling import Sampling
    from specexp.core.stopping import Stopper
    from specexp.tasks.humaneval import HumanEval

    out = Path(build_tiny_pair(progress=False))
    tok = AutoTokenizer.from_pretrained(out / "target")
    target = AutoModelForCausalLM.from_pretrained(out / "target").eval()
    drafter = AutoModelForCausalLM.from_pretrained(out / "drafter").eval()
    pair = ModelsByRole(target, drafter)
    eos = tok.eos_token_id
    emitted = forwards = 0
    for s in HumanEval(limit=5).samples():
        prompt = torch.tensor(tok(s.prompt).input_ids)
        assert len(prompt) <= target.config.max_position_embeddings - 64
        ar = generate(CachedLM(target), prompt, 64, Sampling(), Stopper(eos_ids=[eos]))
        sd = generate(CachedLM(target), prompt, 64, Sampling(), Stopper(eos_ids=[eos]),
                      DraftModel().bind(pair), Fixed(4))
        assert sd.tokens == ar.tokens
        emitted += len(sd.tokens)
        forwards += sd.target_forwards
    assert emitted / forwards > 1.5
