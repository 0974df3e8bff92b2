"""Reward functions for render-in-the-loop GRPO, one per component (TRL logs ``rewards/<name>/mean``).

Each follows TRL's contract ``f(completions, image, **kwargs) -> list[float | None]`` and reads the
step's shared render (:mod:`rewards.shared`), so a step renders each distinct completion once
whatever the number of rewards. Recipes name rewards by their short names:

>>> sorted(REWARDS)
['compile', 'format', 'iou', 'length', 'mse', 'ops', 'parts', 'shapes', 'ssim']
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from earthshader.errors import UsageError
from rewards.compile import compile_reward
from rewards.format import format_reward
from rewards.iou import iou_reward
from rewards.length import length_reward
from rewards.mse import mse_reward
from rewards.ops import ops_reward
from rewards.parts import parts_reward
from rewards.shapes import shapes_reward
from rewards.shared import SharedRenders
from rewards.ssim import ssim_reward

REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "compile": compile_reward,
    "mse": mse_reward,
    "ssim": ssim_reward,
    "iou": iou_reward,
    "format": format_reward,
    "length": length_reward,
    "shapes": shapes_reward,
    "parts": parts_reward,
    "ops": ops_reward,
}


def _settings_of(func: Callable) -> set[str]:
    params = inspect.signature(func).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "renders"}


def get_reward_funcs(
    names: Sequence[str],
    *,
    size: int = 128,
    time: float = 0.0,
    renders: SharedRenders | None = None,
    **settings: Any,
) -> list[Callable[..., list[float | None]]]:
    """The reward functions for ``names``, sharing one :class:`SharedRenders` (``size`` px, ``time``).

    ``settings`` go to the rewards that take them (``fail_score``, ``iou_threshold``,
    ``length_gate``). The returned functions are :func:`functools.partial` objects, so TRL names
    them after the function (``mse_reward``). The shared renders are at ``funcs[0].keywords["renders"]``.

    Raises:
        UsageError: an unknown reward name, a repeated one, no names, or a setting no reward takes.
    """
    names = list(names)
    if not names:
        raise UsageError(f"no reward functions chosen (choose from: {', '.join(REWARDS)})")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise UsageError(f"unknown reward {unknown[0]!r} (one of: {', '.join(REWARDS)})")
    if len(set(names)) != len(names):
        raise UsageError(f"reward names repeat: {', '.join(names)}")
    known = set().union(*(_settings_of(REWARDS[n]) for n in names))
    stray = sorted(set(settings) - known)
    if stray:
        raise UsageError(f"reward setting {stray[0]!r} is taken by none of: {', '.join(names)}")
    renders = renders or SharedRenders(size=size, time=time)
    funcs = []
    for name in names:
        func = REWARDS[name]
        own = {k: v for k, v in settings.items() if k in _settings_of(func)}
        funcs.append(functools.partial(func, renders=renders, **own))
    return funcs


__all__ = [
    "REWARDS",
    "SharedRenders",
    "compile_reward",
    "format_reward",
    "get_reward_funcs",
    "iou_reward",
    "length_reward",
    "mse_reward",
    "parts_reward",
    "shapes_reward",
    "ssim_reward",
]
