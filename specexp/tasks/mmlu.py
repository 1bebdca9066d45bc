"""MMLU (Hendrycks et al. 2021; 57 subjects, test split 14,042 questions): four-way multiple choice,
scored by the letter the model gives.

Few-shot examples come from the dev split (5 per subject, same subject, in file order). Subjects:
`all`, one name, or a list. Samples are ordered by subject (alphabetically), then file order; ids
are `<subject>/<index>`.

Letter extraction (`extract_letter`), first rule that matches wins:
  1. an answer statement, the LAST one in the text: "answer is (B)", "Answer: C", "the answer is d.",
     "answer: (c)". A capital A-D counts after the statement; a lowercase a-d only when it stands
     alone (in parentheses, or followed by punctuation or the end) -- so "the answer is a tricky
     one" gives nothing;
  2. the text opens with a letter: " B", "C.", "(D) ...", "b)", "a" alone; a bare "A " followed by more
     words is read as the article, not an answer;
  3. the LAST parenthesised letter "(B)" (either case) anywhere.
  Nothing matched = no answer (scored wrong).

`scoring: loglikelihood` is lm-evaluation-harness's way instead: the prediction is the letter
whose continuation " A" / " B" / " C" / " D" after the prompt the TARGET model finds most likely
(`specexp.tasks.loglikelihood`; the generation is still decoded and timed, but not read). The
harness's `mmlu` prompt is this task's default format (header, `...\nAnswer:`); it defaults to
0-shot, the original paper to 5-shot (`fewshot`).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from specexp.tasks.base import Sample, Task, check_completions
from specexp.tasks.dataset_sources import as_list, load_hub, read_local, read_records, render, resolve

LETTERS = "ABCD"
HUB_SPLITS = {"val": "validation"}  # the original release's split names -> cais/mmlu's

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
    "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
    "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)

_STATEMENT = re.compile(r"(?i:answer)\s*(?:(?i:is)|:|=)?\s*(?:(?i:option|choice|letter)\s*)?[:\-]?\s*"
                        r"(?:\(([A-Da-d])\)|([A-D])\b|([a-d])(?=\s*(?:[.,;:!)\]]|$)))")
_OPENING = re.compile(r"^\s*(?:\(([A-Da-d])\)|([A-Da-d])(?:[.):\]]|\s*$)|([B-D])\b)")
_PAREN = re.compile(r"\(([A-Da-d])\)")


def extract_letter(text: str) -> str | None:
    """The answer letter A-D in a model's text (rules in the module doc), or None."""
    hits = list(_STATEMENT.finditer(text))
    if hits:
        m = hits[-1]
        return (m.group(1) or m.group(2) or m.group(3)).upper()
    m = _OPENING.match(text)
    if m:
        return (m.group(1) or m.group(2) or m.group(3)).upper()
    parens = _PAREN.findall(text)
    return parens[-1].upper() if parens else None


def _pretty(subject: str) -> str:
    return subject.replace("_", " ")


def _letter(answer) -> str:
    """The gold answer as a letter: 'B', 'b', 1 (index), '1'."""
    a = str(answer).strip()
    if a.upper() in LETTERS and len(a) == 1:
        return a.upper()
    if a.isdigit() and int(a) < 4:
        return LETTERS[int(a)]
    raise ValueError(f"MMLU answer must be a letter A-D or an index 0-3, got {answer!r}")


def _row(r: dict, subject: str | None = None) -> dict:
    """A row in any supported layout as {subject, question, A, B, C, D, answer}."""
    if "choices" in r:
        choices = list(r["choices"])
    elif all(k in r for k in LETTERS):
        choices = [r[k] for k in LETTERS]
    else:
        raise ValueError(f"MMLU rows need 'choices' or 'A'..'D' columns, got {sorted(r)}")
    if len(choices) != 4:
        raise ValueError(f"MMLU rows need 4 choices, got {len(choices)}")
    q = r.get("question", r.get("input"))
    ans = r.get("answer", r.get("target"))
    subj = r.get("subject") or subject
    if q is None or ans is None or not subj:
        raise ValueError(f"MMLU rows need question, answer and subject, got {sorted(r)}")
    return {"subject": str(subj), "question": str(q), **dict(zip(LETTERS, map(str, choices))),
            "answer": _letter(ans)}


def _read_original_csv(path: Path, subject: str) -> list[dict]:
    """One file of the original release: no header; question, A, B, C, D, answer letter."""
    with open(path, encoding="utf-8", newline="") as f:
        return [_row({"question": q, "A": a, "B": b, "C": c, "D": d, "answer": ans}, subject)
                for q, a, b, c, d, ans in csv.reader(f)]


_ORIGINAL = re.compile(r"(?P<subject>.+)_(?P<split>test|dev|val)\.csv")


def read_mmlu(path, split: str, subjects: list[str] | None, flat_ok: bool = True) -> list[dict]:
    """Rows of `split` from: the original layout folder (`<split>/<subject>_<split>.csv`, or the
    `<split>` folder itself), one original CSV (another split: its sibling folder), a folder with
    `<split>.<ext>` files, or one flat file with a subject column (taken whole: it has no splits,
    so it serves another split only when `flat_ok`)."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"MMLU path {p} does not exist")
    folder = p / split if (p / split).is_dir() else p
    if folder.is_dir() and any(folder.glob(f"*_{split}.csv")):
        rows = []
        for f in sorted(folder.glob(f"*_{split}.csv")):
            subj = _ORIGINAL.fullmatch(f.name)["subject"]
            if subjects is None or subj in subjects:
                rows += _read_original_csv(f, subj)
        return rows
    m = _ORIGINAL.fullmatch(p.name)
    if p.is_file() and m and m["split"] == split:
        return _read_original_csv(p, m["subject"])
    if p.is_file() and m:  # asked for another split of an original file: its sibling folder
        sib = p.parent.parent / split / f"{m['subject']}_{split}.csv"
        return _read_original_csv(sib, m["subject"]) if sib.exists() else []
    if p.is_dir():
        return [_row(r) for r in read_local(p, split)]
    if not flat_ok:
        raise ValueError(f"MMLU path {p} is one file without splits: set dataset.dev_path to a file of "
                         f"few-shot ({split}) examples, or fewshot=0")
    return [_row(r) for r in read_records(p, split)]


class MMLU(Task):
    name = "mmlu"
    version = "1"

    def __init__(self, source: str = "auto", path=None, dev_path=None, hub_name: str = "cais/mmlu",
                 split: str = "test", subjects="all", fewshot: int = 0,
                 header: str = "The following are multiple choice questions (with answers) about {subject}.\n\n",
                 template: str = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:",
                 shot_answer: str = " {answer}\n\n", scoring: str = "generate", **kw):
        super().__init__(**kw)
        if scoring not in ("generate", "loglikelihood"):
            raise ValueError(f"dataset.scoring must be generate or loglikelihood, got {scoring!r}")
        if not 0 <= int(fewshot) <= 5:
            raise ValueError(f"dataset.fewshot must be 0-5 (the dev split has 5 per subject), got {fewshot}")
        self.source = source  # auto | path | shared | hub (see specexp/tasks/dataset_sources.py)
        self.path = path  # original layout folder, one original CSV, or a flat file with a subject column
        self.dev_path = dev_path  # few-shot rows when `path` is a flat file (default: found beside it)
        self.hub_name, self.split = hub_name, split
        subj = as_list(subjects)
        self.subjects = None if subj in ([], ["all"]) else [str(s) for s in subj]  # None = all
        self.fewshot = int(fewshot)
        self.header, self.template, self.shot_answer = header, template, shot_answer
        self.scoring = scoring  # generate (the letter in the output) | loglikelihood (the target's most likely " A".." D")
        self.model = None  # the target, handed over by the run (set_model) for scoring=loglikelihood

    def set_model(self, model, tokenizer) -> None:
        """The run hands over the target model and tokenizer before `score()` (loglikelihood only)."""
        self.model, self.tokenizer = model, tokenizer

    def choice_letter(self, sample: Sample) -> str:
        """The letter whose continuation " X" is most likely under the target after the prompt."""
        from specexp.tasks.loglikelihood import loglikelihood

        if self.model is None or self.tokenizer is None:
            raise ValueError("mmlu: dataset.scoring=loglikelihood needs the target model: the run must call "
                             "task.set_model(model, tokenizer) before score() (or use scoring=generate)")
        scores = [loglikelihood(self.model, self.tokenizer, sample.prompt, " " + k) for k in LETTERS]
        return LETTERS[max(range(4), key=scores.__getitem__)]  # ties: the first, as numpy's argmax

    def _rows(self, split: str, path, flat_ok: bool = True) -> list[dict]:
        return resolve(self.name, self.source, path, f"mmlu/{split}",
                       lambda p: read_mmlu(p, split, self.subjects, flat_ok),
                       lambda: [_row(r) for r in load_hub(self.hub_name, "all", HUB_SPLITS.get(split, split))],
                       f"{self.hub_name} [all]")

    def _question(self, r: dict) -> str:
        choices = "\n".join(f"{k}. {r[k]}" for k in LETTERS)
        return render(self.template, question=r["question"], subject=_pretty(r["subject"]), choices=choices,
                      **{k: r[k] for k in LETTERS})

    def load(self) -> list[Sample]:
        rows = self._rows(self.split, self.path)
        if self.subjects is not None:
            missing = sorted(set(self.subjects) - {r["subject"] for r in rows})
            if missing:
                strange = [m for m in missing if m not in SUBJECTS]
                raise ValueError(f"MMLU subject(s) {missing} have no {self.split} rows in this data"
                                 + (f"; not MMLU subject names: {strange} (see specexp.tasks.mmlu.SUBJECTS)"
                                    if strange else ""))
            rows = [r for r in rows if r["subject"] in self.subjects]
        shots: dict[str, list[dict]] = {}
        if self.fewshot:
            dev = self._rows("dev", self.dev_path) if self.dev_path else self._rows("dev", self.path, False)
            for r in dev:
                shots.setdefault(r["subject"], []).append(r)
        by_subject: dict[str, list[dict]] = {}
        for r in rows:
            by_subject.setdefault(r["subject"], []).append(r)
        out = []
        for subj in sorted(by_subject):
            examples = shots.get(subj, [])[: self.fewshot]
            if self.fewshot and len(examples) < self.fewshot:
                raise ValueError(f"MMLU {subj}: {self.fewshot} few-shot examples wanted, the dev split has "
                                 f"{len(examples)} (set dataset.dev_path, or fewshot=0)")
            context = render(self.header, subject=_pretty(subj)) + "".join(
                self._question(e) + render(self.shot_answer, answer=e["answer"]) for e in examples)
            for i, r in enumerate(by_subject[subj]):
                out.append(Sample(f"{subj}/{i}", context + self._question(r), reference=r["answer"],
                                  meta={"subject": subj}))
        return out

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        check_completions(samples, completions)
        per = []
        for s, c in zip(samples, completions):
            pred = self.choice_letter(s) if self.scoring == "loglikelihood" else extract_letter(c)
            per.append({"id": s.id, "subject": s.meta.get("subject"), "correct": pred == s.reference,
                        "pred": pred, "gold": s.reference})
        n = len(per)
        out = {"accuracy": sum(p["correct"] for p in per) / n if n else 0.0, "n_scored": n,
               "n_extracted": sum(p["pred"] is not None for p in per)}
        subjects = sorted({p["subject"] for p in per})
        if len(subjects) > 1:
            accs = {}
            for subj in subjects:
                rows = [p for p in per if p["subject"] == subj]
                accs[subj] = sum(p["correct"] for p in rows) / len(rows)
            out["accuracy_macro"] = sum(accs.values()) / len(accs)  # mean over subjects
            out.update({f"accuracy/{k}": v for k, v in accs.items()})
        out["per_sample"] = per
        return out
