import copy
import os
import re
import time

import pytest

from rl_lm.envs.tool_env import ToolEnv, render_results
from rl_lm.tools.calculator import calculator
from rl_lm.tools.calls import COMPACT, HERMES, format_call
from rl_lm.tools.sandbox import Limits, make_python_tool

ROW = {"prompt": "What is 12*34 + 5?", "answer": "413"}
_RESULT = {
    COMPACT: re.compile(r"<result>(.*?)</result>", re.DOTALL),
    HERMES: re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL),
}


def _outputs(observation: str, fmt: str) -> list[str]:
    return _RESULT[fmt].findall(observation)


def _counting_tool():
    runs = []

    def count(x: int) -> str:
        """Record a call.

        Args:
            x: Any number.
        """
        runs.append(x)
        return str(x)

    return count, runs


EXPECTED = {
    COMPACT: "<result>408</result><result>error: ZeroDivisionError: division by zero</result>",
    HERMES: (
        "<tool_response>\n408\n</tool_response>\n"
        "<tool_response>\nerror: ZeroDivisionError: division by zero\n</tool_response>"
    ),
}


@pytest.mark.parametrize("fmt", [COMPACT, HERMES])
def test_two_turn_calculator_episode(fmt):
    seen = []

    def score(row, state):
        seen.append(state)
        return {"correct": float(row["answer"] in state["transcript"].split("answer is")[-1])}

    env = ToolEnv({"calculator": calculator}, fmt=fmt, score=score)
    assert env.stop_strings == {COMPACT: ("</call>",), HERMES: ("</tool_call>",)}[fmt]
    prompt, state = env.reset(ROW)
    assert prompt == ROW["prompt"]
    first = "Let me compute. " + "".join(
        format_call("calculator", {"expression": e}, fmt) for e in ["12*34", "1/0"]
    )
    r1 = env.step(state, first)
    assert r1.observation == EXPECTED[fmt]
    assert not r1.done and r1.reward_terms == {} and seen == []
    assert r1.env_state["turns"] == 1 and r1.env_state["errors"] == 1
    answer = " So the answer is 408 + 5 = 413."
    r2 = env.step(r1.env_state, answer)
    assert r2.observation is None and r2.done
    final = r2.env_state
    assert seen == [final]
    assert final["transcript"] == first + EXPECTED[fmt] + answer
    assert final["obs_chars"] == len(EXPECTED[fmt])
    assert [c.arguments["expression"] for c in final["calls"]] == ["12*34", "1/0"]
    assert r2.reward_terms == {
        "correct": 1.0,
        "tool/turns": 2.0,
        "tool/calls": 2.0,
        "tool/call_errors": 1.0,
        "tool/tool_seconds": final["tool_seconds"],
        "tool/unanswered": 0.0,
    }


NAP = 0.05  # seconds


def test_tool_seconds_count_the_calls_time():
    def nap(x: int) -> str:
        """Sleep NAP seconds.

        Args:
            x: Any number.
        """
        time.sleep(NAP)
        return str(x)

    env = ToolEnv({"nap": nap})
    _, state = env.reset(ROW)
    r1 = env.step(state, "<call>nap(x=1)</call>")
    assert not r1.done and r1.env_state["tool_seconds"] >= NAP
    # Each call's own time adds up, though the two run in parallel threads.
    r2 = env.step(r1.env_state, "<call>nap(x=2)</call><call>nap(x=3)</call>")
    assert not r2.done and r2.env_state["tool_seconds"] >= r1.env_state["tool_seconds"] + 2 * NAP
    r3 = env.step(r2.env_state, "no calls")  # a turn without calls adds nothing
    assert r3.done and r3.env_state["tool_seconds"] == r2.env_state["tool_seconds"]
    assert r3.reward_terms["tool/tool_seconds"] == r2.env_state["tool_seconds"]


def test_answer_without_calls_ends_at_once():
    env = ToolEnv({"calculator": calculator})
    _, state = env.reset(ROW)
    result = env.step(state, "413")
    assert result.done and result.observation is None
    assert result.reward_terms["tool/turns"] == 1.0 and result.reward_terms["tool/calls"] == 0.0


def test_render_results_takes_plain_strings():
    assert render_results(["1", "2"], COMPACT) == "<result>1</result><result>2</result>"
    assert render_results(["a"], HERMES) == "<tool_response>\na\n</tool_response>"


def test_max_turns_leaves_the_last_calls_unanswered():
    count, runs = _counting_tool()
    env = ToolEnv({"count": count}, max_turns=2)
    _, state = env.reset(ROW)
    r1 = env.step(state, "<call>count(x=1)</call>")
    assert r1.observation == "<result>1</result>" and not r1.done
    r2 = env.step(r1.env_state, "<call>count(x=2)</call><call>count(x=3)</call>")
    assert r2.done and r2.observation is None and runs == [1]
    assert r2.reward_terms["tool/calls"] == 1.0 and r2.reward_terms["tool/unanswered"] == 2.0
    one = ToolEnv({"count": count}, max_turns=1)
    assert one.step(one.reset(ROW)[1], "<call>count(x=4)</call>").done and runs == [1]


def test_max_calls_per_turn():
    count, runs = _counting_tool()
    env = ToolEnv({"count": count}, max_calls_per_turn=2)
    _, state = env.reset(ROW)
    result = env.step(state, "".join(f"<call>count(x={i})</call>" for i in range(4)))
    outputs = _outputs(result.observation, COMPACT)
    assert outputs[:2] == ["0", "1"] and sorted(runs) == [0, 1]
    assert outputs[2:] == ["error: more than 2 calls in one turn; this call was not run"] * 2
    assert result.env_state["errors"] == 2 and len(result.env_state["calls"]) == 4


@pytest.mark.parametrize(
    "fmt, text, message",
    [
        (HERMES, '<tool_call>{"name": calculator}</tool_call>', "error: invalid JSON"),
        (COMPACT, '<call>shell(cmd="rm -rf /")</call>', "error: unknown tool 'shell'"),
        (COMPACT, "<call>calculator(expression=3)</call>", "must be string, got int"),
        (HERMES, format_call("calculator", {"expression": [1]}), "must be string, got list"),
        (COMPACT, '<call>calculator(expression="1+1")', "<call> is never closed"),
        (HERMES, '<tool_call>{"name": "calculator"', "<tool_call> is never closed"),
        (COMPACT, "<call>calculator(expression={[]: 1})</call>", "could not be parsed"),
        (HERMES, "<tool_call>" + "[" * 100_000 + "</tool_call>", "could not be parsed"),
        (HERMES, '<tool_call>{"a": ' + "1" * 5000 + "}</tool_call>", "could not be parsed"),
        (COMPACT, "<call>calculator(expression='1')\x00</call>", "null bytes"),
    ],
)
def test_bad_calls_are_error_observations(fmt, text, message):
    env = ToolEnv({"calculator": calculator}, fmt=fmt)
    _, state = env.reset(ROW)
    result = env.step(state, text)
    [output] = _outputs(result.observation, fmt)
    assert output.startswith("error") and message in output
    assert not result.done and result.env_state["errors"] == 1
    assert env.step(result.env_state, "413").done  # the env is still alive


QUICK = Limits(seconds=1.5, cpu_seconds=2, output_bytes=4000)
MAX_OUTPUT = 1000


def _python(code: str, limits: Limits = QUICK) -> str:
    """The output of one sandbox call made through a ToolEnv (which stays alive)."""
    env = ToolEnv({"python": make_python_tool(limits)}, max_output=MAX_OUTPUT, timeout=10.0)
    _, state = env.reset(ROW)
    result = env.step(state, format_call("python", {"code": code}, COMPACT))
    [output] = _outputs(result.observation, COMPACT)
    assert not result.done and env.step(result.env_state, "413").done
    return output


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.parametrize(
    "code, message",
    [
        ("while True: pass", "error: timed out after 1.5 s"),
        ("x = bytearray(10 * 2**30)", "MemoryError"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "network access is disabled"),
    ],
)
def test_hostile_python_is_an_error_observation(code, message):
    output = _python(code)
    assert message in output and output.splitlines()[-1].startswith("error")


def test_forked_processes_are_killed():
    code = "import os, time\nfor _ in range(5):\n    os.fork()\nprint(os.getpid(), flush=True)\n"
    pids = [int(p) for p in _python(code + "time.sleep(60)\n").splitlines()[:-1]]
    assert len(pids) == 32
    deadline = time.monotonic() + 2.0
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, pids))


@pytest.mark.skipif(
    os.geteuid() == 0 and make_python_tool()("import os\nprint(os.getuid())") == "0",
    reason="the sandbox runs as root here, and as root RLIMIT_NPROC does not hold a fork bomb",
)
def test_fork_bomb_is_an_error_observation():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert _python(code).splitlines()[-1].startswith("error")


def test_write_outside_the_sandbox_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    output = _python(f"open({str(target)!r}, 'w').write('x')")
    assert not target.exists() and output.splitlines()[-1].startswith("error")


def test_huge_output_is_truncated():
    output = _python("print('x' * 10**8)", QUICK._replace(seconds=8.0, cpu_seconds=8))
    assert "characters cut" in output
    assert len(output) <= MAX_OUTPUT + len("\n[... 1000000000 characters cut ...]\n")


def test_step_does_not_mutate_its_state():
    env = ToolEnv({"calculator": calculator}, max_turns=3, score=lambda row, state: {})
    _, state = env.reset(ROW)
    for text in ["<call>calculator(expression='1+1')</call>", "<call>bad</call>", "413"]:
        before = copy.deepcopy(state)
        result = env.step(state, text)
        assert state == before and result.env_state is not state
        assert result.env_state["calls"] is not state["calls"]
        state = result.env_state
    assert result.done and state["turns"] == 3


def undocumented(x):
    return x


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fmt": "xml"}, "unknown fmt 'xml'"),
        ({"max_turns": 0}, "max_turns must be >= 1"),
        ({"max_calls_per_turn": 0}, "max_calls_per_turn must be >= 1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"max_output": 0}, "max_output must be >= 1"),
        ({"score": "exact"}, "score must be a function"),
        ({"tools": {"calculator": 3}}, "tool 'calculator' is not callable"),
        ({"tools": {"u": undocumented}}, "tool 'u' has no usable schema"),
        ({"tools": [calculator]}, "tools must be a mapping"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    kwargs = {"tools": {"calculator": calculator}, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        ToolEnv(**kwargs)


def test_finish_runs_no_call_and_counts_it_unanswered():
    """The sampler's budget ended the episode on a turn with a call: nothing runs."""
    ran = []

    def calculator(expression: str) -> str:
        """Evaluates an expression.

        Args:
            expression: the expression.
        """
        ran.append(expression)
        return "1"

    env = ToolEnv({"calculator": calculator})
    _, state = env.reset({"prompt": "p"})
    end = env.finish(state, "<call>calculator(expression='1+1')</call>")
    assert end.done and end.observation is None and ran == []
    assert end.reward_terms["tool/unanswered"] == 1.0 and end.reward_terms["tool/calls"] == 0.0
    assert end.reward_terms["tool/turns"] == 1.0
    assert env.finish(state, "").reward_terms["tool/turns"] == 0.0
