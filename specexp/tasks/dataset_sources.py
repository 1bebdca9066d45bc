"""Where a task's rows come from, in one place for every dataset.

`source` (a config key of every dataset):
  auto    1. `path`, when set;  2. the shared copy beside the repo (`<repo>/../shared/data/...`, or
          under $SPECEXP_SHARED_DATA), when it exists;  3. the Hugging Face hub.
  path    only `path` (a file or folder; error when unset or missing)
  shared  only the shared copy
  hub     only the hub

Local files: JSON (a list of rows, a {split: rows} object, or columns), JSON Lines, CSV/TSV with a
header, parquet (one file, several, or a folder holding `<split>*.<ext>`), optionally gzipped; tasks
add their original layouts (MMLU's per-subject CSVs, WikiText's raw text).

The hub is tried only when it can answer: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE
skip it at once, and a 3-second connection check to the endpoint comes first (without it `datasets`
retries for ~25 s before failing offline). When nothing answers, `DataUnavailable` names every
place tried and how to point the task at a local copy.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

SOURCES = ("auto", "path", "shared", "hub")
REPO_ROOT = Path(__file__).resolve().parents[2]  # specexp/tasks/dataset_sources.py -> the checkout
SHARED_ENV = "SPECEXP_SHARED_DATA"
FORMATS = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv")


class DataUnavailable(RuntimeError):
    """No source could provide the dataset (the message lists what was tried)."""


# ---------------------------------------------------------------- where the shared copy lives
def shared_data_dir() -> Path | None:
    """$SPECEXP_SHARED_DATA when set (None if it is not a folder), else `<repo>/../shared/data`
    when that exists, else None."""
    env = os.environ.get(SHARED_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    p = REPO_ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


def _shared_hint() -> str:
    env = os.environ.get(SHARED_ENV)
    return f"${SHARED_ENV}={env}" if env else f"{REPO_ROOT.parent / 'shared' / 'data'} (or set ${SHARED_ENV})"


# ---------------------------------------------------------------- the hub
_TRUE = ("1", "true", "yes", "on")


def hub_offline_reason() -> str | None:
    """Why the hub must not be tried (an offline switch is set), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub endpoint cannot be reached (a TCP connection within `timeout` seconds, DNS
    included), or None. Skipped (None) behind a proxy, where a direct connection proves nothing."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    box: dict[str, str | None] = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            box["reason"] = None
        except OSError as e:
            box["reason"] = f"cannot connect to {host}:{port} ({e})"

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout + 0.5)
    return box.get("reason", f"no answer from {host}:{port} in {timeout:g} s")


def load_hub(name: str, config: str | None = None, split: str = "test") -> list[dict]:
    """Rows of a hub dataset, or DataUnavailable (fast when offline)."""
    where = f"hub {name}" + (f" [{config}]" if config else "") + f" split={split}"
    reason = hub_offline_reason() or hub_unreachable_reason()
    if reason:
        raise DataUnavailable(f"{where}: {reason}")
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split)
    except Exception as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError...
        raise DataUnavailable(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return [dict(r) for r in ds]


# ---------------------------------------------------------------- local files
def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _fmt(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _json_rows(obj: Any, split: str | None, path: Path) -> list[dict]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if split and isinstance(obj.get(split), list):  # {"test": [...], "train": [...]}
            return obj[split]
        for key in ("data", "rows", "examples"):
            if isinstance(obj.get(key), list):
                return obj[key]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if lists and len(lists) == len(obj) and len({len(v) for v in lists}) == 1:  # columns
            keys = list(obj)
            return [dict(zip(keys, vals)) for vals in zip(*lists)]
    raise ValueError(f"{path}: JSON must be a list of rows, {{split: rows}} or columns of equal length")


def read_records(path: str | Path, split: str | None = "test") -> list[dict]:
    """Rows of one local file: .jsonl/.ndjson, .json (list, {split: rows}, columns, or JSON lines),
    .csv/.tsv (with a header), .parquet; any of them gzipped."""
    path = Path(path)
    fmt = _fmt(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with _open_text(path) as f:
        if fmt in (".csv", ".tsv"):
            return [dict(r) for r in csv.DictReader(f, delimiter="\t" if fmt == ".tsv" else ",")]
        text = f.read()
    if fmt in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if fmt == ".json":
        try:
            return _json_rows(json.loads(text), split, path)
        except json.JSONDecodeError:  # JSON lines saved as .json (datasets' to_json does this)
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    raise ValueError(f"{path}: unknown format {fmt or '(no suffix)'}; use one of {', '.join(FORMATS)} (optionally .gz)")


def split_files(folder: Path, split: str) -> list[Path]:
    """Files in `folder` (recursively) holding `split`: `test.jsonl`, `test-00000-of-00001.parquet`,
    `main/test.parquet`... The first format found wins; shards are returned in order. Files in the
    folder itself win over subfolders; several subfolders (a hub snapshot with two configurations)
    are an error naming them."""
    for ext in FORMATS:
        hits = sorted(p for p in folder.rglob(f"{split}*{ext}*") if p.is_file()
                      and re.fullmatch(rf"{re.escape(split)}([-_.].*)?{re.escape(ext)}(\.gz)?", p.name))
        if not hits:
            continue
        top = [p for p in hits if p.parent == folder]
        if top:
            return top
        parents = sorted({p.parent for p in hits})
        if len(parents) > 1:
            names = ", ".join(str(d.relative_to(folder)) for d in parents)
            raise ValueError(f"dataset.path {folder}: {split} files in several folders ({names}); point at one")
        return hits
    return []


def read_local(path: str | Path | list, split: str = "test") -> list[dict]:
    """Rows from a file, a list of files (concatenated), or a folder holding `<split>.*` files."""
    if isinstance(path, (list, tuple)) or type(path).__name__ == "ListConfig":
        return [r for p in path for r in read_local(p, split)]
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset.path {p} does not exist")
    if p.is_dir():
        files = split_files(p, split)
        if not files:
            raise FileNotFoundError(f"dataset.path {p}: no {split}.<{'|'.join(e[1:] for e in FORMATS)}> file in it")
        return [r for f in files for r in read_records(f, split)]
    return read_records(p, split)


# ---------------------------------------------------------------- the order of sources
def resolve(task: str, source: str, path: Any, shared_rel: str | None,
            read_path: Callable[[Any], Any], read_hub: Callable[[], Any] | None,
            hub_desc: str = "") -> Any:
    """Run the `source` order (see the module doc) and return what the first available reader
    returns. `read_path` reads a user path or the shared copy; `read_hub` reads the hub (raising
    DataUnavailable when it cannot). A `path` that is set but wrong is an error, not a fallback."""
    if source not in SOURCES:
        raise ValueError(f"dataset.source must be one of {', '.join(SOURCES)}, got {source!r}")
    tried = []
    if source in ("auto", "path"):
        if path:
            return read_path(path)
        if source == "path":
            raise ValueError(f"{task}: dataset.source=path needs dataset.path")
        tried.append("dataset.path: not set")
    if source in ("auto", "shared"):
        root = shared_data_dir()
        target = root / shared_rel if root is not None and shared_rel else None
        if target is not None and target.exists():
            return read_path(target)
        where = target if target is not None else f"{shared_rel or ''} under {_shared_hint()}"
        tried.append(f"shared copy: {where} not found")
    if source in ("auto", "hub") and read_hub is not None:
        try:
            return read_hub()
        except DataUnavailable as e:
            tried.append(str(e))
    elif source in ("auto", "hub"):
        tried.append("hub: this dataset has no hub loader")
    raise DataUnavailable(
        f"{task}: no data source is reachable.\n  tried: " + "\n  tried: ".join(tried) +
        f"\n  fix: offline, pass dataset.path=<a local file or folder> (JSON, JSONL, CSV, parquet or the "
        f"original layout) or put the shared copy at {_shared_hint()}; online, use dataset.source=hub"
        + (f" ({hub_desc})" if hub_desc else "") + ".")


# ---------------------------------------------------------------- prompt templates
def render(template: str, **fields: Any) -> str:
    """Fill `{name}` placeholders for the given names only; other braces stay as they are (so a
    template may contain code or LaTeX, and the data may contain braces)."""
    if not fields:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in fields) + r")\}")
    return pattern.sub(lambda m: str(fields[m.group(1)]), template)


def render_span(template: str, name: str, value: str) -> tuple[str, tuple[int, int] | None]:
    """render(template, name=value) and the (start, end) characters where `value` stands in it (its
    first placeholder; None when the template has none): the part a too-long prompt may shorten."""
    head, placeholder, tail = template.partition("{" + name + "}")
    if not placeholder:
        return template, None
    return head + value + render(tail, **{name: value}), (len(head), len(head) + len(value))


def as_list(x: Any) -> list:
    """A config value that may be one item or a list (ListConfig included) as a plain list."""
    if x is None:
        return []
    if isinstance(x, (str, bytes, int, float)):
        return [x]
    return list(x)
