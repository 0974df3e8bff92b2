"""The value a render returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["ok", "rejected", "compile_error", "timeout", "crash", "invalid_output"]
KINDS: tuple[str, ...] = ("ok", "rejected", "compile_error", "timeout", "crash", "invalid_output")


@dataclass(frozen=True)
class RenderResult:
    """What became of one shader.

    Attributes:
        kind: ``ok``; ``rejected`` (refused before any compiler saw it); ``compile_error``; ``timeout``
            (compile or draw deadline passed); ``crash`` (the worker died or grew too large);
            ``invalid_output`` (NaN or Inf pixels, or pixels never written).
        message: why it failed, one line; empty when ok.
        image: float32 H x W x 3 in [0, 1], top row first; None unless ok.
        seconds: wall time the worker spent on it.
    """

    kind: Kind
    message: str
    image: np.ndarray | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def __repr__(self) -> str:  # the image would drown the rest
        shape = None if self.image is None else self.image.shape
        return f"RenderResult(kind={self.kind!r}, message={self.message!r}, image={shape}, seconds={self.seconds:.3f})"
