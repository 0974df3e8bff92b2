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

Gated on compilation like the image rewards: 0 for a shader that does not render or code the parser
does not read; None where the row has no scene (ingested Shadertoy programs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from earthshader.scenes import Scene, pixel_grid
from rewards.shared import SharedRenders, prepare, record, scene_scores

GRID = 128  # pixels a side of the masks: the renders' own size in the recipes


def part_masks(scene: Scene, size: int = GRID) -> np.ndarray:
    """Each primitive's inside mask on its own, ``(shapes, size * size)`` booleans."""
    x, y = pixel_grid(size, np.float32)
    return np.stack([(shape.sdf(x, y) < 0.0).ravel() for shape in scene.shapes])


def parts_iou(drawn: Scene, truth: Scene, size: int = GRID) -> float:
    """Matched IoU of the two scenes' primitives, summed over the one-to-one match, over the larger count.

    >>> from earthshader.scenes import Circle, Op
    >>> a, b = Circle(-0.5, 0.0, 0.3), Circle(0.5, 0.0, 0.3)
    >>> parts_iou(Scene((b, a), (Op("intersect"),)), Scene((a, b), (Op("union"),)))  # order, operator
    1.0
    >>> parts_iou(Scene((a,)), Scene((a, b), (Op("union"),)))  # one of two shapes left out
    0.5
    """
    p, t = part_masks(drawn, size), part_masks(truth, size)
    inter = (p[:, None, :] & t[None, :, :]).sum(axis=2)
    union = (p[:, None, :] | t[None, :, :]).sum(axis=2)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum() / max(len(drawn.shapes), len(truth.shapes)))


def parts_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    scene: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Matched per-primitive mask IoU of each rendered completion's scene with its row's ``scene``."""
    batch = prepare(completions, None, kwargs, renders)
    return record(batch, "parts_reward", scene_scores(batch, scene, parts_iou))
