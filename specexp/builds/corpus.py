"""Training text for what this project builds (the tiny pair and the distillation text:
`load_corpus`; the bigram table: `load_texts`): the Python standard library's own sources by
default, which every install has, or a file or folder of the user's (`load_texts` also a file
under the shared data folder, or a Hugging Face dataset). One walker (`_walk`) lists the files.
Deterministic: sorted file lists, and a capped corpus is a spread chosen by a hash of each file's path."""
from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

from specexp.proposers.bigram import DEFAULT_MAX_BYTES

EOS = "<|endoftext|>"  # the document separator (removed from the documents' own text)
MAX_BYTES = 4_000_000  # cap on the corpus text (files picked by a hash of their path)
MAX_FILE_BYTES = 256_000  # skip larger files (data tables rather than code)

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "pydoc_data", "encodings"}  # tests, third-party code, and data tables



def _pick(candidates: list[tuple[str, Path]], max_file_bytes: int, max_bytes: int) -> list[tuple[str, Path]]:
    """Files to use: those not over `max_file_bytes`; if they exceed `max_bytes` together, a
    deterministic spread (ordered by a hash of the relative path, not alphabetically, so the
    capped corpus still covers every package); returned sorted by relative path."""
    sizes = {rel: p.stat().st_size for rel, p in candidates}
    ok = sorted((rel, p) for rel, p in candidates if sizes[rel] <= max_file_bytes)
    if sum(sizes[rel] for rel, _ in ok) <= max_bytes:
        return ok
    chosen, total = [], 0
    for rel, p in sorted(ok, key=lambda rp: hashlib.sha256(rp[0].encode()).hexdigest()):
        if total + sizes[rel] <= max_bytes:
            chosen.append((rel, p))
            total += sizes[rel]
    return sorted(chosen)


def _walk(root: Path, suffixes: tuple[str, ...] | None, skip_dirs: set[str]) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or (suffixes and not f.endswith(suffixes)):
                continue
            p = Path(dirpath) / f
            if p.is_file():
                out.append((p.relative_to(root).as_posix(), p))
    return out


def _read_text(p: Path) -> str | None:
    data = p.read_bytes()
    if b"\0" in data:
        return None  # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def load_corpus(corpus: str | None = None, max_bytes: int = MAX_BYTES,
                max_file_bytes: int = MAX_FILE_BYTES) -> tuple[list[str], dict]:
    """The training documents and a description of them.

    corpus=None: the standard library's `.py` sources (no tests, no site-packages); a file: its
    text (cut at `max_bytes`); a directory: its UTF-8 text files, recursively."""
    if corpus is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _pick(_walk(root, (".py",), _SKIP_DIRS), max_file_bytes, max_bytes)
        source = f"python stdlib ({root})"
    else:
        root = Path(corpus).expanduser().resolve()
        if root.is_file():
            files = [(root.name, root)]
        elif root.is_dir():
            files = _pick(_walk(root, None, {"__pycache__"}), max_file_bytes, max_bytes)
        else:
            raise FileNotFoundError(f"corpus {corpus!r} is neither a file nor a directory")
        source = str(root)
    docs, names = [], []
    for rel, p in files:
        text = _read_text(p)
        if text and text.strip():
            docs.append(text.replace(EOS, ""))
            names.append(rel)
    if root.is_file() and docs:
        docs[0] = docs[0].encode()[:max_bytes].decode("utf-8", errors="ignore")
    if not docs:
        raise ValueError(f"corpus {source!r} has no UTF-8 text")
    joined = EOS.join(docs)
    info = {
        "source": source,
        "files": len(docs),
        "bytes": sum(len(d.encode()) for d in docs),
        "sha256": hashlib.sha256(joined.encode()).hexdigest(),
        "first_files": names[:5],
    }
    return docs, info


# ------------------------------------------------------------------------ the bigram table's text
_BIGRAM_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def shared_data_dir() -> Path:
    """The shared data folder: $SPECEXP_SHARED_DATA, else <repo>/../shared/data."""
    env = os.environ.get("SPECEXP_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def load_texts(corpus: str | None = None, dataset: str | None = None, dataset_config: str | None = None,
               split: str = "train", data_files=None, text_field: str = "text",
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[list[str], dict]:
    """The bigram table's corpus as a list of documents (at most `max_bytes` in all) and a
    description of it. corpus: null/"stdlib" (the standard library's .py sources), a file or a
    folder (recursively), or "shared:<rel path>" under `shared_data_dir()`; dataset (wins over
    corpus): `datasets.load_dataset(dataset, dataset_config, split=split, data_files=data_files)[text_field]`."""
    if dataset:
        docs, info = _dataset_texts(dataset, dataset_config, split, data_files, text_field, max_bytes)
    else:
        docs, info = _file_texts(corpus, max_bytes)
    if not docs:
        raise ValueError("bigram: the corpus has no text")
    joined = "\x00".join(docs).encode()
    info.update(documents=len(docs), bytes=len(joined) - len(docs) + 1, sha256=hashlib.sha256(joined).hexdigest(),
                max_bytes=max_bytes)
    return docs, info


def _dataset_texts(dataset, dataset_config, split, data_files, text_field, max_bytes) -> tuple[list[str], dict]:
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
    return docs, {"kind": "dataset", "dataset": dataset, "dataset_config": dataset_config, "split": split,
                  "data_files": data_files, "text_field": text_field}


def _file_texts(corpus: str | None, max_bytes: int) -> tuple[list[str], dict]:
    # 1. The files: the stdlib's .py sources, or the user's file or folder, in a spread by path hash
    #    (so that the byte cap still samples every package rather than the alphabet's start).
    if corpus in (None, "stdlib"):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _spread(_walk(root, (".py",), _BIGRAM_SKIP_DIRS))
        kind = "stdlib"
    else:
        shared = str(corpus).startswith("shared:")
        root = shared_data_dir() / str(corpus)[len("shared:"):] if shared else Path(str(corpus))
        root = root.expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"bigram corpus {corpus!r}: {root} does not exist"
                                    + (" (set $SPECEXP_SHARED_DATA)" if shared else ""))
        files = [root] if root.is_file() else _spread(_walk(root, None, {"__pycache__"}))
        kind = "path"
    # 2. Their text, up to max_bytes in all (the last one cut), without binary or blank files.
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
    return docs, {"kind": kind, "corpus": corpus, "root": str(root), "files": len(docs)}


def _spread(files: list[tuple[str, Path]]) -> list[Path]:
    """The files ordered by a hash of their path relative to the walked root."""
    return [p for _, p in sorted(files, key=lambda rp: hashlib.sha256(rp[0].encode()).hexdigest())]


def code_stubs(seed: int = 0) -> list[str]:
    """Coding requests in HumanEval's form, from the standard library (so none is HumanEval's
    own): each public module-level function with a docstring of 40+ characters, as its signature
    and docstring with the body left to write. Shuffled by `seed`. Parsed once per process (the
    standard library does not change under it; parsing it takes seconds)."""
    return list(_code_stubs(seed))


@functools.lru_cache(maxsize=4)
def _code_stubs(seed: int) -> tuple[str, ...]:
    import ast
    import random

    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for _, f in sorted(_walk(root, (".py",), _SKIP_DIRS)):
        text = _read_text(f)
        try:
            tree = ast.parse(text or "")
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            if doc and len(doc) >= 40 and not node.name.startswith("_"):
                out.append(f'def {node.name}({ast.unparse(node.args)}):\n    """{doc}\n    """\n')
    random.Random(seed).shuffle(out)
    return tuple(out)
