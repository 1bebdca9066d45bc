"""Published draft checkpoints (specexp/proposers/published_checkpoints.py), offline: each test writes
a synthetic checkpoint in the published layout (file names, key names, config.json fields, shapes
of a tiny config), loads it, and checks that the loaded weights are the ones used (outputs equal a
reference computed by hand from the same tensors), that decoding with it stays lossless, and that
a wrong or missing key fails naming the key.

Layouts: Medusa-1 (FasterDecoding/Medusa, medusa/model/medusa_model.py: config.json with
medusa_num_heads, medusa_num_layers, base_model_name_or_path; medusa_lm_head.pt or .safetensors
with "{head}.{block}.linear.weight|bias" and "{head}.{L}.weight"); EAGLE-1/2 (SafeAILab/EAGLE,
eagle/model/cnets1.py and ea_model.py: config.json of a one-layer Llama, pytorch_model.bin or
model.safetensors with fc.* over cat(embedding, feature), layers.0.* without input_layernorm)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import ModelsByRole, compose, random_model

from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.experiment import instantiate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers import Medusa
from specexp.proposers.medusa import load_medusa
from specexp.proposers.published_checkpoints import CheckpointError, EagleCheckpoint, load_eagle

V, H = 64, 64  # the random target's vocabulary and hidden size
GREEDY = Sampling()


@pytest.fixture(scope="module")
def target():
    t = random_model("llama", V, H, 2, seed=0)
    with torch.no_grad():
        t.lm_head.weight.mul_(6)  # peaked: greedy drafts from a noisy copy of its head are often right
    return t


def prompts():
    return [torch.tensor([5, 9, 3, 17, 4]), torch.tensor([40, 2, 2, 11])]


def autoregressive(target, n=20):
    return [generate(CachedLM(target), p, n, GREEDY, Stopper()).tokens for p in prompts()]


def decode(target, proposer, n=20, gamma=3):
    return [generate(CachedLM(target), p, n, GREEDY, Stopper(), proposer, Fixed(gamma),
                     torch.Generator().manual_seed(i)) for i, p in enumerate(prompts())]


# ====================================================================================== Medusa
def medusa_state_dict(heads: int, layers: int, vocab_w: torch.Tensor | None = None, seed: int = 0) -> dict:
    """A Medusa-1 heads state dict: per head `layers` ResBlocks (the same block repeated, as the
    published ModuleList([ResBlock] * L) saves it) and a vocabulary projection."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(heads):
        w, b = 0.1 * torch.randn(H, H, generator=g), 0.1 * torch.randn(H, generator=g)
        for j in range(layers):
            sd[f"{i}.{j}.linear.weight"], sd[f"{i}.{j}.linear.bias"] = w.clone(), b.clone()
        proj = torch.randn(V, H, generator=g) if vocab_w is None else vocab_w + 0.05 * vocab_w.std() * torch.randn(
            V, H, generator=g)
        sd[f"{i}.{layers}.weight"] = proj.clone()
    return sd


def write_medusa(folder, sd: dict, heads_in_config: int, layers: int, fmt: str = "pt"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "medusa_num_heads": heads_in_config, "medusa_num_layers": layers,
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "transformers_version": "4.34.0"}))
    if fmt == "pt":
        torch.save(sd, folder / "medusa_lm_head.pt")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "medusa_lm_head.safetensors"))
    return folder


def medusa_by_hand(sd: dict, i: int, layers: int, h: torch.Tensor) -> torch.Tensor:
    """Head i's logits from the raw tensors: L times x + SiLU(W x + b), then the projection."""
    x = h
    for j in range(layers):
        x = x + torch.nn.functional.silu(x @ sd[f"{i}.{j}.linear.weight"].T + sd[f"{i}.{j}.linear.bias"])
    return x @ sd[f"{i}.{layers}.weight"].T


@pytest.mark.parametrize("fmt, layers", [("pt", 1), ("safetensors", 2)])
def test_medusa_checkpoint_weights_are_the_ones_used(target, tmp_path, fmt, layers):
    sd = medusa_state_dict(3, layers)
    folder = write_medusa(tmp_path / "medusa", sd, 3, layers, fmt)
    medusa = Medusa(checkpoint=str(folder)).bind(ModelsByRole(target))
    assert medusa.heads.num_heads == 3 and medusa.heads.config.own_lm_heads
    h = torch.randn(H, generator=torch.Generator().manual_seed(1))
    medusa.reset(torch.tensor([1]))
    medusa.observe_features(torch.stack([torch.zeros(H), h]))  # the last row is h_t
    for i in range(3):
        torch.testing.assert_close(medusa.head_logits(i), medusa_by_hand(sd, i, layers, h), atol=1e-4, rtol=1e-4)
    ids, _ = medusa.head_topk(2)
    assert ids[:, 0].tolist() == [int(medusa_by_hand(sd, i, layers, h).argmax()) for i in range(3)]


def test_medusa_checkpoint_decodes_losslessly(target, tmp_path):
    sd = medusa_state_dict(4, 1, vocab_w=target.lm_head.weight.detach())
    folder = write_medusa(tmp_path / "medusa", sd, 4, 1)
    medusa = Medusa(checkpoint=str(folder)).bind(ModelsByRole(target))
    outs = decode(target, medusa)
    assert [o.tokens for o in outs] == autoregressive(target)
    assert sum(sum(o.drafted) for o in outs) > 0


def test_medusa_heads_counted_from_the_weights_not_the_config(target, tmp_path, caplog):
    """Published configs may name fewer heads than the weights hold (their loader forces 5)."""
    folder = write_medusa(tmp_path / "medusa", medusa_state_dict(5, 1), 2, 1)
    assert load_medusa(str(folder)).num_heads == 5
    assert "medusa_num_heads=2" in caplog.text


@pytest.mark.parametrize("edit, key", [
    (lambda sd: sd.pop("1.0.linear.bias"), "1.0.linear.bias"),
    (lambda sd: sd.__setitem__("2.0.linear.weight", torch.zeros(H, H + 1)), "2.0.linear.weight"),
    (lambda sd: sd.__setitem__("0.0.gate.weight", torch.zeros(H, H)), "0.0.gate.weight"),
    (lambda sd: sd.pop("0.1.weight"), "0.1.weight"),
])
def test_medusa_wrong_or_missing_key_names_it(tmp_path, edit, key):
    sd = medusa_state_dict(3, 1)
    edit(sd)
    folder = write_medusa(tmp_path / "medusa", sd, 3, 1)
    with pytest.raises(CheckpointError, match=repr(key).replace(".", r"\.")):
        load_medusa(str(folder))


def test_medusa_folder_without_weights_names_the_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="medusa_lm_head.safetensors, medusa_lm_head.pt"):
        load_medusa(str(tmp_path / "empty"))


def test_strategy_checkpoint_option_loads_a_published_medusa(target, tmp_path):
    folder = write_medusa(tmp_path / "medusa", medusa_state_dict(2, 1), 2, 1)
    cfg = compose(["strategy=medusa", f"strategy.checkpoint={folder}"]).strategy
    proposer, policy = instantiate.strategy(cfg, ModelsByRole(target))
    assert isinstance(proposer, Medusa) and proposer.heads.num_heads == 2 and proposer.heads.config.own_lm_heads


# ======================================================================================= EAGLE
I_, NH, KV = 128, 4, 2  # intermediate size, attention heads, key/value heads of the tiny EAGLE layer
D = H // NH


def eagle_config(bias: bool = True, qkv_bias: bool = False) -> dict:
    """A config.json as published EAGLE heads ship it (eagle/train/EAGLE-LLaMA3-Instruct-8B), tiny."""
    cfg = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
           "hidden_size": H, "initializer_range": 0.02, "intermediate_size": I_, "max_position_embeddings": 2048,
           "model_type": "llama", "num_attention_heads": NH, "num_key_value_heads": KV, "num_hidden_layers": 1,
           "pad_token_id": 0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16",
           "transformers_version": "4.28.1", "use_cache": True, "vocab_size": V, "rope_theta": 10000.0,
           "bias": bias}
    if qkv_bias:
        cfg["qkv_bias"] = True
    return cfg


def eagle_state_dict(target, bias: bool = True, qkv_bias: bool = False, seed: int = 0) -> dict:
    """EAGLE-1/2 draft keys and shapes (cnets1.Model): fc over cat(embedding, feature), one layer
    without input_layernorm, a copy of the target's embeddings; float16 as published."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.08):
        return (s * torch.randn(*shape, generator=g)).half()

    sd = {"fc.weight": r(H, 2 * H, s=0.1), "embed_tokens.weight": target.model.embed_tokens.weight.detach().half(),
          "layers.0.self_attn.q_proj.weight": r(NH * D, H), "layers.0.self_attn.k_proj.weight": r(KV * D, H),
          "layers.0.self_attn.v_proj.weight": r(KV * D, H), "layers.0.self_attn.o_proj.weight": r(H, NH * D),
          "layers.0.mlp.gate_proj.weight": r(I_, H), "layers.0.mlp.up_proj.weight": r(I_, H),
          "layers.0.mlp.down_proj.weight": r(H, I_),
          "layers.0.post_attention_layernorm.weight": (1 + r(H, s=0.1).float()).half()}
    if bias:
        sd["fc.bias"] = r(H)
    if qkv_bias:
        for p, n in (("q", NH * D), ("k", KV * D), ("v", KV * D)):
            sd[f"layers.0.self_attn.{p}_proj.bias"] = r(n)
    return sd


def write_eagle(folder, sd: dict, cfg: dict, fmt: str = "bin"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def eagle_by_hand(sd: dict, e: torch.Tensor, f: torch.Tensor, bias: bool, qkv_bias: bool) -> torch.Tensor:
    """EAGLE's draft layer at a single position from the raw tensors (one key: attention = its value):
    x = fc(cat(e, f)); x += o(v(x)) (no norm before attention); x += down(silu(gate(n)) * up(n))
    with n = RMSNorm(x) * w_post; no final norm."""
    w = {k: v.float() for k, v in sd.items()}
    x = torch.cat([e, f]) @ w["fc.weight"].T + (w["fc.bias"] if bias else 0)
    v = x @ w["layers.0.self_attn.v_proj.weight"].T + (w["layers.0.self_attn.v_proj.bias"] if qkv_bias else 0)
    per_head = v.view(KV, D).repeat_interleave(NH // KV, dim=0).flatten()  # each query head reads its kv group
    x = x + per_head @ w["layers.0.self_attn.o_proj.weight"].T
    n = x * torch.rsqrt(x.pow(2).mean() + 1e-5) * w["layers.0.post_attention_layernorm.weight"]
    mlp = (torch.nn.functional.silu(n @ w["layers.0.mlp.gate_proj.weight"].T) * (n @ w["layers.0.mlp.up_proj.weight"].T))
    return x + mlp @ w["layers.0.mlp.down_proj.weight"].T


@pytest.mark.parametrize("fmt, bias, qkv_bias", [("bin", True, False), ("safetensors", False, False),
                                                 ("bin", True, True)])
def test_eagle_checkpoint_weights_are_the_ones_used(target, tmp_path, fmt, bias, qkv_bias):
    sd = eagle_state_dict(target, bias, qkv_bias)
    folder = write_eagle(tmp_path / "eagle", sd, eagle_config(bias, qkv_bias), fmt)
    drafter = load_eagle(str(folder))
    g = torch.Generator().manual_seed(3)
    e, f = torch.randn(H, generator=g), 3 * torch.randn(H, generator=g)  # a feature far from unit RMS: norms show
    with torch.no_grad():
        out, _ = drafter(f[None, None], e[None, None])
    torch.testing.assert_close(out[0, 0], eagle_by_hand(sd, e, f, bias, qkv_bias), atol=1e-4, rtol=1e-4)


def test_eagle_checkpoint_drafts_losslessly(target, tmp_path):
    folder = write_eagle(tmp_path / "eagle", eagle_state_dict(target), eagle_config())
    proposer = EagleCheckpoint(checkpoint=str(folder)).bind(ModelsByRole(target))
    assert proposer.lm.model.config.published_format == "eagle"
    outs = decode(target, proposer)
    assert [o.tokens for o in outs] == autoregressive(target)
    assert sum(sum(o.drafted) for o in outs) > 0


@pytest.mark.parametrize("edit, key", [
    (lambda sd: sd.pop("layers.0.mlp.down_proj.weight"), "layers.0.mlp.down_proj.weight"),
    (lambda sd: sd.pop("fc.bias"), "fc.bias"),
    (lambda sd: sd.__setitem__("fc.weight", torch.zeros(H, H)), "fc.weight"),
    (lambda sd: sd.__setitem__("layers.0.input_layernorm.weight", torch.ones(H)), "layers.0.input_layernorm.weight"),
])
def test_eagle_wrong_or_missing_key_names_it(target, tmp_path, edit, key):
    sd = eagle_state_dict(target)
    edit(sd)
    folder = write_eagle(tmp_path / "eagle", sd, eagle_config())
    with pytest.raises(CheckpointError, match=repr(key).replace(".", r"\.")):
        load_eagle(str(folder))


def test_eagle3_heads_are_refused(target, tmp_path):
    sd = {"midlayer.self_attn.q_proj.weight": torch.zeros(H, 2 * H), "d2t": torch.zeros(V, dtype=torch.long),
          "fc.weight": torch.zeros(H, 3 * H)}
    folder = write_eagle(tmp_path / "eagle3", sd, eagle_config())
    with pytest.raises(CheckpointError, match="EAGLE-3"):
        load_eagle(str(folder))


def test_eagle_head_for_another_hidden_size_is_refused(tmp_path):
    small = random_model("llama", V, 32, 1, seed=0)
    folder = write_eagle(tmp_path / "eagle", eagle_state_dict(random_model("llama", V, H, 1, seed=0)), eagle_config())
    with pytest.raises(ValueError, match="hidden size 64, the target's is 32"):
        EagleCheckpoint(checkpoint=str(folder)).bind(ModelsByRole(small))


def test_eagle_checkpoint_from_a_strategy_override(target, tmp_path):
    """The documented way to draft with a published EAGLE head: the drafter strategies' proposer
    replaced on the command line."""
    folder = write_eagle(tmp_path / "eagle", eagle_state_dict(target), eagle_config())
    cfg = compose(["strategy=speculative",
                   "strategy.proposer._target_=specexp.proposers.published_checkpoints.EagleCheckpoint",
                   f"+strategy.proposer.checkpoint={folder}"]).strategy
    proposer, _ = instantiate.strategy(cfg, ModelsByRole(target))
    assert isinstance(proposer, EagleCheckpoint) and proposer.lm.model.config.published_format == "eagle"
