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

Trees (`FeatureTreeDrafter`, EAGLE-2's dynamic tree; strategy=tree hands over to it): after the
context, the tree grows one level per drafter forward (`FeatureLM.forward_tree`), each node fed
with its parent's predicted feature (the first level: the one predicted at the context's last
token) under a tree attention mask (it sees the cache and its own ancestors, at depth-based
positions). Every tree position holds a predicted feature, so `observe` crops them all, as for a
chain: the accepted path is fed again next round with the target's features.

The drafter is a Hugging Face model type of its own (`specexp_eagle`, registered with the Auto
classes when this module is imported), built by `specexp-eagle` (specexp/builds/train_feature_drafter.py) and loaded as
the pair's `drafter`; `DraftModel.bind` hands over to `FeatureDrafter` when it finds one, so every
strategy that drafts with `model: drafter` drafts from features on the pair smollm2-135m__eagle
(and `TreeDrafter.bind` to `FeatureTreeDrafter`: strategy=tree drafts its tree from features).
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaModel, LlamaPreTrainedModel

from specexp.length import LengthPolicy
from specexp.models.cached_lm import CachedLM, cache_arg, cache_of, tree_attention
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, check_depth_policy
from specexp.proposers.drafter import DraftModel, draft_vocab
from specexp.proposers.tree_drafter import check_options, grow, open_nodes, pruned, rerank, sized_total


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
                use_cache: bool = False, input_ids=None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **_):
        """features, embeds [B, n, H] -> (predicted features [B, n, H], cache). `attention_mask` and
        `position_ids`: a token tree's additive 4D mask and depth-based positions (FeatureLM.forward_tree);
        None: causal, after the cache."""
        if features is None or input_ids is not None:
            raise ValueError("a feature drafter reads the target's hidden states, not token ids alone: draft with it "
                             "through strategy.proposer=DraftModel (model: drafter); it cannot score text on its "
                             "own (e.g. as a cascade level or transformers' assistant_model)")
        x = self.fc(torch.cat([features, embeds], dim=-1))
        out = self.layers(inputs_embeds=x, **cache_arg(self.layers, past_key_values), use_cache=use_cache,
                          attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state, cache_of(out)

    def as_proposer(self, role: str, vocab: int | None) -> "FeatureDrafter":
        """What `DraftModel.bind` drafts with when the pair's drafter is this model."""
        return FeatureDrafter(role, vocab)

    def as_tree_proposer(self, role: str, **options) -> "FeatureTreeDrafter":
        """What strategy=tree (`TreeDrafter.bind`) drafts with when the pair's drafter is this model:
        `options` are its branch, width, total and max_entropy."""
        return FeatureTreeDrafter(role, **options)


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
    then its own last prediction (one token at a time); a tree's nodes are fed with the features
    given (`forward_tree`). `real_length`: the cached positions fed with the target's features (the
    rest is cropped after each round)."""

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
        self._tree_features = None  # the features of the tree nodes forward_tree feeds

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
        return self._logits(self.hidden[-(keep or n):])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's LM head (or its subset) on predicted features [m, H]: float32 logits [m, V']."""
        sub = torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        if self.ids is None:
            return sub
        logits = sub.new_full((sub.shape[0], self.width), float("-inf"))  # a subset head: others can't be drafted
        logits[:, self.ids] = sub
        return logits

    def forward_tree(self, ids: torch.Tensor, features: torch.Tensor, parents: torch.Tensor,
                     tree_cached: int = 0) -> torch.Tensor:
        """Feed the nodes ids [m] of a token tree (`parents` [n]: all its nodes' parents, the first
        `tree_cached` of which are the last cached positions; the ids are its last m = n - tree_cached
        nodes), node i with `features[i]` [m, H]: its parent's predicted feature (a first-level
        node: the one predicted at the context's last token), as EAGLE-2 feeds its tree. Each node
        sees the cache before the tree and its own ancestors, at position (the tree's first position
        + its depth). Returns float32 logits [m, V] after each node; `hidden` = its predicted
        features [m, H]. Counted and timed as any forward (CachedLM.forward); the target's pending
        features are left for the next round."""
        if features.shape[0] != ids.shape[0] or ids.shape[0] != parents.shape[0] - tree_cached:
            raise ValueError(f"forward_tree: {ids.shape[0]} nodes fed, {features.shape[0]} features, "
                             f"{parents.shape[0]} parents of which {tree_cached} cached")
        self._tree_features = features
        try:
            return self.forward(ids, keep=ids.shape[0], tree=parents, tree_cached=tree_cached)
        finally:
            self._tree_features = None

    def _tree_step(self, ids: torch.Tensor, keep: int | None, parents: torch.Tensor, cached: int) -> torch.Tensor:
        """The model call of forward_tree: the additive mask and positions of tree_attention (a 4D
        float mask, passed through by the drafter's LlamaModel as by CachedLM._tree_step's)."""
        if self._tree_features is None:
            raise RuntimeError("a feature drafter feeds a tree through forward_tree (each node with a feature)")
        dtype = next(self.model.parameters()).dtype
        mask, positions = tree_attention(parents.tolist(), self.length, 0, dtype, ids.device, cached)
        h, self.cache = self.model(self._tree_features[None].to(dtype), self.embed(ids)[None], self.cache,
                                   use_cache=True, attention_mask=mask, position_ids=positions)
        self.hidden = h[0]
        return self._logits(self.hidden[-(keep or ids.shape[0]):])


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


class FeatureTreeDrafter(FeatureDrafter):
    """EAGLE-2's dynamic tree drafted from the target's features (strategy=tree on a pair whose
    drafter is a feature drafter: `TreeDrafter.bind` hands over to it). The expansion is
    TreeDrafter's (tree_drafter.grow: each frontier node's `branch` best tokens, the `width` best
    paths per level by the drafter's path log-probability; `total`: the best nodes over all levels;
    `max_entropy`: expand a node only while the drafter's entropy after it is at most this). A
    level's node is fed with its parent's predicted feature next to its own token's embedding, one
    drafter forward per level (FeatureLM.forward_tree). The children are chosen deterministically,
    so the draft carries no probabilities: the loop verifies them with the deterministic rule
    (lossless under sampling too)."""

    drafts_trees = True  # batch_size 1, decoder-only pairs (refused before loading)
    ranks_siblings = True  # siblings come most likely first (metrics.json tree.accepted_by_rank)

    def __init__(self, model: str = "drafter", branch: int = 2, width: int = 4, total: int | None = None,
                 max_entropy: float | None = None, sizer=None):
        check_options(branch, width, total, max_entropy)
        super().__init__(model, vocab=None)
        self.branch, self.width, self.total, self.max_entropy = branch, width, total, max_entropy
        self.sizer = sizer  # size "machine": TreeDrafter's TreeSizer (tree_drafter.sized_total), else None

    def bind(self, pair) -> "FeatureTreeDrafter":
        super().bind(pair)
        if self.sizer is not None:  # the drafting step timed: one tree level of `width` nodes
            step = feature_level_step(pair.get(self.model), pair.target, self.width, pair.vocab_size)
            self.sizer.bind(pair.target, pair.vocab_size, step)
        return self

    def measured(self) -> dict:
        """The costs a machine-sized tree was chosen by (TreeSizer.measured)."""
        return self.sizer.measured() if self.sizer is not None else {}

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        check_depth_policy(policy, "tree")
        if not self.lm.has_features or max_len < 1:  # the first round reads the prompt: nothing to draft from yet
            return Draft(tokens.new_empty(0), None)
        # 1. The unseen context with the target's features: the first level's distribution, and
        #    the predicted feature at the context's last token (the first level's feature).
        logits = self.lm.forward(tokens[self.lm.length:], keep=1)
        predicted = self.lm.hidden[-1:]  # row 0: the context's; row 1 + i: node i's (once fed)

        def feed(first: int, nodes: list[int], parents: list[int]) -> torch.Tensor:
            # 3. One tree forward over the new level, each node with its parent's predicted feature.
            nonlocal predicted
            new = torch.tensor(nodes[first:], device=tokens.device, dtype=tokens.dtype)
            features = predicted[[p + 1 for p in parents[first:]]]
            out = self.lm.forward_tree(new, features, torch.tensor(parents), tree_cached=first)
            predicted = torch.cat([predicted, self.lm.hidden])
            return out.log_softmax(-1)

        # 2. Expand level by level (tree_drafter.grow), then 4. EAGLE-2's re-ranking: the `total` best nodes.
        nodes, parents, score, _ = grow(logits.log_softmax(-1), max_len, self.branch, self.width, feed,
                                        lambda f, n, last: open_nodes(f, n, last, self.eos, self.max_entropy))
        total = self.total if self.sizer is None else sized_total(self.sizer, score, parents)
        nodes, parents = pruned(nodes, parents, rerank(score, parents, total))
        # The tree's positions were all fed with predicted features: `observe` crops them all
        # (real_length), and the accepted path is fed again next round with the target's features.
        if not nodes:
            return Draft(tokens.new_empty(0), None)
        return Draft(torch.tensor(nodes, device=tokens.device, dtype=tokens.dtype), None,
                     parents=torch.tensor(parents, device=tokens.device))


@torch.inference_mode()
def feature_level_step(model: FeatureDrafterModel, target, width: int, vocab_size: int | None = None,
                       context: int = 64):
    """One drafting level of a feature drafter, to time (TreeSizer.bind): a tree forward over
    `width` sibling nodes, each with a feature, after `context` cached tokens (on a FeatureLM of
    its own), cropped back after."""
    lm = FeatureLM(model, target.get_input_embeddings(), target.get_output_embeddings(), vocab_size=vocab_size)
    device, size = lm.weight.device, model.config.hidden_size
    gen = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(0, lm.weight.shape[0], (n,), generator=gen).to(device)  # noqa: E731
    lm.start(ids(context))
    lm.add_features(lm.weight.new_zeros(context - 1, size))  # with f_{-1}: one feature per context token
    lm.forward(ids(context), keep=1)
    length, siblings = lm.length, torch.full((width,), -1)

    def step():
        lm.forward_tree(ids(width), lm.weight.new_zeros(width, size), siblings)
        lm.crop(length)

    return step
