import threading
import time

import pytest

from rl_lm.tools.calculator import calculator
from rl_lm.tools.calls import (
    COMPACT,
    HERMES,
    ToolCall,
    format_call,
    parse_calls,
    run_calls,
    truncate_middle,
)


def echo(text: str, times: int = 1) -> str:
    """Repeat a text.

    Args:
        text: What to repeat.
        times: How often.
    """
    return text * times


def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "done"


def broken(x: int) -> str:
    """Fail.

    Args:
        x: Anything.
    """
    raise RuntimeError("tool bug")


def undocumented(x):
    return x


TOOLS = {
    "calculator": calculator,
    "echo": echo,
    "slow": slow,
    "broken": broken,
    "undocumented": undocumented,
}


def test_hermes_several_calls():
    text = (
        'thinking <tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}'
        '</tool_call> and <tool_call>\n{"name": "echo", "arguments": {"text": "a", "times": 2}}\n'
        "</tool_call>"
    )
    assert parse_calls(text) == [
        ToolCall("calculator", {"expression": "2*3"}, '{"name": "calculator", '
                 '"arguments": {"expression": "2*3"}}'),
        ToolCall("echo", {"text": "a", "times": 2},
                 '\n{"name": "echo", "arguments": {"text": "a", "times": 2}}\n'),
    ]  # fmt: skip


def test_compact_calls():
    text = "<call>calculator(expression='12*34')</call> x <call>echo(text=\"hi\", times=3)</call>"
    calls = parse_calls(text, COMPACT)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculator", {"expression": "12*34"}, None),
        ("echo", {"text": "hi", "times": 3}, None),
    ]


@pytest.mark.parametrize("fmt", [HERMES, COMPACT])
def test_format_call_round_trips(fmt):
    text = format_call("echo", {"text": "a b", "times": 2}, fmt)
    [call] = parse_calls(text, fmt)
    assert (call.name, call.arguments, call.error) == ("echo", {"text": "a b", "times": 2}, None)


@pytest.mark.parametrize(
    "text, fmt, error",
    [
        ("<tool_call>{name: calculator}</tool_call>", HERMES, "invalid JSON"),
        ('<tool_call>["calculator"]</tool_call>', HERMES, 'string "name"'),
        ('<tool_call>{"name": "echo", "arguments": 3}</tool_call>', HERMES, "must be an object"),
        ('<tool_call>{"name": "echo", "arguments": {}}', HERMES, "never closed"),
        ("<call>echo('a')</call>", COMPACT, "must be named"),
        ("<call>echo(text=x)</call>", COMPACT, "not a literal"),
        ("<call>echo(text=</call>", COMPACT, "not a call"),
        ("<call>1 + 2</call>", COMPACT, "expected name"),
    ],
)
def test_malformed_calls_are_errors_not_exceptions(text, fmt, error):
    [call] = parse_calls(text, fmt)
    assert error in call.error
    [result] = run_calls(TOOLS, [call])
    assert not result.ok and result.output.startswith("error: ")


DEEP = 100_000
CRASH = "call could not be parsed"


@pytest.mark.parametrize(
    "text, fmt, error",
    [
        ("<call>echo(text={[]: 1})</call>", COMPACT, f"{CRASH}: argument text: unhashable type"),
        ("<call>echo(text={{1}})</call>", COMPACT, f"{CRASH}: argument text: unhashable type"),
        ("<call>echo(text='a', text='b')</call>", COMPACT, "argument text is given twice"),
        ("<call>echo(text='a', times=1, times=2)</call>", COMPACT, "argument times is given twice"),
        (f"<call>echo(text={'[' * DEEP}{']' * DEEP})</call>", COMPACT, "not a call"),
        (f"<call>echo(text={'-' * DEEP}1)</call>", COMPACT, f"{CRASH}: nested too deeply"),
        (f"<call>echo(text={'-' * 5000}1)</call>", COMPACT, f"{CRASH}: nested too deeply"),
        (f"<call>echo(text={'1+' * DEEP}1)</call>", COMPACT, f"{CRASH}: nested too deeply"),
        (f"<call>echo(text={'1' * 5000})</call>", COMPACT, "not a call: Exceeds the limit"),
        ("<call>echo(text=1)\x00</call>", COMPACT, "not a call"),
        (f"<tool_call>{'[' * DEEP}</tool_call>", HERMES, f"{CRASH}: JSON nested too deeply"),
        (f"<tool_call>{'[' * DEEP}{']' * DEEP}</tool_call>", HERMES, "JSON nested too deeply"),
        (
            f'<tool_call>{{"name": "echo", "arguments": {{"times": {"9" * 5000}}}}}</tool_call>',
            HERMES,
            f"{CRASH}: Exceeds the limit (4300 digits)",
        ),
        (
            f'<tool_call>{{"name": "echo", "arguments": "{"[" * DEEP}"}}</tool_call>',
            HERMES,
            '"arguments" must be an object',
        ),
    ],
    ids=lambda v: v if v in (HERMES, COMPACT) or len(v) < 40 else f"{v[:30]}...({len(v)})",
)
def test_hostile_text_is_an_error_never_an_exception(text, fmt, error):
    [call] = parse_calls(text, fmt)
    assert call.error is not None and error in call.error
    assert "set_int_max_str_digits" not in call.error
    [result] = run_calls(TOOLS, [call])
    assert not result.ok and result.output == f"error: {call.error}"


def test_parser_crash_is_caught(monkeypatch):
    import rl_lm.tools.calls as calls

    def boom(body):
        raise KeyError(body)

    monkeypatch.setattr(calls, "_parse_compact", boom)
    [call] = parse_calls("<call>echo(text='a')</call>", COMPACT)
    assert call.error == f"{CRASH}: KeyError" and call.name is None


def test_no_calls():
    assert parse_calls("just an answer: 42") == []
    assert run_calls(TOOLS, []) == []


@pytest.mark.parametrize(
    "call, message",
    [
        (ToolCall("nope", {}, ""), "unknown tool 'nope'"),
        (ToolCall("echo", {"txt": "a"}, ""), "unknown argument(s) txt"),
        (ToolCall("echo", {"times": 2}, ""), "missing argument(s) text"),
        (ToolCall("echo", {"text": 3}, ""), "argument text must be string, got int"),
        (ToolCall("echo", {"text": "a", "times": True}, ""), "must be integer, got bool"),
        (ToolCall("broken", {"x": 1}, ""), "broken raised RuntimeError: tool bug"),
        (ToolCall("undocumented", {"x": 1}, ""), "undocumented: ValueError"),
    ],
)
def test_bad_calls_become_error_observations(call, message):
    [result] = run_calls(TOOLS, [call])
    assert not result.ok
    assert message in result.output


def test_parallel_with_timeout_and_order():
    calls = [
        ToolCall("slow", {"seconds": 0.3}, ""),
        ToolCall("slow", {"seconds": 0.3}, ""),
        ToolCall("slow", {"seconds": 5.0}, ""),
        ToolCall("calculator", {"expression": "6*7"}, ""),
    ]
    start = time.monotonic()
    results = run_calls(TOOLS, calls, timeout=1.0)
    elapsed = time.monotonic() - start
    assert [r.output for r in results] == ["done", "done", "error: slow timed out after 1 s", "42"]
    assert [r.ok for r in results] == [True, True, False, True]
    assert elapsed < 3.0  # the two 0.3 s calls ran side by side, the 5 s one was cut off
    assert threading.active_count() < 10


def test_long_output_is_middle_truncated():
    [result] = run_calls(TOOLS, [ToolCall("echo", {"text": "ab", "times": 500}, "")], max_output=20)
    assert result.output.startswith("ababababab\n[... 980 characters cut ...]\n")
    assert result.output.endswith("ababababab")


def test_truncate_middle():
    assert truncate_middle("short", 10) == "short"
    assert truncate_middle("0123456789abcdef", 6) == "012\n[... 10 characters cut ...]\ndef"
