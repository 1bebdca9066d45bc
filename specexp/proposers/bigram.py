"""The bigram drafter: a table giving, for every token id, the most likely next token, counted on a
corpus tokenized with the target's tokenizer. Drafting is a chain: t1 = next[last], t2 = next[t1]...

Here: the table's counting (`count_table`), its JSON file (`save_table`, `load_table`: a record of
what it was built from, and the ids) and the proposer. The table is built once per (tokenizer,
corpus) by specexp/builds/build_bigram.py and cached under `$SPECEXP_CACHE/bigram/` (default
`~/.cache/specexp/bigram/`): ahead with

    python scripts/build_bigram.py --tokenizer <target name or dir> --corpus <file|folder|stdlib>

or by a run for a `Bigram` without a `table` (specexp/experiment/instantiate.py hands it the path).

Corpus sources (`corpus`, read by specexp/builds/corpus.py's `load_texts`):
  null / "stdlib"        the Python standard library's .py sources (always there offline)
  a path                 a text file, or a folder of UTF-8 text files (recursively)
  "shared:<rel path>"    a file under the shared data folder ($SPECEXP_SHARED_DATA, else
                         <repo>/../shared/data), e.g. shared:wikitext-2-raw/wiki.test.raw
or `dataset` (wins over corpus): a Hugging Face dataset, `datasets.load_dataset(dataset,
dataset_config, split=split, data_files=data_files)[text_field]`: a hub id (when reachable or
cached) or a local loader such as "json"/"text"/"csv" with data_files.

Ids never seen with a successor map to the corpus' most frequent token. A model-free drafter has
no distribution: drafts are deterministic proposals (`Draft.probs = None`), forward cost zero.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer

FORMAT = "specexp-bigram-v1"
DEFAULT_MAX_BYTES = 4_000_000  # bigram counts settle long before; tokenizing costs ~1 s/MB


# ----------------------------------------------------------------------------------------- table


def count_table(sequences: list[list[int]], vocab_size: int) -> tuple[torch.Tensor, dict]:
    """next[a] = the most frequent b following a in `sequences` (ties: the smaller id); ids
    never followed by anything map to the most frequent token overall."""
    firsts, seconds, all_ids = [], [], []
    for seq in sequences:
        t = torch.as_tensor(seq, dtype=torch.long)
        all_ids.append(t)
        if t.numel() > 1:
            firsts.append(t[:-1])
            seconds.append(t[1:])
    ids = torch.cat(all_ids) if all_ids else torch.empty(0, dtype=torch.long)
    if ids.numel():
        vocab_size = max(vocab_size, int(ids.max()) + 1)
    unigram = torch.bincount(ids, minlength=vocab_size)
    fallback = int(unigram.argmax()) if ids.numel() else 0
    nxt = torch.full((vocab_size,), fallback, dtype=torch.long)
    n_pairs = 0
    covered = 0
    if firsts:
        a, b = torch.cat(firsts), torch.cat(seconds)
        n_pairs = a.numel()
        keys, counts = torch.unique(a * vocab_size + b, return_counts=True)  # sorted by (a, b)
        ka, kb = keys // vocab_size, keys % vocab_size
        best = torch.zeros(vocab_size, dtype=counts.dtype).scatter_reduce(0, ka, counts, "amax")
        win = counts == best[ka]  # the (a, b) pairs with a's top count
        wa, wb = ka[win], kb[win]
        first = torch.ones_like(wa, dtype=torch.bool)  # keys are sorted: the first winner of each a has the smallest b
        first[1:] = wa[1:] != wa[:-1]
        nxt[wa[first]] = wb[first]
        covered = int(torch.unique(ka).numel())
    return nxt, {"n_tokens": int(ids.numel()), "n_pairs": n_pairs, "ids_with_successor": covered,
                 "fallback_token": fallback}


def save_table(path: str | Path, nxt: torch.Tensor, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **meta, "next": nxt.tolist()}))
    os.replace(tmp, path)
    return path


def load_table(path: str | Path) -> tuple[torch.Tensor, dict]:
    data = json.loads(Path(path).expanduser().read_text())
    if isinstance(data, list):  # a bare list of next-token ids (the original CS-Drafting files)
        return torch.tensor(data, dtype=torch.long), {"format": "list", "path": str(path)}
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} bigram table")
    nxt = torch.tensor(data.pop("next"), dtype=torch.long)
    return nxt, {**data, "path": str(path)}


# -------------------------------------------------------------------------------------- proposer


def check_policy(policy, who: str) -> None:
    """Model-free drafts have no distribution to decide on: these proposers take their length from
    the policy's `begin()` (and the loop calls `observe()`), never from per-token `decide()`."""
    if policy is not None and getattr(policy, "needs_steps", False):
        raise ValueError(f"{who} drafts without a model distribution, but the length policy "
                         f"{type(policy).__name__} decides token by token from one; use a per-round policy "
                         "(specexp.length.Fixed, LengthPolicy, or one that only overrides begin/observe)")


def fit_table(table: torch.Tensor, vocab: int, fallback: int = 0) -> torch.Tensor:
    """The table over exactly `vocab` ids (the target's logit width): ids past the tokenizer (a
    padded head) chain to the fallback token; successors the target cannot score are replaced."""
    fallback = fallback if 0 <= fallback < vocab else 0
    if table.numel() < vocab:
        table = torch.cat([table, torch.full((vocab - table.numel(),), fallback, dtype=torch.long)])
    table = table[:vocab].clone()
    table[(table < 0) | (table >= vocab)] = fallback
    return table


def chain(table: torch.Tensor, last: int, k: int) -> list[int]:
    """k tokens following `last` along the table."""
    out = []
    for _ in range(k):
        last = int(table[last])
        out.append(last)
    return out


class Bigram(Proposer):
    """Drafts the bigram chain from the last token. `table`: a built JSON table (scripts/
    build_bigram.py); else a run builds it from `corpus`/`dataset` with the target's tokenizer,
    cached (specexp/builds/build_bigram.py), before binding. Model-free: no forwards, deterministic proposals.

    min_fit: draft only for prompts whose own next tokens the table predicts at least this often
    (`fit`: its corpus fits the text; a chain counted on code drafts junk into prose, and every
    junk token widens the target's verification); 0 = always draft."""

    forwards = 0

    def __init__(self, table: str | None = None, corpus: str | None = None, dataset: str | None = None,
                 dataset_config: str | None = None, split: str = "train", data_files=None,
                 text_field: str = "text", max_bytes: int = DEFAULT_MAX_BYTES, min_fit: float = 0.0):
        self.table_path = table
        self.source = dict(corpus=corpus, dataset=dataset, dataset_config=dataset_config, split=split,
                           data_files=data_files, text_field=text_field, max_bytes=max_bytes)
        self.table: torch.Tensor | None = None
        self.meta: dict = {}
        self.min_fit = min_fit
        self.fits = True  # this sample's verdict (reset)

    @classmethod
    def from_table(cls, table: torch.Tensor | list[int]) -> "Bigram":
        """A bigram drafter over a given next-token table (tests, hand-made tables)."""
        b = cls()
        b.table = torch.as_tensor(table, dtype=torch.long)
        b.meta = {"source": "given"}
        return b

    def bind(self, pair) -> "Bigram":
        if self.table is not None:
            return self
        if not self.table_path:
            return self  # no table to read (a run builds one first: specexp.experiment.instantiate.provide_builds)
        vocab = getattr(pair, "vocab_size", None)
        self.table, self.meta = load_table(Path(self.table_path).expanduser())
        if vocab is not None:
            self.table = fit_table(self.table, vocab, int(self.meta.get("fallback_token", 0)))
        return self

    def fit(self, text: torch.Tensor) -> float | None:
        """Share of the positions of `text` [L] whose next token is the table's successor (None: L < 2)."""
        if self.table is None:
            raise RuntimeError("Bigram drafter without a table: call bind(pair) (or use Bigram.from_table)")
        text = text.cpu().long()
        if text.shape[0] < 2:
            return None
        ok = text[:-1] < self.table.numel()
        return float((self.table[text[:-1][ok]] == text[1:][ok]).sum()) / (text.shape[0] - 1)

    def reset(self, prompt: torch.Tensor) -> None:
        fit = self.fit(prompt) if self.min_fit > 0 else None
        self.fits = fit is None or fit >= self.min_fit

    def draft(self, last: int, k: int) -> list[int]:
        if self.table is None:
            raise RuntimeError("Bigram drafter without a table: call bind(pair) (or use Bigram.from_table)")
        return chain(self.table, last, k)

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy | None, sampling: Sampling | None,
                generator: torch.Generator | None) -> Draft:
        check_policy(policy, "the bigram drafter")
        out = self.draft(int(tokens[-1]), max_len) if max_len > 0 and self.fits else []
        recs = [{"position": j, "source": "bigram"} for j in range(len(out))] if self.records else []
        return Draft(torch.tensor(out, dtype=tokens.dtype, device=tokens.device), None, recs)
