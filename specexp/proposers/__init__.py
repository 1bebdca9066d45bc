"""Proposers: who proposes the draft tokens (a drafter model; later model-free drafters and
cascades). A proposer never decides how long to draft: the `LengthPolicy` does."""
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.drafter import DraftModel

__all__ = ["Draft", "Proposer", "DraftModel"]
