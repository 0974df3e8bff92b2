"""Shapes reward: the primitives the code draws against the scene the target was rendered from.

Pixel rewards make dropping an uncertain shape pay: a shape drawn in the wrong place costs more MSE
and IoU than a shape left out, and from demo13's SFT model twelve GRPO steps on compile, MSE, IoU and
format doubled the pairs drawn as one shape (bench/LEARNING.md, session 11). Where the dataset knows
the truth (the factory's ``scene`` column, which TRL passes to rewards), this reward scores the
multiset of primitive types that :func:`earthshader.scenes.from_glsl` reads from the code against
the truth's, as their Dice overlap ``2 |P & T| / (|P| + |T|)``: a dropped shape and an extra one cost
alike. Gated on compilation like the image rewards: 0 for a shader that does not render or code the
parser does not read; None where the row has no scene (ingested Shadertoy programs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rewards.shared import SharedRenders, prepare, record, scene_scores


def type_dice(pred: Sequence[str], true: Sequence[str]) -> float:
    """Dice overlap of two multisets of primitive types (1.0 when both are empty).

    >>> type_dice(["box", "circle"], ["box", "circle"])
    1.0
    >>> type_dice(["box"], ["box", "circle"])  # one of two shapes left out
    0.6666666666666666
    >>> type_dice(["box", "box"], ["box", "circle"])  # one type wrong
    0.5
    """
    if not pred and not true:
        return 1.0
    common = sum((Counter(pred) & Counter(true)).values())
    return 2.0 * common / (len(pred) + len(true))


def shapes_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    scene: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Dice overlap of each rendered completion's primitive types with its row's ``scene``."""
    from earthshader.scenes import shape_types

    batch = prepare(completions, None, kwargs, renders)
    scores = scene_scores(
        batch, scene, lambda drawn, truth: type_dice(shape_types(drawn), shape_types(truth))
    )
    return record(batch, "shapes_reward", scores)
