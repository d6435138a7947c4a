import pytest

from rl_lm.tools.calculator import CalculatorError, calculator, evaluate


@pytest.mark.parametrize(
    "expression, value",
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("1 / 4", 0.25),
        ("123456789 * 987654321", 121932631112635269),
        ("sqrt(16) + max(1, 5, 3)", 9.0),
        ("2 * pi", 6.283185307179586),
        ("round(2.567, 1)", 2.6),
    ],
)
def test_values(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os')", "unknown function"),
        ("x + 1", "unknown name 'x'"),
        ("(1).__class__", "Attribute is not allowed"),
        ("'a' * 3", "only numbers"),
        ("9 ** 9 ** 9", "exponent"),
        ("[1, 2][0]", "not allowed"),
        ("1 / 0", "ZeroDivisionError"),
        ("sqrt(-1)", "ValueError"),
        ("1 +", "not an expression"),
        ("True + 1", "only numbers"),
        ("10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999", "digits"),
    ],
)
def test_rejections(expression, message):
    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)


def test_tool_returns_errors_as_text():
    assert calculator("6 * 7") == "42"
    assert calculator("open('x')").startswith("error: unknown function")
