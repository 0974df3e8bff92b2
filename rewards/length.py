"""Efficiency reward: shorter code for the same picture, as RLRF's length term.

Only a picture that is right-ish earns it: the render's relative MSE similarity (see
``rewards.mse``) must reach ``length_gate``; otherwise the score is 0, so the policy cannot buy
reward by writing less and drawing less. Length counts the code's non-blank characters outside
comments, so layout and comments cost nothing.

The reference length is the ground-truth shader (the dataset's ``code`` column) when there is one,
else the shortest right-ish shader among the completions for the same target. The score is
``min(1, reference / length)``: 1 for code no longer than the reference, falling as it grows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from earthshader.glsl import strip_comments
from rewards.mse import mse_similarity
from rewards.shared import SharedRenders, prepare, record, rendered

_SPACE_RE = re.compile(r"\s+")


def code_length(code: str) -> int:
    """Non-blank characters outside comments.

    >>> code_length("float a = 1.0; // one\\n")
    11
    """
    return len(_SPACE_RE.sub("", strip_comments(code)))


def length_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    length_gate: float = 0.75,
    **kwargs: Any,
) -> list[float | None]:
    """Shorter code for a right-ish picture; see the module docstring. None where the row has no target.

    The dataset's ``code`` column, when present, arrives in ``kwargs`` and sets the reference lengths.
    """
    code = kwargs.get("code")
    batch = prepare(completions, image, kwargs, renders)
    n = len(batch.codes)
    lengths = [max(1, code_length(c)) for c in batch.codes]
    right = [
        t is not None and rendered(r) and mse_similarity(r.image, t) >= length_gate
        for r, t in zip(batch.results, batch.targets, strict=True)
    ]
    if code is not None:
        refs = [max(1, code_length(c)) if c else None for c in code]
    else:
        refs = [None] * n
    # Without a ground truth, the shortest right-ish completion of the same target is the reference.
    shortest: dict[int, int] = {}
    for i in range(n):
        if right[i]:
            key = hash(batch.targets[i].tobytes())
            shortest[key] = min(shortest.get(key, lengths[i]), lengths[i])
    scores: list[float | None] = []
    for i in range(n):
        if batch.targets[i] is None:
            scores.append(None)
        elif not right[i]:
            scores.append(0.0)
        else:
            ref = refs[i] if refs[i] is not None else shortest[hash(batch.targets[i].tobytes())]
            scores.append(min(1.0, ref / lengths[i]))
    return record(batch, "length_reward", scores)
