"""Format reward: reasoning text first, then exactly one fenced ```glsl block, then nothing.

The shape of every target completion in the datasets (``completion`` = reasoning, blank line, the
fenced code). It reads no pixels; it shares the step's record so that plots show it beside the
others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.shared import SharedRenders, prepare, record

_FORMAT_RE = re.compile(r"\A\s*(?P<reasoning>\S.*?)\s*```glsl[ \t]*\n(?P<code>.*?)\n[ \t]*```\s*\Z", re.S)


def has_format(text: str) -> bool:
    """Whether ``text`` is reasoning, then exactly one ```glsl block with code in it, then nothing.

    >>> has_format("A circle.\\n```glsl\\nvoid mainImage(out vec4 c, in vec2 p) {}\\n```")
    True
    >>> has_format("```glsl\\nvoid mainImage(out vec4 c, in vec2 p) {}\\n```")  # no reasoning
    False
    """
    match = _FORMAT_RE.match(text)
    return bool(match) and text.count("```") == 2 and bool(match.group("code").strip())


def format_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 for each completion in the expected format, else 0.0."""
    batch = prepare(completions, None, kwargs, renders)  # shares the step's record (and its render)
    return record(batch, "format_reward", [1.0 if has_format(t) else 0.0 for t in batch.texts])
