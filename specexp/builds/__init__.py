"""What the project builds and caches once per parameter set (build_cache.py: under a lock, in a
temporary folder renamed into place): the embedded tiny pair (train_tiny_pair.py), a drafter
distilled for any target (train_distilled_drafter.py), the feature drafter's training
(train_feature_drafter.py), the datastore of the target's replies (build_datastore.py), the
bigram table (build_bigram.py), and what they train on (corpus.py, the chat prompts by kind:
instruction_mix.py, the target's replies to them: target_replies.py, training_utils.py).

May import: core, proposers, length, models, tasks, stats. Never the experiment or report layer:
the command lines that compose Hydra configs for a build live in specexp/experiment/."""
from specexp import _moved

__getattr__ = _moved.package_getattr(__name__)  # `specexp.builds.build_once` of 0.1, with a warning
