"""A Python sandbox tool: code runs in a separate, limited, short-lived process.

What it does: the code runs in a fresh `sys.executable -I` process (no
site-packages of the user, no PYTHON* environment variables) whose cwd,
HOME and TMPDIR are a new temporary directory, removed afterwards; CPU time,
address space, file size and (for non-root users) process count are capped
with `resource.setrlimit`; stdout and stderr are capped; a wall-clock timeout
kills the whole process group, grandchildren included; the environment
carries no proxy variables and `socket.socket` raises inside the child.

What it is not: a security boundary. The child runs as the same user with the
same filesystem view, so code may read or write any file that user can (as
root, anything), may re-import the real socket implementation through ctypes
or spawn a shell that has network access, may escape the process group with
`os.setsid()`, and as root ignores the process-count limit. It keeps a model's
honest mistakes (an infinite loop, a memory bomb, a flood of output, a stray
file) from hurting the run; for untrusted code use a container or a VM
(gVisor, Firecracker, nsjail) around it.

The limits are set by a bootstrap in the child before the user's code runs,
not in `preexec_fn`: `preexec_fn` is documented as unsafe when the parent has
threads, and `run_calls` runs tools from a thread pool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, NamedTuple

_BOOTSTRAP = """
import json, resource, runpy, socket, sys, _socket
limits = json.loads(sys.argv[1])
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
class _Blocked:
    def __init__(self, *args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
socket.socket = _socket.socket = socket.SocketType = _Blocked
socket.create_connection = _Blocked
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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


def _rlimits(limits: Limits) -> dict[str, int]:
    out = {
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_CORE": 0,
    }
    if os.geteuid() != 0:  # the count is per user, so leave room for the user's other processes
        mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
        out["RLIMIT_NPROC"] = mine + limits.processes
    return out


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, limits: Limits = DEFAULT_LIMITS) -> SandboxResult:
    """Run `code` as a script in a fresh sandboxed process and return what it printed."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rl_lm_sandbox_")
    try:
        with open(os.path.join(workdir, "main.py"), "w") as f:
            f.write(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        argv = [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(_rlimits(limits)), "main.py"]
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
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
        stdout, cut_out = out.text()
        stderr, cut_err = err.text()
        returncode = None if timed_out else proc.returncode
        seconds = time.monotonic() - start
        return SandboxResult(stdout, stderr, returncode, timed_out, cut_out or cut_err, seconds)
    finally:
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
