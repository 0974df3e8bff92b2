"""Perceptual reward: structural similarity (scikit-image SSIM), relative to a black image.

SSIM rates a black image high on a mostly black target (every empty window matches), so raw SSIM
would pay for drawing less. The score is ``(ssim - ssim_black) / (1 - ssim_black)`` clipped to
[-1, 1]: 1 for an exact match, 0 for an empty picture, negative for a worse one. A shader that does
not render scores ``fail_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from rewards.shared import SharedRenders, gated_scores, prepare, record


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two float RGB images in [0, 1] (7 x 7 windows, per channel)."""
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def ssim_similarity(render: np.ndarray, target: np.ndarray, black: float | None = None) -> float:
    """SSIM relative to a black image's SSIM (``black``, computed when not given)."""
    if black is None:
        black = ssim(np.zeros_like(target), target)
    value = ssim(render, target)
    if black >= 1.0 - 1e-6:  # the target is black: only a black picture matches
        return 1.0 if value >= 1.0 - 1e-6 else -1.0
    return float(np.clip((value - black) / (1.0 - black), -1.0, 1.0))


def ssim_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    fail_score: float = -1.0,
    **kwargs: Any,
) -> list[float | None]:
    """Relative SSIM of each completion's render to its target; None where the row has no target."""
    batch = prepare(completions, image, kwargs, renders)
    blacks: dict[int, float] = {}  # a group shares one target array: its black SSIM once

    def score(render: np.ndarray, target: np.ndarray) -> float:
        key = hash(target.tobytes())
        if key not in blacks:
            blacks[key] = ssim(np.zeros_like(target), target)
        return ssim_similarity(render, target, blacks[key])

    return record(batch, "ssim_reward", gated_scores(batch, fail_score, score))
