"""A calculator tool: arithmetic read with `ast`, never `eval`.

Accepted: int and float literals, + - * / // % **, unary + and -,
parentheses, and calls of the functions in `FUNCTIONS` (plus the constants
pi and e). Everything else (names, attributes, subscripts, strings, other
calls, comprehensions) is rejected with a message naming what was found.
Exponents and intermediate integers are bounded so that `9**9**9` fails
quickly instead of pinning a CPU.
"""

from __future__ import annotations

import ast
import math
import operator

FUNCTIONS = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000
MAX_DIGITS = 4000
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and abs(value).bit_length() > MAX_DIGITS * 3.33:
        raise CalculatorError(f"result exceeds {MAX_DIGITS} digits")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} exceeds {MAX_EXPONENT}")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if abs(left).bit_length() + abs(right).bit_length() > MAX_DIGITS * 3.33 + 64:
                raise CalculatorError(f"result exceeds {MAX_DIGITS} digits")
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise CalculatorError(f"unknown function {ast.unparse(node.func)!r}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        return _check_size(FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
    raise CalculatorError(f"{type(node).__name__} is not allowed: {ast.unparse(node)!r}")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; raises CalculatorError on anything else."""
    if len(expression) > 1000:
        raise CalculatorError("expression longer than 1000 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an expression: {e.msg}") from None
    try:
        return _eval(tree)
    except CalculatorError:
        raise
    except (ArithmeticError, ValueError, TypeError) as e:
        raise CalculatorError(f"{type(e).__name__}: {e}") from None


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (integers stay exact).

    Args:
        expression: Numbers with + - * / // % ** and parentheses, and the
            functions sqrt, abs, round, min, max, floor, ceil, log, exp, sin, cos.

    Returns:
        The value as text, or an error message starting with "error:".
    """
    try:
        return str(evaluate(expression))
    except CalculatorError as e:
        return f"error: {e}"
