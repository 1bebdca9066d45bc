"""WikiText-2 (Merity et al. 2016; raw, test split): continue the opening words of a Wikipedia
paragraph. No quality metric (`score` returns {}); the true continuation is each sample's
`reference`, so `prompt + reference` is the whole paragraph (for the default template), ready for a
perplexity hook.

Paragraphs are the non-empty lines that are not ` = Heading = ` lines, numbered in file order
(the shared copy, which drops blank lines, and the hub's rows give the same numbers): ids are
`wikitext/<n>`. The text keeps the raw release's tokenisation (" @-@ ", " , ")."""
from __future__ import annotations

import re
from pathlib import Path

from specexp.tasks.base import Sample, Task
from specexp.tasks.dataset_sources import load_hub, read_local, render, resolve

_WORD = re.compile(r"\S+")


def is_heading(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and s.startswith("= ") and s.endswith(" =")


def paragraphs(lines) -> list[str]:
    return [s for s in (line.strip() for line in lines) if s and not is_heading(s)]


def split_words(text: str, n: int) -> tuple[str, str]:
    """(the first n words, the rest with its leading space): prefix + rest == text."""
    words = list(_WORD.finditer(text))
    if len(words) <= n:
        return text, ""
    cut = words[n - 1].end()
    return text[:cut], text[cut:]


def read_wikitext(path, split: str) -> list[str]:
    """Lines of the raw release (`wiki.<split>.raw`, or a folder holding it), or rows with a
    `text` column in any format `read_local` reads (the hub's layout)."""
    p = Path(str(path)).expanduser()
    if p.is_dir() and (p / f"wiki.{split}.raw").is_file():
        p = p / f"wiki.{split}.raw"
    if p.is_file() and p.suffix in (".raw", ".txt", ".tokens"):
        return p.read_text(encoding="utf-8").splitlines()
    rows = read_local(p, split)
    if rows and "text" not in rows[0]:
        raise ValueError(f"wikitext rows need a 'text' field, got {sorted(rows[0])}")
    return [line for r in rows for line in str(r["text"]).splitlines()]


class WikiText(Task):
    name = "wikitext"
    version = "1"

    def __init__(self, source: str = "auto", path=None, hub_name: str = "Salesforce/wikitext",
                 hub_config: str = "wikitext-2-raw-v1", split: str = "test", prefix_words: int = 32,
                 min_words: int = 64, template: str = "{prefix}", **kw):
        super().__init__(**kw)
        if prefix_words < 1:
            raise ValueError(f"dataset.prefix_words must be >= 1, got {prefix_words}")
        self.source = source  # auto | path | shared | hub (see specexp/tasks/dataset_sources.py)
        self.path = path  # wiki.<split>.raw (or its folder), or rows with a text column
        self.hub_name, self.hub_config, self.split = hub_name, hub_config, split
        self.prefix_words = prefix_words  # words of the paragraph in the prompt
        self.min_words = max(min_words, prefix_words + 1)  # shorter paragraphs are skipped
        self.template = template  # the prompt; {prefix} is replaced

    def load(self) -> list[Sample]:
        lines = resolve(self.name, self.source, self.path, f"wikitext-2-raw/wiki.{self.split}.raw",
                        lambda p: read_wikitext(p, self.split),
                        lambda: [r["text"] for r in load_hub(self.hub_name, self.hub_config, self.split)],
                        f"{self.hub_name} [{self.hub_config}]")
        out = []
        for i, para in enumerate(paragraphs(lines)):
            if len(_WORD.findall(para)) < self.min_words:
                continue
            prefix, rest = split_words(para, self.prefix_words)
            out.append(Sample(f"wikitext/{i}", render(self.template, prefix=prefix), reference=rest,
                              meta={"paragraph": para}))
        return out

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        return {}
