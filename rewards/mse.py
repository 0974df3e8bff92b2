"""Pixel reward: a bounded similarity from the MSE against the target, relative to a black image.

``score = clip(1 - mse(render, target) / mse(black, target), -1, 1)``: 1 for an exact match, 0 for a
black (empty) image, negative for a picture further from the target than drawing nothing. Because
an empty picture is the zero point, dropping a shape that belongs to the target always lowers the
score, which plain ``-mse`` does not guarantee (a tiny model learned to draw one shape for every
target under it). A shader that does not render scores ``fail_score`` (the bottom of the range), so
rendering anything is never worse than failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.shared import SharedRenders, gated_scores, prepare, record

# The smallest black-image MSE used as the scale, so that an (almost) black target stays defined.
MIN_SCALE = 1e-4


def mse_similarity(render: np.ndarray, target: np.ndarray) -> float:
    """``clip(1 - mse / mse_black, -1, 1)`` between two float images in [0, 1].

    >>> t = np.zeros((4, 4, 3), np.float32); t[:2] = 1.0
    >>> mse_similarity(t, t), mse_similarity(np.zeros_like(t), t), mse_similarity(1.0 - t, t)
    (1.0, 0.0, -1.0)
    """
    mse = float(np.mean((render - target) ** 2))
    black = max(float(np.mean(target**2)), MIN_SCALE)
    return float(np.clip(1.0 - mse / black, -1.0, 1.0))


def mse_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    fail_score: float = -1.0,
    **kwargs: Any,
) -> list[float | None]:
    """Relative MSE similarity of each completion's render to its target (see the module docstring).

    None where the row has no target image.
    """
    batch = prepare(completions, image, kwargs, renders)
    return record(batch, "mse_reward", gated_scores(batch, fail_score, mse_similarity))
