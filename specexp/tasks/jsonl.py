"""Your own prompts: one file of rows (JSON Lines, JSON or CSV), each row a sample.

    specexp dataset=jsonl dataset.path=prompts.jsonl                      # the `prompt` field
    specexp dataset=jsonl dataset.path=question.jsonl "dataset.prompt='turns[0]'" \
        dataset.category=category dataset.id=question_id                  # Spec-Bench

Fields are named by a path into the row: `text`, `turns[0]`, `meta.lang`, `turns[-1]`. `prompt`
is such a path, or a template over them (`"Q: {question}\nA:"`, `"{turns[0]}"`: only placeholders
naming a field of the row are filled, other braces stay). `category` (optional) groups the
samples: metrics.json then breaks every aggregate down per category (specexp/report/categories.py) and
`select=stratified` draws the limit evenly across them. `reference` (optional) is scored against
the output: ROUGE-1/2/L F1 (`metric=rouge`, the rouge-score package, as XSum) or exact match after
stripping whitespace (`metric=exact`); without it there is no quality metric.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from specexp.tasks.base import Sample, Task
from specexp.tasks.dataset_sources import read_local

METRICS = ("rouge", "exact")
# a path: a name, then any of `[int]` / `.name`
_STEP = re.compile(r"\.?([A-Za-z_][\w-]*)|\[(-?\d+)\]")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*(?:\[-?\d+\]|\.[A-Za-z_][\w-]*)*)\}")


def parse_path(path: str) -> list[str | int]:
    """`turns[0].text` -> ["turns", 0, "text"]; a ValueError naming the path when it is not one."""
    steps, pos = [], 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m or (pos == 0 and path.startswith(".")):
            raise ValueError(f"{path!r} is not a field path (a name, then [index] or .name parts, e.g. turns[0])")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not steps or not isinstance(steps[0], str):
        raise ValueError(f"{path!r} is not a field path: it must start with a field name")
    return steps


def get_path(row: dict, path: str, key: str) -> Any:
    """The value at `path` in `row`; a KeyError naming the config `key`, the row and its fields."""
    x: Any = row
    for step in parse_path(path):
        try:
            x = x[step]
        except (KeyError, IndexError, TypeError):
            have = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise KeyError(f"{key}={path!r}: no {step!r} in this row (its fields: {have})") from None
    return x


def fill(template: str, row: dict, key: str) -> str:
    """`template` with each `{path}` whose first field is in `row` replaced by its value."""
    def sub(m: re.Match) -> str:
        path = m.group(1)
        if parse_path(path)[0] not in row:
            return m.group(0)  # not a field: literal braces (code, LaTeX)
        return str(get_path(row, path, key))

    return _PLACEHOLDER.sub(sub, template)


class JsonlTask(Task):
    """Prompts from a file (see the module doc). `name` labels the dataset in the results (default
    `jsonl:<file stem>`); the version carries the file's sha256 prefix, so results say which file."""

    def __init__(self, path: str | None = None, prompt: str = "prompt", category: str | None = None,
                 reference: str | None = None, id: str | None = None, metric: str = "rouge",
                 name: str | None = None, **kw):
        super().__init__(**kw)
        if not path:
            raise ValueError("dataset=jsonl needs dataset.path=<a .jsonl, .json or .csv file of rows>")
        if metric not in METRICS:
            raise ValueError(f"dataset.metric must be one of {', '.join(METRICS)}, got {metric!r}")
        for key, value in (("dataset.category", category), ("dataset.reference", reference), ("dataset.id", id)):
            if value is not None:
                parse_path(value)  # a bad path fails now, naming itself
        self.path = Path(str(path)).expanduser()  # the file
        self.prompt = prompt  # a field path or a template over fields
        self.category, self.reference, self.id = category, reference, id  # field paths (optional)
        self.metric = metric  # how `reference` is scored: rouge | exact
        self.name = name or f"jsonl:{self.path.stem}"
        self.version = "1"

    def load(self) -> list[Sample]:
        if not self.path.is_file():
            raise FileNotFoundError(f"dataset.path {self.path} is not a file")
        self.version = "1+sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        rows = read_local(self.path, "test")
        template = "{" in self.prompt
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"dataset.path {self.path}: row {i} is a {type(row).__name__}, not an object")
            text = fill(self.prompt, row, "dataset.prompt") if template else get_path(row, self.prompt, "dataset.prompt")
            out.append(Sample(
                id=str(get_path(row, self.id, "dataset.id")) if self.id else f"{self.name}/{i}",
                prompt=str(text),
                reference=None if self.reference is None else str(get_path(row, self.reference, "dataset.reference")),
                category=None if self.category is None else str(get_path(row, self.category, "dataset.category")),
            ))
        return out

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        """Mean ROUGE-1/2/L F1 or exact match over the samples (the per-category means are in
        metrics.json["categories"]); {} without a reference field."""
        if self.reference is None:
            return {}
        preds = [c.strip() for c in completions]
        if self.metric == "rouge":
            from specexp.tasks.xsum import rouge_f1

            per = rouge_f1(preds, [s.reference for s in samples])
        else:
            per = [{"exact_match": float(p == s.reference.strip())} for p, s in zip(preds, samples)]
        keys = list(per[0]) if per else []
        out: dict = {k: sum(x[k] for x in per) / len(per) for k in keys}
        out["n_scored"] = len(per)
        out["per_sample"] = [{"id": s.id, **x, "pred": p, "gold": s.reference} for s, x, p in zip(samples, per, preds)]
        return out
