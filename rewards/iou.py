"""Shape reward: intersection over union of the foreground masks of render and target.

A pixel is foreground when its mean channel value exceeds ``threshold`` (white shapes on black, the
anti-aliased edge split at half). IoU cannot be raised by drawing less: a missing shape shrinks the
intersection. An empty picture scores 0, and so does a shader that does not render (``fail_score``).
Two empty masks match (1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.shared import SharedRenders, gated_scores, prepare, record


def foreground(image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of the pixels brighter than ``threshold``."""
    return image.mean(axis=2) > threshold


def mask_iou(render: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the two images' foreground masks (1.0 when both are empty)."""
    a, b = foreground(render, threshold), foreground(target, threshold)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def iou_reward(
    completions: Sequence[Any],
    image: Sequence[Any] | None = None,
    *,
    renders: SharedRenders | None = None,
    iou_threshold: float = 0.5,
    fail_score: float = 0.0,
    **kwargs: Any,
) -> list[float | None]:
    """Foreground IoU of each completion's render with its target; None where the row has no target."""
    batch = prepare(completions, image, kwargs, renders)
    scores = gated_scores(batch, fail_score, lambda render, target: mask_iou(render, target, iou_threshold))
    return record(batch, "iou_reward", scores)
