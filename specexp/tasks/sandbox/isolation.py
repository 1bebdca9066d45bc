"""The sandbox's first layer, the kernel (specexp/tasks/sandbox/judge.py says what each level isolates):
the command lines that start a box at each isolation level (bubblewrap, unshare + setpriv,
unprivileged user namespaces, plain), the unused uids boxes run as, and the live processes left
under those uids, and the memory cgroup each box runs in where one can be made (MemoryCgroup).
Which level a process uses is decided by sandbox.isolation_mode (a trial run)."""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import sys
import sysconfig
import time

_UID_BASE = 0x50000  # boxes run as uids from here (as root): unused by real accounts
HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/root", "/home")  # fresh tmpfs at level userns


def _python_roots() -> list[str]:
    """The folders the interpreter needs (its prefixes, stdlib and site-packages; not the
    script's folder in sys.path), outermost only, /usr left out (bound whole)."""
    found = set()
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values()):
        real = os.path.realpath(p) if p else ""
        if os.path.isdir(real) and real not in ("/", "/usr") and not real.startswith("/usr/"):
            found.add(real)
    roots = sorted(found)
    return [r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r)]


_uid_counter = itertools.count()


def box_uids() -> range:
    """The unused uids this process's boxes run as (as root): 64 slots, apart from other
    processes' (by pid)."""
    first = _UID_BASE + (os.getpid() % 4096) * 64
    return range(first, first + 64)


def box_processes() -> list[int]:
    """Live processes (zombies are dead) running as one of this process's box uids: none once
    every check has returned."""
    uids, out = box_uids(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid in uids:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                        out.append(int(pid))
        except (OSError, IndexError):
            pass
    return out


def box_uid() -> int:
    """An unused uid for one box: distinct across the concurrent boxes of this process (nobody
    when this container maps no such uid)."""
    uid = box_uids()[next(_uid_counter) % 64]
    try:
        with open("/proc/self/uid_map") as f:
            if not any(int(a) <= uid < int(a) + int(n) for a, _, n in (line.split() for line in f)):
                return 65534
    except (OSError, ValueError):
        pass
    return uid


def _prepare(roots: list[str], box: str, uid: int | None, tmp_mb: int) -> list[str]:
    """Shell lines run as (namespace) root in a new mount namespace: fresh tmpfs over the folders
    others can write or that hold users' files, the Python installation bound back read-only
    (through descriptors opened before the tmpfs hides it), and the box's own folder."""
    if len(roots) > 7:
        raise OSError(f"the Python installation spans {len(roots)} folders; the sandbox binds at most 7")
    lines = ["set -e"] + [f"exec {3 + i}< {shlex.quote(r)}" for i, r in enumerate(roots)]
    for d in HIDDEN:
        if os.path.isdir(d) and not os.path.islink(d):
            size = tmp_mb if d == "/tmp" else 1
            lines.append(f"mount -t tmpfs -o mode={'1777' if 'tmp' in d or 'shm' in d else '0755'},size={size}m "
                         f"specexp {d}")
    for i, r in enumerate(roots):
        q = shlex.quote(r)
        lines.append(f"mkdir -p {q} && mount --no-canonicalize --bind /proc/self/fd/{3 + i} {q} && "
                     f"mount -o remount,bind,ro {q} && exec {3 + i}<&-")
    lines.append(f"mkdir -m 0700 {shlex.quote(box)}")
    if uid is not None:
        lines.append(f"chown {uid}:{uid} {shlex.quote(box)}")
    return lines


DEVICES = ("null", "zero", "full", "random", "urandom")  # the device nodes a box gets (bound from the host's)


def _new_root(roots: list[str], box: str, uid: int, tmp_mb: int) -> list[str]:
    """Shell lines run as (namespace) root in new mount and PID namespaces (level setpriv): a new
    root on a small tmpfs holding only what the box needs, as bubblewrap builds it: read-only
    binds of /usr (and /bin, /lib... or their symlinks) and the Python installation (through
    descriptors opened before anything is hidden), the five harmless devices, a tmpfs /dev/shm, a
    /proc of the box's PID namespace, a tmpfs /tmp holding the box's folder; then pivot_root, the
    old root detached, and the new one made read-only. Nothing else of the host is reachable."""
    if len(roots) > 7:
        raise OSError(f"the Python installation spans {len(roots)} folders; the sandbox binds at most 7")
    q = shlex.quote
    lines = ["set -e"] + [f"exec {3 + i}< {q(r)}" for i, r in enumerate(roots)]
    lines += ["mount -t tmpfs -o mode=0755,size=1m specexp-root /tmp", "cd /tmp",
              "mkdir usr && mount --bind /usr usr && mount -o remount,bind,ro usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            lines.append(f"ln -s {q(os.readlink(top))} {q(top[1:])}")
        elif os.path.isdir(top):
            lines.append(f"mkdir {q(top[1:])} && mount --bind {q(top)} {q(top[1:])} && "
                         f"mount -o remount,bind,ro {q(top[1:])}")
    # the box's tmpfs /tmp before the Python installation's binds: an interpreter that lives under
    # /tmp (a venv in a clone there) is bound on top of it, not hidden by it
    lines += ["mkdir -p dev/shm proc tmp .old", f"mount -t tmpfs -o mode=1777,size={tmp_mb}m specexp tmp"]
    for i, r in enumerate(roots):
        lines.append(f"mkdir -p {q('.' + r)} && mount --no-canonicalize --bind /proc/self/fd/{3 + i} {q('.' + r)} && "
                     f"mount -o remount,bind,ro {q('.' + r)} && exec {3 + i}<&-")
    lines += [f"touch dev/{d} && mount --bind /dev/{d} dev/{d}" for d in DEVICES if os.path.exists(f"/dev/{d}")]
    lines += ["ln -s /proc/self/fd dev/fd", "ln -s /proc/self/fd/0 dev/stdin", "ln -s /proc/self/fd/1 dev/stdout",
              "ln -s /proc/self/fd/2 dev/stderr",
              "mount -t tmpfs -o mode=1777,size=1m specexp dev/shm",
              "mount -t proc -o nosuid,nodev,noexec proc proc",
              f"mkdir -m 0700 {q('.' + box)} && chown {uid}:{uid} {q('.' + box)}",
              f"{q(_pivot_root() or 'pivot_root')} . .old", "cd /", "umount -l /.old", "rmdir /.old",
              "mount -o remount,bind,ro /"]
    return lines


def _pivot_root() -> str | None:
    return shutil.which("pivot_root", path="/usr/sbin:/sbin:/usr/bin:/bin:" + os.environ.get("PATH", ""))


def _setpriv(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def _bwrap(roots: list[str], box: str, tmp_mb: int) -> list[str]:
    """Mounts in order: the fresh /dev, /proc and tmpfs first, then the read-only binds (so an
    interpreter that lives under /tmp or /dev/shm is bound on top of the box's tmpfs, not hidden
    by it), then the box's folder."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
           "--dev", "/dev", "--size", str(1 << 20), "--tmpfs", "/dev/shm", "--proc", "/proc",
           "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    for r in roots:
        cmd += ["--ro-bind", r, r]
    return cmd + ["--dir", box, "--chdir", box, "--"]


def command(mode: str, role_argv: list[str], box: str, uid: int | None, tmp_mb: int) -> list[str]:
    """The command line that runs `role_argv` (a python command) at isolation level `mode`, as
    `uid` (as root, the strong levels), in the box folder `box` with a `tmp_mb` MB private /tmp."""
    if mode == "plain":
        return role_argv
    roots, root = _python_roots(), os.geteuid() == 0
    if mode == "bwrap" and not root:
        return _bwrap(roots, box, tmp_mb) + role_argv
    if mode == "bwrap":
        inner = _setpriv(uid) + _bwrap(roots, box, tmp_mb) + role_argv
        ns = ["--mount"]
    elif mode == "setpriv":
        script = "\n".join(_new_root(roots, box, uid, tmp_mb) + ["exec " + shlex.join(_setpriv(uid) + role_argv)])
        return ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc",
                "--", "sh", "-c", script]
    else:  # userns
        inner = role_argv
        ns = ["--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
              "--mount-proc"]
    script = "\n".join(_prepare(roots, box, uid if mode != "userns" else None, tmp_mb)
                       + ["exec " + shlex.join(inner)])
    return ["unshare", *ns, "--", "sh", "-c", script]


def candidates() -> list[str]:
    """The isolation levels this machine may offer, strongest first (each still has to pass a trial run)."""
    root, have = os.geteuid() == 0, shutil.which
    out = []
    if have("bwrap") and (not root or (have("unshare") and have("setpriv"))):
        out.append("bwrap")
    if root and have("unshare") and have("setpriv") and _pivot_root():
        out.append("setpriv")
    if not root and have("unshare"):
        out.append("userns")
    return out + ["plain"]


# ---------------------------------------------------------------- memory as a whole: a cgroup per box
CGROUP_PREFIX = "specexp-"  # a box's cgroup is <parent>/specexp-<scorer pid>-<n>
_cgroup_counter = itertools.count()


def _own_cgroup(v2: bool) -> tuple[str | None, str]:
    """The folder of this process's cgroup in the memory hierarchy (v2: the unified one; v1: the
    one mounted with the memory controller), or (None, why not)."""
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError as e:
        return None, f"cannot read /proc/self ({e})"
    ours = (lambda h, ctl: h == "0" and ctl == "") if v2 else (lambda h, ctl: "memory" in ctl.split(","))
    path = next((p for h, ctl, p in groups if ours(h, ctl)), None)
    for m in mounts:
        tail = m[m.index("-") + 1:] if "-" in m else []  # fstype, source, super options
        wanted = tail[:1] == ["cgroup2"] if v2 else tail[:1] == ["cgroup"] and "memory" in tail[2].split(",")
        if not wanted:
            continue
        if path is None:
            return None, "this process is in no such cgroup"
        root = m[3]  # what of the hierarchy the mount shows (a container's own cgroup)
        rel = path[len(root):] if root != "/" and (path + "/").startswith(root + "/") else path
        folder = os.path.join(m[4], rel.lstrip("/"))
        return (folder, "") if os.path.isdir(folder) else (None, f"{folder} is not there")
    return None, "no cgroup2 mount" if v2 else "no cgroup v1 memory mount"


def memory_cgroup_parent() -> tuple[int | None, str]:
    """(version, folder) under which each box gets a memory cgroup of its own: cgroup v2 with the
    memory controller where it can be enabled for children of this process's cgroup, else cgroup
    v1's memory hierarchy; tried by making (and removing) one. (None, why not) where neither works
    (not root, a read-only cgroupfs, no memory controller)."""
    why = []
    for version in (2, 1):
        folder, reason = _own_cgroup(version == 2)
        try:
            if folder is None:
                raise OSError(reason)
            if version == 2:
                with open(os.path.join(folder, "cgroup.controllers")) as f:
                    if "memory" not in f.read().split():
                        raise OSError("no memory controller")
                with open(os.path.join(folder, "cgroup.subtree_control")) as f:
                    enabled = "memory" in f.read().split()
                if not enabled:  # refused (EBUSY) when this cgroup holds processes and is not the root
                    with open(os.path.join(folder, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory")
            _clear_stale(folder)
            MemoryCgroup(version, folder, 64 << 20).remove()
            return version, folder
        except OSError as e:
            why.append(f"cgroup v{version}: {e.strerror or e}")
    return None, "; ".join(why)


def _clear_stale(parent: str) -> None:
    """Remove the empty box cgroups that scorers no longer running left behind."""
    for name in os.listdir(parent):
        pid = name[len(CGROUP_PREFIX):].split("-")[0]
        if name.startswith(CGROUP_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class MemoryCgroup:
    """One box's memory cgroup, made with its limit on memory + swap (the box's processes, their
    tmpfs files and page cache together): the box's first process joins it before it execs
    anything (`wrap`), so everything it starts is in it; the kernel kills a process of it when the
    whole passes the limit (`oom_kills` counts them); `remove` kills what is left and removes it."""

    def __init__(self, version: int, parent: str, limit_bytes: int):
        self.version = version
        self.path = os.path.join(parent, f"{CGROUP_PREFIX}{os.getpid()}-{next(_cgroup_counter)}")
        os.mkdir(self.path, 0o755)
        try:
            if version == 2:
                self._write("memory.max", limit_bytes)
                self._write("memory.swap.max", 0, optional=True)  # no swap: memory.max is all it has
                self._write("memory.oom.group", 1, optional=True)  # an OOM kill takes the whole box
            else:  # memory first: memory + swap may not be set below it
                self._write("memory.limit_in_bytes", limit_bytes)
                self._write("memory.memsw.limit_in_bytes", limit_bytes, optional=True)
        except OSError:
            self.remove()
            raise

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        target = os.path.join(self.path, name)
        if optional and not os.path.exists(target):
            return
        with open(target, "w") as f:
            f.write(str(value))

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv`, run by a shell that first moves itself into this cgroup (as root, before any of the
        box's code runs; a failure stops it there, a sandbox error)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(self.path, "cgroup.procs"), *argv]

    def oom_kills(self) -> int:
        """Processes of the box the kernel killed for passing the limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, wait: float = 2.0) -> bool:
        """Kill what still runs in the cgroup (a process that left the box's process group), then
        remove it; False when it could not be removed within `wait` seconds."""
        deadline, pause = time.monotonic() + wait, 0.002
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
            self._kill_members()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _kill_members(self) -> None:
        kill = os.path.join(self.path, "cgroup.kill")  # v2 (Linux 5.14+): the kernel kills them all
        try:
            if os.path.exists(kill):
                with open(kill, "w") as f:
                    f.write("1")
                return
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            return
        for pid in pids:  # members a moment ago; box processes cannot leave the cgroup (no cgroupfs, not root)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
