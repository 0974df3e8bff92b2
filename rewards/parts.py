"""Parts reward: each drawn primitive's own mask against the truth's, matched one to one.

The image rewards score the composite picture, so an operator can hide what its shapes get wrong.
From the best Stage-2 SFT model, GRPO at 5e-5 learned to join two discs by intersect and draw only
the lens between them, a median 71% of the truth's area; compile, MSE and IoU rewards all rose,
because what the lens leaves out was mostly drawn in the wrong place (bench/LEARNING.md, finding 92).
This reward looks through the operators. It reads the scene from the code
(:func:`earthshader.scenes.from_glsl`), takes each drawn primitive's inside mask on its own, matches
the drawn primitives to the truth's (the row's ``scene``) one to one for the largest total IoU
(``scipy.optimize.linear_sum_assignment``), and scores the matched IoUs' sum over the larger of the
two counts:

- a shape drawn wrong costs its own mismatch, whatever operator joins it and whatever it hides;
- a dropped shape or an extra one costs a whole part;
- the order of the shapes and the operators do not count (the image rewards score those).

With ``parts_type_weight`` w above 0 a matched pair of different primitive types scores its IoU times
(1 - w), and the match maximises these weighted scores. Under the plain IoU a disc at a box's place and
size pays nearly what the box does, so from a model that cannot name the types GRPO draws discs for
everything (finding 96); the weight makes that hedge cost.

Gated on compilation like the image rewards: 0 for a shader that does not render or code the parser
does not read; None where the row has no scene (ingested Shadertoy programs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from earthshader.errors import ConfigError
from earthshader.scenes import Scene, pixel_grid
from rewards.shared import SharedRenders, prepare, record, scene_scores

GRID = 128  # pixels a side of the masks: the renders' own size in the recipes


def part_masks(scene: Scene, size: int = GRID) -> np.ndarray:
    """Each primitive's inside mask on its own, ``(shapes, size * size)`` booleans."""
    x, y = pixel_grid(size, np.float32)
    return np.stack([(shape.sdf(x, y) < 0.0).ravel() for shape in scene.shapes])


def check_type_weight(type_weight: float) -> None:
    """Refuse a ``parts_type_weight`` outside [0, 1] (one line at the terminal, a ValueError to code)."""
    if not 0.0 <= type_weight <= 1.0:
        raise ConfigError(f"parts_type_weight must lie between 0 and 1, not {type_weight}")


def match_parts(
    drawn: Scene, truth: Scene, size: int = GRID, type_weight: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one match of drawn to true primitives: ``(rows, cols, scores)``.

    ``scores[i, j]`` is the IoU of drawn primitive ``i`` with true primitive ``j``, times
    ``1 - type_weight`` where their types differ; the pairs ``(rows[k], cols[k])`` maximise its sum.
    """
    p, t = part_masks(drawn, size), part_masks(truth, size)
    inter = (p[:, None, :] & t[None, :, :]).sum(axis=2)
    union = (p[:, None, :] | t[None, :, :]).sum(axis=2)
    scores = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if type_weight:
        same = np.equal.outer([s.type_name for s in drawn.shapes], [s.type_name for s in truth.shapes])
        scores = np.where(same, scores, scores * (1.0 - type_weight))
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return rows, cols, scores


def parts_iou(drawn: Scene, truth: Scene, size: int = GRID, type_weight: float = 0.0) -> float:
    """Matched IoU of the two scenes' primitives, summed over the one-to-one match, over the larger count.

    A pair of different types counts ``1 - type_weight`` of its IoU.

    >>> from earthshader.scenes import Box, Circle, Op
    >>> a, b = Circle(-0.5, 0.0, 0.3), Circle(0.5, 0.0, 0.3)
    >>> parts_iou(Scene((b, a), (Op("intersect"),)), Scene((a, b), (Op("union"),)))  # order, operator
    1.0
    >>> parts_iou(Scene((a,)), Scene((a, b), (Op("union"),)))  # one of two shapes left out
    0.5
    >>> parts_iou(Scene((b,)), Scene((Box(0.5, 0.0, 0.3, 0.3),)), type_weight=1.0)  # a disc for a box
    0.0
    """
    rows, cols, scores = match_parts(drawn, truth, size, type_weight)
    return float(scores[rows, cols].sum() / max(len(drawn.shapes), len(truth.shapes)))


def parts_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    scene: Sequence[Any] | None = None,
    parts_type_weight: float = 0.0,
    **kwargs: Any,
) -> list[float | None]:
    """Matched per-primitive mask IoU of each rendered completion's scene with its row's ``scene``.

    ``parts_type_weight``: the share of a matched pair's IoU that a wrong primitive type loses (0-1).
    """
    check_type_weight(parts_type_weight)
    batch = prepare(completions, None, kwargs, renders)
    score = functools.partial(parts_iou, type_weight=parts_type_weight)
    return record(batch, "parts_reward", scene_scores(batch, scene, score))
