"""GSM8K (Cobbe et al. 2021; main config, test split, 1,319 problems): a chain-of-thought answer to
a grade-school word problem, scored by exact match of the final number.

Answer extraction (`extract_answer`), applied to the model's text and to the reference solution:
  1. If the text has an answer marker -- `####` (GSM8K's own convention) or `the answer is`
     (any case) -- only the text after the LAST marker counts, and the answer is the FIRST number
     in it ("The answer is 18. Then..." -> 18).
  2. Otherwise the answer is the LAST number in the text.
  A number: an optional sign (`-` or the Unicode minus, right before the digits or `$`) not glued
  to a preceding word or digit, so "3-4" reads 3 and 4 and "10 - 4" reads 10 and 4; digits with optional thousands commas (`1,234,567`); an optional
  decimal part. `$`, units and `%` around it are ignored ("$5.00" -> 5, "5 dollars" -> 5).
  Normalised: commas dropped, trailing decimal zeros dropped ("5.50" -> 5.5, "7.0" -> 7).
Accuracy compares the normalised numbers as decimals; no number found = wrong.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from specexp.tasks.base import Sample, Task
from specexp.tasks.loading import load_hub, read_local, render, resolve

_NUMBER = re.compile(r"(?<![\w.])([-\u2212])?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
_MARKER = re.compile(r"####|the answer is", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '-5.50' -> '-5.5', '7.00' -> '7'; None when not a number."""
    t = text.strip().replace(",", "").replace("$", "").replace("\u2212", "-").replace(" ", "")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(text):
        sign = "-" if m.group(1) else ""
        n = normalize_number(sign + m.group(2) + (m.group(3) or ""))
        if n is not None:
            out.append(n)
    return out


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a solution (see the module doc), normalised; None if none."""
    markers = list(_MARKER.finditer(text))
    if markers:
        after = _numbers(text[markers[-1].end():])
        if after:
            return after[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


class GSM8K(Task):
    name = "gsm8k"
    version = "1"

    def __init__(self, source: str = "auto", path=None, hub_name: str = "openai/gsm8k",
                 hub_config: str | None = "main", split: str = "test",
                 template: str = "Question: {question}\nAnswer: Let's think step by step.", **kw):
        super().__init__(**kw)
        self.source = source  # auto | path | shared | hub (see specexp/tasks/loading.py)
        self.path = path  # local file(s) or folder: rows with question, answer
        self.hub_name, self.hub_config, self.split = hub_name, hub_config, split
        self.template = template  # the prompt; {question} is replaced

    def rows(self) -> list[dict]:
        return resolve(self.name, self.source, self.path, f"gsm8k/{self.split}.jsonl",
                       lambda p: read_local(p, self.split),
                       lambda: load_hub(self.hub_name, self.hub_config, self.split),
                       f"{self.hub_name} [{self.hub_config}]")

    def load(self) -> list[Sample]:
        out = []
        for i, r in enumerate(self.rows()):
            if "question" not in r or "answer" not in r:
                raise ValueError(f"gsm8k rows need 'question' and 'answer' fields, got {sorted(r)}")
            answer = str(r["answer"])
            gold = extract_answer(answer)
            out.append(Sample(str(r.get("id", f"gsm8k/{i}")), render(self.template, question=r["question"]),
                              reference=gold, meta={"solution": answer}))
        return out

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
        per = []
        for s, c in zip(samples, completions):
            pred = extract_answer(c)
            per.append({"id": s.id, "correct": same_number(pred, s.reference), "pred": pred, "gold": s.reference})
        n = len(per)
        return {"accuracy": sum(p["correct"] for p in per) / n if n else 0.0,
                "n_scored": n, "n_extracted": sum(p["pred"] is not None for p in per), "per_sample": per}
