"""Operators reward: the boolean operators the code writes against the scene the target was rendered from.

The parts reward (:mod:`rewards.parts`) looks through the operators on purpose, and alone it leaves them
unsteered: from `keep`, 80 GRPO steps on compile, parts and format drifted subtract to intersect and
smooth union to union, and held-out MSE rose 12% while the parts score rose 8% (bench/LEARNING.md,
session 31). This reward scores the operators: the share of positions ``i`` where the code's ``i``-th
operator is the truth's, over the longer of the two operator lists (1.0 where both scenes are a single
shape). A smooth union's radius does not count, nor which shape a subtract cuts from which (the image
rewards score that).

Gated on compilation like the image rewards: 0 for a shader that does not render or code the parser
does not read; None where the row has no scene (ingested Shadertoy programs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from earthshader.scenes import Scene
from rewards.shared import SharedRenders, prepare, record, scene_scores


def ops_match(drawn: Scene, truth: Scene) -> float:
    """Share of operator positions where the two scenes write the same operator.

    >>> from earthshader.scenes import Circle, Op
    >>> a, b, c = Circle(-0.5, 0.0, 0.3), Circle(0.5, 0.0, 0.3), Circle(0.0, 0.5, 0.2)
    >>> ops_match(Scene((b, a), (Op("union"),)), Scene((a, b), (Op("union"),)))  # order of shapes
    1.0
    >>> ops_match(Scene((a, b), (Op("intersect"),)), Scene((a, b), (Op("subtract"),)))
    0.0
    >>> ops_match(Scene((a, b), (Op("union"),)), Scene((a, b, c), (Op("union"), Op("subtract"))))
    0.5
    >>> ops_match(Scene((a,)), Scene((b,)))  # single shapes: nothing to get wrong
    1.0
    """
    longer = max(len(drawn.ops), len(truth.ops))
    if not longer:
        return 1.0
    return sum(p.kind == t.kind for p, t in zip(drawn.ops, truth.ops, strict=False)) / longer


def ops_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    scene: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Operator match of each rendered completion's scene with its row's ``scene``."""
    batch = prepare(completions, None, kwargs, renders)
    return record(batch, "ops_reward", scene_scores(batch, scene, ops_match))
