"""`PinGPU`: a Hydra callback that pins each launcher worker process to its own GPU
(CUDA_VISIBLE_DEVICES), for Hydra's joblib launcher on a machine with several GPUs
(conf/hydra/launcher/joblib_gpus.yaml, docs/sweeps.md), and the resolver `${specexp_gpu_count:}`
that sizes the launcher's `n_jobs`. Imports no torch at import time."""
from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


_PINNED: dict[str, Any] | None = None  # this process's slot: {"gpu": id, "slot": i, "fd": lock fd}


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else 0..device_count-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def acquire_slot(lock_dir: str | Path, n_slots: int) -> tuple[int, int] | None:
    """Take the first free slot of `n_slots` (an exclusive flock on `lock_dir/slot<i>.lock`),
    held until the process exits. Returns (slot, fd), or None when every slot is taken."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_slots):
        fd = os.open(lock_dir / f"slot{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return i, fd
    return None


class PinGPU(Callback):
    """Pin each process that runs jobs to one GPU by setting CUDA_VISIBLE_DEVICES before the
    job's first CUDA call; `model_pair.device=auto` (or `cuda`) then means that GPU.

    A process takes a free slot (a file lock under `<sweep dir>/.gpu_slots/`) on its first job
    and keeps it for its lifetime, so with the joblib launcher's `n_jobs` equal to the number
    of slots (GPUs x jobs_per_gpu) every worker has its own GPU, and the model cache of a
    worker stays on one device. When every slot is taken (more workers than slots), the job
    falls back to GPU number `job.num % len(gpus)` with a warning.

    gpus: GPU ids to use (default: this machine's visible GPUs, read in the launching process).
    jobs_per_gpu: slots per GPU (2 runs two workers on each GPU when the models fit twice).
    """

    def __init__(self, gpus: list | None = None, jobs_per_gpu: int = 1, lock_dir: str | None = None) -> None:
        self.gpus = [str(g) for g in gpus] if gpus is not None else visible_gpus()
        if jobs_per_gpu < 1:
            raise ValueError(f"jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
        self.jobs_per_gpu = jobs_per_gpu
        self.lock_dir = lock_dir

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _PINNED
        if str(OmegaConf.select(config, "hydra.mode", default="")) == "RunMode.RUN":
            return  # a single run: nothing to share
        if not self.gpus:
            log.info("PinGPU: no GPU visible; job runs where model_pair.device says")
            return
        if _PINNED is None:
            n_slots = len(self.gpus) * self.jobs_per_gpu
            lock_dir = self.lock_dir or str(Path(str(config.hydra.sweep.dir)) / ".gpu_slots")
            got = acquire_slot(lock_dir, n_slots)
            if got is None:
                num = int(OmegaConf.select(config, "hydra.job.num", default=0) or 0)
                gpu = self.gpus[num % len(self.gpus)]
                log.warning("PinGPU: all %d GPU slots are taken (more workers than GPUs x jobs_per_gpu); "
                            "job %d shares GPU %s", n_slots, num, gpu)
                _PINNED = {"gpu": gpu, "slot": None, "fd": None}
            else:
                slot, fd = got
                _PINNED = {"gpu": self.gpus[slot % len(self.gpus)], "slot": slot, "fd": fd}
        gpu = _PINNED["gpu"]
        if os.environ.get("CUDA_VISIBLE_DEVICES") != gpu:
            if _cuda_initialized():
                log.warning("PinGPU: CUDA is already initialised in process %d; CUDA_VISIBLE_DEVICES=%s "
                            "cannot take effect", os.getpid(), gpu)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("PinGPU: process %d runs on GPU %s (slot %s)", os.getpid(), gpu, _PINNED["slot"])


def _cuda_initialized() -> bool:
    mod = sys.modules.get("torch")
    try:
        return bool(mod is not None and mod.cuda.is_initialized())
    except Exception:
        return False


def gpu_count() -> int:
    """Resolver `${specexp_gpu_count:}`: the number of visible GPUs, at least 1 (n_jobs)."""
    return max(1, len(visible_gpus()))


if not OmegaConf.has_resolver("specexp_gpu_count"):
    OmegaConf.register_new_resolver("specexp_gpu_count", gpu_count)
