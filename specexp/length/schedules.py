"""transformers' draft-length schedules (generation/candidate_generator.py, stopping_criteria.py):
the heuristic schedule, its transient variant, and the assistant confidence threshold."""
from __future__ import annotations

import math

from specexp.length.base import Decision, DraftStep, LengthPolicy
from specexp.models import token_entropy


class Heuristic(LengthPolicy):
    """transformers' `num_assistant_tokens_schedule="heuristic"`: start at `start` tokens; after
    each round draft 2 more if the round's matches equal `rule`'s reference, otherwise 1 fewer (at
    least 1). transformers updates after every round, also one with no draft (a budget of one
    token) and counts an accepted EOS draft as no match (specexp.core.decode's convention, which this
    policy observes). `rule`:
      drafted    +2 iff matches == drafts of this round (transformers 5.x:
                 `num_matches == len(scores[0]) - 1`; a round with no draft gives +2)
      scheduled  +2 iff matches == the scheduled number (transformers 4.x:
                 `num_matches == int(self.num_assistant_tokens)`; a round capped by the budget,
                 or with no draft, gives -1)
    transformers keeps the value across generate() calls of one assistant; here it is reset per
    sample unless the run sets carry_length_state=true (which is what matches transformers)."""

    RULES = ("drafted", "scheduled")

    def __init__(self, start: int = 5, max_len: int | None = None, rule: str = "drafted"):
        if start < 1:
            raise ValueError(f"start must be >= 1, got {start}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 or null, got {max_len}")
        if rule not in self.RULES:
            raise ValueError(f"heuristic rule must be one of {', '.join(self.RULES)}, got {rule!r}")
        super().__init__(max_len=max_len if max_len is not None else 2**31 - 1)
        self.start, self.cap, self.rule = start, max_len, rule
        self.reset()

    def begin(self) -> int:
        return self.current if self.cap is None else min(self.current, self.cap)

    def observe(self, drafted: int, accepted: int) -> None:
        if accepted == (drafted if self.rule == "drafted" else self.current):
            self.current += 2
        else:
            self.current = max(1, self.current - 1)

    def reset(self) -> None:
        self.current = self.start


class HeuristicTransient(Heuristic):
    """transformers' "heuristic_transient": the heuristic schedule, reset to `start` at every
    sample even when the run carries length state."""

    def start_sample(self, carry: bool = False) -> None:
        self.reset()

    def carried_state(self, carry: bool = False) -> str | None:
        return None  # reset at every sample, whatever the run carries


class Confidence(LengthPolicy):
    """transformers' assistant confidence threshold (`assistant_confidence_threshold`, default 0.4,
    with `num_assistant_tokens` 20): a stopping criterion checked AFTER the token is generated
    (`ConfidenceCriteria`), so the low-confidence token stays in the draft. Confidence is the
    drafter's probability of the drafted token: under greedy the top probability of the raw
    softmax, under sampling the token's probability in the processed distribution.

    transformers also re-tunes the threshold online when scikit-learn is installed (ROC of the
    drafted-token probabilities vs their acceptance, cost = FPR + 3 FNR); `adapt=true` does the
    same here (without scikit-learn), `adapt=false` (default) keeps the threshold fixed."""

    needs_steps = True

    def __init__(self, threshold: float = 0.4, max_len: int = 20, adapt: bool = False):
        super().__init__(max_len=max_len)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold0, self.adapt = threshold, adapt
        self.reset()

    def confidence(self, step: DraftStep) -> float:
        if token_entropy.is_greedy(step):
            return float(step.logits.double().softmax(-1).max())
        return float(step.probs[int(step.token)])

    def decide(self, step: DraftStep) -> Decision:
        p = self.confidence(step)
        self._round.append(p)
        return Decision.STOP_AFTER if p < self.threshold else Decision.CONTINUE

    def begin(self) -> int:
        self._round = []
        return self.max_len

    def observe(self, drafted: int, accepted: int) -> None:
        if not self.adapt:
            return
        # as transformers: the accepted drafts are matches, the first rejected one a miss, the
        # drafts after it (never judged) are dropped
        judged = self._round[: min(drafted, accepted + 1)]
        self._probs.extend(judged)
        self._matches.extend([1] * min(accepted, len(judged)) + [0] * (len(judged) - min(accepted, len(judged))))
        if len(self._probs) > 5 and 0 in self._matches and 1 in self._matches:
            self.threshold = _roc_threshold(self._probs, self._matches)

    def reset(self) -> None:
        self.threshold = self.threshold0
        self._round, self._probs, self._matches = [], [], []


def _roc_threshold(scores: list[float], labels: list[int]) -> float:
    """The score threshold minimising FPR + 3 FNR over the ROC curve's thresholds (as
    transformers, with scikit-learn's `roc_curve`: a first threshold of +inf, then the distinct
    scores from high to low; the first minimum wins)."""
    pos = sum(labels)
    neg = len(labels) - pos
    pairs = sorted(zip(scores, labels), key=lambda t: -t[0])
    best, best_cost = math.inf, 3.0  # threshold +inf: nothing predicted positive, FPR 0, FNR 1
    tp = fp = 0
    i = 0
    while i < len(pairs):
        s = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == s:
            tp += pairs[i][1]
            fp += 1 - pairs[i][1]
            i += 1
        cost = fp / neg + 3 * (1 - tp / pos)
        if cost < best_cost:
            best, best_cost = s, cost
    return best
