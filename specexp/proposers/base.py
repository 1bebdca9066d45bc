from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specexp.length import LengthPolicy
from specexp.sampling import Sampling


@dataclass
class Draft:
    tokens: torch.Tensor  # [k] proposed token ids (k may be 0)
    probs: torch.Tensor | None  # [k, V] the distributions they were sampled from; None = deterministic proposals
    records: list[dict] = field(default_factory=list)  # optional per-token analysis records


class Proposer:
    """Proposes draft tokens that continue `tokens`.

    Contract with the decode loop, per sample: `reset(prompt)`, then each round
    `propose(tokens, max_len, policy, sampling, generator)` followed by `observe(n_accepted)`."""

    forwards = 0  # model forwards spent proposing (0 for model-free proposers)
    records = False  # fill Draft.records with per-token analysis records (set by the run)

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
