"""Proposers: who proposes the draft tokens. A drafter model (drafter.py; another tokenizer's
through text, cross_tokenizer.py), the feature drafter (feature_drafter.py), model-free ones
(prompt lookup: lookup.py; retrieval from a datastore of the target's replies: retrieval.py;
a bigram table: bigram.py; NASD: nasd.py), cascades of them (cascade.py), a lookup first,
a drafter otherwise (hybrid.py), Medusa heads (medusa.py), and token trees: a drafter model's
(tree_drafter.py; the feature drafter's: FeatureTreeDrafter in feature_drafter.py), Token
Recycling's (token_recycling.py), a prompt-lookup trie (lookup_trie.py),
Medusa's (medusa_tree.py), each sized by tree_sizing.py where it measures its acceptance.
A proposer never decides how long to draft: the `LengthPolicy` does. Configs name them from here: `_target_: specexp.proposers.DraftModel`.

May import: length, models, stats. Never a builder: what a proposer reads (a datastore, a bigram
table) is built by specexp/builds/ and handed to it by the experiment layer."""
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.bigram import Bigram
from specexp.proposers.cascade import Cascade
from specexp.proposers.drafter import DraftModel
from specexp.proposers.feature_drafter import FeatureDrafter  # also registers the feature drafter model type
from specexp.proposers.hybrid import LookupFirst
from specexp.proposers.lookup import PromptLookup
from specexp.proposers.medusa import Medusa  # also registers the Medusa heads model type
from specexp.proposers.retrieval import Datastore
from specexp.proposers.tree_drafter import TreeDrafter

__all__ = ["Draft", "Proposer", "DraftModel", "Bigram", "Datastore", "PromptLookup", "Cascade", "FeatureDrafter", "LookupFirst", "Medusa", "TreeDrafter"]
