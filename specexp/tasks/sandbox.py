"""Run untrusted Python (model-written code) in a separate, limited process.

    outcome = run_python(program, Limits(timeout=10))   # Outcome(passed, reason, detail, ...)
    outcomes = run_many(programs, limits, workers=4)

Each program runs in its own process, in a fresh temporary directory (its cwd, HOME and TMPDIR,
deleted afterwards), with a minimal environment and `python -I -B`. Layers, outermost first:

1. OS isolation, the best the machine allows (`mode`, probed once per process):
   - "setpriv" (root, `unshare` and `setpriv` present): new network namespace (no network at all)
     and PID namespace (when the program ends or is killed, every process it started dies with
     it); then the uid drops to an unused one (per sandbox, so RLIMIT_NPROC counts only this
     sandbox) keeping just CAP_DAC_READ_SEARCH (to read the interpreter wherever it is installed);
     no-new-privs. The program cannot write the user's files (outside world-writable folders),
     signal their processes or raise its limits.
   - "unshare" (root, no setpriv): the namespaces, but the program stays root: RLIMIT_NPROC is not
     enforced for root, so the process bound rests on the guard (layer 3).
   - "userns" (not root, unprivileged user namespaces allowed): `unshare --map-root-user` with the
     same namespaces; RLIMIT_NPROC counts only this sandbox's processes.
   - "plain": a new session (process group) only; RLIMIT_NPROC = the user's current task count +
     `nproc`; network and file protection rest on the guard. Force a mode with
     $SPECEXP_SANDBOX_MODE.
2. Resource limits the child sets on itself before reading the program: RLIMIT_CPU (then SIGKILL
   a second later), RLIMIT_AS (memory: allocations fail with MemoryError), RLIMIT_FSIZE (stdout
   and stderr included), RLIMIT_NOFILE, RLIMIT_NPROC (processes + threads), no core files; and a
   wall-clock timeout enforced here: SIGKILL to the whole process group (and, with namespaces, the
   PID namespace).
3. The guard, inside the child only (see `_sandbox_child.py`): an audit hook (it cannot be removed
   from Python) refusing process creation, signals, sockets, ctypes, raising limits, writes,
   deletes, renames and permission changes outside the temp dir, and reads outside the temp dir
   and the Python installation; plus human-eval-style disarming of os.system, os.fork,
   subprocess.Popen, shutil.rmtree... Any refused call fails the program ("blocked: <event>"),
   even if the program catches the error. It is a Python-level fence: native code could pass
   it, which is why ctypes and native loading are refused and layers 1-2 stand behind it.

The verdict (`Outcome.reason`): "passed"; "timeout"; "cpu time limit"; "memory" (MemoryError);
"file size limit"; "blocked: <event>"; the exception's class name ("AssertionError",
"SyntaxError", "SystemExit"...); "exit code N"; "signal SIGSEGV" (and other signals); "no result"
(exited 0 before finishing, e.g. os._exit(0)); "sandbox error" (the sandbox itself failed).
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("_sandbox_child.py")
MODES = ("setpriv", "unshare", "userns", "plain")  # strongest first
MODE_ENV = "SPECEXP_SANDBOX_MODE"
_UID_BASE = 0x50000  # sandboxes run as uids from here (root mode): unused by real accounts


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds, then the whole process tree is killed
    cpu_seconds: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS); Python itself needs ~50 MB
    nproc: int = 16  # processes + threads (RLIMIT_NPROC); the program itself is 1
    fsize_mb: int = 16  # largest file written, stdout/stderr included (RLIMIT_FSIZE)
    nofile: int = 64  # open file descriptors (RLIMIT_NOFILE)


@dataclass
class Outcome:
    passed: bool
    reason: str  # see the module doc
    detail: str = ""  # the exception message, or the tail of stderr
    seconds: float = 0.0  # wall clock
    returncode: int | None = None
    stdout: str = ""  # tails (4 kB) of what the program printed
    stderr: str = ""
    mode: str = ""  # the OS isolation used


# ---------------------------------------------------------------- OS isolation
def _uid_mapped(uid: int) -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
    except (OSError, ValueError):
        return True
    return False


_uid_counter = itertools.count()


def _sandbox_uid() -> int:
    """An unused uid for one sandbox: distinct across concurrent sandboxes of this process (64
    slots) and, in practice, across processes (by pid)."""
    uid = _UID_BASE + (os.getpid() % 4096) * 64 + next(_uid_counter) % 64
    return uid if _uid_mapped(uid) else 65534


def _command(mode: str, uid: int | None, cfg: dict) -> list[str]:
    py = [sys.executable, "-I", "-B", str(CHILD), json.dumps(cfg)]
    ns = ["--net", "--pid", "--fork", "--kill-child"]
    unshare = shutil.which("unshare") or "unshare"
    if mode == "setpriv":
        cap = "dac_read_search"
        return [unshare, *ns, "--", shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}",
                "--clear-groups", "--no-new-privs", f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
                f"--bounding-set=-all,+{cap}", "--", *py]
    if mode == "unshare":
        return [unshare, *ns, "--", *py]
    if mode == "userns":
        return [unshare, "--map-root-user", *ns, "--", *py]
    return py


def _candidates() -> list[str]:
    root = os.geteuid() == 0
    have_unshare = shutil.which("unshare") is not None
    out = []
    if root and have_unshare and shutil.which("setpriv"):
        out.append("setpriv")
    if root and have_unshare:
        out.append("unshare")
    if not root and have_unshare:
        out.append("userns")
    return out + ["plain"]


_mode: str | None = None
_mode_lock = threading.Lock()


def isolation_mode() -> str:
    """The OS isolation this process uses: $SPECEXP_SANDBOX_MODE, else the strongest mode whose
    trial run works (probed once)."""
    global _mode
    with _mode_lock:
        if _mode is None:
            forced = os.environ.get(MODE_ENV)
            if forced:
                if forced not in MODES:
                    raise ValueError(f"${MODE_ENV} must be one of {', '.join(MODES)}, got {forced!r}")
                _mode = forced
            else:
                for mode in _candidates():
                    probe = _run(
                        "import os\nassert open('probe', 'w').write('ok') == 2\n", Limits(timeout=20), True, mode)
                    if probe.passed:
                        _mode = mode
                        break
                else:
                    _mode = "plain"
        return _mode


# ---------------------------------------------------------------- one run
def _tail(f, n: int = 4096) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", errors="replace")


def _report(f, nonce: str) -> dict | None:
    f.seek(0)
    for line in reversed(f.read(1 << 16).decode("utf-8", errors="replace").splitlines()):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce:
            return msg
    return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(p: subprocess.Popen) -> bool:
    """Whether the process has ended, without reaping it (its pid, hence its process group id,
    stays reserved until `wait`)."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return p.poll() is not None  # no waitid (macOS): reaped here; the kill after is best effort


def _verdict(report: dict | None, rc: int, timed_out: bool, seconds: float, limits: Limits, err: str):
    """(passed, reason, detail)."""
    if timed_out:
        return False, "timeout", f"killed after {limits.timeout:g} s wall clock"
    if report is not None:
        if report.get("blocked"):
            return False, f"blocked: {report['blocked'][0]}", report.get("msg") or ""
        if report.get("ok") and rc == 0:
            return True, "passed", ""
        exc, msg = report.get("exc") or "error", report.get("msg") or ""
        if exc == "MemoryError":
            return False, "memory", f"MemoryError (limit {limits.memory_mb} MB) {msg}".strip()
        if exc == "CPUTimeLimit":
            return False, "cpu time limit", msg
        if report.get("errno") == 27:  # EFBIG
            return False, "file size limit", msg
        return False, exc, msg
    if rc == 1 and "unshare: sigprocmask unblock failed" in err:
        rc = -signal.SIGKILL  # unshare cannot re-raise SIGKILL on itself and says this instead
    if rc < 0:
        sig = signal.Signals(-rc)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and seconds >= limits.cpu_seconds):
            return False, "cpu time limit", f"{sig.name} after {seconds:.1f} s (limit {limits.cpu_seconds} CPU s)"
        if sig == signal.SIGXFSZ:
            return False, "file size limit", sig.name
        return False, f"signal {sig.name}", err[-500:]
    if rc == 0:
        return False, "no result", "the process exited 0 before the program finished (os._exit?)"
    if "unshare:" in err or "setpriv:" in err:
        return False, "sandbox error", err[-500:]
    return False, f"exit code {rc}", err[-500:]


def _run(program: str, limits: Limits, guard: bool, mode: str) -> Outcome:
    uid = _sandbox_uid() if mode == "setpriv" else None
    tmp = tempfile.mkdtemp(prefix="specexp-sandbox-")
    nonce = secrets.token_hex(16)
    t0 = time.monotonic()
    try:
        os.chmod(tmp, 0o700)
        if uid is not None:
            os.chown(tmp, uid, uid)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as rep:
            cfg = {"tmp": tmp, "guard": guard, "report_fd": rep.fileno(), "cpu_seconds": int(limits.cpu_seconds),
                   "memory_bytes": int(limits.memory_mb * 2**20), "fsize_bytes": int(limits.fsize_mb * 2**20),
                   "nofile": int(limits.nofile), "nproc": int(limits.nproc),
                   "nproc_mode": "count" if mode == "plain" and os.geteuid() != 0 else "direct"}
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8"}
            p = subprocess.Popen(_command(mode, uid, cfg), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                 pass_fds=(rep.fileno(),), cwd=tmp, env=env, start_new_session=True)
            payload = (nonce + "\n" + program).encode("utf-8", errors="replace")

            def feed():
                try:
                    p.stdin.write(payload)
                    p.stdin.close()
                except (BrokenPipeError, OSError, ValueError):
                    pass

            threading.Thread(target=feed, daemon=True).start()
            deadline = t0 + limits.timeout
            timed_out, pause = False, 0.002
            # wait WITHOUT reaping, so the process group cannot be recycled before it is killed
            while not _exited(p):
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            if p.returncode is None:
                _kill_group(p.pid)  # the program's stragglers (in namespaces the kernel kills them anyway)
            rc = p.wait()
            seconds = time.monotonic() - t0
            stderr = _tail(err)
            passed, reason, detail = _verdict(_report(rep, nonce), rc, timed_out, seconds, limits, stderr)
            return Outcome(passed, reason, detail or (stderr[-500:] if not passed else ""), seconds, rc,
                           _tail(out), stderr, mode)
    except OSError as e:
        return Outcome(False, "sandbox error", f"{type(e).__name__}: {e}", time.monotonic() - t0, None, mode=mode)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_python(program: str, limits: Limits = Limits(), guard: bool = True, mode: str | None = None) -> Outcome:
    """Run `program` (Python source) in a sandbox; passed = it ran to the end without an exception.
    `guard=False` drops layer 3 (only for testing the OS layers); `mode` forces an OS isolation."""
    mode = mode or isolation_mode()
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
    return _run(program, limits, guard, mode)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None,
             guard: bool = True) -> list[Outcome]:
    """`run_python` over many programs, `workers` at a time (threads waiting on processes)."""
    if not programs:
        return []
    mode = isolation_mode()
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(lambda prog: _run(prog, limits, guard, mode), programs))
