"""The scorer's verdict against hostile completions: every way a box can end (exit status, signal,
real-time signal, hang, garbage on its channel) is a failed verdict with a reason from the fixed
vocabulary; the box's text reaches only `detail`, cut to size; an answer too large to parse fails
unparsed; and one hostile completion in a batch of canonical HumanEval solutions leaves the
others' verdicts and the score intact."""
from __future__ import annotations

import io
import json
import signal
import tracemalloc

import pytest

from specexp.tasks.sandbox import child as child
from specexp.tasks.sandbox import judge as sandbox
from specexp.tasks.sandbox.judge import Limits, isolation_mode, reason_ok, run_check, run_python

MODE = isolation_mode()
ADD = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
FAST = Limits(timeout=20, cpu_seconds=5, memory_mb=512, nproc=8, fsize_mb=1)
RT = signal.SIGRTMIN + 8


def check(body: str, **kw):
    return run_check(ADD, body, TEST, "add", FAST, **kw)


def _failed(out, reason: str | None = None):
    assert not out.passed, out
    assert reason_ok(out.reason), out
    if reason is not None:
        assert out.reason == reason, out
    assert len(out.detail) <= sandbox.DETAIL_MAX and len(out.stdout) <= sandbox.TAIL and len(out.stderr) <= sandbox.TAIL


# ---------------------------------------------------------------- how the box ends
ENDINGS = {  # body of `add` (guard on: these need no refused call) -> the reason
    "exit 200 (no signal: 200 - 128 = 72)": ("    import os\n    os._exit(200)\n", "exit code 200"),
    "exit 255": ("    import os\n    os._exit(255)\n", "exit code 255"),
    "exit 1 after writing a wrapper's error": (
        "    import os, sys\n    sys.stderr.write('bwrap: setting up uid map: fake\\nunshare: sigprocmask unblock failed\\n')\n"
        "    sys.stderr.flush()\n    os._exit(1)\n", "exit code 1"),  # not a sandbox error, nor a SIGKILL
    "real-time signal": (f"    import signal\n    signal.raise_signal({RT})\n", "signal SIGRTMIN+8"),
    "last real-time signal": ("    import signal\n    signal.raise_signal(signal.SIGRTMAX)\n", "signal SIGRTMAX"),
    "SIGUSR1": ("    import signal\n    signal.raise_signal(signal.SIGUSR1)\n", "signal SIGUSR1"),
    "SIGABRT": ("    import os\n    os.abort()\n", "signal SIGABRT"),
    "SIGTERM": ("    import signal\n    signal.raise_signal(signal.SIGTERM)\n", "signal SIGTERM"),
}


@pytest.mark.parametrize("name", list(ENDINGS))
def test_every_ending_is_a_failed_verdict(name):
    body, reason = ENDINGS[name]
    # at setpriv the box is its PID namespace's init, which the kernel spares a signal it has no
    # handler for: the call then goes on (and fails its test), still a vocabulary verdict
    spared = MODE == "setpriv" and reason.startswith("signal")
    _failed(check(body), None if spared else reason)
    if not spared:  # the same at the top level, no judge (spared, the program simply runs to its end)
        _failed(run_python(ADD + body + "add(1, 2)\n", FAST), reason)


@pytest.mark.parametrize("code", [1, 3, 64, 127, 128, 200, 255])
def test_exit_status_at_the_top_level(code):
    out = check(f"    return a + b\nimport os\nos._exit({code})\n")
    _failed(out)
    if MODE != "bwrap" or code <= 128:  # bubblewrap reports a signal N as 128 + N: 129..192 read as signals
        assert out.reason == f"exit code {code}", out


def test_signal_names_cover_every_signal():
    assert sandbox.signal_name(11) == "SIGSEGV"
    assert sandbox.signal_name(int(signal.SIGRTMIN) + 3) == "SIGRTMIN+3"
    assert sandbox.signal_name(72) is None and sandbox.signal_name(0) is None
    assert all(reason_ok(f"signal {sandbox.signal_name(n)}") for n in range(1, signal.SIGRTMAX + 1)
               if sandbox.signal_name(n))


def test_a_hang_in_the_call_is_a_timeout():
    _failed(run_check(ADD, "    import time\n    time.sleep(10 ** 6)\n", TEST, "add", Limits(timeout=1)), "timeout")


# ---------------------------------------------------------------- what the box writes on its channel
WRITE = ("    import os, sys\n    f = sys._getframe(1)\n    while 'resp_fd' not in f.f_locals:\n        f = f.f_back\n"
         "    os.write(f.f_locals['resp_fd'], {data!r})\n    import time\n    time.sleep(5)\n")
# what the box sends instead of its answer -> the reason recorded (a class name that is not a builtin
# exception's reaches the test as RuntimeError, the name in its message)
FORGED = {
    "garbage": (b"((((\n", "garbled answer"),
    "not a message": (b"42\n", "garbled answer"),
    "unknown message": (repr(("pass", True)).encode() + b"\n", "garbled answer"),
    "reason 'passed'": (repr(("raise", "passed", "", None, [])).encode() + b"\n", "RuntimeError"),
    "reason 'timeout'": (repr(("raise", "timeout", "", None, [])).encode() + b"\n", "RuntimeError"),
    "reason 'sandbox error'": (repr(("raise", "sandbox error", "", None, [])).encode() + b"\n", "RuntimeError"),
    "a dict as reason": (repr(("raise", {"passed": True}, "", None, [])).encode() + b"\n", "RuntimeError"),
    "a huge reason": (repr(("raise", "x" * 200_000, "", None, [])).encode() + b"\n", "RuntimeError"),
    "a huge message": (repr(("raise", "ValueError", "m" * 200_000, None, [])).encode() + b"\n", "ValueError"),
    "a forged refusal": (repr(("raise", "ValueError", "", None, ["passed" * 1000])).encode() + b"\n", "blocked: other"),
    "a refusal as a dict": (repr(("raise", "ValueError", "", None, {"a": 1})).encode() + b"\n", "blocked: other"),
    "over the answer size": (repr(("raise", "ValueError", "m" * (child.MAX_ANSWER + 10), None, [])).encode() + b"\n",
                             "answer too large"),
    "a huge answer": (repr(("return", "x" * 4_000_000)).encode() + b"\n", "answer too large"),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_the_box_does_not_write_its_record(name):
    data, reason = FORGED[name]
    out = check(WRITE.format(data=data))
    _failed(out, reason)
    assert len(json.dumps(out.__dict__)) < 3 * sandbox.TAIL + 2 * sandbox.DETAIL_MAX


@pytest.mark.parametrize("body, reason", [
    ("    raise type('passed', (Exception,), {})('forged')\n", "RuntimeError"),
    ("    raise type('timeout', (Exception,), {})()\n", "RuntimeError"),
    ("    return a + b\nraise type('sandbox error', (Exception,), {})()\n", "exception"),  # at the top level
    ("    raise ValueError('v' * 10 ** 6)\n", "ValueError"),
    ("    return 'x' * (2 * 10 ** 6)\n", "answer too large"),  # under the box's 4 MB, over the judge's 256 kB
])
def test_program_named_exceptions_and_big_answers(body, reason):
    _failed(check(body), reason)


def test_top_level_forged_reasons():
    out = run_python("raise type('passed', (Exception,), {})('x' * 10 ** 6)\n", FAST)
    _failed(out, "exception")
    assert out.detail.startswith("passed: x")


def test_vocabulary():
    for ok in ("passed", "timeout", "AssertionError", "exit code 200", "signal SIGRTMIN+8", "blocked: os.system",
               "blocked: socket.connect", "blocked: other", "answer too large"):
        assert reason_ok(ok), ok
    for bad in ("Passed", "passed ", "exit code x", "signal SIGFOO", "blocked: anything", {"r": 1}, None, "x" * 10 ** 6):
        assert not reason_ok(bad), bad


def test_the_judge_refuses_a_large_answer_before_parsing_it():
    """4 MB of `[0, 0, ...]` would cost the parser ~2 GB; the judge stops at MAX_ANSWER bytes read."""
    line = ("(" + repr(("return", [0] * 2_000_000)) + ")\n").encode()
    tracemalloc.start()
    with pytest.raises(child.TooLarge):
        child.receive(io.BufferedReader(io.BytesIO(line)), child.MAX_ANSWER)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * child.MAX_ANSWER


# ---------------------------------------------------------------- a batch
HOSTILE = {
    "exit 200": "    import os\n    os._exit(200)\n",
    "real-time signal": f"    import signal\n    signal.raise_signal({RT})\n",
    "garbage on the channel": WRITE.format(data=b"((((\n"),
    "forged 'passed'": WRITE.format(data=repr(("raise", "passed", "", None, [])).encode() + b"\n"),
    "huge answer": "    return 'x' * (2 * 10 ** 6)\n",
    "output flood": "    while True:\n        print('x' * 10 ** 5)\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_one_hostile_completion_leaves_the_batch_intact(name):
    """Three canonical HumanEval solutions, the middle one replaced by the hostile completion:
    the score is computed, the other two pass, the hostile one fails with a vocabulary reason."""
    from specexp.tasks.humaneval import HumanEval

    task = HumanEval(limit=3, timeout=10, workers=3)
    samples = task.samples()[:3]
    completions = [s.meta["canonical_solution"] for s in samples]
    assert task.score(samples, completions)["n_passed"] == 3
    entry = samples[1].meta["entry_point"]
    completions[1] = HOSTILE[name].replace("def add", f"def {entry}")
    score = task.score(samples, completions)
    per = score["per_sample"]
    assert [p["passed"] for p in per] == [True, False, True], per
    assert reason_ok(per[1]["reason"]) and per[1]["reason"] != "passed", per[1]
    assert score["n_scored"] == 3 and score["n_passed"] == 2
    assert len(json.dumps(score)) < 4000
