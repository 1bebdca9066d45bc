r"""GSM8K (Cobbe et al. 2021; main config, test split, 1,319 problems): a chain-of-thought answer to
a grade-school word problem, scored by exact match of the final number.

Three scoring conventions (`scoring`; every run reports all three, `accuracy` is the chosen one):

`specexp` (the default; `extract_answer`, applied to the model's text and to the reference
solution):
  1. If the text has an answer marker -- `####` (GSM8K's own convention) or `the answer is`
     (any case) -- only the text after the LAST marker counts, and the answer is the FIRST number
     in it ("The answer is 18. Then..." -> 18).
  2. Otherwise the answer is the LAST number in the text.
  A number: an optional sign (`-` or the Unicode minus) glued to the digits (or to a `$` before
  them) and not glued to a preceding word or digit, so "3-4" reads 3 and 4 and "10 - 4" reads 10
  and 4; digits with optional thousands commas (`1,234,567`) and an optional decimal part, or a
  bare decimal part (".5" -> 0.5). `$`, units and `%` around it are ignored ("$5.00" -> 5,
  "5 dollars" -> 5). Normalised: commas dropped, trailing decimal zeros dropped ("5.50" -> 5.5,
  "7.0" -> 7). Accuracy compares the normalised numbers as decimals; no number found = wrong.

`strict-match` and `flexible-extract`: lm-evaluation-harness's `gsm8k` task (its two filters,
then `exact_match` with ignore_case and regexes_to_ignore `,` `\$` `(?s).*#### ` `\.$` applied to
the prediction and to the whole reference solution; string equality, so "5.00" != "5"):
  strict-match      the first `#### <number>` (`#### (\-?[0-9\.\,]+)`), else no answer;
  flexible-extract  the LAST match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` anywhere in the text.
The harness's prompt is `Question: {question}\nAnswer:` after 5 train-split examples, each
`Question: ...\nAnswer: <full solution>\n\n` (`fewshot`, `fewshot_path`; conf/dataset/gsm8k_harness.yaml).
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from specexp.tasks.base import Sample, Task, check_completions
from specexp.tasks.dataset_sources import load_hub, read_local, render, resolve

# sign (glued), optional "$" (a space may follow it), then integer part [+ decimals] or bare decimals
_NUMBER = re.compile(r"(?<![\w.])([-\u2212])?(?:\$\s?)?(?:(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?|(\.\d+))(?!\d)")
_MARKER = re.compile(r"####|the answer is", re.IGNORECASE)
SCORINGS = ("specexp", "strict-match", "flexible-extract")
# lm-evaluation-harness gsm8k: the two filters and exact_match's regexes_to_ignore
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


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
        n = normalize_number(sign + (m.group(2) or "0") + (m.group(3) or m.group(4) or ""))
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


def harness_extract(text: str, scoring: str) -> str | None:
    """lm-evaluation-harness's filtered prediction: "strict-match" or "flexible-extract" (module
    doc); None where the harness would give "[invalid]"."""
    if scoring == "strict-match":
        m = _STRICT.search(text)
        return m.group(1).strip() if m else None
    hits = _FLEXIBLE.findall(text)
    if not hits:
        return None
    found = [g for g in hits[-1] if g]  # the last match; of its two groups the one that matched
    return found[0].strip() if found else None


def harness_normalize(text: str) -> str:
    """exact_match's normalisation in the harness's gsm8k: drop each regex to ignore, lowercase."""
    for pat in _IGNORE:
        text = pat.sub("", text)
    return text.lower()


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
                 template: str = "Question: {question}\nAnswer: Let's think step by step.",
                 scoring: str = "specexp", fewshot: int = 0, fewshot_path=None,
                 shot_template: str = "Question: {question}\nAnswer: {answer}\n\n", **kw):
        super().__init__(**kw)
        if scoring not in SCORINGS:
            raise ValueError(f"dataset.scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        if fewshot < 0:
            raise ValueError(f"dataset.fewshot must be >= 0, got {fewshot}")
        self.source = source  # auto | path | shared | hub (see specexp/tasks/dataset_sources.py)
        self.path = path  # local file(s) or folder: rows with question, answer
        self.hub_name, self.hub_config, self.split = hub_name, hub_config, split
        self.template = template  # the prompt; {question} is replaced
        self.scoring = scoring  # which convention `accuracy` reports: specexp | strict-match | flexible-extract
        self.fewshot = fewshot  # solved examples before each question (the first N train rows)
        self.fewshot_path = fewshot_path  # train rows for the examples (null: the hub's train split)
        self.shot_template = shot_template  # one example; {question} {answer} (the full solution)

    def rows(self) -> list[dict]:
        return resolve(self.name, self.source, self.path, f"gsm8k/{self.split}.jsonl",
                       lambda p: read_local(p, self.split),
                       lambda: load_hub(self.hub_name, self.hub_config, self.split),
                       f"{self.hub_name} [{self.hub_config}]")

    def shots(self) -> str:
        """The few-shot block: the first `fewshot` train rows, each as `shot_template`."""
        if not self.fewshot:
            return ""
        rows = resolve(f"{self.name} few-shot examples", "auto", self.fewshot_path, None,
                       lambda p: read_local(p, "train"),
                       lambda: load_hub(self.hub_name, self.hub_config, "train"), f"{self.hub_name} train")
        if len(rows) < self.fewshot:
            raise ValueError(f"gsm8k: dataset.fewshot={self.fewshot} but dataset.fewshot_path has {len(rows)} rows")
        return "".join(render(self.shot_template, question=r["question"], answer=str(r["answer"]))
                       for r in rows[: self.fewshot])

    def load(self) -> list[Sample]:
        out = []
        shots = self.shots()
        for i, r in enumerate(self.rows()):
            if "question" not in r or "answer" not in r:
                raise ValueError(f"gsm8k rows need 'question' and 'answer' fields, got {sorted(r)}")
            answer = str(r["answer"])
            gold = extract_answer(answer)
            out.append(Sample(str(r.get("id", f"gsm8k/{i}")), shots + render(self.template, question=r["question"]),
                              reference=gold, meta={"solution": answer}))
        return out

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        check_completions(samples, completions)
        per = []
        for s, c in zip(samples, completions):
            solution = harness_normalize(str(s.meta.get("solution", s.reference)))
            p = {"id": s.id, "pred": extract_answer(c), "gold": s.reference}
            p["correct_specexp"] = same_number(p["pred"], s.reference)
            for name in SCORINGS[1:]:
                h = harness_extract(c, name)
                p[f"pred_{name}"] = h
                p[f"correct_{name}"] = h is not None and harness_normalize(h) == solution
            p["correct"] = p[f"correct_{self.scoring}"]
            per.append(p)
        n = len(per)

        def mean(key):
            return sum(p[key] for p in per) / n if n else 0.0

        return {"accuracy": mean("correct"), "accuracy_specexp": mean("correct_specexp"),
                "exact_match_strict_match": mean("correct_strict-match"),
                "exact_match_flexible_extract": mean("correct_flexible-extract"),
                "n_scored": n, "n_extracted": sum(p["pred"] is not None for p in per), "per_sample": per}
