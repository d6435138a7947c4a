"""Tool calls: parsed out of a model's text, run against a registry, turned into observations.

Two call formats:

- Hermes / Qwen, the chat templates' own: one JSON object per call,
  `<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>`.
- Compact, for the embedded byte-level models, whose few-hundred-token
  budgets cannot afford JSON: `<call>name(arg=value, ...)</call>`. Values are
  Python literals (numbers, quoted strings, True/False/None, lists) read with
  `ast.literal_eval`; positional arguments are not allowed, so every value is
  named as in the Hermes format, and no name may be given twice. Example:
  `<call>calculator(expression="2*3")</call>`.

Several calls may appear in one turn. A call that does not parse (bad syntax,
an unhashable dict key, nesting too deep for the parser, an integer over
Python's digit limit, a repeated argument) becomes a `ToolCall` with `error`
set, never an exception: the environment turns it into an error observation
and the reward may charge a format penalty.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple

from rl_lm.tools.schema import json_schema

HERMES = "hermes"
COMPACT = "compact"
_PATTERNS = {
    HERMES: re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL),
    COMPACT: re.compile(r"<call>(.*?)</call>", re.DOTALL),
}
_OPEN = {HERMES: "<tool_call>", COMPACT: "<call>"}


class ToolCall(NamedTuple):
    """One call as the model wrote it; `error` is None when it parsed."""

    name: str | None
    arguments: dict[str, Any]
    raw: str
    error: str | None = None


class ToolResult(NamedTuple):
    """The outcome of one call: `output` is the observation text either way."""

    call: ToolCall
    output: str
    ok: bool
    seconds: float


_CRASH = "call could not be parsed"  # the parser itself gave up, as opposed to a syntax error


def _first_clause(e: object) -> str:
    """A message up to its first ';' (drops hints such as "use sys.set_int_max_str_digits()")."""
    return str(e).split(";")[0]


def _loads(text: str) -> tuple[Any, str | None]:
    """`json.loads(text)` and None, or None and why it failed; never raises."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at position {e.pos}"
    except (RecursionError, MemoryError):
        return None, f"{_CRASH}: JSON nested too deeply"
    except ValueError as e:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
        return None, f"{_CRASH}: {_first_clause(e)}"


def _parse_hermes(body: str) -> ToolCall:
    obj, error = _loads(body)
    if error is not None:
        return ToolCall(None, {}, body, error)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, {}, body, 'a call is an object with a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some templates double-encode the arguments
        decoded, error = _loads(args)
        args = args if error is not None else decoded
    if not isinstance(args, dict):
        return ToolCall(obj["name"], {}, body, '"arguments" must be an object')
    return ToolCall(obj["name"], args, body)


def _parse_compact(body: str) -> ToolCall:
    try:
        node = ast.parse(body.strip(), mode="eval").body
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes, on some Pythons
        return ToolCall(None, {}, body, f"not a call: {_first_clause(getattr(e, 'msg', e))}")
    except (RecursionError, MemoryError):  # the parser's stack, not the heap, ran out
        return ToolCall(None, {}, body, f"{_CRASH}: nested too deeply")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ToolCall(None, {}, body, "expected name(arg=value, ...)")
    name = node.func.id
    if node.args:
        return ToolCall(name, {}, body, "arguments must be named: name(arg=value)")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            return ToolCall(name, {}, body, "** arguments are not allowed")
        if kw.arg in args:
            return ToolCall(name, {}, body, f"argument {kw.arg} is given twice")
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError):
            return ToolCall(name, {}, body, f"argument {kw.arg} is not a literal")
        except TypeError as e:  # {[]: 1}: an unhashable key or set member
            return ToolCall(name, {}, body, f"{_CRASH}: argument {kw.arg}: {e}")
        except (RecursionError, MemoryError):
            return ToolCall(name, {}, body, f"{_CRASH}: argument {kw.arg} is nested too deeply")
    return ToolCall(name, args, body)


def _parse_one(parse: Callable[[str], ToolCall], body: str) -> ToolCall:
    try:
        return parse(body)
    except Exception as e:  # a last guard: model text must never crash the run
        return ToolCall(None, {}, body, f"{_CRASH}: {type(e).__name__}")


def parse_calls(text: str, fmt: str = HERMES) -> list[ToolCall]:
    """Every call in `text`, in order; an opening tag never closed is a call with an error."""
    pattern, opener = _PATTERNS[fmt], _OPEN[fmt]
    parse = _parse_hermes if fmt == HERMES else _parse_compact
    calls = [_parse_one(parse, m.group(1)) for m in pattern.finditer(text)]
    tail = text[max((m.end() for m in pattern.finditer(text)), default=0) :]
    if opener in tail:
        calls.append(ToolCall(None, {}, tail, f"{opener} is never closed"))
    return calls


def format_call(name: str, arguments: Mapping[str, Any], fmt: str = HERMES) -> str:
    """The text of one call in `fmt`, the inverse of `parse_calls` (for demonstrations)."""
    if fmt == HERMES:
        return f"<tool_call>{json.dumps({'name': name, 'arguments': dict(arguments)})}</tool_call>"
    args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return f"<call>{name}({args})</call>"


def truncate_middle(text: str, limit: int) -> str:
    """`text` cut to at most about `limit` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    head = limit // 2
    marker = f"\n[... {len(text) - limit} characters cut ...]\n"
    return text[:head] + marker + text[len(text) - (limit - head) :]


def _check_arguments(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """Why `args` do not fit the tool's schema, or None."""
    params = schema["function"]["parameters"]
    unknown = sorted(set(args) - set(params["properties"]))
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}"
    missing = [p for p in params["required"] if p not in args]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    types.update({"array": list, "object": dict})
    for k, v in args.items():
        spec = params["properties"][k]
        if v is None and spec.get("nullable"):
            continue
        want = types[spec["type"]]
        bad_bool = isinstance(v, bool) and spec["type"] in ("integer", "number")
        if not isinstance(v, want) or bad_bool:
            return f"argument {k} must be {spec['type']}, got {type(v).__name__}"
    return None


def _timed(tools: Mapping[str, Callable[..., Any]], call: ToolCall) -> tuple[str, bool, float]:
    start = time.monotonic()
    try:
        output, ok = _run_one(tools, call)
    except Exception as e:  # e.g. a registered tool whose schema cannot be read
        output, ok = f"error: {call.name}: {type(e).__name__}: {e}", False
    return output, ok, time.monotonic() - start


def _run_one(tools: Mapping[str, Callable[..., Any]], call: ToolCall) -> tuple[str, bool]:
    if call.error is not None:
        return f"error: {call.error}", False
    if call.name not in tools:
        return f"error: unknown tool {call.name!r}; tools: {', '.join(sorted(tools))}", False
    fn = tools[call.name]
    problem = _check_arguments(json_schema(fn), call.arguments)
    if problem:
        return f"error: {call.name}: {problem}", False
    try:
        return str(fn(**call.arguments)), True
    except Exception as e:  # a tool's bug is the model's observation, not the run's crash
        return f"error: {call.name} raised {type(e).__name__}: {e}", False


def run_calls(
    tools: Mapping[str, Callable[..., Any]],
    calls: Sequence[ToolCall],
    timeout: float = 10.0,
    max_output: int = 2000,
    max_workers: int = 8,
) -> list[ToolResult]:
    """Run `calls` in parallel threads, each bounded by `timeout` seconds; results in call order.

    A thread cannot be killed, so a tool that ignores its own time limit
    keeps its worker busy after the timeout observation is returned; tools
    that can hang (the sandbox) enforce their own timeout in a child process.
    Outputs longer than `max_output` characters are middle-truncated. The
    timeout counts from the batch's start, so with more calls than workers a
    queued call has less than `timeout` of its own.
    """
    if not calls:
        return []
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(calls)))
    start = time.monotonic()
    futures = [pool.submit(_timed, tools, c) for c in calls]
    results = []
    for call, future in zip(calls, futures, strict=True):
        left = max(timeout - (time.monotonic() - start), 0.0)
        try:
            output, ok, seconds = future.result(timeout=left)
        except FutureTimeout:
            output, ok, seconds = (
                f"error: {call.name} timed out after {timeout:g} s",
                False,
                timeout,
            )
        results.append(ToolResult(call, truncate_middle(output, max_output), ok, seconds))
    pool.shutdown(wait=False, cancel_futures=True)
    return results
