import os
import time

from rl_lm.tools.calls import format_call, parse_calls, run_calls
from rl_lm.tools.sandbox import Limits, make_python_tool, run_python

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
