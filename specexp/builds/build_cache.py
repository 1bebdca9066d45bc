"""Cached builds (the tiny pair, the distilled and feature drafters): built once per parameter
set, under an inter-process lock, in a temporary folder renamed into place, so concurrent jobs
build a pair once and a crash never leaves half of one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


@contextlib.contextmanager
def lock(path: Path):
    """An exclusive inter-process lock (POSIX flock; a no-op elsewhere), so that concurrent jobs
    asking for the same pair build it once."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def share(root: Path) -> None:
    """Ordinary permissions (mkdtemp makes the directory private): 0o777 / 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def build_once(out_dir, params: dict, build, force: bool = False, threads: int = 0, done=None) -> str:
    """Run `build(tmp) -> info` once per `params` into `out_dir`: under a file lock, skipped when
    `done(out, params)` (default: `out_dir/build.json` records the same params and the weights are
    there); built in a temporary folder that is renamed into place (an older build is moved aside
    first), so a crash never leaves half a build. A folder that is not a build is never replaced.
    `threads` (0 = torch's default) sets torch's CPU threads for the build. Returns out_dir."""
    done = done or _done
    out = Path(out_dir).expanduser().resolve()
    if not force and done(out, params):
        return str(out)
    if out.is_file() or (out.is_dir() and not (out / "build.json").is_file() and any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a build of this project; not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock(out.parent / f".{out.name}.lock"):
        if not force and done(out, params):  # built by another process while we waited
            return str(out)
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            info = build(tmp)
            (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")  # last: marks completeness
            share(tmp)
            if out.exists():  # a stale or different build: move it aside, then swap
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "build")
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            torch.set_num_threads(threads_before)
    return str(out)


def _done(out: Path, params: dict) -> bool:
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("params") == params and (out / "model.safetensors").is_file()
