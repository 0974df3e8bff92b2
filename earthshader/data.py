"""The dataset factory: (image, shader) pairs the project makes itself, and Shadertoy programs it ingests.

``earthshader data --stage 2 --num-samples 2000 --seed 0 --out data/stage2`` draws scenes from a
stage, prints them to canonical GLSL, renders them, keeps the ones worth learning from and writes a
Hugging Face dataset (``save_to_disk``) with train and test splits, ready for TRL's vision-language
trainers: an ``image`` column and conversational ``prompt`` / ``completion`` columns.

Every sample ``i`` comes from its own generator seeded with ``(seed, i)`` and samples are taken in
index order, so the same arguments give the same rows, the same fingerprint and the same bytes on
disk whatever the number of render workers or the batch sizes.

The visual entropy filter rejects, with a counted reason: duplicates, shapes mostly off-screen, too
small or hidden by the others (checked in NumPy before any rendering), failed renders, and images
that are nearly one colour.

``earthshader data --from-shadereval PATH --out DIR`` does the same for a local copy of
``Vipitis/Shadereval-inputs`` (parquet, JSON lines or a saved dataset): single-pass programs that
render within the deadlines and pass the filter, with ``id``, ``author`` and ``license`` kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from earthshader.errors import ArgumentParser, UsageError
from earthshader.scenes import PRINTERS, STAGES, Scene, Stage, format_completion, pixel_grid

logger = logging.getLogger(__name__)

PROMPT = (
    "Write a Shadertoy GLSL fragment shader (void mainImage(out vec4 fragColor, in vec2 fragCoord)) "
    "that renders this image. First describe what you see in one or two sentences, then give the "
    "complete code in a ```glsl block."
)
SHADEREVAL_REASONING = "A Shadertoy program; the code below renders this image."

# A Shadertoy program that reads a texture, a buffer or the sound pass needs more than one pass.
_MULTIPASS_RE = re.compile(r"\biChannel\w*|\bmainSound\b|\bmainCubemap\b|\bmainVR\b")


def user_prompt(text: str = PROMPT) -> list[dict[str, Any]]:
    """The conversational prompt TRL's VLM trainers expect: one user turn, an image placeholder, the text."""
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}]


def assistant_turn(text: str) -> list[dict[str, Any]]:
    """A conversational completion: one assistant turn holding the text."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


# ----------------------------------------------------------------------------------------------------
# The visual entropy filter


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the visual entropy filter; fractions are of the whole frame unless said otherwise."""

    grid: int = field(default=48, metadata={"help": "Resolution of the NumPy check run before rendering."})
    min_foreground: float = field(
        default=0.01, metadata={"help": "Least fraction of the frame that is shape."}
    )
    max_foreground: float = field(
        default=0.85, metadata={"help": "Most fraction of the frame that is shape."}
    )
    min_on_screen: float = field(
        default=0.5, metadata={"help": "Least fraction of each shape's own area that lies inside the frame."}
    )
    min_shape_area: float = field(default=0.003, metadata={"help": "Least on-screen area of each shape."})
    min_shape_effect: float = field(
        default=0.003,
        metadata={"help": "Least fraction of pixels that change when any one shape is removed."},
    )
    min_visible_share: float = field(
        default=0.3,
        metadata={
            "help": "In a scene of unions, least share of each shape's own on-screen area that changes "
            "when it is removed: a shape mostly under another cannot be told from the picture."
        },
    )
    contrast: float = field(
        default=0.1, metadata={"help": "Colour distance (max over RGB) from the dominant colour that counts."}
    )
    min_contrast_fraction: float = field(
        default=0.01, metadata={"help": "Least fraction of pixels that differ from the dominant colour."}
    )


def inside_mask(scene: Scene, fields: list[np.ndarray], skip: int | None = None) -> np.ndarray:
    """Where the scene is inside, from its shapes' distance ``fields``, folded with its operators;
    ``skip`` leaves one shape (and the operator that joins it) out."""
    pairs = [p for i, p in enumerate(zip((None, *scene.ops), fields, strict=True)) if i != skip]
    acc = pairs[0][1]
    for op, d in pairs[1:]:
        acc = op.apply(acc, d)
    return acc < 0.0


def scene_rejection(scene: Scene, config: FilterConfig = FilterConfig()) -> str | None:
    """Why a scene is not worth rendering (``off_screen``, ``too_small``, ``too_large``, ``hidden_shape``), or None.

    Runs the scene's distance functions in NumPy on a coarse grid: each shape must lie mostly inside
    the frame and be large enough to see, the whole must cover a sensible part of the frame, and
    every shape must change the picture, over at least ``min_visible_share`` of its own area (a
    subtraction that misses, a shape mostly under another, an intersection that cuts nothing away
    all teach the model to write what it cannot see).
    """
    x, y = pixel_grid(config.grid, np.float32)  # float32 is plenty for counting pixels, and faster
    pixel_area = (2.0 / config.grid) ** 2  # the frame spans 2 x 2 uv units
    fields_ = [shape.sdf(x, y) for shape in scene.shapes]
    own_pixels = [np.count_nonzero(d < 0.0) for d in fields_]  # each shape's on-screen area, in pixels
    for shape, pixels in zip(scene.shapes, own_pixels, strict=True):
        on_screen = pixels * pixel_area
        if on_screen < config.min_on_screen * shape.area():
            return "off_screen"
        if on_screen < config.min_shape_area * 4.0:
            return "too_small"

    inside = inside_mask(scene, fields_)
    fraction = float(inside.mean())
    if fraction < config.min_foreground:
        return "too_small"
    if fraction > config.max_foreground:
        return "too_large"
    if len(scene.shapes) > 1:
        # Under unions a shape shows where no other covers it; a subtraction or an intersection shows
        # only where it cuts, which the frame-wide test covers.
        unions = all(op.kind == "union" for op in scene.ops)
        for i, pixels in enumerate(own_pixels):
            changed = np.count_nonzero(inside_mask(scene, fields_, skip=i) != inside)
            if changed < config.min_shape_effect * inside.size:
                return "hidden_shape"
            if unions and changed < config.min_visible_share * pixels:
                return "hidden_shape"
    return None


def image_rejection(image: np.ndarray, config: FilterConfig = FilterConfig()) -> str | None:
    """``near_uniform`` when almost every pixel has the image's dominant colour, else None."""
    # One contiguous plane per channel: a partition per plane finds the median (np.median's value,
    # the mean of the two middle pixels), and a comparison per plane replaces a max over the short
    # channel axis, six times faster in all than np.median and that max.
    planes = np.ascontiguousarray(np.moveaxis(image.reshape(-1, image.shape[-1]), 1, 0))
    n = planes.shape[1]
    middle = np.partition(planes, [(n - 1) // 2, n // 2], axis=1)
    dominant = (middle[:, (n - 1) // 2] + middle[:, n // 2]) / 2
    differs = np.zeros(n, dtype=bool)
    for plane, value in zip(planes, dominant, strict=True):
        differs |= np.abs(plane - value) > config.contrast
    if float(differs.mean()) < config.min_contrast_fraction:
        return "near_uniform"
    return None


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB float image in [0, 1] as PNG bytes (deterministic: same pixels, same bytes)."""
    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # zlib level 3: twice as fast as Pillow's default 6, files about 15% larger (bench/RESULTS.md)
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


@dataclass
class Summary:
    """What a run kept and rejected, by reason, and where its time went (the timings are not saved)."""

    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    candidates: int = 0
    renders: int = 0
    render_seconds: float = 0.0
    other_seconds: float = 0.0

    def line(self) -> str:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items())) or "none"
        return f"kept {self.kept} of {self.candidates} candidates; rejected {sum(self.rejected.values())}: {reasons}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "candidates": self.candidates,
            "rejected": dict(sorted(self.rejected.items())),
        }


# ----------------------------------------------------------------------------------------------------
# Synthetic samples


@dataclass
class _Candidate:
    index: int
    scene: Scene
    reason: str | None = None
    code: str = ""


def _candidates(
    spec: Stage,
    seed: int,
    start: int,
    stop: int,
    seen: set,
    config: FilterConfig,
    held_out: frozenset[str] = frozenset(),
) -> list[_Candidate]:
    """Candidates ``start..stop-1``: drawn, deduplicated (against every earlier index), kept apart from
    ``held_out`` (scenes as the JSON of their canonical form, :meth:`Printer.key`) and checked in NumPy."""
    printer = PRINTERS[spec.printer]
    out = []
    for index in range(start, stop):
        scene = printer.sample(spec, np.random.default_rng([seed, index]))
        if scene in seen:
            out.append(_Candidate(index, scene, "duplicate"))
            continue
        seen.add(scene)
        if held_out and printer.key(scene) in held_out:
            out.append(_Candidate(index, scene, "held_out"))
            continue
        # 2D SDF scenes are checked before rendering; other families go straight to the image check
        reason = scene_rejection(scene, config) if isinstance(scene, Scene) else None
        out.append(_Candidate(index, scene, reason, printer.to_glsl(scene) if reason is None else ""))
    return out


def _timed(
    render_many: Callable[[list[str], int], list], size: int, summary: Summary
) -> Callable[[list[str]], list]:
    def render(codes: list[str]) -> list:
        start = time.perf_counter()
        results = render_many(codes, size) if codes else []
        summary.render_seconds += time.perf_counter() - start
        summary.renders += len(codes)
        return results

    return render


def _shared_render_many(codes: list[str], size: int) -> list:
    from earthshader.render import render_many

    return render_many(codes, size=size)


def stage_variant(
    stage: int, grid: float | None = None, max_shapes: int | None = None, reading_order: bool | None = None
) -> Stage:
    """Stage ``stage`` as drawn by the data factory, with a coarser grid, fewer shapes or another order if asked.

    ``grid`` is the spacing of every sampled value in uv units (0.05: centres and sizes are multiples
    of 0.05); it must be a positive multiple of the stage's last printed decimal. ``max_shapes`` caps
    the shape count (1: single shapes, the first step of the tiny model's curriculum). ``reading_order``
    sets whether shapes whose operators let any order draw the same picture are listed left to right
    (:attr:`earthshader.scenes.Stage.reading_order`; Stage 1 does, Stage 2 does not by default).

    >>> stage_variant(1, grid=0.05, max_shapes=1).step, stage_variant(1, max_shapes=1).max_shapes
    (5, 1)
    """
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage} (known: {', '.join(map(str, sorted(STAGES)))})")
    spec = STAGES[stage]
    changes: dict[str, Any] = {}
    if grid is not None:
        unit = 10.0**-spec.precision
        step = round(grid / unit)
        if not grid > 0 or step < 1 or abs(step * unit - grid) > 1e-9:
            raise UsageError(
                f"--grid must be a positive multiple of {unit:g} for stage {stage}, not {grid:g}"
            )
        changes["step"] = step
    if max_shapes is not None:
        if not 1 <= max_shapes <= spec.max_shapes:
            raise UsageError(
                f"--max-shapes must be in 1..{spec.max_shapes} for stage {stage}, not {max_shapes}"
            )
        changes["max_shapes"] = max_shapes
        changes["min_shapes"] = min(spec.min_shapes, max_shapes)
        if spec.count_weights is not None:
            changes["count_weights"] = spec.count_weights[: max_shapes - changes["min_shapes"] + 1]
    if reading_order is not None:
        changes["reading_order"] = reading_order
    return replace(spec, **changes) if changes else spec


def generate(
    stage: int,
    num_samples: int,
    seed: int = 0,
    size: int = 128,
    render_many: Callable[[list[str], int], list] | None = None,
    config: FilterConfig = FilterConfig(),
    max_batch: int = 256,
    progress: bool = True,
    overlap: bool = True,
    grid: float | None = None,
    max_shapes: int | None = None,
    held_out: frozenset[str] = frozenset(),
    reading_order: bool | None = None,
) -> tuple[list[dict[str, Any]], Summary]:
    """The first ``num_samples`` candidates of a stage (in index order) that pass the filter, as rows.

    While one batch renders (a second thread waits on the workers), the next is drawn and checked,
    and it goes to the workers before the first one's images are checked and encoded, so the CPU
    side overlaps the render workers. Which candidates are kept depends only on ``(stage, seed)``.

    Args:
        stage: a key of :data:`earthshader.scenes.STAGES`.
        num_samples: rows to keep.
        seed: run seed; candidate ``i`` draws from ``np.random.default_rng([seed, i])``.
        size: rendered image side in pixels.
        render_many: ``(sources, size) -> results``; the shared pool's when None.
        config: filter thresholds.
        max_batch: most candidates rendered in one call (a progress step); 256 beat 128 by about 12%
            in bench/data.py (fewer calls, so fewer tails where one render worker waits for the other).
        progress: show a tqdm bar.
        overlap: draw the next batch while the current one renders.
        grid, max_shapes, reading_order: the stage with a coarser grid, fewer shapes or its shapes listed
            in another order (:func:`stage_variant`).
        held_out: scenes (as the ``scene`` column writes them) never to keep: another dataset's test
            split (:func:`held_out_scenes`), so that a model trained on both is audited on unseen scenes.
            A scene is held out in any order of its shapes that draws the same picture, so a dataset in
            reading order keeps out another's scenes listed in the drawn order, and the other way round.

    Returns:
        The rows and a :class:`Summary`; rejections are counted up to the last kept candidate only, so
        the summary, like the rows, does not depend on batch sizes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    spec = stage_variant(stage, grid=grid, max_shapes=max_shapes, reading_order=reading_order)
    printer = PRINTERS[spec.printer]
    held_out = frozenset(printer.key(printer.from_json(text)) for text in held_out)
    summary = Summary()
    render = _timed(render_many or _shared_render_many, size, summary)
    max_candidates = 50 * num_samples + 1000  # a stage whose filter rejects nearly everything must stop
    rows: list[dict[str, Any]] = []
    seen: set[Scene] = set()
    rejected: list[tuple[int, str]] = []
    next_index = 0
    accept_rate = 0.5

    def draw(expected_rows: float) -> list[_Candidate]:
        nonlocal next_index
        if next_index >= max_candidates:
            raise UsageError(
                f"stage {stage} gave only {len(rows)} of {num_samples} samples from {next_index} candidates; "
                "check the stage's ranges and the filter"
            )
        needed = max(num_samples - expected_rows, 1.0)
        batch = min(max_batch, max(8, math.ceil(1.1 * needed / max(accept_rate, 0.05))))
        out = _candidates(spec, seed, next_index, next_index + batch, seen, config, held_out)
        next_index += batch
        return out

    start = time.perf_counter()
    with (
        ThreadPoolExecutor(max_workers=1) as renderer,
        tqdm(total=num_samples, desc=f"stage {stage}", unit="sample", disable=not progress) as bar,
    ):

        def submit(candidates: list[_Candidate]):
            to_render = [c for c in candidates if c.reason is None]
            return to_render, renderer.submit(render, [c.code for c in to_render])

        batch = draw(0)
        rendering = submit(batch)
        while len(rows) < num_samples:
            # Draw the next batch while this one renders, unless this one very likely finishes the job,
            # and send it to the workers before this one's images are checked and encoded.
            expected = len(rows) + accept_rate * len(batch)
            following = draw(expected) if overlap and expected < num_samples else None
            to_render, future = rendering
            results = dict(zip((c.index for c in to_render), future.result(), strict=True))
            if following is not None:
                rendering = submit(following)
            kept_before = len(rows)
            for c in batch:
                if len(rows) == num_samples:
                    break
                if c.reason is None:
                    result = results[c.index]
                    c.reason = (
                        f"render_{result.kind}" if not result.ok else image_rejection(result.image, config)
                    )
                if c.reason is not None:
                    rejected.append((c.index, c.reason))
                    continue
                rows.append(_row(c, results[c.index].image, spec, stage, seed))
            accept_rate = max((len(rows) - kept_before) / len(batch), 0.05)
            bar.update(len(rows) - kept_before)
            bar.set_postfix(rejected=len(rejected))
            if len(rows) < num_samples:
                if following is None:
                    following = draw(len(rows))
                    rendering = submit(following)
                batch = following
    last = rows[-1]["index"]
    summary.rejected = Counter(reason for i, reason in rejected if i < last)
    summary.kept = len(rows)
    summary.candidates = last + 1
    summary.other_seconds = time.perf_counter() - start - summary.render_seconds
    logger.info("%s", summary.line())
    return rows, summary


def held_out_scenes(
    path: str | os.PathLike, splits: tuple[str, ...] = ("test",), flag: str = "--holdout-from"
) -> frozenset[str]:
    """The scenes of some splits of a dataset folder (as its ``scene`` column holds them).

    ``flag`` names the option that gave ``path``, for the one-line error on a folder that is not a
    dataset of `earthshader data` or lacks one of ``splits``."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError):
        data = None
    if not isinstance(data, DatasetDict):
        raise UsageError(f"{flag} {path}: not a dataset folder written by `earthshader data`")
    scenes: set[str] = set()
    for split in splits:
        if split not in data or "scene" not in data[split].column_names:
            raise UsageError(f"{flag} {path}: no {split} split with a scene column")
        scenes.update(s for s in data[split]["scene"] if s != "null")
    return frozenset(scenes)


def _row(c: _Candidate, image: np.ndarray, spec: Stage, stage: int, seed: int) -> dict[str, Any]:
    printer = PRINTERS[spec.printer]
    reasoning = printer.describe(c.scene)
    return {
        "image": {"bytes": png_bytes(image), "path": None},
        "prompt": user_prompt(),
        "reasoning": reasoning,
        "code": c.code,
        "completion": assistant_turn(format_completion(reasoning, c.code)),
        "scene": printer.to_json(c.scene),
        "stage": stage,
        "seed": seed,
        "index": c.index,
    }


# ----------------------------------------------------------------------------------------------------
# Shadereval


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a local Shadereval copy: a parquet file, a JSON lines file, or a ``save_to_disk`` folder."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {path}")
    try:
        if path.is_dir():
            from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

            loaded = load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                loaded = concatenate_datasets([loaded[name] for name in sorted(loaded)])
            assert isinstance(loaded, Dataset)
            return loaded.to_list()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with path.open(encoding="utf-8") as f:
            text = f.read()
        if path.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except UsageError:
        raise
    except Exception as exc:  # any reader's error means the same to the user: this file cannot be read
        raise UsageError(f"cannot read {path} as parquet, JSON lines or a saved dataset: {exc}") from None
    if not all(isinstance(row, dict) for row in rows):
        raise UsageError(f"{path}: every record must be an object with an image_code field")
    return rows


def ingest_shadereval(
    path: str | os.PathLike,
    size: int = 128,
    seed: int = 0,
    render_many: Callable[[list[str], int], list] | None = None,
    config: FilterConfig = FilterConfig(),
    limit: int | None = None,
    max_batch: int = 64,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Summary]:
    """Rows for the single-pass Shadereval programs that render and pass the filter, in input order.

    Programs that read ``iChannel`` inputs (textures, buffers) or define a sound, cubemap or VR pass
    are multi-pass and skipped; so are duplicates. The rest render at ``iTime = 0``, as rewards do.
    With ``limit``, rendering stops once that many rows are kept.
    """
    from tqdm.auto import tqdm

    records = read_table(path)
    if records and "image_code" not in records[0]:
        raise UsageError(f"{path}: no image_code column (columns: {', '.join(records[0])})")
    summary = Summary()
    render = _timed(render_many or _shared_render_many, size, summary)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    candidates: list[tuple[int, dict[str, Any], str]] = []
    for i, record in enumerate(records):
        code = record.get("image_code") or ""
        if not isinstance(code, str) or "mainImage" not in code:
            summary.rejected["no_main_image"] += 1
        elif _MULTIPASS_RE.search(code):
            summary.rejected["multipass"] += 1
        elif code in seen:
            summary.rejected["duplicate"] += 1
        else:
            seen.add(code)
            candidates.append((i, record, code))
    summary.candidates = len(records)
    with tqdm(total=len(candidates), desc="shadereval", unit="shader", disable=not progress) as bar:
        for b in range(0, len(candidates), max_batch):
            if limit is not None and len(rows) >= limit:
                break
            batch = candidates[b : b + max_batch]
            for (i, record, code), result in zip(batch, render([c for _, _, c in batch]), strict=True):
                reason = f"render_{result.kind}" if not result.ok else image_rejection(result.image, config)
                if reason is not None:
                    summary.rejected[reason] += 1
                    continue
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(
                    {
                        "image": {"bytes": png_bytes(result.image), "path": None},
                        "prompt": user_prompt(),
                        "reasoning": SHADEREVAL_REASONING,
                        "code": code,
                        "completion": assistant_turn(format_completion(SHADEREVAL_REASONING, code.strip())),
                        "scene": "null",
                        "stage": 0,
                        "seed": seed,
                        "index": i,
                        "id": str(record.get("id") or i),
                        "author": str(record.get("author") or ""),
                        "license": str(record.get("license") or ""),
                    }
                )
            bar.update(len(batch))
    summary.kept = len(rows)
    summary.other_seconds = time.perf_counter() - start - summary.render_seconds
    logger.info("%s", summary.line())
    return rows, summary


# ----------------------------------------------------------------------------------------------------
# Writing


def features(shadereval: bool = False):
    """The dataset schema; Shadereval rows add ``id``, ``author`` and ``license`` for attribution."""
    from datasets import Features, Image, List, Value

    turn = List(
        {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    )
    columns = {
        "image": Image(),
        "prompt": turn,
        "reasoning": Value("string"),
        "code": Value("string"),
        "completion": turn,
        "scene": Value("string"),
        "stage": Value("int32"),
        "seed": Value("int64"),
        "index": Value("int64"),
    }
    if shadereval:
        columns.update({"id": Value("string"), "author": Value("string"), "license": Value("string")})
    return Features(columns)


def content_digest(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A SHA-256 of the run's settings and every row's content: the dataset's fingerprint stems from it."""
    hasher = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for row in rows:
        hasher.update(json.dumps({k: v for k, v in row.items() if k != "image"}, sort_keys=True).encode())
        hasher.update(row["image"]["bytes"])
    return hasher.hexdigest()


def split_rows(
    rows: list[dict[str, Any]], test_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and test rows: a seeded choice of ``test_fraction`` of them for test, order kept in both."""
    n_test = (
        0
        if test_fraction <= 0 or len(rows) < 2
        else min(len(rows) - 1, max(1, round(len(rows) * test_fraction)))
    )
    test_ids = set(np.random.default_rng([seed, 1]).permutation(len(rows))[:n_test].tolist())
    train = [row for i, row in enumerate(rows) if i not in test_ids]
    test = [row for i, row in enumerate(rows) if i in test_ids]
    return train, test


def build_dataset(rows: list[dict[str, Any]], test_fraction: float, seed: int, meta: dict[str, Any]):
    """A ``DatasetDict`` with train and test splits whose fingerprints derive from the content."""
    from datasets import Dataset, DatasetDict

    digest = content_digest(rows, meta)
    schema = features(shadereval=bool(rows) and "id" in rows[0])
    splits = {}
    for name, part in zip(("train", "test"), split_rows(rows, test_fraction, seed), strict=True):
        table = Dataset.from_list(part, features=schema)
        fingerprint = hashlib.sha256(f"{digest}:{name}".encode()).hexdigest()[:16]
        splits[name] = Dataset(table.data, info=table.info, fingerprint=fingerprint)
    return DatasetDict(splits)


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder, after refusing what would lose data: a file, or a non-empty folder without overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    return out


def write_dataset(dataset, out: str | os.PathLike, overwrite: bool, meta: dict[str, Any]) -> Path:
    """Save into a temporary folder beside ``out``, then move it into place: a failure loses nothing."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset.save_to_disk(str(tmp))
        (tmp / "earthshader_data.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def fingerprint(out: str | os.PathLike) -> dict[str, str]:
    """The saved fingerprint of each split of a dataset folder."""
    result = {}
    for state in sorted(Path(out).glob("*/state.json")):
        result[state.parent.name] = json.loads(state.read_text())["_fingerprint"]
    return result


def iter_files(out: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Every file of a dataset folder with its bytes, in a stable order (for byte-for-byte comparisons)."""
    root = Path(out)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield str(path.relative_to(root)), path.read_bytes()


# ----------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="earthshader data",
        description="Build a dataset of (image, shader) pairs: synthetic scenes of a stage, or Shadereval programs.",
    )
    p.add_argument(
        "--stage", type=int, help=f"curriculum stage to draw scenes from ({', '.join(map(str, STAGES))})"
    )
    p.add_argument(
        "--from-shadereval", metavar="PATH", help="ingest a local Shadereval copy instead of a stage"
    )
    p.add_argument(
        "--num-samples", type=int, help="rows to keep (default: 2000 for a stage, all for Shadereval)"
    )
    p.add_argument(
        "--grid",
        type=float,
        help="spacing of every sampled centre and size in uv units, e.g. 0.05 (default: the stage's, 0.01)",
    )
    p.add_argument("--max-shapes", type=int, help="at most this many shapes a scene (default: the stage's)")
    p.add_argument(
        "--reading-order",
        action=argparse.BooleanOptionalAction,
        help="list the shapes left to right wherever any order draws the same picture (all union, all "
        "intersect, or two shapes under any operator but subtract); default: the stage's (stage 1 does)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    p.add_argument("--out", required=True, help="output folder for the dataset")
    p.add_argument("--test-fraction", type=float, default=0.1, help="fraction of rows in the test split")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--workers", type=int, help="render worker processes (default: one per CPU core)")
    p.add_argument(
        "--holdout-from",
        metavar="DATASET",
        help="never keep a scene of this dataset's test split (to train on both and audit on unseen scenes)",
    )
    p.add_argument(
        "--exclude-from",
        metavar="DATASET",
        action="append",
        default=[],
        help="never keep a scene of any split of this dataset (repeatable): with --test-fraction 0.999, "
        "an audit set that models trained on these never saw",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return p


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if (args.stage is None) == (args.from_shadereval is None):
        raise UsageError("give exactly one of --stage N or --from-shadereval PATH")
    if args.stage is not None and args.stage not in STAGES:
        raise UsageError(f"unknown stage {args.stage} (known: {', '.join(map(str, sorted(STAGES)))})")
    if args.num_samples is not None and args.num_samples <= 0:
        raise UsageError(f"--num-samples must be positive, not {args.num_samples}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), not {args.test_fraction}")
    if not 8 <= args.size <= 1024:
        raise UsageError(f"--size must be in 8..1024, not {args.size}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, not {args.seed}")
    if args.stage is not None:
        stage_variant(args.stage, grid=args.grid, max_shapes=args.max_shapes)  # fail before any worker starts
    elif args.grid is not None or args.max_shapes is not None or args.reading_order is not None:
        raise UsageError(
            "--grid, --max-shapes and --reading-order apply to a --stage, not to --from-shadereval"
        )
    elif args.holdout_from is not None or args.exclude_from:
        raise UsageError("--holdout-from and --exclude-from apply to a --stage, not to --from-shadereval")
    check_output(args.out, args.overwrite)
    held_out = held_out_scenes(args.holdout_from) if args.holdout_from is not None else frozenset()
    for path in args.exclude_from:
        held_out |= held_out_scenes(path, ("train", "test"), "--exclude-from")
    if args.from_shadereval is not None:
        read_table(args.from_shadereval)  # fail on an unreadable file before starting any worker

    from earthshader.render import RenderPool, default_pool

    pool = RenderPool(workers=args.workers) if args.workers else default_pool()
    try:
        render = lambda codes, size: pool.render_many(codes, size=size)  # noqa: E731
        if args.stage is not None:
            num = args.num_samples or 2000
            rows, summary = generate(
                args.stage,
                num,
                seed=args.seed,
                size=args.size,
                render_many=render,
                grid=args.grid,
                max_shapes=args.max_shapes,
                held_out=held_out,
                reading_order=args.reading_order,
            )
            meta = {"command": "data", "stage": args.stage, "num_samples": num}
            meta.update({"grid": args.grid, "max_shapes": args.max_shapes})
            if args.reading_order is not None:
                meta["reading_order"] = args.reading_order
            if args.holdout_from is not None:
                meta["holdout_from"] = str(Path(args.holdout_from).resolve())
            if args.exclude_from:
                meta["exclude_from"] = [str(Path(path).resolve()) for path in args.exclude_from]
            if args.holdout_from is not None or args.exclude_from:
                meta["held_out"] = len(held_out)
        else:
            rows, summary = ingest_shadereval(
                args.from_shadereval,
                size=args.size,
                seed=args.seed,
                render_many=render,
                limit=args.num_samples,
            )
            meta = {
                "command": "data",
                "from_shadereval": Path(args.from_shadereval).name,
                "limit": args.num_samples,
            }
    finally:
        if args.workers:
            pool.close()
    if not rows:
        raise UsageError(f"no rows passed the filter ({summary.line()}); nothing written")
    meta.update({"seed": args.seed, "size": args.size, "test_fraction": args.test_fraction})
    meta["filter"] = asdict(FilterConfig())
    meta["summary"] = summary.to_json()
    dataset = build_dataset(rows, args.test_fraction, args.seed, meta)
    meta["fingerprint"] = {name: split._fingerprint for name, split in dataset.items()}
    out = write_dataset(dataset, args.out, args.overwrite, meta)
    print(summary.line())
    print(f"wrote {out}: train {len(dataset['train'])}, test {len(dataset['test'])}")
    return 0
