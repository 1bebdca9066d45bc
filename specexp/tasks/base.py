from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    id: str  # stable id within the dataset (e.g. "HumanEval/0")
    prompt: str  # the text fed to the model (template already applied)
    reference: Any = None  # what scoring compares against (tests, summary, answer...)
    meta: dict = field(default_factory=dict)


class Task:
    """A dataset as the decoder sees it. Subclasses implement `load()` (all samples, in a stable
    order) and optionally `score()`; selection (limit, seed, first/random) is shared here."""

    name = "task"
    version = "0"  # bump when prompts or scoring change; saved with the results

    def __init__(self, limit: int | None = None, seed: int = 0, select: str = "first",
                 max_new_tokens: int = 128, stop: list[str] | None = None, max_prompt_tokens: int | None = None):
        if select not in ("first", "random"):
            raise ValueError(f"dataset.select must be 'first' or 'random', got {select!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"dataset.limit must be >= 1 or null, got {limit}")
        self.limit = limit  # how many samples (null = all)
        self.seed = seed  # seed of the random selection
        self.select = select  # "first" N, or "random" N
        self.max_new_tokens = max_new_tokens  # generation budget per sample
        self.stop = list(stop or [])  # stop strings (generation ends once one appears)
        self.max_prompt_tokens = max_prompt_tokens  # keep only the last N prompt tokens (null = all)

    def load(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        items = self.load()
        if not items:
            raise ValueError(f"dataset {self.name!r} has no samples")
        if self.select == "random":
            items = random.Random(self.seed).sample(items, min(self.limit or len(items), len(items)))
        elif self.limit is not None:
            items = items[: self.limit]
        return items

    def postprocess(self, sample: Sample, completion: str) -> str:
        """The completion as scored: cut at the first stop string."""
        cut = min((i for i in (completion.find(s) for s in self.stop) if i >= 0), default=len(completion))
        return completion[:cut]

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        """Quality metrics for the run (e.g. {"pass@1": 0.12}); {} when the task has none."""
        return {}
