"""Draft-length policies: how many tokens to draft. A policy looks at the drafter's distribution
token by token (`decide`), and learns from how many drafts were accepted (`observe`).

A new rule is a `LengthPolicy` subclass (in this package or the user's own module) plus a YAML
file naming it with `_target_`; it never touches the proposer that produces the tokens.

Rules here (conf/strategy/<name>.yaml, docs/strategies.md): Fixed (speculative), RandomGamma,
Oracle (an upper bound), transformers' Heuristic / HeuristicTransient / Confidence, the Entropy
Drafting thesis' EntropyStatic / EntropyMovingAverage / EntropyCumulative (checked after
drafting), the entropy-based framework's EntropyAbsolute / EntropyRelative / EntropyWindow /
EntropyAdaptive / EntropyCombined (checked before drafting), AdaEDL (before) and SVIP (after).
Entropies are in nats, measured as specexp.models.token_entropy describes. The cost-aware rule (drafts while
it pays for the measured cost of verification) is its own module, specexp/length/cost_aware.py.

The rules live in this package's modules by family: base (the interface and Fixed), baselines
(RandomGamma, Oracle), schedules (transformers'), entropy_rules (the entropy family, AdaEDL,
SVIP). Every one is importable from here, which is the path configs name:
`_target_: specexp.length.EntropyStatic`.

May import: models, stats. Never a proposer or a builder.
"""
from specexp.length.base import Decision, DraftStep, Fixed, LengthPolicy
from specexp.length.baselines import Oracle, RandomGamma
from specexp.length.entropy_rules import (
                                          SVIP,
                                          AdaEDL,
                                          EntropyAbsolute,
                                          EntropyAdaptive,
                                          EntropyCombined,
                                          EntropyCumulative,
                                          EntropyMovingAverage,
                                          EntropyPolicy,
                                          EntropyRelative,
                                          EntropyStatic,
                                          EntropyWindow,
)
from specexp.length.schedules import Confidence, Heuristic, HeuristicTransient

__all__ = ["Decision", "DraftStep", "LengthPolicy", "Fixed", "RandomGamma", "Oracle", "Heuristic",
           "HeuristicTransient", "Confidence", "EntropyPolicy", "EntropyStatic", "EntropyMovingAverage",
           "EntropyCumulative", "EntropyAbsolute", "EntropyRelative", "EntropyWindow", "EntropyAdaptive",
           "EntropyCombined", "AdaEDL", "SVIP"]
