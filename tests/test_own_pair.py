"""A user's own pair: `specexp model_pair=hf model_pair.target.name=... model_pair.drafter.name=...`
on two local folders (and a GGUF file) builds nothing, names the run after the models, checks the
tokenizers before any weights load, and places a big target with a device map (accelerate's
offload to CPU and disk) without changing a single output token."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose, make_tokenizer, noisy_copy, random_model
from specexp.experiment import instantiate
from specexp.report import collect_runs
from specexp.models import loading as models
from specexp.experiment import run
from specexp.core.decode import generate
from specexp.length import Fixed
from specexp.models.cached_lm import cached_lm
from specexp.models.loading import ModelSpec, Pair, Placement
from specexp.proposers.drafter import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper


def write_gguf(model, tok, path: Path) -> Path:
    """`model` (a small Llama, fp32) and its BPE tokenizer as one GGUF file, laid out as llama.cpp's
    converter writes it (q/k rows permuted to its rotary layout; transformers undoes that on load)."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base((getattr(c, "rope_parameters", None) or {}).get("rope_theta") or getattr(c, "rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL if t in tok.all_special_tokens else gguf.TokenType.NORMAL for t in vocab])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)

    def rotary_layout(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, tensor in model.state_dict().items():
        x, module = tensor.float().numpy(), key.removesuffix(".weight")
        if module in top:
            w.add_tensor(f"{top[module]}.weight", x)
            continue
        _, _, i, part = module.split(".", 3)  # model.layers.<i>.<part>
        if part in ("self_attn.q_proj", "self_attn.k_proj"):
            x = rotary_layout(x, c.num_attention_heads if part == "self_attn.q_proj" else c.num_key_value_heads)
        w.add_tensor(f"blk.{i}.{block[part]}.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """A user's models in folders named as theirs would be: a Llama target `llama-big`, a drafter
    `llama-small` with the same tokenizer (the target plus weight noise: it agrees often), the
    target again as one GGUF file, and `other-vocab`, a model with another tokenizer."""
    root = tmp_path_factory.mktemp("own")
    tok = make_tokenizer(300)
    target = random_model("llama", len(tok), 64, 2, seed=0, eos=tok.eos_token_id)
    drafter = noisy_copy(target, 0.05, seed=1)
    other_tok = make_tokenizer(280)
    other = random_model("llama", len(other_tok), 32, 1, seed=2, eos=other_tok.eos_token_id)
    for name, model, t in (("llama-big", target, tok), ("llama-small", drafter, tok), ("other-vocab", other, other_tok)):
        model.save_pretrained(root / name)
        t.save_pretrained(root / name)
    (root / "gguf").mkdir()
    write_gguf(target, tok, root / "gguf" / "llama-big.gguf")
    return {"target": root / "llama-big", "drafter": root / "llama-small", "other": root / "other-vocab",
            "gguf": root / "gguf" / "llama-big.gguf"}


def hf(target, drafter=None, *more: str) -> list[str]:
    return ["model_pair=hf", f"model_pair.target.name={target}",
            *([f"model_pair.drafter.name={drafter}"] if drafter else []), *more]


PROMPT = "def add(a, b):"


def decode(pair: Pair, speculative: bool, n: int = 24) -> tuple[list[int], list[int]]:
    """Greedy tokens after PROMPT (target alone, or drafting 3 with the pair's drafter) and the accepted counts."""
    prompt = torch.tensor(pair.tokenizer(PROMPT)["input_ids"], device=pair.device)
    stopper = Stopper(set(), [], pair.tokenizer)
    proposer, policy = (DraftModel().bind(pair), Fixed(3).bind(pair)) if speculative else (None, None)
    out = generate(cached_lm(pair.target), prompt, n, Sampling(), stopper, proposer, policy)
    return out.tokens, out.accepted


# --------------------------------------------------------------------------------------------
# The config: named after the models, nothing built, the target required
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, drafter, name", [
    ("huggyllama/llama-7b", "JackFram/llama-160m", "llama-7b__llama-160m"),
    ("/models/llama-big/", "./llama-small", "llama-big__llama-small"),
    ("/models/q4/Llama-3.2-3B.Q4_K_M.gguf", "meta-llama/Llama-3.2-1B", "Llama-3.2-3B.Q4_K_M__Llama-3.2-1B"),
    ("huggyllama/llama-7b", None, "llama-7b"),  # no drafter (model-free strategies)
])
def test_hf_pair_is_named_after_its_models(target, drafter, name):
    cfg = compose(hf(target, drafter, *([] if drafter else ["model_pair.drafter=null"])))
    mp = cfg.model_pair
    assert mp.name == name and mp.build is None
    assert (mp.dtype, mp.device, mp.device_map, mp.max_memory, mp.offload_folder) == ("auto", "auto", None, None, None)


def test_hf_pair_without_a_target_names_the_key(fresh_cache):
    cfg = compose(["model_pair=hf"])
    with pytest.raises(ValueError, match=r"model_pair\.target\.name is missing"):
        instantiate.pair(cfg.model_pair)
    with pytest.raises(Exception, match=r"model_pair\.target\.name is missing"):
        str(cfg.model_pair.name)  # the derived name says the same
    assert fresh_cache["models"] == 0


def test_own_pair_run_is_named_after_the_folders_and_builds_nothing(own, tmp_path, monkeypatch):
    cache = tmp_path / "specexp-cache"
    monkeypatch.setenv("SPECEXP_CACHE", str(cache))  # where the tiny pair would be built
    run_dir = tmp_path / "run"
    code = run.run_cli([*hf(own["target"], own["drafter"]), f"prompt={PROMPT}", "max_new_tokens=8", "warmup=0",
                        f"hydra.run.dir={run_dir}"])
    assert code == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["all_match_baseline"]
    assert m["model_pair"] == {"name": "llama-big__llama-small", "target": str(own["target"]),
                               "drafter": str(own["drafter"]), "sources": {"target": "local", "drafter": "local"}}
    assert not cache.exists()  # nothing was built
    row = collect_runs.collect([run_dir]).iloc[0]  # specexp-report's table labels the run by the pair's name
    assert (row["model_pair"], row["target"], row["drafter"]) == ("llama-big__llama-small", str(own["target"]), str(own["drafter"]))


# --------------------------------------------------------------------------------------------
# A GGUF file as the name
# --------------------------------------------------------------------------------------------

def test_a_gguf_file_as_name_loads_as_the_same_model(own, fresh_cache):
    cfg = compose(hf(own["gguf"], own["drafter"], "model_pair.device=cpu"))
    assert cfg.model_pair.name == "llama-big__llama-small"
    from_gguf = instantiate.pair(cfg.model_pair)
    spec = from_gguf.specs["target"]
    assert (spec.name, spec.gguf_file, spec.source) == (str(own["gguf"].parent), "llama-big.gguf", "local")
    assert models.describe(spec) == str(own["gguf"])
    assert from_gguf.shares_tokenizer("drafter")  # the GGUF's own tokenizer is the folders' one
    from_folder = Pair(ModelSpec(name=str(own["target"])), {"drafter": ModelSpec(name=str(own["drafter"]))}, device="cpu")
    for speculative in (False, True):
        assert decode(from_gguf, speculative) == decode(from_folder, speculative)


# --------------------------------------------------------------------------------------------
# Tokenizers before weights
# --------------------------------------------------------------------------------------------

def test_another_tokenizer_is_refused_before_any_weights_load(own, fresh_cache):
    pair = instantiate.pair(compose(hf(own["target"], own["other"], "model_pair.device=cpu")).model_pair)
    assert fresh_cache["models"] == 0  # the tokenizers were read; no weights
    assert pair.tokenizer_of("target") is pair.tokenizer and len(pair.tokenizer_of("drafter")) == 280
    assert not pair.shares_tokenizer("drafter")
    with pytest.raises(ValueError) as err:
        pair.get("drafter")
    msg = str(err.value)
    assert all(s in msg for s in (str(own["target"]), "(300 tokens)", str(own["other"]), "(280 tokens)",
                                  "different tokenizers", "model_pair.drafter.name", "sampling=greedy"))
    assert fresh_cache["models"] == 0  # neither the target nor the drafter loaded
    pair.get("drafter", other_tokenizer=True)  # a caller that maps the vocabularies itself gets the model
    assert fresh_cache["models"] == 1


def test_same_tokenizer_is_shared_without_loading_weights(own, fresh_cache):
    pair = Pair(ModelSpec(name=str(own["target"])), {"drafter": ModelSpec(name=str(own["drafter"]))}, device="cpu")
    assert pair.shares_tokenizer("drafter") and pair.tokenizer_of("drafter") is pair.tokenizer_of("drafter")
    assert fresh_cache["models"] == 0
    assert pair.get("drafter") is pair.drafter and fresh_cache["models"] == 1


# --------------------------------------------------------------------------------------------
# Big models: a device map with layers offloaded to CPU and disk
# --------------------------------------------------------------------------------------------

MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
       "model.norm": "cpu", "lm_head": "disk"}


@pytest.mark.parametrize("placement", ["dict", "max_memory"])
def test_offloaded_target_decodes_the_same_tokens(own, tmp_path, fresh_cache, placement):
    whole = Pair(ModelSpec(name=str(own["target"])), {"drafter": ModelSpec(name=str(own["drafter"]))}, device="cpu")
    if placement == "dict":
        mapped = Pair(ModelSpec(name=str(own["target"])), {"drafter": ModelSpec(name=str(own["drafter"]))},
                      device="cpu", placement=Placement(MAP, None, str(tmp_path / "offload")))
    else:  # the config keys, as a user gives them: accelerate splits the target over a small CPU budget and the disk
        mapped = instantiate.pair(compose(hf(own["target"], own["drafter"], "model_pair.device=cpu", "model_pair.device_map=auto",
                                       "model_pair.max_memory={cpu:300KB}",
                                       f"model_pair.offload_folder={tmp_path / 'offload'}")).model_pair)
    where = set(mapped.target.hf_device_map.values())
    assert where == {"cpu", "disk"}  # (disk layers are read from the safetensors file itself: offload_folder may stay empty)
    assert mapped.target is not whole.target
    ar = decode(whole, False)
    assert decode(mapped, False) == ar
    spec = decode(whole, True)
    assert decode(mapped, True) == spec and spec[0] == ar[0]  # lossless, offloaded or not
    assert sum(spec[1]) > 0  # drafts were accepted: the offloaded target's cache was cropped and reused


def test_what_a_device_map_spans():
    """The GPUs a device-mapped model runs on (`sync` and the forward timer wait for all of them);
    the cache key of a placement whose budget mixes GPU indices and names."""
    class Mapped:
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": "cuda:1", "model.layers.1": "cpu", "lm_head": "disk"}

    assert models.mapped_cuda_devices(Mapped()) == {torch.device("cuda:0"), torch.device("cuda:1")}
    assert models.mapped_cuda_devices(torch.nn.Linear(2, 2)) == set()
    a = Placement("auto", {0: "20GiB", "cpu": "60GiB"}).key()
    assert a == Placement("auto", {"cpu": "60GiB", 0: "20GiB"}).key() != Placement("auto", {0: "10GiB", "cpu": "60GiB"}).key()


def test_a_failed_hf_run_is_labelled_by_its_models(tmp_path):
    """A failed run has no `model_pair` of its own in metrics.json and its config is recorded
    unresolved: the report labels it by the models (the pair's name interpolation), not by
    the text `${specexp_pair_name:}`."""
    cfg = compose(["model_pair=hf", "model_pair.target.name=/m/llama-7b", "model_pair.drafter.name=/m/llama-160m"])
    from omegaconf import OmegaConf

    recorded = OmegaConf.to_container(cfg, resolve=False)
    recorded.pop("hydra", None)
    assert recorded["model_pair"]["name"] == "${specexp_pair_name:}"
    row, _ = collect_runs.flatten(tmp_path / "metrics.json", {"status": "failed", "error": "x", "config": recorded})
    assert row["model_pair"] == "llama-7b__llama-160m"
