import json
import os
import shutil
import socket
import tempfile
import time

import pytest

from rl_lm.tools.calls import format_call, parse_calls, run_calls
from rl_lm.tools.sandbox import Limits, _read_status, format_result, make_python_tool, run_python

QUICK = Limits(seconds=1.5, cpu_seconds=2, memory_bytes=256 * 2**20, output_bytes=1000)


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_normal_output():
    result = run_python("import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)", QUICK)
    assert (result.stdout, result.stderr, result.returncode) == ("42\n", "warn\n", 0)
    assert not result.timed_out and not result.truncated


def test_exception_is_reported():
    tool = make_python_tool(QUICK)
    out = tool("raise ValueError('boom')")
    assert "ValueError: boom" in out and out.endswith("error: exit status 1")


def test_infinite_loop_killed_with_its_grandchild():
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "while True:\n    pass\n"
    )
    start = time.monotonic()
    result = run_python(code, Limits(seconds=1.0, cpu_seconds=5))
    assert time.monotonic() - start < 4.0
    assert result.timed_out and result.returncode is None
    grandchild = int(result.stdout)
    deadline = time.monotonic() + 2.0
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_cpu_limit_ends_a_busy_loop():
    result = run_python("while True:\n    pass\n", Limits(seconds=5.0, cpu_seconds=1))
    assert not result.timed_out and result.returncode != 0


def test_memory_bomb_fails_cleanly():
    result = run_python("x = bytearray(10 * 2**30)\nprint('allocated')", QUICK)
    assert result.returncode == 1 and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


def test_huge_output_truncated():
    result = run_python("print('x' * 10**8)", Limits(seconds=5.0, output_bytes=1000))
    assert result.truncated and result.returncode == 0
    assert len(result.stdout) < 1100
    assert "bytes cut" in result.stdout


def test_socket_connect_fails():
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=0.5)\n"
        "except OSError as e:\n    print('blocked:', e)\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "except OSError as e:\n    print('blocked:', e)\n"
    )
    result = run_python(code, QUICK)
    assert result.stdout.count("blocked: network access is disabled") == 2


def test_no_proxy_in_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:1")
    result = run_python("import os\nprint(sorted(k for k in os.environ if 'proxy' in k.lower()))")
    assert result.stdout == "[]\n"


def test_files_land_in_a_temporary_directory_that_is_removed():
    code = "import os\nopen('out.txt', 'w').write('hi')\nprint(os.path.abspath('out.txt'))"
    result = run_python(code, QUICK)
    path = result.stdout.strip()
    assert os.path.basename(os.path.dirname(path)).startswith("rl_lm_sandbox_")
    assert not os.path.exists(os.path.dirname(path))


def test_hostile_calls_end_as_observations():
    tools = {"python": make_python_tool(Limits(seconds=1.0, output_bytes=200))}
    text = "".join(
        format_call("python", {"code": code})
        for code in ["while True: pass", "print('y' * 10**6)", "x = bytearray(10**11)"]
    )
    results = run_calls(tools, parse_calls(text), timeout=5.0)
    assert results[0].output.endswith("error: timed out after 1 s")
    assert "bytes cut" in results[1].output
    assert "MemoryError" in results[2].output and "exit status 1" in results[2].output


# Isolation (see the sandbox's docstring); each test skips where its layer is unavailable here.

_PROBE: list[tuple[str, ...]] = []


def _require(layer: str) -> None:
    if not _PROBE:
        _PROBE.append(run_python("pass", QUICK).missing)
    for reason in _PROBE[0]:
        if reason.startswith(layer):
            pytest.skip(f"not isolated on this machine: {reason}")


_ESCAPES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for flags in (32 | 4096, 32):  # MS_REMOUNT | MS_BIND, MS_REMOUNT: try to make / writable again
    print("remount", libc.mount(None, b"/", None, ctypes.c_ulong(flags), None))
try:
    with open(sys.argv[1], "w") as f:
        f.write("escaped")
except OSError as e:
    print("refused", e.strerror)
"""


@pytest.fixture
def world_writable_dir():
    """A directory outside the sandbox that any user may write, so only the mounts stop it."""
    path = tempfile.mkdtemp(prefix="rl_lm_test_outside_")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("where", ["tmp_path", "world_writable"])
def test_write_outside_the_temporary_directory_fails(where, tmp_path, world_writable_dir):
    _require("filesystem")
    target = os.path.join(str(tmp_path) if where == "tmp_path" else world_writable_dir, "x.txt")
    code = f"import sys\nsys.argv[1:] = [{target!r}]\n" + _ESCAPES
    result = run_python(code, QUICK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("remount -1") == 2
    assert "refused" in result.stdout and not os.path.exists(target)
    if where == "world_writable":
        assert "refused Read-only file system" in result.stdout


def test_the_temporary_directory_and_devices_stay_writable():
    code = (
        "import os, tempfile\n"
        "fd, path = tempfile.mkstemp()\n"
        "os.write(fd, b'ok'); os.close(fd)\n"
        "open(os.path.join(os.environ['HOME'], 'h.txt'), 'w').write('ok')\n"
        "open('/dev/null', 'w').write('gone')\n"
        "os.path.isdir('/dev/shm') and open('/dev/shm/s', 'w').write('ok')\n"
        "print(open(path).read(), path.startswith(os.getcwd()), os.path.exists('h.txt'))\n"
    )
    result = run_python(code, QUICK)
    assert (result.stdout, result.stderr, result.returncode) == ("ok True True\n", "", 0)


def test_no_network_even_past_the_socket_patch():
    _require("network")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    code = (  # a fresh interpreter has the real socket module
        "import subprocess, sys\n"
        f"c = 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2)'\n"
        "p = subprocess.run([sys.executable, '-c', c], capture_output=True, text=True)\n"
        "print(p.returncode, p.stderr.strip().splitlines()[-1])\n"
    )
    try:
        result = run_python(code, QUICK._replace(seconds=5.0))
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.stdout.startswith("1 OSError: [Errno 101] Network is unreachable"), result


def _group(pgid: int) -> list[int]:
    """The live processes in process group `pgid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def test_fork_bomb_ends_as_an_error_with_nothing_left():
    _require("processes")
    code = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    os.fork()\n"
    limits = Limits(seconds=2.0, cpu_seconds=2, processes=16, output_bytes=1000)
    result = run_python(code, limits)
    assert result.timed_out or result.returncode != 0
    assert format_result(result, limits.seconds).splitlines()[-1].startswith("error: ")
    pgid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 3.0
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group(pgid) == []


def test_missing_layers_are_warned_once(caplog):
    for _ in range(2):
        r, w = os.pipe()
        os.write(w, json.dumps(["network: only socket.socket is blocked (test)"]).encode())
        os.close(w)
        assert _read_status(r) == ("network: only socket.socket is blocked (test)",)
    assert [m for m in caplog.messages if "(test)" in m] == [
        "sandbox isolation incomplete: network: only socket.socket is blocked (test)"
    ]
    r, w = os.pipe()
    os.close(w)
    assert _read_status(r) == ()
