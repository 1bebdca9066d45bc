"""Head-based drafting (Medusa, Cai et al. 2024): k small heads on the target's own last hidden
state, head i predicting the token i+1 places after the target's next token. No drafter model
and no drafter cache: one round's draft is read off the heads at once.

Position alignment. After a round the decode loop hands over the target's last hidden states of
the tokens it kept (`observe_features`); the last one, h_t, is the state at x_t whose LM head
gave the round's own token x_{t+1} (the correction or bonus, already in `tokens` when the next
round drafts). So

    LM head(h_t)      -> x_{t+1}   (the target's, emitted by verification)
    head 0 (h_t)      -> x_{t+2}   the first draft
    head i (h_t)      -> x_{t+2+i} the (i+1)-th draft

A head is `medusa_num_layers` residual blocks (x + SiLU(W x + b)) and then a vocabulary
projection: its own (`own_lm_heads`, as published Medusa checkpoints have it) or the target's LM
head, frozen and shared (what `specexp-medusa` trains: specexp/builds/train_medusa_heads.py).
Untrained heads start as Medusa starts them: W = 0, b = 0 (the identity), so each one repeats the
target's own next token; they only pay once trained.

Drafting is a chain of one token per head (top-1 under greedy, a sample under sampling, each
head's distribution given as the draft's q: the loop's verification keeps the output the
target's). `head_topk(k)` keeps every head's top-k candidates at hand for a token tree.

The heads are a Hugging Face model type of their own (`specexp_medusa`, registered with the Auto
classes when this module is imported): a built heads folder can be a pair's `drafter`, and
`DraftModel.bind` hands over to `Medusa` when it finds one (as it does for the feature drafter).
Published Medusa checkpoints load through specexp/proposers/published_checkpoints.py. Format read
from FasterDecoding/Medusa at e2a5d20c (medusa/model/medusa_model.py: ResBlock, `medusa_head`
as nn.Sequential(ResBlock * medusa_num_layers, Linear(hidden, vocab, bias=False)); MedusaConfig's
medusa_num_heads, medusa_num_layers, base_model_name_or_path); the code here is this project's own.
"""
from __future__ import annotations

import logging
import re

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.published_checkpoints import (
    CheckpointError,
    _require,
    checkpoint_file,
    read_config,
    read_state_dict,
)

log = logging.getLogger(__name__)


class MedusaHeadsConfig(PretrainedConfig):
    """The heads' shape. The field names are published Medusa's (medusa_num_heads,
    medusa_num_layers, base_model_name_or_path); `own_lm_heads` False = the target's LM head."""

    model_type = "specexp_medusa"

    def __init__(self, hidden_size: int = 64, vocab_size: int = 64, medusa_num_heads: int = 4,
                 medusa_num_layers: int = 1, own_lm_heads: bool = False, base_model_name_or_path: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.medusa_num_heads = medusa_num_heads
        self.medusa_num_layers = medusa_num_layers
        self.own_lm_heads = own_lm_heads
        self.base_model_name_or_path = base_model_name_or_path


class ResBlock(torch.nn.Module):
    """x + SiLU(W x + b): W = 0 and b = 0 at the start, the identity."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.nn.functional.silu(self.linear(x))


class MedusaHeads(PreTrainedModel):
    """`medusa_head[i]` = Sequential(ResBlock * L [, Linear(hidden, vocab)]), the state-dict keys
    of published Medusa with the `medusa_head.` prefix of its full models."""

    config_class = MedusaHeadsConfig
    base_model_prefix = "medusa"
    _no_split_modules = ["ResBlock"]

    def __init__(self, config: MedusaHeadsConfig):
        super().__init__(config)
        h, v = config.hidden_size, config.vocab_size
        self.medusa_head = torch.nn.ModuleList(
            torch.nn.Sequential(*[ResBlock(h) for _ in range(config.medusa_num_layers)],
                                *([torch.nn.Linear(h, v, bias=False)] if config.own_lm_heads else []))
            for _ in range(config.medusa_num_heads))
        self.post_init()

    def _init_weights(self, module):  # the blocks start as the identity (ResBlock); loaded weights replace the rest
        pass

    @property
    def num_heads(self) -> int:
        return len(self.medusa_head)

    def block_output(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """Head i's residual blocks over hidden [..., H] (the input of its vocabulary projection)."""
        head = self.medusa_head[i]
        blocks = head[:-1] if self.config.own_lm_heads else head
        for block in blocks:
            hidden = block(hidden)
        return hidden

    def head_logits(self, i: int, hidden: torch.Tensor, lm_head: torch.nn.Module | None = None) -> torch.Tensor:
        """Head i's logits [..., V] over hidden [..., H]; `lm_head`: the target's, for shared heads."""
        x = self.block_output(i, hidden)
        if self.config.own_lm_heads:
            return self.medusa_head[i][-1](x)
        if lm_head is None:
            raise ValueError("these Medusa heads share the target's LM head: pass it (lm_head=target's head)")
        return lm_head(x)

    def forward(self, hidden: torch.Tensor | None = None, lm_head: torch.nn.Module | None = None, input_ids=None, **_):
        """hidden [..., H] -> logits [heads, ..., V] (every head)."""
        if hidden is None or input_ids is not None:
            raise ValueError("Medusa heads read the target's hidden states, not token ids: draft with them through "
                             "strategy=medusa (or a pair whose drafter is a heads folder); they cannot score text")
        return torch.stack([self.head_logits(i, hidden, lm_head) for i in range(self.num_heads)])

    def as_proposer(self, role: str, vocab: int | None) -> "Medusa":
        """What `DraftModel.bind` drafts with when the pair's drafter is a heads folder."""
        if vocab:
            raise ValueError(f"strategy.proposer.vocab={vocab}: Medusa heads draft over the whole vocabulary; "
                             "set strategy.proposer.vocab=null")
        return Medusa(model=role)


AutoConfig.register(MedusaHeadsConfig.model_type, MedusaHeadsConfig, exist_ok=True)
AutoModelForCausalLM.register(MedusaHeadsConfig, MedusaHeads, exist_ok=True)


def untrained_heads(target, num_heads: int, num_layers: int) -> MedusaHeads:
    """Heads for `target` as Medusa initialises them (identity blocks), sharing its LM head."""
    w = target.get_output_embeddings().weight
    cfg = MedusaHeadsConfig(hidden_size=w.shape[1], vocab_size=w.shape[0], medusa_num_heads=num_heads,
                            medusa_num_layers=num_layers, own_lm_heads=False,
                            base_model_name_or_path=str(getattr(target.config, "_name_or_path", "") or ""))
    return MedusaHeads(cfg).to(device=w.device, dtype=w.dtype).eval()


class Medusa(Proposer):
    """Draft one token per Medusa head from the target's last hidden state (module docstring).

    model: the pair's role whose model is a heads folder (e.g. `drafter` on
        model_pair=smollm2-135m__medusa); checkpoint: a heads folder or hub id instead (a
        `specexp-medusa` build, or a published Medusa checkpoint: converted on load); neither:
        untrained heads (`num_heads` of `num_layers` blocks) on the target's LM head.
    topk: how many candidates per head `head_topk` returns by default (for token trees)."""

    needs_features = True  # the decode loop keeps the target's last hidden states and passes them on

    def __init__(self, model: str | None = None, checkpoint: str | None = None, num_heads: int = 4,
                 num_layers: int = 1, topk: int = 10):
        if num_heads < 1 or num_layers < 0 or topk < 1:
            raise ValueError(f"medusa: need num_heads >= 1, num_layers >= 0, topk >= 1; got {num_heads}, "
                             f"{num_layers}, {topk}")
        self.model, self.checkpoint = model, checkpoint
        self.num_heads, self.num_layers, self.topk = num_heads, num_layers, topk
        self.heads: MedusaHeads | None = None
        self.forwards = 0  # rounds in which the heads ran (their cost is a small part of a target forward)
        self.hidden: torch.Tensor | None = None  # h_t: the target's last hidden state of its last kept token
        self._logits: dict[int, torch.Tensor] = {}  # head -> logits [V] for h_t (computed once per round)

    def bind(self, pair) -> "Medusa":
        target = pair.target
        if getattr(target.config, "is_encoder_decoder", False):
            raise ValueError("Medusa heads read a decoder-only target's hidden states; this target is an "
                             "encoder-decoder model: use a drafter-model strategy")
        # 1. The heads: a checkpoint, the pair's role, or untrained ones.
        if self.checkpoint:
            heads = load_medusa(self.checkpoint)
        elif self.model:
            heads = pair.get(self.model)
            if not isinstance(heads, MedusaHeads):
                raise ValueError(f"medusa: the pair's {self.model!r} is a {type(heads).__name__}, not Medusa heads "
                                 "(set strategy.model=null for untrained heads, or strategy.checkpoint=<folder or "
                                 "hub id>)")
        else:
            heads = untrained_heads(target, self.num_heads, self.num_layers)
        # 2. They must read this target's hidden states and write its vocabulary.
        self.lm_head = target.get_output_embeddings()
        w = self.lm_head.weight
        if heads.config.hidden_size != w.shape[1]:
            raise ValueError(f"medusa: the heads read hidden states of size {heads.config.hidden_size}, the target's "
                             f"are {w.shape[1]} (heads trained for {heads.config.base_model_name_or_path or 'another model'})")
        if heads.config.own_lm_heads and heads.config.vocab_size > pair.vocab_size:
            raise ValueError(f"medusa: the heads write {heads.config.vocab_size} token ids, the target "
                             f"{pair.vocab_size}: heads trained for another vocabulary")
        self.heads = heads.to(device=w.device, dtype=w.dtype).eval()
        self.vocab_size = pair.vocab_size
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        self.hidden = None
        self._logits = {}

    def observe_features(self, hidden: torch.Tensor) -> None:
        """The target's last hidden states [m, H] of the tokens it kept this round: the last is h_t."""
        if hidden.shape[0]:
            self.hidden = hidden[-1]
            self._logits = {}

    @torch.inference_mode()
    def head_logits(self, i: int) -> torch.Tensor:
        """Head i's float32 logits [V] (the target's width) for the current h_t, computed once."""
        if i not in self._logits:
            if not self._logits:
                self.forwards += 1
            logits = self.heads.head_logits(i, self.hidden.to(self.lm_head.weight.dtype), self.lm_head).float()
            v = self.vocab_size
            if logits.shape[-1] < v:  # a narrower head: the ids past it can't be drafted
                logits = torch.nn.functional.pad(logits, (0, v - logits.shape[-1]), value=float("-inf"))
            self._logits[i] = logits[:v]
        return self._logits[i]

    def head_topk(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every head's top-k candidates for the next round: (ids [heads, k], log-probabilities [heads, k]),
        row i for the token i+2 places after h_t (what a tree proposer branches on). Empty before
        the target has read the prompt."""
        k = min(k or self.topk, self.vocab_size)  # a vocabulary smaller than k: every token
        if self.hidden is None:
            return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
        rows = [self.head_logits(i).log_softmax(-1).topk(k) for i in range(self.heads.num_heads)]
        return torch.stack([r.indices for r in rows]), torch.stack([r.values for r in rows])

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy, sampling: Sampling,
                generator: torch.Generator | None) -> Draft:
        if self.hidden is None:  # the first round: the target reads the prompt before anything is drafted
            return Draft(tokens.new_empty(0), None)
        from specexp.proposers.drafter import draft_chain

        # head j drafts the token j + 1 places after the target's next one
        return draft_chain(self.head_logits, min(max_len, self.heads.num_heads), tokens, policy, sampling,
                           generator, self.eos, self.records)


# ------------------------------------------------------------ published Medusa-1 checkpoints
MEDUSA_WEIGHTS = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
MEDUSA_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def load_medusa(name_or_path: str) -> MedusaHeads:
    """Medusa heads from a `specexp-medusa` build or a published Medusa-1 checkpoint (module
    docstring), on the CPU in float32 (the proposer moves them to the target's device and dtype)."""
    what = f"Medusa checkpoint {name_or_path}"
    cfg = read_config(name_or_path, what)
    if cfg.get("model_type") == MedusaHeadsConfig.model_type:  # this project's own format
        return MedusaHeads.from_pretrained(name_or_path, dtype=torch.float32).eval()
    path = checkpoint_file(name_or_path, MEDUSA_WEIGHTS, what)
    sd = {k.removeprefix("medusa_head."): v for k, v in read_state_dict(path).items()}
    return medusa_from_state_dict(sd, cfg, path)


def medusa_from_state_dict(sd: dict[str, torch.Tensor], cfg: dict, path="the checkpoint") -> MedusaHeads:
    """MedusaHeads (own vocabulary projections) holding a published heads state dict `sd` (keys
    without the `medusa_head.` prefix) described by the config dict `cfg`."""
    # 1. Shape of the heads from the keys: heads = 1 + the largest head index; L = the index of the
    #    vocabulary projection ("{i}.{L}.weight").
    bad = [k for k in sd if not MEDUSA_KEY.match(k)]
    if bad:
        raise CheckpointError(f"{path}: unexpected key {bad[0]!r} (a Medusa heads state dict has keys "
                              "'{head}.{block}.linear.weight|bias' and '{head}.{L}.weight')")
    heads = 1 + max(int(MEDUSA_KEY.match(k)[1]) for k in sd)
    proj = [int(m[2]) for k in sd if (m := MEDUSA_KEY.match(k))[3] == "weight"]
    layers = int(cfg.get("medusa_num_layers", max(proj) if proj else 1))
    if "medusa_num_heads" in cfg and int(cfg["medusa_num_heads"]) != heads:
        log.warning("%s: config.json says medusa_num_heads=%s, the weights hold %d heads: using %d",
                    path, cfg["medusa_num_heads"], heads, heads)
    key = f"0.{layers}.weight"
    if key not in sd:
        raise CheckpointError(f"{path}: missing key {key!r} (head 0's vocabulary projection after "
                              f"medusa_num_layers={layers} blocks)")
    vocab, hidden = sd[key].shape
    # 2. Every expected key, with its shape; nothing left over.
    expected = {}
    for i in range(heads):
        for j in range(layers):
            expected[f"{i}.{j}.linear.weight"] = (hidden, hidden)
            expected[f"{i}.{j}.linear.bias"] = (hidden,)
        expected[f"{i}.{layers}.weight"] = (vocab, hidden)
    state = {k: _require(sd, k, shape, path) for k, shape in expected.items()}
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected key {extra[0]!r} for {heads} heads of medusa_num_layers={layers}")
    # 3. Into our module (same key names under `medusa_head.`).
    config = MedusaHeadsConfig(hidden_size=hidden, vocab_size=vocab, medusa_num_heads=heads, medusa_num_layers=layers,
                               own_lm_heads=True, base_model_name_or_path=str(cfg.get("base_model_name_or_path", "")))
    model = MedusaHeads(config)
    model.medusa_head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()
