"""Chat templates: a checkpoint's Jinja template rendered as transformers renders it.

A chat model's tokenizer ships a Jinja template (`Tokenizer.chat_template`) that
turns a conversation, a list of {"role", "content"} messages, into the text the
model was trained on. `render` evaluates it in a sandbox with the variables and
helpers transformers' `apply_chat_template` provides (messages,
add_generation_prompt, the named special tokens, `raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML), so the text and, encoded
without added special tokens, the ids are the same as transformers'.

`chat_tokens` encodes a whole conversation and marks the tokens of its assistant
turns, the SFT loss mask. The conversation is rendered prefix by prefix: the
text of messages[:i] must be a prefix of the text of messages[:i+1], and for an
assistant turn i the generation prompt (its header, e.g. "<|im_start|>assistant\\n")
separates the context from the turn's own text (its content and end-of-turn
marker), which is what the mask covers. Templates that rewrite earlier turns
(e.g. drop past reasoning) break this and raise.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant marker) as a no-op.

    transformers uses the tag to find assistant text; `chat_tokens` finds it by
    rendering prefixes instead, so here the tag only needs to parse.
    """

    tags = frozenset({"generation"})

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def check_messages(messages: Any, where: str = "messages") -> list[Message]:
    """Validates a conversation: a non-empty list of {"role": str, "content": str, ...}.

    Args:
        messages: the conversation.
        where: what to name in errors (e.g. "train.jsonl, line 3").

    Returns:
        The messages, as a list.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"{where}: messages must be a non-empty list of {{'role', 'content'}} objects, "
            f"got {messages!r:.60}."
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"{where}: message {i} needs a string 'role', got {m!r:.60}.")
        if not isinstance(m.get("content"), str):
            raise ValueError(
                f"{where}: message {i} ({m['role']}) needs a string 'content', got "
                f"{m.get('content')!r:.40}."
            )
    return list(messages)


def render(
    template: str,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Renders a conversation with a chat template, as transformers does.

    Args:
        template: the Jinja template (e.g. `tokenizer.chat_template`).
        messages: the conversation, {"role", "content"} dicts.
        add_generation_prompt: end with the header of a new assistant turn.
        special_tokens: the template's token variables, e.g. {"bos_token": "<s>",
            "eos_token": "</s>"} (`tokenizer.special_tokens`).
        **kwargs: further template variables (override special tokens); tools and
            documents are None unless given, as in transformers.

    Returns:
        The text.
    """
    variables = {"tools": None, "documents": None, **(special_tokens or {}), **kwargs}
    return _compile(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
    )


def require_template(tokenizer: Any) -> str:
    """The tokenizer's chat template; raises, naming the fix, when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ValueError(
            f"tokenizer {tokenizer!r} has no chat template, so messages cannot be rendered: "
            "use a checkpoint tokenizer with chat_template (tokenizer_config.json or "
            "chat_template.jinja) or give rows as plain 'prompt' text."
        )
    return template


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """A conversation rendered with the tokenizer's template and the generation prompt."""
    return render(
        require_template(tokenizer), messages, True, getattr(tokenizer, "special_tokens", {})
    )


def _prefix(longer: str, shorter: str, longer_what: str, shorter_what: str) -> None:
    if not longer.startswith(shorter):
        raise ValueError(
            f"the chat template is not prefix-stable: the text of {longer_what} does not "
            f"start with the text of {shorter_what} (the template rewrites earlier turns), "
            "so the assistant tokens cannot be found; train on plain prompt/response rows "
            "instead."
        )


def chat_tokens(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """A conversation's ids (as transformers' apply_chat_template) and its assistant mask.

    Args:
        tokenizer: a tokenizer with `chat_template`, `special_tokens` and
            `encode_offsets` (see `rl_lm.models.tokenizer`).
        messages: the conversation.

    Returns:
        (ids, mask): ids of the rendered conversation (no generation prompt), and
        mask 1 on the tokens of assistant turns after their header (content and
        end-of-turn text), 0 elsewhere. A token is in the turn it starts in.

    Raises:
        ValueError: no chat template, or a template that is not prefix-stable.
    """
    template = require_template(tokenizer)
    specials = getattr(tokenizer, "special_tokens", {})
    messages = list(messages)
    spans, before = [], ""  # Character spans of the assistant turns.
    for i, m in enumerate(messages):
        upto = render(template, messages[: i + 1], False, specials)
        _prefix(upto, before, f"messages[:{i + 1}]", f"messages[:{i}]")
        if m["role"] == "assistant":
            head = render(template, messages[:i], True, specials) if i else ""
            prompted = f"messages[:{i}] with the generation prompt"
            _prefix(head, before, prompted, f"messages[:{i}]")
            _prefix(upto, head, f"messages[:{i + 1}]", prompted)
            spans.append((len(head), len(upto)))
        before = upto
    ids, offsets = tokenizer.encode_offsets(before)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]
    return ids, mask


_SENTINEL = "\x00rl_lm-turn-end\x00"


def tool_turn(tokenizer: Any, outputs: Sequence[str]) -> str:
    """The text that follows an assistant turn cut at its tool call, up to the next
    assistant turn's header: the turn's end-of-turn text, one tool message per
    output as the template renders it, and the generation prompt.

    Rendered from the tokenizer's own template (a conversation whose assistant
    turn is a sentinel, with and without the tool messages), so the multi-turn
    sampler appends what the checkpoint saw in training after a call.

    Raises:
        ValueError: no chat template, or one that does not render the assistant
            content verbatim (the sentinel is not found).
    """
    template = require_template(tokenizer)
    specials = getattr(tokenizer, "special_tokens", {})
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    tools = [{"role": "tool", "content": str(o)} for o in outputs]
    text = render(template, messages + tools, True, specials)
    at = text.find(_SENTINEL)
    if at < 0:
        raise ValueError(
            "the chat template does not write an assistant turn's content verbatim, so its "
            "tool turn cannot be rendered; use the compact call format with plain prompts."
        )
    return text[at + len(_SENTINEL) :]
