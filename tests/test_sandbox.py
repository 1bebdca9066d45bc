"""The sandbox that runs model-written code: adversarial programs must fail with a reason and leave
the host (and this test process) untouched. Every limit is small, and every program that
multiplies processes is bounded by itself too (a loop of at most 50 forks) unless the kernel
limit has just been shown to hold, so a broken limit cannot take the machine down."""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from specexp.tasks.sandbox import isolation
from specexp.tasks.sandbox import judge as sandbox
from specexp.tasks.sandbox.judge import Limits, check_many, Check, isolation_mode, run_check, run_many, run_python

FAST = Limits(timeout=30, cpu_seconds=5, memory_mb=512, nproc=8, fsize_mb=1)  # the timeout is a safety net only
MODE = isolation_mode()
ROOT = os.geteuid() == 0
NAMESPACES = MODE in ("bwrap", "setpriv", "userns")  # network + PID + mount namespaces
OWN_UID = ROOT and MODE in sandbox.STRONG  # each box runs as its own unused uid
# RLIMIT_NPROC counts this box alone (without its own uid it counts all your processes: no exact bound)
KERNEL_NPROC = OWN_UID
needs_ns = pytest.mark.skipif(not NAMESPACES, reason=f"sandbox level {MODE!r} has no namespaces here")
needs_nproc = pytest.mark.skipif(not KERNEL_NPROC, reason=f"sandbox level {MODE!r}: RLIMIT_NPROC not enforced")
needs_uid = pytest.mark.skipif(not OWN_UID, reason="needs root + a kernel level (the box runs as another uid)")


def run(program: str, limits: Limits = FAST, **kw):
    return run_python(program, limits, **kw)


# ---------------------------------------------------------------- ordinary outcomes
def test_passing_program_and_its_output():
    out = run("x = sum(range(10))\nprint('sum', x)\nassert x == 45\n")
    assert (out.passed, out.reason) == (True, "passed")
    assert out.stdout == "sum 45\n" and out.mode == MODE


@pytest.mark.parametrize("program, reason", [
    ("assert 1 == 2, 'nope'\n", "AssertionError"),
    ("def f(:\n    pass\n", "SyntaxError"),
    ("undefined_name\n", "NameError"),
    ("import sys\nsys.exit(0)\n", "SystemExit"),  # exiting early is not passing
    ("import os\nos._exit(3)\n", "exit code 3"),
    ("import os\nos._exit(0)\n", "no result"),  # exit 0 without finishing is not passing either
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
])
def test_failures_carry_a_reason(program, reason):
    out = run(program)
    assert not out.passed and out.reason == reason


def test_input_does_not_hang():
    out = run("input()\n")
    assert not out.passed and out.reason == "EOFError"


def test_files_inside_the_temp_dir_are_fine_and_removed_afterwards():
    out = run("import os\nopen('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
              "os.mkdir('d')\nos.remove('scratch.txt')\nprint(os.getcwd())\n")
    assert out.passed, out
    tmp = Path(out.stdout.strip())
    assert tmp.name.startswith("specexp-sandbox-") and not tmp.exists()


def test_numpy_still_imports():
    pytest.importorskip("numpy")
    out = run("import numpy as np\nassert np.arange(4).sum() == 6\n")
    assert out.passed, out


# ---------------------------------------------------------------- time, CPU, memory, output
def test_hang_is_killed_at_the_wall_clock_timeout():
    """A program that can only end by being killed (it sleeps for 11 days) gets the timeout verdict."""
    out = run("import time\ntime.sleep(10 ** 6)\n", Limits(timeout=1))
    assert not out.passed and out.reason == "timeout"
    _assert_no_box_left()


def test_busy_loop_hits_the_cpu_limit():
    out = run("while True:\n    pass\n", Limits(timeout=600, cpu_seconds=1))  # CPU time <= wall time: CPU first
    assert not out.passed and out.reason == "cpu time limit"


def test_cpu_limit_holds_even_when_the_program_ignores_sigxcpu():
    out = run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n",
              Limits(timeout=600, cpu_seconds=1))
    assert not out.passed and out.reason == "cpu time limit"


@pytest.mark.parametrize("program", ["x = bytearray(8 * 1024 ** 3)\n", "x = [0] * (10 ** 9)\n",
                                     "chunks = []\nwhile True:\n    chunks.append(' ' * 10 ** 7)\n"])
def test_huge_allocation_fails_with_memory(program):
    out = run(program, Limits(timeout=10, memory_mb=256))
    assert not out.passed and out.reason == "memory"


def test_output_flood_hits_the_file_size_limit():
    out = run("while True:\n    print('x' * 100000)\n", Limits(timeout=10, fsize_mb=1))
    assert not out.passed and out.reason == "file size limit"
    assert len(out.stdout) <= 4096  # only a tail comes back


def test_interpreter_crash_is_a_failure_with_the_signal():
    out = run("import faulthandler\nfaulthandler._read_null()\n")
    assert not out.passed and out.reason == "signal SIGSEGV"


# ---------------------------------------------------------------- processes
def test_fork_bomb_is_refused():
    out = run("import os\nwhile True:\n    os.fork()\n")
    assert not out.passed and out.reason == "blocked: os.fork"


@pytest.mark.parametrize("program, event", [
    ("import os\nos.system('echo hi')\n", "os.system"),
    ("import subprocess\nsubprocess.run(['true'])\n", "subprocess.run"),
    ("import os\nos.execv('/bin/true', ['true'])\n", "os.execv"),
    ("import _posixsubprocess\n", "import"),
    ("import os\nos.posix_spawn('/bin/true', ['true'], {})\n", "os.posix_spawn"),
    ("import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()\n", "os.fork"),
    ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "os.kill"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", "resource.setrlimit"),
    ("import ctypes\n", "import"),
])
def test_process_and_native_escapes_are_refused(program, event):
    out = run(program)
    assert not out.passed and out.reason == f"blocked: {event}", out


def test_refused_call_fails_the_program_even_if_caught():
    out = run("import os\ntry:\n    os.system('true')\nexcept Exception:\n    pass\n")
    assert not out.passed and out.reason == "blocked: os.system"


def test_os_system_does_not_run(tmp_path):
    target = tmp_path / "made_by_shell"
    out = run(f"import os\nos.system('touch {target}')\n")
    assert not out.passed and not target.exists()


FORK_8 = ("import os, signal\nn = 0\nfor _ in range(50):\n    try:\n        pid = os.fork()\n    except OSError:\n"
          "        break\n    if pid == 0:\n        signal.pause()\n    n += 1\nprint(n)\n")  # children wait forever


@needs_nproc
def test_kernel_bounds_processes_per_uid_without_the_guard():
    """Guard off: RLIMIT_NPROC stops the forks below `nproc` (the children wait, so they all
    count); the loop itself stops at 50, whatever happens."""
    out = run(FORK_8, Limits(timeout=30, nproc=8), guard=False)
    assert out.passed, out
    assert 1 <= int(out.stdout) < 8
    _assert_no_box_left()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _wait_until(condition, limit: float = 10.0) -> bool:
    """Poll for an event (a process gone); `limit` only bounds a failing test."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _assert_no_box_left():
    """Every process of the box is gone (own-uid levels: nothing runs as a box uid any more)."""
    if OWN_UID:
        assert _wait_until(lambda: isolation.box_processes() == []), isolation.box_processes()


def test_process_group_is_killed_at_the_end():
    """Level plain, guard off: a child left waiting in the program's process group is killed
    with the group when the program ends."""
    out = run_python("import os, signal\npid = os.fork()\nif pid == 0:\n    signal.pause()\nprint(pid)\n",
                     FAST, guard=False, mode="plain")
    assert out.passed, out
    assert _wait_until(lambda: _gone(int(out.stdout)))


@needs_nproc
def test_real_fork_bomb_without_the_guard_is_bounded_and_cleaned_up():
    """Only once the kernel limit is shown to hold (the probe above, repeated here)."""
    probe = run(FORK_8, Limits(timeout=30, nproc=8), guard=False)
    assert probe.passed and int(probe.stdout) < 8, "RLIMIT_NPROC does not hold: refusing to run a fork bomb"
    out = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
              Limits(timeout=2, cpu_seconds=2, nproc=8), guard=False)
    assert not out.passed and out.reason in ("timeout", "cpu time limit")
    _assert_no_box_left()


@needs_uid
def test_processes_left_behind_die_with_the_sandbox():
    """Guard off: children that detach (new session, double fork) and wait forever are gone once
    the check returns (PID namespace / process group)."""
    prog = ("import os, signal\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        signal.pause()\n"
            "    signal.pause()\n")
    out = run(prog, guard=False)
    assert out.passed, out
    _assert_no_box_left()


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("how", [
    "open({t!r}, 'w').write('x')",
    "import pathlib\npathlib.Path({t!r}).write_text('x')",
    "import os\nfd = os.open({t!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
    "import os\nos.symlink({t!r}, 'link')\nopen('link', 'w').write('x')",
    "import os\nos.chdir({d!r})\nopen('outside.txt', 'w').write('x')",
    "import shutil\nopen('a', 'w').write('x')\nshutil.copyfile('a', {t!r})",
    "import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.open('outside.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
    "import sqlite3\nsqlite3.connect({t!r}).execute('create table t (x)')",
])
def test_write_outside_the_temp_dir_does_not_happen(tmp_path, how):
    target = tmp_path / "outside.txt"
    out = run(how.format(t=str(target), d=str(tmp_path)) + "\n")
    # refused by the Python hooks, or by the kernel first (the folder does not exist in the box)
    assert not out.passed and (out.reason.startswith("blocked:") or out.reason == "FileNotFoundError"), out
    assert not target.exists()


def test_delete_rename_chmod_outside_do_not_happen(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    folder = tmp_path / "folder"
    folder.mkdir()
    for prog in (f"import os\nos.remove({str(victim)!r})\n", f"import shutil\nshutil.rmtree({str(folder)!r})\n",
                 f"import os\nos.rename({str(victim)!r}, 'stolen')\n", f"import os\nos.chmod({str(victim)!r}, 0)\n",
                 f"import os\nos.truncate({str(victim)!r}, 0)\n"):
        out = run(prog)
        assert not out.passed and out.reason.startswith("blocked:"), (prog, out)
    assert victim.read_text() == "precious" and folder.is_dir()
    assert victim.stat().st_mode & 0o777 != 0


def test_reading_the_users_files_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    out = run(f"print(open({str(secret)!r}).read())\n")
    assert not out.passed and out.reason == "blocked: open" and "token" not in out.stdout
    out = run(f"import os\nprint(os.listdir({str(tmp_path)!r}))\n")
    assert not out.passed and out.reason == "blocked: os.listdir"


@needs_ns
def test_kernel_keeps_the_host_out_without_the_guard(tmp_path):
    """Guard off: the box has its own /tmp (this folder is not there) and, as root, an
    unprivileged uid: it can neither write here nor read a 0600 file of root."""
    target, secret = tmp_path / "outside.txt", tmp_path / "secret.txt"
    secret.write_text("token")
    secret.chmod(0o600)
    out = run(f"open({str(target)!r}, 'w').write('x')\n", guard=False)
    assert not out.passed and out.reason in ("FileNotFoundError", "PermissionError")
    out = run(f"print(open({str(secret)!r}).read())\n", guard=False)
    assert not out.passed and out.reason in ("FileNotFoundError", "PermissionError") and "token" not in out.stdout
    out = run("import os\nprint(sorted(os.listdir('/tmp')))\n", guard=False)
    assert out.passed and tmp_path.name not in out.stdout
    assert not target.exists() and secret.read_text() == "token"


@needs_ns
@pytest.mark.parametrize("folder, limit_mb", [("/tmp", Limits().tmp_mb), ("/dev/shm", 1)])
def test_private_tmpfs_is_bounded(folder, limit_mb):
    """Guard off: files in the box's own /tmp and /dev/shm (memory) stop at their size (ENOSPC)."""
    prog = (f"n = 0\ntry:\n    while n < 1000:\n        open(f'{folder}/f{{n}}', 'wb').write(b'x' * 2 ** 20)\n"
            "        n += 1\nexcept OSError as e:\n    assert e.errno == 28, e\nprint(n)\n")
    out = run(prog, Limits(timeout=60, fsize_mb=2), guard=False)
    assert out.passed, out
    assert int(out.stdout) <= limit_mb


@needs_uid
def test_kernel_refuses_root_files_to_the_box_uid():
    """Guard off, root: /etc/shadow (0600 or 0640 root) is not readable by the box's uid."""
    out = run("print(open('/etc/shadow').read())\n", guard=False)
    assert not out.passed and out.reason in ("PermissionError", "FileNotFoundError") and "root:" not in out.stdout


# ---------------------------------------------------------------- network
@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    yield srv
    srv.close()


def _connected(srv) -> bool:
    """Whether a connection is queued (one made during the run is there by now)."""
    try:
        srv.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def test_network_is_refused(listener):
    port = listener.getsockname()[1]
    out = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n")
    assert not out.passed and out.reason.startswith("blocked: socket."), out
    assert not _connected(listener)


@needs_ns
def test_no_network_without_the_guard_either(listener):
    port = listener.getsockname()[1]
    out = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n",
              guard=False)
    assert not out.passed and out.reason in ("OSError", "ConnectionRefusedError"), out
    assert not _connected(listener)


# ---------------------------------------------------------------- many at once
def test_run_many_keeps_order_and_isolates_failures():
    progs = ["assert True\n", "import time\ntime.sleep(10 ** 6)\n", "assert False\n", "print(1)\n"]
    outs = run_many(progs, Limits(timeout=2), workers=4)
    assert [o.reason for o in outs] == ["passed", "timeout", "AssertionError", "passed"]


def test_forced_mode_is_validated():
    with pytest.raises(ValueError, match="sandbox mode"):
        run_python("pass\n", FAST, mode="nope")
    out = run_python("pass\n", FAST, mode="plain")  # always available
    assert out.passed and out.mode == "plain"



def test_a_weak_level_is_announced(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_mode", None)
    monkeypatch.setenv(sandbox.MODE_ENV, "plain")
    with caplog.at_level(logging.WARNING, logger="specexp"):
        assert isolation_mode() == "plain"
    assert "SANDBOX WARNING" in caplog.text and "'plain'" in caplog.text
    monkeypatch.setenv(sandbox.MODE_ENV, "nope")
    monkeypatch.setattr(sandbox, "_mode", None)
    with pytest.raises(ValueError, match=sandbox.MODE_ENV):
        isolation_mode()


# ---------------------------------------------------------------- checks: a trusted judge, plain data
ADD = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(a=-1, b=1) == 0\n"


@pytest.mark.parametrize("completion, reason", [
    ("    return a + b\n", "passed"),
    ("    return a - b\n", "AssertionError"),
    ("", "AssertionError"),  # the prompt's bare function returns None
    ("    raise ZeroDivisionError('no')\n", "ZeroDivisionError"),  # the candidate's exception, rebuilt
    ("    return (\n", "SyntaxError"),
    ("    return a + b\nraise ValueError('top level')\n", "ValueError"),  # the program's own code ran first
    ("    return a + b\nimport sys\nsys.exit(0)\n", "SystemExit"),
    ("    import os\n    os._exit(0)\n", "no result"),
    ("    import os\n    os.system('true')\n    return a + b\n", "blocked: os.system"),
])
def test_check_verdicts(completion, reason):
    out = run_check(ADD, completion, ADD_TEST, "add", FAST)
    assert (out.passed, out.reason) == (reason == "passed", reason), out


def test_check_sees_plain_data_only():
    """Values cross as literals: types kept (tuple, set, frozenset, dict, bytes, complex, None,
    bool, -0.0, inf, nan); an object of the program's own class does not cross at all."""
    prompt = "def f(x):\n    pass\n"
    body = ("    import math\n    return ((1, 2), {3}, frozenset({4}), set(), {'k': [b'\\x00', None, True]}, 1+2j, -0.0,"
            " math.inf, -math.inf, math.nan, x)\n")
    test = ("import math\ndef check(candidate):\n    r = candidate([1, (2, 3)])\n"
            "    assert r[:10] == ((1, 2), {3}, frozenset({4}), set(), {'k': [b'\\x00', None, True]}, 1+2j, -0.0,"
            " math.inf, -math.inf, r[9])\n"
            "    assert type(r[0]) is tuple and type(r[3]) is set and math.isnan(r[9])\n"
            "    assert math.copysign(1, r[6]) == -1 and r[10] == [1, (2, 3)]\n")
    out = run_check(prompt, body, test, "f", FAST)
    assert out.passed, out
    class_body = "    class Box:\n        pass\n    return Box()\n"
    out = run_check(prompt, class_body, "def check(c):\n    c(1)\n", "f", FAST)
    assert not out.passed and out.reason == "TypeError" and "not plain data" in out.detail


def test_literal_parser_accepts_data_and_nothing_else():
    from specexp.tasks.sandbox.child import literal, plain

    assert literal("(1, -2.5, 'a', b'b', None, True, [inf, -inf], {1: set()}, frozenset({2}), (1-2j))") == (
        1, -2.5, "a", b"b", None, True, [float("inf"), float("-inf")], {1: set()}, frozenset({2}), 1 - 2j)
    for bad in ("__import__('os')", "x", "(lambda: 1)()", "[1][0]", "{**a}", "set([1], x=2)", "...", "1 + 2"):
        with pytest.raises((ValueError, SyntaxError)):
            literal(bad)
    assert plain(True) is True and type(plain(True)) is bool

    class Sub(int):
        def __eq__(self, other):
            return True
    assert type(plain(Sub(3))) is int and plain(Sub(3)) == 3 and plain(Sub(3)) != 4


def test_check_many_keeps_order():
    checks = [Check(ADD, "    return a + b\n", ADD_TEST, "add"), Check(ADD, "    return 0\n", ADD_TEST, "add"),
              Check(ADD, "    import time\n    time.sleep(10 ** 6)\n", ADD_TEST, "add")]
    outs = check_many(checks, Limits(timeout=2), workers=3)
    assert [o.reason for o in outs] == ["passed", "AssertionError", "timeout"]


def test_a_refused_call_fails_the_check_even_when_caught():
    body = "    import os\n    try:\n        os.system('true')\n    except Exception:\n        pass\n    return a + b\n"
    out = run_check(ADD, body, ADD_TEST, "add", FAST)
    assert not out.passed and out.reason == "blocked: os.system"


def test_a_missing_entry_point_is_a_name_error():
    out = run_check(ADD, "    return a + b\nadd = 3\n", ADD_TEST, "add", FAST)
    assert not out.passed and out.reason == "NameError"
