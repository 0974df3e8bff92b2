"""Headless, sandboxed rendering of Shadertoy shaders.

>>> from earthshader.render import render
>>> result = render("void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0, 0.0, 0.0, 1.0); }", size=8)
>>> result.kind, result.image.shape, float(result.image[0, 0, 0])
('ok', (8, 8, 3), 1.0)
"""

from __future__ import annotations

from earthshader.render.pool import PoolStats, RenderPool, default_pool, detect_mode, set_default_pool
from earthshader.render.result import KINDS, RenderResult

__all__ = [
    "KINDS",
    "PoolStats",
    "RenderPool",
    "RenderResult",
    "default_pool",
    "detect_mode",
    "render",
    "render_many",
    "set_default_pool",
]


def render(source: str, size: int = 128, time: float = 0.0) -> RenderResult:
    """Render one Shadertoy ``mainImage`` source in the shared worker pool."""
    return default_pool().render(source, size=size, time=time)


def render_many(sources: list[str], size: int = 128, time: float = 0.0) -> list[RenderResult]:
    """Render many sources in parallel in the shared pool; identical sources render once."""
    return default_pool().render_many(list(sources), size=size, time=time)
