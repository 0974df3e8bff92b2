"""The shared render step: every reward of a GRPO step reads one render per distinct completion.

TRL calls each reward function in turn with the same ``completions`` list. The first reward to see a
batch extracts the code of every completion, renders the distinct ones in one parallel
:func:`earthshader.render.render_many` call, converts the targets, and keeps the results; the other
rewards of the step read them. Across steps, the render pool's own cache spares shaders the policy
repeats.

A failed render is a value (``RenderResult.kind``), so a crash or timeout in a worker costs that
sample its reward, never the run. If the pool itself fails, the whole batch scores as failed and the
error is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from earthshader.glsl import completion_text, extract_code
from earthshader.render import RenderResult, render_many

logger = logging.getLogger(__name__)

Renderer = Callable[..., list[RenderResult]]


def rendered(result: RenderResult) -> bool:
    """Whether a render produced valid pixels (the compile gate of every image reward)."""
    return result.ok and result.image is not None


@dataclass
class BatchRecord:
    """What one reward batch looked like: for the trainer's plots and logs.

    ``scores`` maps each reward's function name to its per-completion scores, filled in as the rewards
    of the step run.
    """

    texts: list[str]
    codes: list[str]
    results: list[RenderResult]
    targets: list[np.ndarray | None]
    step: int | None = None
    scores: dict[str, list[float | None]] = field(default_factory=dict)


def to_target(image: Any, size: int) -> np.ndarray | None:
    """A target image as float32 ``size x size x 3`` in [0, 1], top row first, like a render.

    Accepts a PIL image, a uint8 array (0-255) or a float array (0-1), grey, RGB or RGBA. Images of
    another size are resized with area averaging (``Image.BOX``), as a downscaled render would be.
    """
    if image is None:
        return None
    if isinstance(image, list | tuple):  # an `images` column: the first image is the target
        return to_target(image[0], size) if image else None
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"a target image must be H x W (x 1, 3 or 4), not {arr.shape}")
        arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
        if arr.shape[:2] == (size, size):
            return np.ascontiguousarray(arr)
        pil = Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BOX)
    return np.asarray(pil, dtype=np.float32) / 255.0


def _failed_batch(n: int, message: str) -> list[RenderResult]:
    return [RenderResult(kind="crash", message=message, image=None, seconds=0.0) for _ in range(n)]


class SharedRenders:
    """One render per distinct completion per step, shared by all the rewards built on it.

    Args:
        size: render and target resolution in pixels (square).
        time: the shader's ``iTime`` when rendered.
        renderer: ``render_many``-like callable (sources, size=, time=) -> results.

    ``stats`` counts renderer calls (``calls``) and the sources sent to it (``sources``): a step with
    several rewards makes one call at most.
    """

    def __init__(self, size: int = 128, time: float = 0.0, renderer: Renderer | None = None):
        self.size = int(size)
        self.time = float(time)
        self.renderer = renderer or render_many
        self.stats = {"calls": 0, "sources": 0, "batches": 0, "seconds": 0.0}
        self.last: BatchRecord | None = None
        self._batch_key: Any = None  # the `completions` object of the current batch
        self._targets_key: Any = None

    def __getstate__(self) -> dict:
        # Picklable without the renders (TRL may copy reward functions across processes).
        state = self.__dict__.copy()
        state.update(last=None, _batch_key=None, _targets_key=None)
        return state

    def _render(self, codes: Sequence[str]) -> list[RenderResult]:
        distinct = list(dict.fromkeys(codes))
        start = time.perf_counter()
        self.stats["calls"] += 1
        self.stats["sources"] += len(distinct)
        try:
            results = self.renderer(distinct, size=self.size, time=self.time)
        except Exception as exc:  # a broken pool costs this batch its rewards, not the run
            logger.exception("rendering %d completions failed", len(distinct))
            results = _failed_batch(len(distinct), f"renderer failed: {exc}")
        self.stats["seconds"] += time.perf_counter() - start
        by_code = dict(zip(distinct, results, strict=True))
        return [by_code[c] for c in codes]

    def batch(
        self,
        completions: Sequence[Any],
        image: Sequence[Any] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        trainer_state: Any = None,
    ) -> BatchRecord:
        """Render ``completions`` (once per batch) and convert the targets in ``image`` (once per batch).

        TRL passes the same ``completions`` object to every reward of a step, which is how a new batch
        is told from the current one. The first call of a batch logs ``render/compile_rate``,
        ``render/distinct`` (distinct shaders over completions) and ``render/seconds`` through TRL's
        ``log_metric``.
        """
        if completions is not self._batch_key or self.last is None:
            start = time.perf_counter()
            texts = [completion_text(c) for c in completions]
            codes = [extract_code(t) for t in texts]
            results = self._render(codes)
            self.last = BatchRecord(texts=texts, codes=codes, results=results, targets=[None] * len(codes))
            self.last.step = getattr(trainer_state, "global_step", None)
            self._batch_key, self._targets_key = completions, None
            self.stats["batches"] += 1
            if log_metric is not None and codes:
                log_metric("render/compile_rate", float(np.mean([rendered(r) for r in results])))
                log_metric("render/distinct", len(set(codes)) / len(codes))
                log_metric("render/seconds", time.perf_counter() - start)
        if image is not None and image is not self._targets_key:
            if len(image) != len(self.last.codes):
                raise ValueError(f"{len(image)} target images for {len(self.last.codes)} completions")
            self.last.targets = [to_target(im, self.size) for im in image]
            self._targets_key = image
        return self.last


_default: SharedRenders | None = None


def default_renders() -> SharedRenders:
    """The module-wide shared renders (128 px) used when a reward is called without ``renders=``."""
    global _default
    if _default is None:
        _default = SharedRenders()
    return _default


def prepare(
    completions: Sequence[Any],
    image: Sequence[Any] | None,
    kwargs: dict[str, Any],
    renders: SharedRenders | None,
) -> BatchRecord:
    """The batch record for a reward call: renders, and targets from ``image`` (or ``images``)."""
    renders = renders or default_renders()
    if image is None:
        image = kwargs.get("images")
    return renders.batch(
        completions, image, log_metric=kwargs.get("log_metric"), trainer_state=kwargs.get("trainer_state")
    )


def record(batch: BatchRecord, name: str, scores: list[float | None]) -> list[float | None]:
    """Keep a reward's scores on the batch record (for the trainer's plots) and return them."""
    batch.scores[name] = scores
    return scores


def gated_scores(batch, fail_score: float, score) -> list[float | None]:
    """Image-reward scores for a batch, gated on compilation.

    ``None`` where a row has no target, ``fail_score`` where the shader did not render valid pixels,
    else ``score(render_image, target_image)``.
    """
    return [
        None
        if target is None
        else float(fail_score)
        if not rendered(result)
        else float(score(result.image, target))
        for result, target in zip(batch.results, batch.targets, strict=True)
    ]


def _true_scene(text: Any):
    """The row's ``scene`` column as a Scene; None where the row has none or it does not parse."""
    from earthshader.scenes import scene_from_json

    if not isinstance(text, str) or not text:
        return None
    try:
        return scene_from_json(text)
    except (ValueError, KeyError, TypeError):
        return None


def scene_scores(batch, scene: Sequence[Any] | None, score) -> list[float | None]:
    """Scene-reward scores for a batch, gated on compilation like the image rewards.

    ``scene`` is the dataset's ``scene`` column (JSON, as the factory writes it). ``None`` where a row has
    no scene that parses, 0 where the shader did not render valid pixels or its code is not the
    canonical form :func:`earthshader.scenes.from_glsl` reads, else ``score(drawn_scene, true_scene)``.
    """
    from earthshader.scenes import from_glsl

    truths = [_true_scene(s) for s in scene] if scene is not None else [None] * len(batch.codes)
    scores: list[float | None] = []
    for code, result, truth in zip(batch.codes, batch.results, truths, strict=True):
        if truth is None:
            scores.append(None)
            continue
        drawn = from_glsl(code) if rendered(result) else None
        scores.append(0.0 if drawn is None else float(score(drawn, truth)))
    return scores
