"""Proposers: who proposes the draft tokens (a drafter model; later model-free drafters and
cascades). A proposer never decides how long to draft: the `LengthPolicy` does."""
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.drafter import DraftModel
from specexp.proposers.bigram import Bigram
from specexp.proposers.datastore import Datastore
from specexp.proposers.lookup import PromptLookup
from specexp.proposers.cascade import Cascade
from specexp.proposers.hybrid import LookupFirst
from specexp.proposers.eagle import FeatureDrafter  # also registers the feature drafter model type

__all__ = ["Draft", "Proposer", "DraftModel", "Bigram", "Datastore", "PromptLookup", "Cascade", "FeatureDrafter", "LookupFirst"]
