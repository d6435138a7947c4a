"""A Python sandbox tool: code runs in a separate, limited, short-lived process.

Every run gets a fresh `sys.executable -I` process (no user site-packages, no
PYTHON* variables) whose cwd, HOME and TMPDIR are a new temporary directory,
removed afterwards. A bootstrap in that child, before the user's code runs,
sets up the following; each layer the kernel or container refuses is skipped,
listed in `SandboxResult.missing` and logged once as a warning, never fatal.

Isolated (where the OS allows):

- Filesystem writes: a private mount namespace (`unshare(CLONE_NEWNS)`, the
  tree made `MS_PRIVATE` so nothing propagates back) in which every mount is
  made read-only at once (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`,
  Linux 5.12+), then the temporary directory is bind-mounted writable and
  `/dev/shm` is a fresh size-capped tmpfs. Writing anywhere else fails with
  EROFS; `/dev/null` and other device files still work.
- Network: a new network namespace (`CLONE_NEWNET`) with no interface up, so
  `connect` fails even through a subprocess or a re-imported `_socket`; on top
  `socket.socket` raises a clear "network access is disabled" in the child.
- Process count: `RLIMIT_NPROC`, which binds only for a non-root real uid.
  Run as root, the child drops to a uid/gid of its own (1000000 and up, one
  per run, which no account normally uses), owner of the temporary directory,
  after the mounts; a directory closed to others on the way to the
  interpreter (e.g. `/root` for `/root/.pyenv`) is covered by a tmpfs that
  shows only the interpreter's tree, so the rest of it is hidden too. A fork
  bomb then hits the cap, and with its own uid the code cannot signal or trace
  anyone else's processes. Not root, the child first enters a user namespace
  (`CLONE_NEWUSER`, setgroups denied, its uid and gid mapped to themselves,
  not to root) to be allowed the mount and network namespaces, and drops the
  capabilities it got there (`capset`) before the user's code runs, so the
  read-only mounts cannot be undone. Either way `PR_SET_NO_NEW_PRIVS` keeps
  setuid binaries from granting any privilege back.
- Resources: CPU time, address space and file size rlimits; stdout and stderr
  capped; a wall-clock timeout kills the whole process group; no proxy
  variables in the environment.

Not isolated: reads (the code sees every file its uid may read: as root the
world-readable part of the system, otherwise all of the user's files); PIDs
(no PID namespace: it sees other processes in /proc and, not run as root, may
signal the user's other processes, the trainer included); a grandchild that
calls `os.setsid()` escapes the group kill and may live on (sleeping costs no
CPU time), though still inside its namespaces and under the process cap; the
kernel's attack surface (no seccomp filter). For hostile code put a VM or
gVisor around it.

The setup runs in the child's bootstrap, not in `preexec_fn`: `preexec_fn` is
unsafe when the parent has threads (`run_calls` runs tools from a thread pool),
and `unshare(CLONE_NEWUSER)` needs a single-threaded process. Python 3.11 has
no `os.unshare`, so it calls libc through ctypes.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, NamedTuple

log = logging.getLogger(__name__)


def _bootstrap() -> None:
    """The child's setup; run as `python -I -c <this source> CONFIG STATUS_FD main.py`."""
    import _socket
    import ctypes
    import json
    import os
    import resource
    import runpy
    import socket
    import stat
    import sys

    cfg, status_fd, workdir = json.loads(sys.argv[1]), int(sys.argv[2]), os.getcwd()
    libc = ctypes.CDLL(None, use_errno=True)
    missing = []
    newns, newnet, newuser = 0x20000, 0x40000000, 0x10000000
    rdonly, nosuid, nodev, bind, rec, private = 1, 2, 4, 4096, 16384, 1 << 18

    def check(ret, what):
        if ret != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(src, dst, fstype, flags, data=None):
        args = [None if x is None else os.fsencode(x) for x in (src, dst, fstype, data)]
        check(libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]), "mount")

    def mount_setattr(path, set_=0, clear=0, recursive=False):
        attr = (ctypes.c_uint64 * 4)(set_, clear, 0, 0)
        flags = 0x8000 if recursive else 0  # AT_RECURSIVE
        long = ctypes.c_long
        ret = libc.syscall(long(442), long(-100), os.fsencode(path), long(flags), attr, long(32))
        check(ret, "mount_setattr")

    def searchable(path):  # every directory on the way, itself included, open to "others"
        parts = path.strip("/").split("/")
        dirs = ["/" + "/".join(parts[:i]) for i in range(len(parts) + 1)]
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in dirs if os.path.isdir(d))

    def expose(paths):  # cover each closed directory with a tmpfs showing only what's needed
        need = {}
        for path in paths:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/" + "/".join(parts[:i])
                if not os.stat(d).st_mode & stat.S_IXOTH:
                    need.setdefault(d, set()).add(parts[i])
        for d in sorted(need, key=lambda d: d.count("/")):
            fds = {c: os.open(os.path.join(d, c), os.O_PATH) for c in need[d]}
            mount("tmpfs", d, "tmpfs", nosuid | nodev, "mode=755,size=64k")
            for child, fd in fds.items():
                target = os.path.join(d, child)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.mkdir(target)
                else:
                    open(target, "x").close()
                mount(f"/proc/self/fd/{fd}", target, None, bind | rec)
                os.close(fd)

    root = os.geteuid() == 0
    if not root:
        uid, gid = os.geteuid(), os.getegid()
        try:
            check(libc.unshare(newuser), "unshare(CLONE_NEWUSER)")
            maps = [
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ]
            for name, text in maps:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError as e:
            missing.append(f"user namespace ({e})")
    needed = [sys.executable, sys.prefix, sys.base_prefix, os.path.dirname(os.__file__), workdir]
    needed = sorted({p for path in needed for p in (os.path.abspath(path), os.path.realpath(path))})
    try:
        check(libc.unshare(newns), "unshare(CLONE_NEWNS)")
        mount(None, "/", None, rec | private)
        if root:
            expose(needed)
        mount_setattr("/", set_=rdonly, recursive=True)
        mount(workdir, workdir, None, bind)
        mount_setattr(workdir, set_=nosuid | nodev, clear=rdonly)
        try:
            size = cfg["shm_bytes"]
            mount("tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, f"size={size},mode=1777")
        except OSError:
            pass
    except OSError as e:
        missing.append(f"filesystem: writes outside the temporary directory are allowed ({e})")
    os.chdir(workdir)  # the old cwd may be the read-only mount beneath the bind
    try:
        check(libc.unshare(newnet), "unshare(CLONE_NEWNET)")
    except OSError as e:
        missing.append(f"network: only socket.socket is blocked ({e})")
    own = [workdir, os.path.join(workdir, "main.py")]
    home = os.path.realpath(workdir)
    reach = [p for p in needed if os.path.realpath(p) != home] + [os.path.dirname(home)]
    if root and all(map(searchable, reach)):
        try:
            for path in own:
                os.chown(path, cfg["uid"], cfg["uid"])
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        except OSError as e:
            for path in own:
                os.chown(path, 0, 0)
            missing.append(f"processes: running as root, no process cap ({e})")
    elif root:
        missing.append("processes: running as root, no process cap (interpreter not reachable)")
    libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    # Drop every capability left (a user namespace's, or root's where the uid stayed 0); with
    # PR_SET_NO_NEW_PRIVS no exec gets them back, so the read-only mounts stay.
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        missing.append("filesystem: capabilities kept, the read-only mounts could be undone")
    limits = dict(cfg["rlimits"])
    if os.getuid() != 0:  # the count is per user, so leave room for the user's other processes
        mine = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                mine += os.stat(f"/proc/{pid}").st_uid == os.getuid()
            except OSError:
                pass
        limits["RLIMIT_NPROC"] = mine + cfg["processes"]
    for name, value in limits.items():
        kind = getattr(resource, name)
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))
    os.write(status_fd, json.dumps(missing).encode())
    os.close(status_fd)

    class _Blocked:
        def __init__(self, *args, **kwargs):
            raise OSError("network access is disabled in the sandbox")

    socket.socket = _socket.socket = socket.SocketType = _Blocked
    socket.create_connection = _Blocked
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")


class Limits(NamedTuple):
    """The sandbox's limits; seconds are wall clock, cpu_seconds CPU time."""

    seconds: float = 5.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20
    file_bytes: int = 16 * 2**20
    processes: int = 64
    output_bytes: int = 8192


DEFAULT_LIMITS = Limits()


class SandboxResult(NamedTuple):
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    truncated: bool
    seconds: float
    missing: tuple[str, ...] = ()  # isolation layers the OS refused (see the module docstring)


_BOOTSTRAP = inspect.getsource(_bootstrap) + "\n_bootstrap()\n"
_UID_BASE = 1_000_000  # run as root, the child becomes _UID_BASE + a per-run number
_runs = itertools.count()
_warned: set[tuple[str, ...]] = set()


class _Capped:
    """Drains a pipe, keeping its first and last `limit // 2` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int):
        self.head, self.tail, self.total, self.limit = bytearray(), bytearray(), 0, limit
        self.thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self.thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        half = self.limit // 2
        for chunk in iter(lambda: pipe.read1(65536), b""):
            self.total += len(chunk)
            room = half - len(self.head)
            self.head += chunk[:room]
            self.tail += chunk[max(room, 0) :]
            del self.tail[: max(len(self.tail) - (self.limit - half), 0)]
        pipe.close()

    def text(self) -> tuple[str, bool]:
        self.thread.join(timeout=1.0)
        head = self.head.decode(errors="replace")
        if self.total <= self.limit:
            return head + self.tail.decode(errors="replace"), False
        cut = self.total - len(self.head) - len(self.tail)
        tail = self.tail.decode(errors="replace")
        return f"{head}\n[... {cut} bytes cut ...]\n{tail}", True


def _config(limits: Limits, uid: int) -> str:
    rlimits = {
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_CORE": 0,
    }
    cfg = {"rlimits": rlimits, "processes": limits.processes, "uid": uid}
    return json.dumps(cfg | {"shm_bytes": limits.file_bytes})


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_status(fd: int) -> tuple[str, ...]:
    """The bootstrap's list of missing layers (closes `fd`); unknown (killed before) is empty."""
    try:  # written in one piece before the user's code ran, so a poll suffices (never blocks)
        data = os.read(fd, 65536) if select.select([fd], [], [], 0)[0] else b""
    finally:
        os.close(fd)
    try:
        missing = tuple(json.loads(data)) if data else ()
    except ValueError:
        return ()
    if missing and missing not in _warned:
        _warned.add(missing)
        log.warning("sandbox isolation incomplete: %s", "; ".join(missing))
    return missing


def run_python(code: str, limits: Limits = DEFAULT_LIMITS) -> SandboxResult:
    """Run `code` as a script in a fresh sandboxed process and return what it printed."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rl_lm_sandbox_")
    uid = _UID_BASE + (os.getpid() % 1000) * 1000 + next(_runs) % 1000
    status_r, status_w = os.pipe()
    try:
        with open(os.path.join(workdir, "main.py"), "w") as f:
            f.write(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        config = _config(limits, uid)
        argv = [sys.executable, "-I", "-c", _BOOTSTRAP, config, str(status_w), "main.py"]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(status_w,),
            )
        finally:
            os.close(status_w)
        out = _Capped(proc.stdout, limits.output_bytes)
        err = _Capped(proc.stderr, limits.output_bytes)
        timed_out = False
        try:
            proc.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Kill the group either way: a grandchild may outlive its parent and hold the pipes.
        _killpg(proc.pid)
        proc.wait()
        missing = _read_status(status_r)
        status_r = -1
        stdout, cut_out = out.text()
        stderr, cut_err = err.text()
        returncode = None if timed_out else proc.returncode
        seconds = time.monotonic() - start
        cut = cut_out or cut_err
        return SandboxResult(stdout, stderr, returncode, timed_out, cut, seconds, missing)
    finally:
        if status_r >= 0:
            os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)


def format_result(result: SandboxResult, seconds: float) -> str:
    """The observation text of a sandbox run."""
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append("stderr:\n" + result.stderr.rstrip("\n"))
    if result.timed_out:
        parts.append(f"error: timed out after {seconds:g} s")
    elif result.returncode:
        parts.append(f"error: exit status {result.returncode}")
    return "\n".join(parts) if parts else "(no output)"


def make_python_tool(limits: Limits = DEFAULT_LIMITS):
    """A `python(code)` tool that runs code in the sandbox under `limits`."""

    def python(code: str) -> str:
        """Run a Python script in a sandbox and return what it prints.

        Args:
            code: The script; print the values you need, nothing is returned implicitly.
        """
        return format_result(run_python(code, limits), limits.seconds)

    return python
