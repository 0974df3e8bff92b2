"""Shared fixtures. The GL context lives in the render pool's worker processes, created here once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

TESTS = Path(__file__).parent
FAILURES = TESTS / "_failures"


@pytest.fixture(scope="session")
def pool():
    """One real render pool (EGL contexts in worker processes) for the whole session."""
    from earthshader.render import RenderPool

    with RenderPool(workers=2, compile_timeout=5.0, draw_timeout=3.0, max_worker_mb=1024) as p:
        yield p


def assert_images_close(
    actual: np.ndarray, expected: np.ndarray, name: str, atol: float = 2 / 255, frac: float = 0.002
):
    """Images match when at most ``frac`` of pixels differ by more than ``atol``.

    On failure, writes actual, expected and an amplified difference to ``tests/_failures/NAME_*.png``.
    """
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual.astype(np.float32) - expected.astype(np.float32)).max(axis=2)
    bad = float((diff > atol).mean())
    if bad > frac:
        from PIL import Image

        FAILURES.mkdir(exist_ok=True)
        for tag, img in (
            ("actual", actual),
            ("expected", expected),
            ("diff", np.repeat(diff[..., None], 3, 2) * 4),
        ):
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(FAILURES / f"{name}_{tag}.png")
        pytest.fail(
            f"{name}: {bad:.2%} of pixels differ by more than {atol:.4f}; see {FAILURES}/{name}_diff.png"
        )


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
