"""The bigram drafter: a table giving, for every token id, the most likely next token, counted on a
corpus tokenized with the target's tokenizer. Drafting is a chain: t1 = next[last], t2 = next[t1]...

The table is built once per (tokenizer, corpus) and cached as JSON with a record of what it was
built from (corpus, its sha256, tokenizer, counts). Build it ahead with

    python scripts/build_bigram.py --tokenizer <target name or dir> --corpus <file|folder|stdlib>

or let the proposer build it on first use (`Bigram(corpus=...)`); both land in the same cache:
`$SPECEXP_CACHE/bigram/` (default `~/.cache/specexp/bigram/`).

Corpus sources (`corpus`):
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

import hashlib
import json
import logging
import os
import sysconfig
import time
from pathlib import Path

import torch

from specexp.models.fetch import cache_root
from specexp.length import LengthPolicy
from specexp.proposers.base import Draft, Proposer
from specexp.models.sampling import Sampling

log = logging.getLogger(__name__)

FORMAT = "specexp-bigram-v1"
DEFAULT_MAX_BYTES = 4_000_000  # bigram counts settle long before; tokenizing costs ~1 s/MB


def cache_dir() -> Path:
    return cache_root() / "bigram"


def _shared_data_dir() -> Path:
    env = os.environ.get("SPECEXP_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


# ---------------------------------------------------------------------------------------- corpus


def load_texts(corpus: str | None = None, dataset: str | None = None, dataset_config: str | None = None,
               split: str = "train", data_files=None, text_field: str = "text",
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[str], dict]:
    """The corpus as a list of documents (at most `max_bytes` in all) and a description of it."""
    if dataset:
        import datasets

        try:
            ds = datasets.load_dataset(dataset, dataset_config, split=split, data_files=data_files)
        except Exception as err:  # offline hub, missing file...
            raise ValueError(f"bigram: could not load dataset {dataset!r} ({dataset_config}, split {split}): "
                             f"{type(err).__name__}: {err}. Give a local corpus (corpus=<file>) instead.") from err
        docs, total = [], 0
        for row in ds:
            text = row[text_field]
            if not text or not text.strip():
                continue
            docs.append(text)
            total += len(text.encode())
            if total >= max_bytes:
                break
        info = {"kind": "dataset", "dataset": dataset, "dataset_config": dataset_config, "split": split,
                "data_files": data_files, "text_field": text_field}
    else:
        if corpus in (None, "stdlib"):
            root = Path(sysconfig.get_paths()["stdlib"])
            files = _text_files(root, (".py",), {"test", "tests", "idle_test", "site-packages", "dist-packages"})
            kind = "stdlib"
        else:
            root = Path(str(corpus)[len("shared:"):] if str(corpus).startswith("shared:") else str(corpus))
            if str(corpus).startswith("shared:"):
                root = _shared_data_dir() / root
            root = root.expanduser().resolve()
            if not root.exists():
                raise FileNotFoundError(f"bigram corpus {corpus!r}: {root} does not exist"
                                        + (" (set $SPECEXP_SHARED_DATA)" if str(corpus).startswith("shared:") else ""))
            files = [root] if root.is_file() else _text_files(root, None, set())
            kind = "path"
        docs, total = [], 0
        for f in files:
            try:
                text = f.read_bytes()[: max_bytes - total].decode("utf-8", errors="ignore")
            except OSError:
                continue
            if "\x00" in text or not text.strip():
                continue
            docs.append(text)
            total += len(text.encode())
            if total >= max_bytes:
                break
        info = {"kind": kind, "corpus": corpus, "root": str(root), "files": len(docs)}
    if not docs:
        raise ValueError("bigram: the corpus has no text")
    joined = "\x00".join(docs).encode()
    info.update(documents=len(docs), bytes=len(joined) - len(docs) + 1, sha256=hashlib.sha256(joined).hexdigest(),
                max_bytes=max_bytes)
    return docs, info


def _text_files(root: Path, suffixes: tuple[str, ...] | None, skip: set[str]) -> list[Path]:
    """The files under root, in a deterministic spread (ordered by a hash of their relative path,
    so that a byte cap still samples every package rather than the alphabet's start)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith(".") and d != "__pycache__")
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if not f.startswith(".") and (suffixes is None or f.endswith(suffixes)))
    return sorted(out, key=lambda f: hashlib.sha256(f.relative_to(root).as_posix().encode()).hexdigest())


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


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


def build_table(tokenizer, docs: list[str]) -> tuple[torch.Tensor, dict]:
    vocab_size = len(tokenizer)
    seqs = []
    for i in range(0, len(docs), 256):
        seqs.extend(tokenizer(docs[i: i + 256], add_special_tokens=False)["input_ids"])
    nxt, counts = count_table(seqs, vocab_size)
    return nxt, {"vocab_size": nxt.numel(), **counts}


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


def build_bigram(tokenizer, tokenizer_name: str | None = None, corpus: str | None = None, dataset: str | None = None, dataset_config: str | None = None,
                 split: str = "train", data_files=None, text_field: str = "text",
                 max_bytes: int = DEFAULT_MAX_BYTES, out: str | Path | None = None,
                 force: bool = False) -> Path:
    """Build (or reuse from the cache) the bigram table of `tokenizer` on a corpus; returns the JSON
    path (`out`, or the cache). The cache key is the tokenizer's vocabulary and the corpus' sha256."""
    t0 = time.perf_counter()
    docs, info = load_texts(corpus, dataset, dataset_config, split, data_files, text_field, max_bytes)
    tok_sha = tokenizer_fingerprint(tokenizer)
    key = hashlib.sha256(f"{FORMAT}|{tok_sha}|{info['sha256']}".encode()).hexdigest()[:16]
    path = Path(out) if out else cache_dir() / f"{key}.json"
    if not force and path.exists():
        try:
            _, meta = load_table(path)
            if meta.get("key") == key:
                log.info("bigram: reusing %s", path)
                return path
        except (OSError, ValueError):
            pass
    nxt, counts = build_table(tokenizer, docs)
    meta = {"key": key,
            "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", None),
            "tokenizer_sha256": tok_sha, "source": info, **counts,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - t0, 3)}
    save_table(path, nxt, meta)
    log.info("bigram: built %s from %s (%d tokens)", path, info.get("source") or info.get("dataset"), counts["n_tokens"])
    return path


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
    build_bigram.py); else the table is built on first use from `corpus`/`dataset` with the
    target's tokenizer and cached. Model-free: no forwards, deterministic proposals.

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
        vocab = getattr(pair, "vocab_size", None)
        if self.table_path:
            path = Path(self.table_path).expanduser()
        else:
            spec = getattr(pair, "specs", {}).get("target")
            name = (spec.tokenizer or spec.name) if spec is not None else None
            path = build_bigram(pair.tokenizer, tokenizer_name=name, **self.source)
        self.table, self.meta = load_table(path)
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
