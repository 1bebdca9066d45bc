from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling


@dataclass
class Draft:
    tokens: torch.Tensor  # [k] proposed token ids (k may be 0)
    probs: torch.Tensor | None  # [k, V] the distributions they were sampled from; None = deterministic proposals
    records: list[dict] = field(default_factory=list)  # optional per-token analysis records
    # A token tree (specexp/core/tree.py): parents[i] = the index of draft i's parent (-1: the
    # context), parents[i] < i; probs[i] then = the distribution draft i was drawn from given its
    # earlier siblings. None = a chain (each draft the child of the one before).
    parents: torch.Tensor | None = None


class Proposer:
    """Proposes draft tokens that continue `tokens`.

    Contract with the decode loop, per sample: `eos` is set, then `reset(prompt)`, then each round
    `propose(tokens, max_len, policy, sampling, generator)` followed by `observe(n_accepted)`.
    A proposer ends its draft after a token in `eos` (kept as the last draft, as transformers'
    assistant does): nothing after it could be emitted."""

    forwards = 0  # model forwards spent proposing (0 for model-free proposers)
    needs_features = False  # True: the target keeps its last hidden states and the loop calls observe_features (EAGLE)
    records = False  # fill Draft.records with per-token analysis records (set by the run)
    eos: frozenset[int] | set[int] = frozenset()  # ids that end a generation (set from the loop's Stopper.eos)

    def bind(self, pair) -> "Proposer":
        """Attach the loaded models (called once per run by the builder); returns self."""
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        pass

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy, sampling: Sampling,
                generator: torch.Generator | None) -> Draft:
        raise NotImplementedError

    def observe(self, n_accepted: int) -> None:
        pass

    def observe_target(self, logits: torch.Tensor, n_accepted: int) -> None:
        """The target's logits [k+1, V] of the round just verified (called before `observe`);
        rows 0..n are the accepted drafts' positions and the target's own token. Default: unused."""

    def observe_features(self, hidden: torch.Tensor) -> None:
        """Only when `needs_features` (called before `observe`): the target's last hidden states
        [m, H] of the tokens it kept this round (its unseen suffix, then the accepted drafts)."""


class OneModelProposer(Proposer):
    """A proposer that drafts with one model of the pair: its role `model` and its cached wrapper
    `lm` (set at bind). Its forwards are that model's, and the run times them under that role."""

    model: str = "drafter"
    lm = None  # a specexp.models.cached_lm.CachedLM once bound

    @property
    def forwards(self) -> int:
        return self.lm.forwards

    @property
    def cached_models(self) -> dict:
        """The models this proposer runs, by role (per-model forward counts and times)."""
        return {self.model: self.lm}


def check_depth_policy(policy: LengthPolicy | None, strategy: str) -> None:
    """A tree proposer takes its depth from the policy's draft length: refuse a policy that decides
    token by token (it cannot shape a tree), naming the strategy."""
    if policy is not None and policy.needs_steps:
        raise ValueError(f"strategy={strategy}: the length policy must give a depth (e.g. specexp.length.Fixed); "
                         "a per-token rule cannot shape a tree")
