"""Compile reward: 1 when the extracted shader renders valid pixels, else 0.

The gate of every image reward, and the curve that shows whether the policy still writes GLSL at all
(a dense image reward can rise while nothing compiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewards.shared import SharedRenders, prepare, record, rendered


def compile_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 for each completion whose shader renders (kind ``ok``), 0.0 for a rejection, compile error,
    timeout, crash or invalid output."""
    batch = prepare(completions, None, kwargs, renders)
    return record(batch, "compile_reward", [1.0 if rendered(r) else 0.0 for r in batch.results])
