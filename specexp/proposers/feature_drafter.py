"""Feature-level drafting (EAGLE, Li et al. 2024): a one-layer drafter that reads the target's own
last hidden states ("features") instead of re-reading the text with a small model of its own.

Position p of the drafter takes [f_{p-1} ; e(x_p)], the target's feature at p-1 next to the
embedding of token p (EAGLE's input shift; f_{-1} = 0), maps it to the hidden size (`fc`), runs
one Llama decoder layer and a final norm, and outputs its prediction of f_p. The target's frozen
LM head turns that into the distribution of x_{p+1}; the embeddings are the target's too, so the
drafter's own weights are only `fc`, one layer and a norm (4.2M parameters for SmolLM2-135M).

Drafting (`FeatureDrafter`, a `DraftModel`): the decode loop hands over the target's features of
every accepted token (`observe_features`); each round the drafter first feeds the tokens its cache
has not seen with those real features, then drafts token by token, feeding each drafted token with
its own last predicted feature. After verification the predicted-feature positions are cropped
(`observe`): the accepted drafts are fed again next round, with the target's real features. Length
policies decide on the drafter's token distribution as with any drafter; verification is the
loop's own (lossless: greedy and sampling).

The drafter is a Hugging Face model type of its own (`specexp_eagle`, registered with the Auto
classes when this module is imported), built by `specexp-eagle` (specexp/builds/train_feature_drafter.py) and loaded as
the pair's `drafter`; `DraftModel.bind` hands over to `FeatureDrafter` when it finds one, so every
strategy that drafts with `model: drafter` drafts from features on the pair smollm2-135m__eagle.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaModel, LlamaPreTrainedModel

from specexp.models.cached_lm import CachedLM, cache_arg, cache_of
from specexp.proposers.base import Draft
from specexp.proposers.drafter import DraftModel, draft_vocab


class FeatureDrafterConfig(LlamaConfig):
    """A Llama config describing the drafter's one layer (hidden size, heads, RoPE: the target's)."""

    model_type = "specexp_eagle"


class FeatureDrafterModel(LlamaPreTrainedModel):
    """[f_{p-1} ; e(x_p)] -> fc -> one decoder layer -> norm -> predicted f_p (see the module docstring)."""

    config_class = FeatureDrafterConfig
    base_model_prefix = "eagle"

    def __init__(self, config: FeatureDrafterConfig):
        super().__init__(config)
        h = config.hidden_size
        self.fc = torch.nn.Linear(2 * h, h, bias=True)
        inner = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 1, "vocab_size": 1, "pad_token_id": None,
                               "bos_token_id": None, "eos_token_id": None,
                               "tie_word_embeddings": False})
        self.layers = LlamaModel(inner)  # inputs_embeds only: its 1-row embedding table is never read
        self.post_init()

    def forward(self, features: torch.Tensor | None = None, embeds: torch.Tensor | None = None, past_key_values=None,
                use_cache: bool = False, input_ids=None, **_):
        """features, embeds [B, n, H] -> (predicted features [B, n, H], cache)."""
        if features is None or input_ids is not None:
            raise ValueError("a feature drafter reads the target's hidden states, not token ids alone: draft with it "
                             "through strategy.proposer=DraftModel (model: drafter); it cannot score text on its "
                             "own (e.g. as a cascade level or transformers' assistant_model)")
        x = self.fc(torch.cat([features, embeds], dim=-1))
        out = self.layers(inputs_embeds=x, **cache_arg(self.layers, past_key_values), use_cache=use_cache)
        return out.last_hidden_state, cache_of(out)

    def as_proposer(self, role: str, vocab: int | None) -> "FeatureDrafter":
        """What `DraftModel.bind` drafts with when the pair's drafter is this model."""
        return FeatureDrafter(role, vocab)


AutoConfig.register(FeatureDrafterConfig.model_type, FeatureDrafterConfig, exist_ok=True)
AutoModelForCausalLM.register(FeatureDrafterConfig, FeatureDrafterModel, exist_ok=True)


def subset_head(head: torch.nn.Module, ids: torch.Tensor | None):
    """(weight, bias) of the LM head restricted to `ids` (None: the whole head)."""
    w, b = head.weight.detach(), getattr(head, "bias", None)
    b = None if b is None else b.detach()
    if ids is None:
        return w, b
    return w[ids], (None if b is None else b[ids])


class FeatureLM(CachedLM):
    """The feature drafter with its own KV cache, fed tokens like any `CachedLM`. The feature that
    goes with a fed token x_p is f_{p-1}: the target's (`add_features`) while there are unfed ones,
    then its own last prediction (one token at a time). `real_length`: the cached positions fed
    with the target's features (the rest is cropped after each round)."""

    def __init__(self, model: FeatureDrafterModel, embed: torch.nn.Module, head: torch.nn.Module,
                 ids: torch.Tensor | None = None, vocab_size: int | None = None):
        self.embed = embed
        self.width = head.weight.shape[0]
        self.ids = None if ids is None else ids.to(head.weight.device)
        self.weight, self.bias = subset_head(head, self.ids)
        super().__init__(model, vocab_size)

    def reset(self) -> None:
        super().reset()
        w = self.weight
        self.pending = w.new_zeros(1, self.model.config.hidden_size)  # unfed target features (f_{-1} = 0 first)
        self.hidden = None  # the drafter's predicted features at the positions of the last forward
        self.real_length = 0

    def add_features(self, h: torch.Tensor) -> None:
        """The target's last hidden states of the next accepted tokens, in order."""
        self.pending = torch.cat([self.pending, h.to(self.pending.dtype)])

    def crop(self, length: int) -> None:
        super().crop(length)
        self.hidden = None  # a prediction is only fed right after it was made, in the same round

    @property
    def has_features(self) -> bool:
        return self.length + self.pending.shape[0] > 1  # beyond f_{-1}: the target has read something

    def _step(self, ids: torch.Tensor, keep: int | None) -> torch.Tensor:
        n, r = ids.shape[0], min(ids.shape[0], self.pending.shape[0])
        feats = self.pending[:r]
        if r < n:  # past the target's features: a drafted token, fed with the drafter's own prediction
            if n - r != 1 or self.hidden is None:
                raise RuntimeError(f"feature drafter: {n - r} tokens to feed without features (one at a time)")
            feats = torch.cat([feats, self.hidden[-1:]])
        else:
            self.real_length = self.length + n
        self.pending = self.pending[r:]
        h, self.cache = self.model(feats[None], self.embed(ids)[None], self.cache, use_cache=True)
        self.hidden = h[0]
        sub = torch.nn.functional.linear(self.hidden[-(keep or n):], self.weight, self.bias).float()
        if self.ids is None:
            return sub
        logits = sub.new_full((sub.shape[0], self.width), float("-inf"))  # a subset head: others can't be drafted
        logits[:, self.ids] = sub
        return logits


class FeatureDrafter(DraftModel):
    """EAGLE-style drafting from the target's features (module docstring). `model`: the pair's
    role holding a `FeatureDrafterModel`; `vocab`: draft among the N most frequent ids of its
    draft_vocab.json (null = the target's whole head)."""

    needs_features = True  # the decode loop keeps the target's last hidden states and passes them on

    def bind(self, pair) -> "FeatureDrafter":
        model = pair.get(self.model)
        if not isinstance(model, FeatureDrafterModel):
            raise ValueError(f"FeatureDrafter: the pair's {self.model!r} is a {type(model).__name__}, "
                             "not a feature drafter (build one with specexp-eagle)")
        target = pair.target
        if getattr(target.config, "is_encoder_decoder", False):
            raise ValueError("the feature drafter needs a decoder-only target")
        ids = draft_vocab(model, self.vocab) if self.vocab else None
        self.lm = FeatureLM(model, target.get_input_embeddings(), target.get_output_embeddings(), ids,
                            vocab_size=pair.vocab_size)
        return self

    def observe_features(self, hidden: torch.Tensor) -> None:
        """Called by the decode loop after each verification: the target's last hidden states of
        the tokens it kept (its unseen suffix and the accepted drafts) [m, H]."""
        self.lm.add_features(hidden)

    def propose(self, tokens, max_len, policy, sampling, generator) -> Draft:
        if not self.lm.has_features:  # the first round: the target reads the prompt before anything is drafted
            return Draft(tokens.new_empty(0), None)
        return super().propose(tokens, max_len, policy, sampling, generator)

    def observe(self, n_accepted: int) -> None:
        # drop every position fed with a predicted feature: the accepted drafts come back with real ones
        self.lm.crop(self.lm.real_length)
