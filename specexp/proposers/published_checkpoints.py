"""Published draft checkpoints, converted into this project's proposers on load.

Medusa (Cai et al. 2024), `specexp.proposers.medusa.load_medusa` (beside the heads it fills, with
the reading helpers of this module): a folder or hub id holding
  config.json                  medusa_num_heads, medusa_num_layers, base_model_name_or_path
  medusa_lm_head.safetensors   (or medusa_lm_head.pt) the heads' state dict, keys per head i:
      "{i}.{j}.linear.weight" [H, H], "{i}.{j}.linear.bias" [H]   j < medusa_num_layers (ResBlocks)
      "{i}.{L}.weight" [V, H]                                     L = medusa_num_layers (vocab projection)
(a `medusa_head.` prefix, as in the full models, is accepted). Read from FasterDecoding/Medusa at
e2a5d20c: medusa/model/medusa_model.py (MedusaConfig, ResBlock, MedusaModelABC.from_pretrained),
medusa/model/medusa_model_legacy.py and medusa/train/train_legacy.py (what is saved). The number
of heads is read from the weights: the published configs may name fewer (their loader forces 5).
Medusa-2 checkpoints, whose base model was fine-tuned with the heads, are whole models and are
not read here. A folder built by `specexp-medusa` (model type specexp_medusa) loads as it is.

EAGLE-1 / EAGLE-2 draft heads (Li et al. 2024), `load_eagle`: a folder or hub id holding
  config.json         a Llama config of the one layer (hidden_size, intermediate_size,
                      num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta,
                      rope_scaling, max_position_embeddings, vocab_size, num_hidden_layers = 1;
                      optional "bias" (fc's, default true) and "qkv_bias")
  pytorch_model.bin   (or model.safetensors) keys
      fc.weight [H, 2H] over cat(embedding, feature), fc.bias [H] (when bias)
      layers.0.self_attn.{q,k,v,o}_proj.weight (+ q/k/v .bias with qkv_bias)
      layers.0.mlp.{gate,up,down}_proj.weight, layers.0.post_attention_layernorm.weight
      embed_tokens.weight (optional: a copy of the target's, unused here)
Read from SafeAILab/EAGLE at cb7e0841: eagle/model/cnets1.py (Model, LlamaDecoderLayer: layer 0
has no input_layernorm, and there is no final norm: the target's LM head reads the layer's output
as it is), eagle/model/ea_model.py (the files loaded, "bias"), eagle/model/configs.py (EConfig),
eagle/train/EAGLE-LLaMA3-Instruct-8B (a config). They become this project's `FeatureDrafterModel`
(specexp/proposers/feature_drafter.py), whose input is cat(feature, embedding): fc's two column
blocks swap; its layer's input norm and its final norm become identities (so a converted drafter
lives in memory: saving it with save_pretrained would lose that). Positions: ours feed one more
position first (f_{-1} = 0 with the first token); rotary attention is relative, so only that one
extra key differs. EAGLE-3 heads (their own LM head, three layers' features) are refused.

Neither loader copies code of those projects; they map key names and shapes.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from specexp.proposers.feature_drafter import FeatureDrafter, FeatureDrafterConfig, FeatureDrafterModel

log = logging.getLogger(__name__)

EAGLE_WEIGHTS = ("pytorch_model.bin", "model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that is not in the published layout: the message names the file and the key."""


# ------------------------------------------------------------------------------- files
def checkpoint_file(name_or_path: str, candidates: tuple[str, ...], what: str) -> Path:
    """The first of `candidates` in the folder `name_or_path`, or downloaded from the hub repo of
    that name (huggingface_hub's cache; offline: what is cached). Raises naming every candidate."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        for c in candidates:
            if (folder / c).is_file():
                return folder / c
        raise CheckpointError(f"{what}: {folder} holds none of {', '.join(candidates)}")
    from huggingface_hub import hf_hub_download

    errors = []
    for c in candidates:
        try:
            return Path(hf_hub_download(name_or_path, c))
        except Exception as err:  # not in the repo, offline, no such repo: try the next name
            errors.append(f"{c}: {type(err).__name__}")
    raise CheckpointError(f"{what}: {name_or_path!r} is not a folder, and the hub gave none of "
                          f"{', '.join(candidates)} ({'; '.join(errors)})")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch pickle of tensors (weights only: nothing else is run)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return sd


def read_config(name_or_path: str, what: str) -> dict:
    return json.loads(checkpoint_file(name_or_path, ("config.json",), what).read_text())


def _require(sd: dict, key: str, shape: tuple[int, ...], path) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: missing key {key!r} (expected shape {list(shape)})")
    t = sd[key]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: key {key!r} has shape {list(t.shape)}, expected {list(shape)}")
    return t


# ------------------------------------------------------------------------------- EAGLE
EAGLE_LAYER = {  # published key (after "layers.0.") -> shape, given H, I, heads, kv heads, head_dim
    "self_attn.q_proj.weight": lambda h, i, n, kv, d: (n * d, h),
    "self_attn.k_proj.weight": lambda h, i, n, kv, d: (kv * d, h),
    "self_attn.v_proj.weight": lambda h, i, n, kv, d: (kv * d, h),
    "self_attn.o_proj.weight": lambda h, i, n, kv, d: (h, n * d),
    "mlp.gate_proj.weight": lambda h, i, n, kv, d: (i, h),
    "mlp.up_proj.weight": lambda h, i, n, kv, d: (i, h),
    "mlp.down_proj.weight": lambda h, i, n, kv, d: (h, i),
    "post_attention_layernorm.weight": lambda h, i, n, kv, d: (h,),
}
EAGLE_IGNORED = ("embed_tokens.weight", "layers.0.self_attn.rotary_emb.inv_freq")  # the target's copy; a buffer


def load_eagle(name_or_path: str) -> FeatureDrafterModel:
    """A published EAGLE-1/2 draft checkpoint as this project's feature drafter (module
    docstring), on the CPU in float32."""
    what = f"EAGLE checkpoint {name_or_path}"
    cfg = read_config(name_or_path, what)
    path = checkpoint_file(name_or_path, EAGLE_WEIGHTS, what)
    return eagle_from_state_dict(read_state_dict(path), cfg, path)


def eagle_config(cfg: dict, path="the checkpoint") -> FeatureDrafterConfig:
    """Our drafter's config from a published EAGLE config.json dict."""
    import inspect

    from transformers import LlamaConfig

    for k in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if k not in cfg:
            raise CheckpointError(f"{path}: config.json has no {k!r}")
    if int(cfg.get("num_hidden_layers", 1)) != 1:
        raise CheckpointError(f"{path}: num_hidden_layers={cfg['num_hidden_layers']}: the feature drafter has one layer")
    h, n = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    rope = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("linear", "dynamic"):
            raise CheckpointError(f"{path}: rope_scaling type {kind!r} (EAGLE-1/2 know linear and dynamic)")
        rope = {"rope_type": kind, "factor": float(scaling["factor"]), "rope_theta": theta}
    rope_kw = ({"rope_parameters": rope} if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters
               else {"rope_theta": theta, "rope_scaling": ({"type": rope["rope_type"], "factor": rope["factor"]}
                                                           if scaling else None)})
    return FeatureDrafterConfig(
        hidden_size=h, intermediate_size=int(cfg["intermediate_size"]), num_attention_heads=n,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or n), head_dim=h // n,
        hidden_act=cfg.get("hidden_act", "silu"), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        vocab_size=int(cfg.get("vocab_size", 32000)), num_hidden_layers=1, tie_word_embeddings=False,
        attention_bias=bool(cfg.get("qkv_bias", False)), **rope_kw)


def eagle_from_state_dict(sd: dict[str, torch.Tensor], cfg: dict, path="the checkpoint") -> FeatureDrafterModel:
    """FeatureDrafterModel holding a published EAGLE-1/2 state dict `sd` described by `cfg`."""
    if any(k.startswith("midlayer.") for k in sd) or "d2t" in sd:
        raise CheckpointError(f"{path}: an EAGLE-3 draft head (keys 'midlayer.*', 'd2t'): it reads three layers' "
                              "features and has its own LM head; only EAGLE-1/2 heads load into the feature drafter")
    config = eagle_config(cfg, path)
    h, i, n, kv, d = (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                      config.num_key_value_heads, config.head_dim)
    # 1. fc: published columns [embedding | feature] -> ours [feature | embedding].
    w = _require(sd, "fc.weight", (h, 2 * h), path)
    fc_bias = bool(cfg.get("bias", True))
    b = _require(sd, "fc.bias", (h,), path) if fc_bias else torch.zeros(h)
    state = {"fc.weight": torch.cat([w[:, h:], w[:, :h]], dim=1), "fc.bias": b}
    # 2. The layer: layers.0.X -> layers.layers.0.X (our LlamaModel of one layer).
    for key, shape in EAGLE_LAYER.items():
        state[f"layers.layers.0.{key}"] = _require(sd, f"layers.0.{key}", shape(h, i, n, kv, d), path)
    if config.attention_bias:  # qkv_bias: q/k/v biases published; o_proj's (Llama's attention_bias has one) = 0
        for p, rows in (("q", n * d), ("k", kv * d), ("v", kv * d)):
            state[f"layers.layers.0.self_attn.{p}_proj.bias"] = _require(sd, f"layers.0.self_attn.{p}_proj.bias",
                                                                         (rows,), path)
        state["layers.layers.0.self_attn.o_proj.bias"] = torch.zeros(h)
    used = {"fc.weight", "fc.bias", *(f"layers.0.{k}" for k in EAGLE_LAYER), *EAGLE_IGNORED,
            *(f"layers.0.self_attn.{p}_proj.bias" for p in "qkv" if config.attention_bias)}
    extra = sorted(set(sd) - used)
    if extra:
        raise CheckpointError(f"{path}: unexpected key {extra[0]!r} (an EAGLE-1/2 head: fc, layers.0 without "
                              "input_layernorm, no final norm)")
    # 3. Our module; the norms EAGLE does not have become identities.
    model = FeatureDrafterModel(config)
    layer = model.layers.layers[0]
    state["layers.layers.0.input_layernorm.weight"] = layer.input_layernorm.weight.detach()
    state["layers.norm.weight"] = model.layers.norm.weight.detach()
    state["layers.embed_tokens.weight"] = model.layers.embed_tokens.weight.detach()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    layer.input_layernorm = torch.nn.Identity()  # EAGLE's layer 0 reads fc's output as it is
    model.layers.norm = torch.nn.Identity()  # and its output goes to the LM head as it is
    model.config.published_format = "eagle"
    return model.float().eval()


class _WithModel:
    """A loaded pair whose `role` is `model` (a converted checkpoint); everything else the pair's."""

    def __init__(self, pair, role: str, model):
        self._pair, self._role, self._model = pair, role, model

    def get(self, role, *args, **kw):
        return self._model if role == self._role else self._pair.get(role, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._pair, name)


class EagleCheckpoint(FeatureDrafter):
    """The feature drafter (specexp/proposers/feature_drafter.py) with a published EAGLE-1/2 head
    (`checkpoint`: a folder or hub id) instead of the pair's drafter; `vocab` must be null (a
    published head comes without draft_vocab.json)."""

    def __init__(self, checkpoint: str, model: str = "drafter", vocab: int | None = None):
        super().__init__(model, vocab)
        self.checkpoint = checkpoint

    def bind(self, pair) -> "EagleCheckpoint":
        if self.vocab:
            raise ValueError("an EAGLE checkpoint has no draft_vocab.json: set strategy.proposer.vocab=null")
        drafter = load_eagle(self.checkpoint)
        w = pair.target.get_output_embeddings().weight
        if drafter.config.hidden_size != w.shape[1]:
            raise ValueError(f"EAGLE checkpoint {self.checkpoint}: hidden size {drafter.config.hidden_size}, the "
                             f"target's is {w.shape[1]}: a head trained for another target")
        drafter = drafter.to(device=w.device, dtype=w.dtype)
        return super().bind(_WithModel(pair, self.model, drafter))
