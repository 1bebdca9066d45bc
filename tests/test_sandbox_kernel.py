"""The sandbox's kernel layer with the Python guard switched off (`guard=False`), so that what
holds is the kernel's: the syscall filter (fallocate, memfd_create, the keyring calls, io_uring,
other ABIs), a fresh session keyring, pipes instead of host files for the box's output; and the
isolation level itself: bubblewrap works with an interpreter under /tmp, and a level below the
best one this machine offers is announced and recorded; memory as a whole: a box's processes
together stay within its memory cgroup, or the rlimits bound is announced and recorded."""
from __future__ import annotations

import ast
import ctypes
import logging
import os
import platform
import secrets
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from specexp.tasks.sandbox import child as child
from specexp.tasks.sandbox import isolation
from specexp.tasks.sandbox import judge as sandbox
from specexp.tasks.sandbox.judge import Limits, isolation_mode, run_python

MODE = isolation_mode()
LEVELS = list(dict.fromkeys([MODE, "plain"]))  # the filter is the box's own: every level has it
FAST = Limits(timeout=30, cpu_seconds=5, memory_mb=512, nproc=8, fsize_mb=1)
FILTERED = sys.platform.startswith("linux") and platform.machine() in child.SECCOMP_ARCH
needs_filter = pytest.mark.skipif(not FILTERED, reason=f"no seccomp table for {platform.machine()}")
NR = child.SECCOMP_ARCH.get(platform.machine(), (0, {}))[1]

PRELUDE = ("import ctypes, errno, os, stat\nlibc = ctypes.CDLL(None, use_errno=True)\nL = ctypes.c_long\n"
           f"NR = {NR!r}\n"
           "def call(name, *args):\n"
           "    r = libc.syscall(L(NR[name]), *args)\n"
           "    return (r, ctypes.get_errno()) if r == -1 else (r, 0)\n")


def box(code: str, mode: str):
    out = run_python(PRELUDE + code, FAST, guard=False, mode=mode)
    assert out.passed, out
    return out.stdout


@needs_filter
@pytest.mark.parametrize("mode", LEVELS)
def test_memfd_create_is_refused(mode):
    """memfd_create + fallocate held 640 MB outside the address-space limit."""
    stdout = box("try:\n    os.memfd_create('x')\n    print('made')\nexcept OSError as e:\n    print(e.errno)\n"
                 "print(call('memfd_secret', L(0))[1])\n", mode)
    assert stdout.split() == [str(child.EPERM)] * 2


@needs_filter
@pytest.mark.parametrize("mode", LEVELS)
def test_fallocate_reserves_nothing(mode):
    """FALLOC_FL_KEEP_SIZE reserved 512 MB of the host's /tmp through the inherited stdout: the box's
    stdout and stderr are pipes now, and fallocate answers EOPNOTSUPP on any descriptor (glibc's
    posix_fallocate then writes, bounded by RLIMIT_FSIZE)."""
    stdout = box("print(stat.S_ISFIFO(os.fstat(1).st_mode), stat.S_ISFIFO(os.fstat(2).st_mode))\n"
                 "fd = os.open('f', os.O_CREAT | os.O_RDWR)\n"
                 "for target in (1, 2, fd):\n"
                 "    r = libc.fallocate(target, 1, L(0), L(512 << 20))\n"  # FALLOC_FL_KEEP_SIZE
                 "    print(r, ctypes.get_errno())\n"
                 "try:\n    os.posix_fallocate(fd, 0, 512 << 20)\nexcept OSError as e:\n    print('emulated', e.errno)\n"
                 "print(os.stat('f').st_blocks * 512 <= 2 << 20)\n", mode)
    lines = stdout.splitlines()
    assert lines[0] == "True True"
    assert lines[1:4] == [f"-1 {child.EOPNOTSUPP}"] * 3
    assert lines[4].split()[0] == "emulated" and lines[5] == "True"


@needs_filter
@pytest.mark.parametrize("mode", LEVELS)
def test_no_key_crosses_boxes_and_the_scorers_keys_stay_out(mode):
    """This process adds a key to its session keyring; a box can neither read it nor add keys of
    its own (so none can reach the next box), and (at the kernel levels) does not even see it."""
    libc = ctypes.CDLL(None, use_errno=True)
    desc = f"specexp-test-{secrets.token_hex(4)}".encode()
    key = libc.syscall(ctypes.c_long(NR["add_key"]), b"user", desc, b"token", ctypes.c_size_t(5), ctypes.c_long(-3))
    if key == -1:
        pytest.skip(f"this process cannot add a key (errno {ctypes.get_errno()})")
    try:
        stdout = box(f"print(call('add_key', b'user', b'box-key', b'x', L(1), L(-3))[1])\n"
                     f"print(call('add_key', b'user', b'box-key', b'x', L(1), L(-4))[1])\n"  # the uid's keyring
                     f"print(call('keyctl', L(11), L({key}), None, L(0))[1])\n"  # KEYCTL_READ
                     "print(call('request_key', b'user', b'box-key', None, L(0))[1])\n"
                     "try:\n    print(open('/proc/keys').read())\nexcept OSError:\n    pass\n", mode)
        lines = stdout.splitlines()
        assert lines[:4] == [str(child.EPERM)] * 4
        if mode in sandbox.STRONG:
            assert desc.decode() not in stdout
        assert "box-key" not in stdout
    finally:
        libc.syscall(ctypes.c_long(NR["keyctl"]), ctypes.c_long(3), ctypes.c_long(key))  # KEYCTL_REVOKE


@needs_filter
@pytest.mark.parametrize("mode", LEVELS)
def test_io_uring_and_other_abis_are_refused(mode):
    """io_uring runs fallocate (and more) behind the filter's back; x32 numbers name other calls."""
    stdout = box("buf = ctypes.create_string_buffer(120)\nprint(call('io_uring_setup', L(4), buf)[1])\n"
                 + ("print(call_x32 := libc.syscall(L(0x40000000 | 39)), ctypes.get_errno())\n"
                    if platform.machine() == "x86_64" else "print(-1, 38)\n"), mode)
    assert stdout.split() == [str(child.EPERM), "-1", str(child.ENOSYS)]


def test_the_filter_program():
    """Decoded: an arch check, then one compare-and-return per refused call, then allow."""
    import struct

    for machine, (arch, numbers) in child.SECCOMP_ARCH.items():
        prog = [struct.unpack("=HBBI", chunk) for chunk in
                (lambda b: [b[i:i + 8] for i in range(0, len(b), 8)])(child.seccomp_program(machine))]
        assert prog[0] == (0x20, 0, 0, 4) and prog[1] == (0x15, 1, 0, arch) and prog[-1] == (0x06, 0, 0, 0x7FFF0000)
        compared = {k for code, _, _, k in prog if code == 0x15} - {arch}
        assert compared == set(numbers.values())
    assert child.seccomp_program("sparc") is None


# ---------------------------------------------------------------- the level: never lowered in silence
def _venv_under_tmp(tmp: Path) -> Path:
    """A virtual environment under /tmp whose python sees this project's packages (a .pth file)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(tmp)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(tmp), "platbase": str(tmp)})["purelib"])
    (site / "specexp-tests.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return tmp / "bin" / "python"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux isolation levels")
def test_an_interpreter_under_tmp_gets_the_best_level():
    """A venv under /tmp (as CI clones make) was hidden by the box's own /tmp: bubblewrap failed
    and the probe fell to setpriv without a word. Now it gets the best level, or a warning."""
    tmp = Path(f"/tmp/specexp-venv-{secrets.token_hex(4)}")
    try:
        python = _venv_under_tmp(tmp)
        code = ("import sys\nfrom specexp.tasks import sandbox, isolation\nassert sys.prefix.startswith('/tmp/')\n"
                "print(isolation.candidates()[0])\nprint(sandbox.isolation_mode())\nprint(sandbox.isolation_warning())\n")
        env = {k: v for k, v in os.environ.items() if k != sandbox.MODE_ENV}
        res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=300,
                             cwd=Path(__file__).parent.parent)
        assert res.returncode == 0, res.stderr
        best, mode, warning = res.stdout.splitlines()
        assert mode == best, res.stdout + res.stderr
        assert (warning == "None") == (mode in sandbox.STRONG), warning
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def test_a_fallback_below_the_best_level_is_announced_and_recorded(monkeypatch, caplog):
    """The Python installation made unbindable: every kernel level fails its trial run; the level
    that works is used, with a SANDBOX WARNING naming each level that failed and why."""
    monkeypatch.delenv(sandbox.MODE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_mode", None)  # both restored afterwards
    monkeypatch.setattr(sandbox, "_warning", None)
    monkeypatch.setattr(isolation, "_python_roots", lambda: ["/nonexistent-specexp-python"])
    best = isolation.candidates()
    with caplog.at_level(logging.WARNING, logger="specexp"):
        mode = isolation_mode()
    assert mode == "plain"
    warning = sandbox.isolation_warning()
    assert "SANDBOX WARNING" in caplog.text and warning in caplog.text
    for level in best[:-1]:
        assert f"{level!r} failed its trial run (sandbox error" in warning
    from specexp.tasks.base import Sample
    from specexp.tasks.humaneval import HumanEval

    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    sample = Sample("T/0", prompt, reference="def check(c):\n    assert c(2, 3) == 5\n",
                    meta={"entry_point": "add", "code_prompt": prompt})
    score = HumanEval(timeout=20).score([sample], ["    return a + b\n"])  # what metrics.json stores
    assert score["n_passed"] == 1 and score["sandbox_isolation"] == "plain" and score["sandbox_warning"] == warning


# ---------------------------------------------------------------- the host's file system, guard off
KERNEL_LEVELS = [m for m in sandbox.STRONG if m == MODE or m in isolation.candidates()]


@pytest.fixture
def world_open(tmp_path_factory):
    """A world-readable file and a world-writable folder outside every folder the old setpriv level
    hid (/tmp, /var/tmp, /dev/shm, /run, /root, /home): here under /var/cache or /srv."""
    for parent in ("/var/cache", "/srv"):
        if os.access(parent, os.W_OK):
            break
    else:
        pytest.skip("no writable folder outside the hidden ones")
    folder = Path(parent) / f"specexp-canary-{secrets.token_hex(4)}"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "readable.txt").write_text("WORLD-" + secrets.token_hex(4))
    (folder / "readable.txt").chmod(0o644)
    (folder / "pub").mkdir()
    (folder / "pub").chmod(0o777)
    yield folder
    assert sorted(p.name for p in (folder / "pub").iterdir()) == []
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.mark.parametrize("mode", KERNEL_LEVELS)
def test_world_open_host_paths_are_out_of_reach(world_open, mode):
    """At setpriv the box used to see the host's file system as an unprivileged user: a
    world-readable file was readable and a world-writable folder writable. Now its root holds
    only /usr, the Python installation, a few devices, /proc and its own /tmp."""
    secret = (world_open / "readable.txt").read_text()
    code = (f"import os\nfor p in ({str(world_open / 'readable.txt')!r}, '/etc/passwd', '/var/log', '/work', '/srv'):\n"
            "    try:\n        print(p, open(p).read()[:80] if os.path.isfile(p) else os.listdir(p))\n"
            "    except OSError as e:\n        print(p, type(e).__name__)\n"
            f"try:\n    open({str(world_open / 'pub' / 'planted')!r}, 'w').write('x')\n"
            "except OSError as e:\n    print('write', type(e).__name__)\nprint(sorted(os.listdir('/')))\n")
    out = run_python(code, FAST, guard=False, mode=mode)
    assert out.passed, out
    assert secret not in out.stdout and "root:" not in out.stdout
    lines = out.stdout.splitlines()
    assert all(line.endswith("FileNotFoundError") for line in lines[:3]), out.stdout
    assert lines[5] == "write FileNotFoundError"
    assert set(ast.literal_eval(lines[6])) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr",
                                   *(p.strip("/").split("/")[0] for p in isolation._python_roots())}


# ---------------------------------------------------------------- memory as a whole, guard off
CGROUP_VERSION, CGROUP_PARENT = sandbox.memory_cgroups()
needs_cgroup = pytest.mark.skipif(CGROUP_VERSION is None, reason=f"no memory cgroup can be made here: {CGROUP_PARENT}")
BOX_MB, CHILD_MB, CHILDREN = 256, 160, 10  # each child well below RLIMIT_AS (Python ~20 MB + 160), 1.6 GB together
FORKS = ("import os, time\n"
         "def child():\n"
         f"    held = b'x' * ({CHILD_MB} << 20)\n"  # written, so every page is really taken
         "    time.sleep(2)\n"
         "    os._exit(0)\n"
         "pids = []\n"
         "for _ in range({n}):\n"
         "    pid = os.fork()\n"
         "    if pid == 0:\n"
         "        child()\n"
         "    pids.append(pid)\n"
         "for pid in pids:\n"
         "    assert os.waitpid(pid, 0)[1] == 0\n")


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))


def _box_cgroups() -> list[str]:
    return [n for n in os.listdir(CGROUP_PARENT) if n.startswith(f"{isolation.CGROUP_PREFIX}{os.getpid()}-")]


@needs_cgroup
@pytest.mark.parametrize("mode", LEVELS)
def test_forked_processes_together_stay_within_the_box_memory(mode):
    """RLIMIT_AS bounds each process, not the box: ten forked children of 160 MB each (under a
    256 MB address-space limit) took 1.6 GB of the host. In a memory cgroup of 256 MB the kernel
    kills them ("memory"), the host loses at most the limit (plus slack for other processes),
    and the cgroup is gone afterwards. One child alone passes: each stays below RLIMIT_AS."""
    limits = Limits(timeout=60, cpu_seconds=30, memory_mb=BOX_MB, nproc=16, fsize_mb=1)
    one = run_python(FORKS.format(n=1), limits, guard=False, mode=mode)
    assert one.passed, one
    lowest, stop = [_mem_available()], threading.Event()

    def watch():
        while not stop.is_set():
            lowest.append(min(lowest[-1], _mem_available()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        many = run_python(FORKS.format(n=CHILDREN), limits, guard=False, mode=mode)
    finally:
        stop.set()
        watcher.join()
    assert not many.passed and many.reason == "memory", many
    assert many.memory == one.memory == f"cgroup v{CGROUP_VERSION} {BOX_MB} MB"
    assert lowest[0] - lowest[-1] < (BOX_MB + 384) << 20  # 1.6 GB without the cgroup
    assert _box_cgroups() == [] and isolation.box_processes() == []


def test_without_a_memory_cgroup_the_rlimits_bound_is_logged_once_and_recorded(monkeypatch, caplog):
    """Where no memory cgroup can be made (not root, a read-only cgroupfs), boxes still run, bounded
    by their rlimits; that is logged once and recorded per outcome and in the score."""
    monkeypatch.setattr(sandbox, "_cgroups", (None, "cgroupfs is read-only here"))  # restored afterwards
    monkeypatch.setattr(sandbox, "_cgroup_noted", False)
    with caplog.at_level(logging.WARNING, logger="specexp"):
        outs = [run_python("x = 1\n", FAST, guard=False) for _ in range(2)]
    assert all(o.passed and o.memory == "rlimits" for o in outs), outs
    assert caplog.text.count("no memory cgroup can be made here (cgroupfs is read-only here)") == 1
    assert sandbox.memory_bound(FAST) == "rlimits" and sandbox.memory_held(outs, FAST) == "rlimits"
    from specexp.tasks.base import Sample
    from specexp.tasks.humaneval import HumanEval

    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    sample = Sample("T/0", prompt, reference="def check(c):\n    assert c(2, 3) == 5\n",
                    meta={"entry_point": "add", "code_prompt": prompt})
    score = HumanEval(timeout=20).score([sample], ["    return a + b\n"])  # what metrics.json stores
    assert score["n_passed"] == 1 and score["sandbox_memory"] == "rlimits"


@needs_cgroup
def test_the_score_records_the_cgroup_bound():
    """metrics.json's quality.sandbox_memory names the cgroup and its limit (HumanEval's memory_mb)."""
    from specexp.tasks.base import Sample
    from specexp.tasks.humaneval import HumanEval

    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    sample = Sample("T/0", prompt, reference="def check(c):\n    assert c(2, 3) == 5\n",
                    meta={"entry_point": "add", "code_prompt": prompt})
    score = HumanEval(timeout=20, memory_mb=512).score([sample], ["    return a + b\n"])
    assert score["n_passed"] == 1 and score["sandbox_memory"] == f"cgroup v{CGROUP_VERSION} 512 MB"
    assert _box_cgroups() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux isolation levels")
@pytest.mark.parametrize("mode", isolation.candidates())
def test_an_interpreter_under_tmp_runs_in_every_kernel_level(mode):
    """The setpriv level's own root mounted the box's tmpfs /tmp after binding the Python
    installation, so a venv under /tmp (a CI clone there) was hidden: `failed to execute
    .../python3`. Every level runs a program from such an interpreter."""
    tmp = Path(f"/tmp/specexp-venv-{secrets.token_hex(4)}")
    try:
        python = _venv_under_tmp(tmp)
        code = ("import sys\nfrom specexp.tasks.sandbox.judge import run_python\nassert sys.prefix.startswith('/tmp/')\n"
                f"out = run_python('print(6 * 7)', mode={mode!r})\nprint(out.passed, out.stdout.strip(), out.detail)\n")
        res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).parent.parent)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[:2] == ["True", "42"], res.stdout
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
