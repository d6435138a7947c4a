from typing import Optional

import pytest
from transformers.utils import get_json_schema

from rl_lm.tools.calculator import calculator
from rl_lm.tools.sandbox import make_python_tool
from rl_lm.tools.schema import json_schema
from rl_lm.tools.search import build_index, make_search_tool


def typed(
    text: str,
    count: int,
    scale: float = 1.0,
    loud: bool = False,
    tags: list[str] | None = None,
    sizes: Optional[list[int]] = None,  # noqa: UP045 (the old spelling must work too)
) -> str:
    """Do several things.

    A second paragraph of description.

    Args:
        text: The text to
            work on, over two lines.
        count: How many times.
        scale: A factor.
        loud: Shout or not.
        tags: Labels.
        sizes: Sizes in bytes.

    Returns:
        The result.
    """
    return text


SHIPPED = [calculator, make_python_tool(), make_search_tool(build_index(["a b", "c"]))]


@pytest.mark.parametrize("fn", [*SHIPPED, typed], ids=lambda f: f.__name__)
def test_equals_transformers_get_json_schema(fn):
    assert json_schema(fn) == get_json_schema(fn)


def test_typed_schema_by_hand():
    params = json_schema(typed)["function"]["parameters"]
    assert params["required"] == ["text", "count"]
    assert params["properties"]["text"] == {
        "type": "string",
        "description": "The text to work on, over two lines.",
    }
    assert params["properties"]["scale"]["type"] == "number"
    assert params["properties"]["loud"]["type"] == "boolean"
    assert params["properties"]["sizes"] == {
        "type": "array",
        "items": {"type": "integer"},
        "nullable": True,
        "description": "Sizes in bytes.",
    }
    assert json_schema(typed)["function"]["description"] == (
        "Do several things.\n\nA second paragraph of description."
    )


def test_rejects_missing_annotation_and_docs():
    def bare(x):
        """No args.

        Args:
            x: A value.
        """

    def undocumented(x: int):
        """Nothing about x."""

    def odd(x: set[int]):
        """Odd.

        Args:
            x: A set.
        """

    with pytest.raises(TypeError, match="annotation"):
        json_schema(bare)
    with pytest.raises(ValueError, match="does not describe x"):
        json_schema(undocumented)
    with pytest.raises(TypeError, match="unsupported"):
        json_schema(odd)
