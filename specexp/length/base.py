"""The length-policy interface: what a policy sees (`DraftStep`), what it answers (`Decision`), the
base class every rule extends (`LengthPolicy`: draft `max_len` tokens, never stop early), and
classic speculative decoding's fixed length (`Fixed`)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class Decision(enum.Enum):
    CONTINUE = 0  # draft this token and keep going
    STOP_BEFORE = 1  # do not draft this token; the round's draft ends before it
    STOP_AFTER = 2  # draft this token, then end the round's draft (it triggered the stop)


@dataclass
class DraftStep:
    """What a policy sees before a token is added to the draft."""

    position: int  # 0-based index of this token in the current draft
    logits: torch.Tensor  # the drafter's raw logits for this position [V] (before temperature)
    probs: torch.Tensor | None  # the distribution the token is sampled from (one-hot under greedy); None for model-free drafters
    token: int | torch.Tensor  # the token that would be drafted
    prefix: torch.Tensor | None = None  # the sequence before this round's draft [L] (prompt + output)
    drafted: list | None = None  # the tokens drafted earlier in this round (0-d tensors)
    greedy: bool | None = None  # greedy decoding (probs one-hot); None: unknown, inferred from probs


class LengthPolicy:
    """Base: draft up to `max_len` tokens, never stop early. Subclasses override `decide`
    (per token) and/or `begin`/`observe` (per round)."""

    needs_steps = False  # True if `decide` must be called for every drafted token
    greedy_only = False  # True if the policy works under greedy decoding only (specexp.experiment.validate checks it)

    def __init__(self, max_len: int = 10):
        if max_len < 0:
            raise ValueError(f"max draft length must be >= 0, got {max_len}")
        self.max_len = max_len

    def bind(self, pair) -> "LengthPolicy":
        """Attach the loaded models, for policies that need them (e.g. an oracle); returns self."""
        return self

    def begin(self) -> int:
        """Called at the start of each round: the most tokens this round may draft."""
        return self.max_len

    def decide(self, step: DraftStep) -> Decision:
        return Decision.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        """Called after every round of a speculative decode with its draft length and accepted
        count (specexp.core.decode's convention: drafts emitted before a stop). `drafted` may be 0: a
        round whose budget left room for the target's token only, or a rule that stopped first."""

    def reset(self) -> None:
        """Restore the initial state. Called before each sample unless the run carries length state
        across samples (through `start_sample`)."""

    def start_sample(self, carry: bool = False) -> None:
        """Called before each sample: resets, unless `carry` (the run's carry_length_state).
        Policies that must reset at every sample regardless override this."""
        if not carry:
            self.reset()

    def measured(self) -> dict:
        """What this machine measured that steers the decisions (cost_aware's costs), as plain data
        for metrics.json: {"replay": {length config key: value, ...}, ...}; a run given the replay
        values back (strategy.<key>=...) decides identically. {} for a policy that measures nothing."""
        return {}

    def carried_state(self, carry: bool = False) -> str | None:
        """What `start_sample(carry)` keeps from the samples decoded before it (so a sample's draft
        lengths depend on the samples before it and their order), with how to turn that off; None
        when every sample starts afresh. Batched decoding (specexp/core/batch_decode.py) decodes samples at the
        same time, so it refuses a policy that carries state. Override with `start_sample`."""
        if carry:
            return ("carry_length_state=true keeps the length policy's state from one sample to the next; "
                    "set carry_length_state=false")
        return None


class Fixed(LengthPolicy):
    """Classic speculative decoding: always draft `gamma` tokens (Leviathan et al. 2023)."""

    def __init__(self, gamma: int = 4):
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        super().__init__(max_len=gamma)
        self.gamma = gamma
