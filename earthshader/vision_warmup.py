"""Vision warmup: teach a from-scratch vision tower what is where before the language model reads it.

Why (``bench/LEARNING.md``): trained end to end with the weighted cross-entropy alone, the tiny
model's vision tower barely moved. A ridge probe on its image tokens read a single shape's centre to
0.22 uv units from the random tower and to 0.18 after 750 SFT steps (guessing the middle: 0.49), and the
model wrote the same few numbers for every picture. The language model learns the GLSL template from
text alone, long before the weak gradient through the image tokens makes them worth reading.

So before SFT, when the recipe asks (``vision_warmup_steps``), the tower and its merger train on a
dense task read straight off the dataset's ``scene`` column: every merged image token (the vectors the
language model sees) predicts, through a linear head that is thrown away afterwards,

- which primitive covers its square of the picture (or none),
- that primitive's parameters (centre x, y and its first two sizes, in uv units),
- the fraction of its square that is foreground.

After it, each image token says "I am part of a circle centred at (x, y) with radius r", which is
what the reasoning text must say; the language model's job becomes reading, not seeing. The head
sees one token at a time, so position can only come from the token itself: the coordinate channels
of the tiny model's processor (``Qwen2VLCoordImageProcessor``) supply it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from earthshader.data import inside_mask
from earthshader.errors import UsageError
from earthshader.scenes import PRIMITIVES, Scene, scene_from_json

logger = logging.getLogger(__name__)

TYPES = ("none", *PRIMITIVES)  # class 0: no shape covers the token's square
N_PARAMS = 4  # x, y, first size, second size (0 where a primitive has one)
SAMPLES_PER_SIDE = 8  # points per token side at which the shapes' distance functions are read


@dataclass(frozen=True)
class TokenTargets:
    """Targets for each merged image token of one picture, in the processor's token order."""

    types: np.ndarray  # (n,) int64: index into TYPES
    params: np.ndarray  # (n, N_PARAMS) float32: the covering shape's parameters (0 where none)
    coverage: np.ndarray  # (n,) float32: foreground fraction of the token's square


def _shape_params(shape) -> list[float]:
    params = shape.params()  # x, y, then sizes (then an angle ``a``, for rotatable shapes)
    sizes = [v for k, v in params.items() if k not in ("x", "y", "a")][:2]
    return [params["x"], params["y"], *sizes, *[0.0] * (2 - len(sizes))]


def token_targets(scene: Scene, tokens_h: int, tokens_w: int) -> TokenTargets:
    """Dense targets of a scene for a ``tokens_h x tokens_w`` grid of merged tokens over the picture.

    The picture spans uv x in [-w/h, w/h] and y in [-1, 1]; tokens run in rows from the top left,
    the order of Qwen2-VL's merged tokens. A token belongs to the shape that covers most of its
    sample points; a token no shape touches is "none".
    """
    aspect = tokens_w / tokens_h
    n = SAMPLES_PER_SIDE
    # sample points at the centres of an n x n sub-grid of each token's square
    fx = (np.arange(tokens_w * n) + 0.5) / (tokens_w * n)
    fy = (np.arange(tokens_h * n) + 0.5) / (tokens_h * n)
    px, py = np.meshgrid((2 * fx - 1) * aspect, 1 - 2 * fy)
    fields = [shape.sdf(px, py) for shape in scene.shapes]

    def per_token(mask: np.ndarray) -> np.ndarray:  # (H*n, W*n) -> (tokens,) counts
        return mask.reshape(tokens_h, n, tokens_w, n).sum(axis=(1, 3)).reshape(-1)

    counts = np.stack([per_token(d < 0) for d in fields])  # (shapes, tokens)
    owner = counts.argmax(axis=0)
    covered = counts.max(axis=0) > 0
    type_index = {name: i + 1 for i, name in enumerate(PRIMITIVES)}
    params_by_shape = np.array([_shape_params(s) for s in scene.shapes], dtype=np.float32)
    types = np.where(covered, [type_index[scene.shapes[i].type_name] for i in owner], 0)
    params = np.where(covered[:, None], params_by_shape[owner], 0.0).astype(np.float32)
    coverage = (per_token(inside_mask(scene, fields)) / (n * n)).astype(np.float32)
    return TokenTargets(types.astype(np.int64), params, coverage)


def warmup_vision(
    model,
    image_processor,
    dataset,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model``'s vision tower and merger on the dense scene task for ``steps`` steps, in place.

    ``dataset`` needs ``image`` and ``scene`` (JSON) columns, as ``earthshader data`` writes them for
    synthetic stages. Returns the loss of every step. Only the vision tower's weights change.
    """
    if steps <= 0:
        return []
    if "scene" not in dataset.column_names:
        raise UsageError("vision warmup needs a 'scene' column (a synthetic stage's dataset)")
    visual = model.model.visual
    merge = visual.spatial_merge_size
    hidden = model.config.vision_config.hidden_size
    head = torch.nn.Linear(hidden, len(TYPES) + N_PARAMS + 1)
    params = [p for p in visual.parameters() if p.requires_grad]
    if not params:
        raise UsageError("vision warmup: the vision tower is frozen (train_vision_tower: false)")
    optimizer = torch.optim.AdamW([*params, *head.parameters()], lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    rng = np.random.default_rng(seed)
    dtype = next(visual.parameters()).dtype
    was_training = visual.training
    visual.train()
    losses: list[float] = []
    start = time.monotonic()
    bar = tqdm(range(steps), desc="vision warmup", disable=not progress)
    for _ in bar:
        rows = dataset[rng.choice(len(dataset), size=min(batch_size, len(dataset)), replace=False).tolist()]
        batch = image_processor(images=[im.convert("RGB") for im in rows["image"]], return_tensors="pt")
        grid = batch["image_grid_thw"]
        try:
            targets = [
                token_targets(scene_from_json(text), int(h) // merge, int(w) // merge)
                for text, (_, h, w) in zip(rows["scene"], grid.tolist(), strict=True)
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"vision warmup: a row's 'scene' is not a scene ({exc})") from None
        tokens = model.model.get_image_features(batch["pixel_values"].to(dtype), grid).pooler_output
        tokens = torch.cat(list(tokens)) if isinstance(tokens, tuple | list) else tokens
        out = head(tokens).float()
        types = torch.from_numpy(np.concatenate([t.types for t in targets]))
        values = torch.from_numpy(np.concatenate([t.params for t in targets]))
        coverage = torch.from_numpy(np.concatenate([t.coverage for t in targets]))
        covered = (types > 0).float()
        k = len(TYPES)
        loss = (
            torch.nn.functional.cross_entropy(out[:, :k], types)
            + 10.0
            * (((out[:, k : k + N_PARAMS] - values) ** 2).sum(-1) * covered).sum()
            / covered.sum().clamp(min=1)
            + torch.nn.functional.mse_loss(out[:, -1], coverage)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    visual.train(was_training)
    logger.info(
        "vision warmup: %d steps in %.0f s, loss %.3f -> %.3f",
        steps,
        time.monotonic() - start,
        losses[0],
        float(np.mean(losses[-10:])),
    )
    return losses
