"""Where a run came from, for metrics.json["provenance"]: the project's git commit (and whether the
working tree had uncommitted changes), and each model's revision (a hub snapshot's commit) or the
sha256 of its files (a local folder or GGUF file). Files are hashed once per process (cached by
path, size and modification time), so a sweep pays for each model once.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import specexp

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when specexp runs from a checkout
_HASHES: dict[tuple, str] = {}
# the files that make a model: weights, configs, tokenizer
MODEL_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.json", "*.model", "*.txt", "*.tiktoken")


def git_state(root: Path = CHECKOUT) -> dict:
    """{"commit", "dirty"} of the checkout specexp runs from; both None outside a git checkout
    (an installed wheel) or without git. `dirty`: tracked files changed or untracked files present
    (ignored files such as outputs/ do not count)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    if not (root / ".git").exists():
        return {"commit": None, "dirty": None, "version": specexp.__version__}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip()),
            "version": specexp.__version__}


def file_sha256(path: Path) -> str:
    """sha256 of one file, computed once per process (keyed by path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _snapshot_revision(path: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (…/snapshots/<commit>/), else None."""
    return path.name if path.parent.name == "snapshots" else None


def model_identity(spec) -> dict:
    """What identifies the weights a ModelSpec (resolved) loads:
      a GGUF file: {"file", "sha256"};  a local folder: {"path", "sha256" of its model files
      (name + hash of each, sorted), "files"};  a hub id: {"revision"} (the snapshot's commit in
      the local cache, else the revision asked for: null means the default branch when it ran)."""
    name = Path(str(spec.name)).expanduser()
    if spec.gguf_file:
        f = name / spec.gguf_file
        if f.is_file():
            return {"file": str(f), "sha256": file_sha256(f)}
    if name.is_dir():
        files = sorted({p for pat in MODEL_FILES for p in name.glob(pat) if p.is_file()})
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
        out = {"path": str(name), "sha256": h.hexdigest(), "files": len(files)}
        rev = _snapshot_revision(name.resolve())
        return {**out, "revision": rev} if rev else out
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(spec.name), "config.json", revision=spec.revision)
    except Exception:  # noqa: BLE001 - no hub library, a malformed id: record what was asked
        cached = None
    rev = _snapshot_revision(Path(cached).parent) if isinstance(cached, str) else None
    return {"hub": str(spec.name), "revision": rev or spec.revision}


def collect(specs: dict) -> dict:
    """metrics.json["provenance"]: {"git": git_state(), "models": {role: model_identity}}."""
    return {"git": git_state(),
            "models": {role: model_identity(s) for role, s in specs.items() if s is not None}}
