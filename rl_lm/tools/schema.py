"""A tool's JSON schema, read from its Python signature and Google-style docstring.

The schema is the OpenAI / Hermes function format that chat templates render:
`{"type": "function", "function": {"name", "description", "parameters": {...}}}`.
Parameters with no default are required; `Optional[X]` (or `X | None`) marks
a parameter nullable. The supported annotations are str, int, float, bool,
list[...] and dict; anything else is an error at definition time, so a tool
whose schema the model would misread never reaches a rollout.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Examples?|Notes?):\s*$")


def _json_type(annotation: Any) -> dict[str, Any]:
    """The JSON-schema fragment of one annotation."""
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is list or origin is list:
        return {"type": "array", "items": _json_type(args[0])} if args else {"type": "array"}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return {**_json_type(rest[0]), "nullable": True}
    raise TypeError(f"unsupported tool annotation {annotation!r}")


def _sections(doc: str) -> dict[str, list[str]]:
    """The docstring's lines by section; the text before any section is under ''."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in inspect.cleandoc(doc).splitlines():
        match = _SECTION.match(line)
        if match:
            current = match.group(1)
            out[current] = []
        else:
            out[current].append(line)
    return out


def _arg_docs(lines: list[str]) -> dict[str, str]:
    """`name: text` entries of an Args section; continuation lines are joined with spaces."""
    docs: dict[str, list[str]] = {}
    name = None
    for line in lines:
        match = re.match(r"^\s*(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
        if match and (name is None or _indent(line) <= _indent(docs[name][0])):
            name = match.group(1)
            docs[name] = [line, match.group(2).strip()]
        elif name is not None and line.strip():
            docs[name].append(line.strip())
    return {k: " ".join(t for t in v[1:] if t) for k, v in docs.items()}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def json_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function-calling schema of `fn`.

    Args:
        fn: A function with a type annotation on every parameter and a
            docstring whose `Args:` section describes each one.

    Returns:
        `{"type": "function", "function": {...}}` with name, description,
        parameters (properties, required) and, when annotated, return.

    Raises:
        TypeError: a parameter lacks an annotation or has an unsupported one.
        ValueError: the docstring is missing or does not describe a parameter.
    """
    if not fn.__doc__:
        raise ValueError(f"tool {fn.__name__} needs a docstring")
    hints = typing.get_type_hints(fn)
    sections = _sections(fn.__doc__)
    arg_docs = _arg_docs(sections.get("Args", sections.get("Arguments", [])))
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        if name not in hints:
            raise TypeError(f"tool {fn.__name__}: parameter {name} needs a type annotation")
        if name not in arg_docs:
            raise ValueError(f"tool {fn.__name__}: the docstring's Args does not describe {name}")
        properties[name] = {**_json_type(hints[name]), "description": arg_docs[name]}
        if param.default is inspect.Parameter.empty:
            required.append(name)
    function: dict[str, Any] = {
        "name": fn.__name__,
        "description": "\n".join(sections[""]).strip(),
        "parameters": {"type": "object", "properties": properties, "required": required},
    }
    if "return" in hints and hints["return"] is not type(None):
        ret = _json_type(hints["return"])
        returns = " ".join(s.strip() for s in sections.get("Returns", []) if s.strip())
        function["return"] = {**ret, "description": returns} if returns else ret
    return {"type": "function", "function": function}
