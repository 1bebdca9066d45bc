"""The user turns a target answers when a build collects its replies (the feature drafter, Medusa
heads, the reply datastore, the distilled drafter): one pool per instruction kind, built from the
offline data only, interleaved by a mix {kind: turns per round}.

Kinds (`KINDS`), each with where its text comes from:
  xsum       summarise a news article in one sentence            XSum articles
  headline   write a headline for a news article                 XSum articles
  extract    list the people, places and organisations named     XSum articles
  translate  translate a one-sentence summary (fr, es, de, it)   every third XSum summary
  rewrite    rewrite a passage in plain words                    WikiText-2 paragraphs
  continue   continue a passage                                  WikiText-2 paragraphs
  questions  write questions a passage answers, with answers     WikiText-2 paragraphs
  mmlu       answer a four-way multiple-choice question          MMLU's validation split
  gsm8k      solve a grade-school word problem                   GSM8K questions
  code       write the body of a function from its docstring     the standard library (always here)

The evaluation keeps what the datasets select first: XSum and GSM8K rows before `skip`, WikiText's
first half, MMLU's test split. The XSum kinds of a mix take its articles in turn, the WikiText
kinds its paragraphs: no text is asked about twice (a kind alone in a mix takes them all, in
order, as the three-kind mix always has). A kind whose data is not here (no
../shared/data) is left out. `BROAD_MIX` is the feature drafter's default; `REPLY_MIX`, three
kinds, the other builds'."""
from __future__ import annotations

import csv
import json
from pathlib import Path

REPLY_MIX = {"xsum": 1, "gsm8k": 2, "code": 2}  # three kinds: XSum, GSM8K, stdlib code stubs
BROAD_MIX = {"xsum": 1, "headline": 1, "extract": 1, "translate": 1, "rewrite": 1, "continue": 1,
             "questions": 1, "mmlu": 1, "gsm8k": 2, "code": 2}  # every kind, arithmetic and code twice

SUMMARIZE = "Summarize this article in one sentence.\n\n"  # the user turn for XSum articles
ASK = {
    "headline": "Write a headline for this news article.\n\n",
    "extract": "List the people, places and organisations named in this article.\n\n",
    "rewrite": "Rewrite this passage in plain, simple English.\n\n",
    "continue": "Continue this text.\n\n",
    "questions": "Write three questions that this passage answers, each followed by its answer.\n\n",
}
LANGUAGES = ("French", "Spanish", "German", "Italian")


def shared_file(rel: str) -> Path | None:
    from specexp.tasks.dataset_sources import shared_data_dir

    root = shared_data_dir()
    p = root / rel if root else None
    return p if p is not None and p.exists() else None


def rows(rel: str, skip: int) -> list[dict]:
    """The JSONL rows of a shared data file from index `skip` on; [] when the file is absent."""
    p = shared_file(rel)
    return [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()][skip:] if p else []


def _paragraphs(min_chars: int = 300) -> list[str]:
    """WikiText-2's paragraphs of `min_chars`+ from its second half (the first is the evaluation's)."""
    p = shared_file("wikitext-2-raw/wiki.test.raw")
    if not p:
        return []
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [_detokenize(ln) for ln in lines[len(lines) // 2:] if len(ln) >= min_chars and not ln.startswith("=")]


def _detokenize(text: str) -> str:
    """WikiText's tokenized spacing undone where it is unambiguous ("1 @,@ 000" -> "1,000", "word , word" -> "word, word")."""
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "), (" 's", "'s"),
                 (" ; ", "; "), (" : ", ": "), ("( ", "("), (" )", ")")):
        text = text.replace(a, b)
    return text[:-2] + "." if text.endswith(" .") else text


def _mmlu() -> list[str]:
    """MMLU's validation questions, subject by subject, as a question with lettered options."""
    root = shared_file("mmlu/val")
    out = []
    for f in sorted(root.glob("*.csv")) if root else []:
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                if len(row) == 6:
                    opts = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", row[1:5]))
                    out.append(f"{row[0]}\n{opts}\nAnswer with the letter of the correct option, then explain why.")
    step = max(1, len(out) // 400)  # a spread over the subjects rather than the alphabet's first ones
    return out[::step]


KINDS = ("xsum", "headline", "extract", "translate", "rewrite", "continue", "questions", "mmlu", "gsm8k", "code")
_SHARING = (("xsum", "headline", "extract"), ("rewrite", "continue", "questions"))  # kinds that share one text pool


def pools(skip: int, article_chars: int, mix: dict[str, int]) -> dict:
    """{kind: a function giving its user turns}, lazily (a pool is read only when the mix asks for
    it). The kinds of one text pool (_SHARING) in the mix take its texts in turn, so none is asked
    about twice; a kind alone in the mix takes them all, in order."""
    from specexp.builds.corpus import code_stubs

    def share(kind: str, texts: list) -> list:
        group = next(g for g in _SHARING if kind in g)
        present = [k for k in group if k in mix]
        return texts[present.index(kind)::len(present)]

    def xsum(kind):
        return share(kind, rows("xsum/test.jsonl", skip))

    def wiki(kind):
        return [t[:article_chars] for t in share(kind, _paragraphs())]

    return {
        "xsum": lambda: [SUMMARIZE + r["document"][:article_chars] for r in xsum("xsum")],
        "headline": lambda: [ASK["headline"] + r["document"][:article_chars] for r in xsum("headline")],
        "extract": lambda: [ASK["extract"] + r["document"][:article_chars] for r in xsum("extract")],
        "translate": lambda: [f"Translate into {LANGUAGES[i % len(LANGUAGES)]}:\n\n{r['summary']}"
                              for i, r in enumerate(rows("xsum/test.jsonl", skip)[::3])],  # every third
        "rewrite": lambda: [ASK["rewrite"] + t for t in wiki("rewrite")],
        "continue": lambda: [ASK["continue"] + t for t in wiki("continue")],
        "questions": lambda: [ASK["questions"] + t for t in wiki("questions")],
        "mmlu": _mmlu,
        "gsm8k": lambda: [r["question"] for r in rows("gsm8k/test.jsonl", skip)],
        "code": code_stubs,
    }


def reply_turns(skip: int, n: int, mix: dict[str, int] | None = None,
                article_chars: int = 2000) -> list[tuple[str, str]]:
    """`n` (kind, user turn) pairs, interleaved by `mix` ({kind: turns per round}; default one XSum
    article and one GSM8K question). A kind without data here, or with 0 turns per round, is left out."""
    mix = {k: v for k, v in (mix or {"xsum": 1, "gsm8k": 1}).items() if v > 0}  # 0 would never drain its queue
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"reply prompts: unknown kind(s) {sorted(unknown)} in reply_mix; known: {sorted(KINDS)}")
    known = pools(skip, article_chars, mix)
    queues = {k: known[k]() for k in mix}
    out: list[tuple[str, str]] = []
    while len(out) < n and any(queues.values()):
        for k, per_round in mix.items():
            out += [(k, q) for q in queues[k][:per_round]]
            queues[k] = queues[k][per_round:]
    return out[:n]


def reply_prompts(skip: int, n: int, mix: dict[str, int] | None = None, article_chars: int = 2000) -> list[str]:
    """The user turns of `reply_turns`, without their kinds."""
    return [q for _, q in reply_turns(skip, n, mix, article_chars)]
