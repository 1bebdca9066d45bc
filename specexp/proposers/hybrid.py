"""Lookup first, then a drafter model: retrieval in front of a model drafter (REST, He et al. 2024,
arXiv 2311.08252, retrieves from a datastore; LLMA, Yang et al. 2023, arXiv 2304.04487, copies
from reference text), with the drafter filling the rounds retrieval cannot.

Each round:
1. Prompt lookup (`PromptLookup`, no bigram fill): when the last `min_ngram`+ tokens occurred
   earlier in the prompt or the output, draft what followed them (sized from the match,
   `draft_per_ngram`, at most the policy's `begin()`). No forwards; the draft is deterministic.
2. Otherwise, with a `datastore` (specexp/proposers/retrieval.py), the continuation the target's
   own replies to other prompts hold for the suffix, when it is a confident one (REST).
3. Otherwise the drafter drafts token by token under the length policy, as `DraftModel` alone.

Why: a summary or a completion copies spans of its prompt (names, phrases), which a lookup drafts
for free and at any length, while a small drafter predicts them one token at a time; elsewhere the
drafter's predictions are the better bet. The drafter sees every round: the decode loop's target
features (a feature drafter, `needs_features`) and logits go to it whoever drafted, so its cache
and features stay in step; after a lookup round its cache is untouched (it still holds a prefix of
the text) and it feeds the new tokens next time it drafts. Verification is the loop's own, so the
output is the target's (greedy: identical to autoregressive; sampling: lossless, the lookup's
drafts are one-hot proposals).
"""
from __future__ import annotations

import torch

from specexp.length import LengthPolicy
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.drafter import DraftModel
from specexp.proposers.lookup import PromptLookup
from specexp.proposers.retrieval import Datastore


class LookupFirst(Proposer):
    """Prompt lookup when the text repeats, else the pair's drafter (module docstring).

    model, vocab: the drafter, as `DraftModel` (a feature drafter when the pair's `model` is one);
    min_ngram, max_ngram: the shortest / longest repeated suffix that counts as a match;
    draft_per_ngram: a match of n tokens drafts ceil(draft_per_ngram * n) (null: the policy's
    whole `begin()`); datastore: a `Datastore` asked when nothing repeats (null: none)."""

    def __init__(self, model: str = "drafter", vocab: int | None = None, min_ngram: int = 2,
                 max_ngram: int | None = None, draft_per_ngram: float | None = 1.0, datastore: Datastore | None = None):
        self.drafter = DraftModel(model, vocab)
        self.lookup = PromptLookup(max_ngram=max_ngram, min_ngram=min_ngram, draft_per_ngram=draft_per_ngram,
                                   datastore=datastore)
        self.drafted_by: str | None = None  # who drafted the last round: "lookup", "datastore", "drafter" or None

    def bind(self, pair) -> "LookupFirst":
        self.drafter = self.drafter.bind(pair)  # may hand over to a FeatureDrafter
        self.lookup.bind(pair)
        return self

    @property
    def needs_features(self) -> bool:
        return self.drafter.needs_features

    @property
    def forwards(self) -> int:
        return self.drafter.forwards

    @property
    def cached_models(self) -> dict[str, CachedLM]:
        return self.drafter.cached_models

    def reset(self, prompt: torch.Tensor) -> None:
        self.drafter.eos = self.lookup.eos = self.eos
        self.drafter.reset(prompt)
        self.lookup.reset(prompt)
        self.drafted_by = None

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy, sampling: Sampling,
                generator: torch.Generator | None) -> Draft:
        # 1-2. A repeated suffix, else the datastore: draft the continuation (no forwards).
        found, source, n = self.lookup.retrieve(tokens, max_len) if max_len > 0 else ([], None, 0)
        if found:
            if self.eos:  # end the draft after an EOS, as a drafter does
                stop = next((i for i, t in enumerate(found) if t in self.eos), None)
                found = found[: stop + 1] if stop is not None else found
            self.drafted_by = source
            recs = [{"position": j, "source": source, "ngram": n} for j in range(len(found))] if self.records else []
            return Draft(torch.tensor(found, dtype=tokens.dtype, device=tokens.device), None, recs)
        # 3. Neither: the drafter, under the length policy.
        self.drafter.records = self.records
        self.drafted_by = "drafter"
        draft = self.drafter.propose(tokens, max_len, policy, sampling, generator)
        for r in draft.records:
            r["source"] = "drafter"
        return draft

    def observe_target(self, logits: torch.Tensor, n_accepted: int) -> None:
        self.drafter.observe_target(logits, n_accepted)

    def observe_features(self, hidden: torch.Tensor) -> None:
        self.drafter.observe_features(hidden)  # every round's: the drafter's features stay in step

    def observe(self, n_accepted: int) -> None:
        if self.drafted_by == "drafter":  # after a retrieval round the drafter's cache is a prefix already
            self.drafter.observe(n_accepted)
