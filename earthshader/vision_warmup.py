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
- the fraction of its square that is foreground,
- with ``angle_weight``, that primitive's turn, as a point on the circle of its symmetry period (a
  hexagon turned by 0.02 and by 1.03 rad looks the same), where it can turn;
- with ``pair_weight``, what a token shares with a second shape: the operator that joins its covering
  shape to the scene (the first shape takes the operator that joins the second to it), and the type
  and parameters of the shape that covers the next most of its square (or none). Without them a
  token names one owner, and where two shapes meet, which is where pairs go wrong, it names one.

After it, each image token says "I am part of a circle centred at (x, y) with radius r", which is
what the reasoning text must say; the language model's job becomes reading, not seeing. The head
sees one token at a time, so position can only come from the token itself: the coordinate channels
of the tiny model's processor (``Qwen2VLCoordImageProcessor``) supply it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from earthshader.data import inside_mask
from earthshader.errors import UsageError
from earthshader.scenes import OPERATORS, PRIMITIVES, Scene, scene_from_json

logger = logging.getLogger(__name__)

TYPES = ("none", *PRIMITIVES)  # class 0: no shape covers the token's square
N_PARAMS = 4  # x, y, first size, second size (0 where a primitive has one)
PAIR_OUTPUTS = len(OPERATORS) + len(TYPES) + N_PARAMS  # the pair head: operator, second type, its params
SAMPLES_PER_SIDE = 8  # points per token side at which the shapes' distance functions are read


@dataclass(frozen=True)
class TokenTargets:
    """Targets for each merged image token of one picture, in the processor's token order."""

    types: np.ndarray  # (n,) int64: index into TYPES
    params: np.ndarray  # (n, N_PARAMS) float32: the covering shape's parameters (0 where none)
    coverage: np.ndarray  # (n,) float32: foreground fraction of the token's square
    angle: np.ndarray  # (n, 2) float32: cos, sin of 2 pi angle / period of the covering shape (0 where none)
    turns: np.ndarray  # (n,) bool: the covering shape can turn (its angle is a target)
    op: np.ndarray  # (n,) int64: index into OPERATORS of the covering shape's operator; -1: none
    second: np.ndarray  # (n,) int64: index into TYPES of the shape covering the next most; 0: none
    second_params: np.ndarray  # (n, N_PARAMS) float32: that shape's parameters (0 where none)


def _shape_params(shape) -> list[float]:
    params = shape.params()  # x, y, then sizes (then an angle ``a``, for rotatable shapes)
    sizes = [v for k, v in params.items() if k not in ("x", "y", "a")][:2]
    return [params["x"], params["y"], *sizes, *[0.0] * (2 - len(sizes))]


def _angle_point(shape) -> list[float]:
    if not shape.angle_period:
        return [0.0, 0.0]
    turn = 2.0 * np.pi * shape.angle / shape.angle_period
    return [float(np.cos(turn)), float(np.sin(turn))]


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
    angles = np.array([_angle_point(s) for s in scene.shapes], dtype=np.float32)
    turns = covered & np.array([bool(s.angle_period) for s in scene.shapes])[owner]
    angle = np.where(turns[:, None], angles[owner], 0.0).astype(np.float32)
    # the operator that joins each shape in: shape i > 0 is folded in by ops[i - 1]; the first, by ops[0]
    joins = [OPERATORS.index(op.kind) for op in scene.ops]
    shape_op = np.array(joins[:1] + joins if joins else [-1] * len(scene.shapes))
    op = np.where(covered, shape_op[owner], -1)
    if len(scene.shapes) > 1:  # the runner-up: second in a stable sort whose first is the owner
        runner = np.argsort(-counts, axis=0, kind="stable")[1]  # ties go to the earlier shape, as argmax
        shared = np.take_along_axis(counts, runner[None], axis=0)[0] > 0
    else:  # one shape: no runner-up to share a token with
        runner, shared = owner, np.zeros_like(covered)
    second = np.where(shared, [type_index[scene.shapes[i].type_name] for i in runner], 0)
    second_params = np.where(shared[:, None], params_by_shape[runner], 0.0).astype(np.float32)
    return TokenTargets(
        types.astype(np.int64),
        params,
        coverage,
        angle,
        turns,
        op.astype(np.int64),
        second.astype(np.int64),
        second_params,
    )


class RowCache:
    """Each dataset row's processed pixels and token targets, made on the row's first draw and kept.

    A warmup of 2,500 steps of 32 draws each row of an 8,000-row dataset ten times. Done afresh each
    time, decoding the PNG, the image processor (resize, normalise, patchify: ~2 ms an image) and the
    targets took 0.085 s of a 0.34 s step (``bench/LEARNING.md``, session 8). The pixels are kept
    compact: Qwen2-VL's patches hold the picture once per temporal patch (twice, for a still image),
    and the coordinate channels of ``Qwen2VLCoordImageProcessor`` are the same for every picture of one
    size. A row keeps one copy of its colour channels (150 KB at 112 px) and the patches are rebuilt
    from it; each row's rebuild is checked against the processor's output when it is kept, and a row
    that does not rebuild exactly (another processor's layout) keeps its full patches. Pixels stop
    being kept past ``max_bytes``; batches are the same with or without the cache.
    """

    def __init__(self, dataset, image_processor, merge: int, max_bytes: int = 2 << 30):
        self.dataset = dataset
        self.image_processor = image_processor
        self.merge = merge
        self.max_bytes = max_bytes
        self.bytes = 0
        self.targets: dict[int, TokenTargets] = {}
        self.grids: dict[int, tuple[int, int, int]] = {}
        self.pixels: dict[int, torch.Tensor] = {}  # compact (n, colours, 1, P) or full (n, D)
        self.extras: dict[tuple[int, int, int], torch.Tensor] = {}  # per grid: (n, extra, T, P)
        self.temporal = int(getattr(image_processor, "temporal_patch_size", 1) or 1)
        self.patch = int(getattr(image_processor, "patch_size", 1) or 1) ** 2
        self.extra = 2 if getattr(image_processor, "coord_channels", False) else 0

    def _compact(self, grid: tuple[int, int, int], full: torch.Tensor) -> torch.Tensor:
        n, d = full.shape
        channels = d // (self.temporal * self.patch)
        if channels * self.temporal * self.patch != d or channels <= self.extra:
            return full
        four = full.view(n, channels, self.temporal, self.patch)
        if grid not in self.extras:  # the same for every picture of this size, or the check below fails
            self.extras[grid] = four[:, channels - self.extra :].clone()
        compact = four[:, : channels - self.extra, :1].clone()
        return compact if torch.equal(self._rebuild(grid, compact), full) else full

    def _rebuild(self, grid: tuple[int, int, int], kept: torch.Tensor) -> torch.Tensor:
        if kept.dim() == 2:
            return kept
        n = kept.shape[0]
        colour = kept.expand(-1, -1, self.temporal, -1)
        return torch.cat([colour, self.extras[grid]], dim=1).reshape(n, -1)

    def batch(self, indices: list[int]):
        """``(pixel_values, image_grid_thw, targets)`` for the rows ``indices``, in their order."""
        fresh: dict[int, torch.Tensor] = {}
        missing = [i for i in dict.fromkeys(indices) if i not in self.pixels]  # new, or past the budget
        if missing:
            rows = self.dataset[missing]
            out = self.image_processor(
                images=[im.convert("RGB") for im in rows["image"]], return_tensors="pt"
            )
            grids = [tuple(int(v) for v in g) for g in out["image_grid_thw"].tolist()]
            pieces = torch.split(out["pixel_values"], [t * h * w for t, h, w in grids])
            for i, text, grid, piece in zip(missing, rows["scene"], grids, pieces, strict=True):
                if i not in self.targets:
                    try:
                        scene = scene_from_json(text)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise UsageError(f"vision warmup: a row's 'scene' is not a scene ({exc})") from None
                    self.targets[i] = token_targets(scene, grid[1] // self.merge, grid[2] // self.merge)
                    self.grids[i] = grid
                fresh[i] = piece
                if self.bytes < self.max_bytes:
                    kept = self._compact(grid, piece)
                    self.pixels[i] = kept
                    self.bytes += kept.numel() * kept.element_size()
        pixels = torch.cat(
            [fresh[i] if i in fresh else self._rebuild(self.grids[i], self.pixels[i]) for i in indices]
        )
        grid = torch.tensor([self.grids[i] for i in indices])
        return pixels, grid, [self.targets[i] for i in indices]


@dataclass
class WarmupResult:
    """What a warmup did: the loss of every step, and (given held-out rows) what the tower reads there."""

    losses: list[float]
    held_out: dict = field(default_factory=dict)


def _image_tokens(model, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    first = next(model.model.visual.parameters())
    tokens = model.model.get_image_features(pixels.to(first.device, first.dtype), grid.to(first.device))
    tokens = tokens.pooler_output
    return torch.cat(list(tokens)) if isinstance(tokens, tuple | list) else tokens


def _stack(targets: list[TokenTargets], name: str, device) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([getattr(t, name) for t in targets])).to(device)


@torch.no_grad()
def read_held_out(model, head, angle_head, cache: RowCache, batch_size: int = 32, pair_head=None) -> dict:
    """What the warmed tower's tokens say on rows it did not train on, through the warmup's heads.

    ``type_accuracy``: share of covered tokens whose covering primitive is named right (and per type,
    ``types``); ``none_accuracy``: share of empty tokens called empty; ``centre_error``: median distance
    of the covering shape's predicted centre from the truth (uv units); ``size_error``: median error
    of its sizes (uv units, the mean over the first two it has: a radius, a box's half sides);
    ``angle_error``: median error of the turn of shapes that can turn (radians, within the shape's
    symmetry period), with an angle head.
    With a pair head: ``op_accuracy`` (share of covered tokens of scenes with operators whose covering
    shape's operator is named right), ``second_accuracy`` (share of tokens two shapes share whose second
    shape's type is named right) and ``second_centre_error`` (the median error of its centre).
    """
    was_training = model.model.visual.training
    model.model.visual.eval()
    names, right, empty_right, centre, size, angle = [], [], [], [], [], []
    op_right, second_right, second_centre = [], [], []
    k = len(TYPES)
    for lo in range(0, len(cache.dataset), batch_size):
        pixels, grid, targets = cache.batch(list(range(lo, min(lo + batch_size, len(cache.dataset)))))
        tokens = _image_tokens(model, pixels, grid)
        out = head(tokens).float().cpu()
        types = _stack(targets, "types", "cpu")
        covered = types > 0
        guess = out[:, :k].argmax(-1)
        names += [TYPES[i] for i in types[covered].tolist()]
        right += (guess == types)[covered].tolist()
        empty_right += (guess == 0)[~covered].tolist()
        params = _stack(targets, "params", "cpu")
        centre += (out[:, k : k + 2] - params[:, :2]).norm(dim=-1)[covered].tolist()
        has = params[:, 2:N_PARAMS] != 0  # a second size only where the primitive has one
        miss = ((out[:, k + 2 : k + N_PARAMS] - params[:, 2:N_PARAMS]).abs() * has).sum(-1)
        size += (miss / has.sum(-1).clamp(min=1))[covered].tolist()
        if angle_head is not None:
            turns = _stack(targets, "turns", "cpu")
            periods = torch.tensor([PRIMITIVES[TYPES[i]].angle_period if i else 0.0 for i in types.tolist()])
            truth = _stack(targets, "angle", "cpu")
            guessed = angle_head(tokens).float().cpu()
            diff = torch.atan2(guessed[:, 1], guessed[:, 0]) - torch.atan2(truth[:, 1], truth[:, 0])
            diff = torch.remainder(diff + torch.pi, 2 * torch.pi) - torch.pi  # on the period's circle
            angle += (diff.abs() / (2 * torch.pi) * periods)[turns].tolist()
        if pair_head is not None:
            op_logits, second_logits, second_params = _pair_parts(pair_head(tokens).float().cpu())
            op, second = _stack(targets, "op", "cpu"), _stack(targets, "second", "cpu")
            op_right += (op_logits.argmax(-1) == op)[op >= 0].tolist()
            shared = second > 0
            second_right += (second_logits.argmax(-1) == second)[shared].tolist()
            truth = _stack(targets, "second_params", "cpu")[:, :2]
            second_centre += (second_params[:, :2] - truth).norm(dim=-1)[shared].tolist()
    model.model.visual.train(was_training)
    right_by = {}
    for name, ok in zip(names, right, strict=True):
        right_by.setdefault(name, []).append(ok)
    figures = {
        "rows": len(cache.dataset),
        "type_accuracy": float(np.mean(right)) if right else None,
        "none_accuracy": float(np.mean(empty_right)) if empty_right else None,
        "types": {name: float(np.mean(v)) for name, v in sorted(right_by.items())},
        "centre_error": float(np.median(centre)) if centre else None,
        "size_error": float(np.median(size)) if size else None,
    }
    if angle_head is not None:
        figures["angle_error"] = float(np.median(angle)) if angle else None
    if pair_head is not None:
        figures["op_accuracy"] = float(np.mean(op_right)) if op_right else None
        figures["second_accuracy"] = float(np.mean(second_right)) if second_right else None
        figures["second_centre_error"] = float(np.median(second_centre)) if second_centre else None
    return figures


def _pair_parts(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pair head's (tokens, PAIR_OUTPUTS) output, split: operator logits, second type logits,
    second shape's parameters."""
    return torch.split(out, [len(OPERATORS), len(TYPES), N_PARAMS], dim=-1)


def _pair_loss(out: torch.Tensor, targets: list[TokenTargets], covered: torch.Tensor, device) -> torch.Tensor:
    """The pair head's loss: the covering shape's operator, the second shape's type (on covered
    tokens) and, where there is one, its parameters, each a mean over the tokens it applies to."""
    op_logits, second_logits, second_params = _pair_parts(out)
    op, second = _stack(targets, "op", device), _stack(targets, "second", device)
    has_op = (op >= 0).float()
    op_loss = torch.nn.functional.cross_entropy(op_logits, op.clamp(min=0), reduction="none")
    second_loss = torch.nn.functional.cross_entropy(second_logits, second, reduction="none")
    shared = (second > 0).float()
    miss = ((second_params - _stack(targets, "second_params", device)) ** 2).sum(-1)
    return (
        (op_loss * has_op).sum() / has_op.sum().clamp(min=1)
        + (second_loss * covered).sum() / covered.sum().clamp(min=1)
        + 10.0 * (miss * shared).sum() / shared.sum().clamp(min=1)
    )


def warmup_vision(
    model,
    image_processor,
    dataset,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    cache_bytes: int = 2 << 30,
    angle_weight: float = 0.0,
    held_out=None,
    pair_weight: float = 0.0,
) -> WarmupResult:
    """Train ``model``'s vision tower and merger on the dense scene task for ``steps`` steps, in place.

    ``dataset`` needs ``image`` and ``scene`` (JSON) columns, as ``earthshader data`` writes them for
    synthetic stages. Only the vision tower's weights change. Rows' pixels and targets are kept after
    their first draw, up to ``cache_bytes`` of pixels (``RowCache``). ``angle_weight`` > 0 adds the
    angle target of shapes that turn (Stage 2 on), with a head of its own, so that a run without it
    draws the same numbers as before it existed; ``pair_weight`` > 0 adds the pair targets (each
    token's operator, and the shape that shares it), with a head of its own too. With ``held_out`` rows (a dataset like ``dataset``),
    the result says what the warmed tower reads there (``read_held_out``).
    """
    if steps <= 0:
        return WarmupResult([])
    for rows in (dataset, held_out):
        if rows is not None and "scene" not in rows.column_names:
            raise UsageError("vision warmup needs a 'scene' column (a synthetic stage's dataset)")
    visual = model.model.visual
    merge = visual.spatial_merge_size
    hidden = model.config.vision_config.hidden_size
    device = next(visual.parameters()).device
    head = torch.nn.Linear(hidden, len(TYPES) + N_PARAMS + 1).to(device)  # drawn on the CPU: same on a GPU
    angle_head = torch.nn.Linear(hidden, 2).to(device) if angle_weight > 0 else None
    pair_head = torch.nn.Linear(hidden, PAIR_OUTPUTS).to(device) if pair_weight > 0 else None
    params = [p for p in visual.parameters() if p.requires_grad]
    if not params:
        raise UsageError("vision warmup: the vision tower is frozen (train_vision_tower: false)")
    heads = [p for h in (head, angle_head, pair_head) if h is not None for p in h.parameters()]
    optimizer = torch.optim.AdamW([*params, *heads], lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    rng = np.random.default_rng(seed)
    cache = RowCache(dataset, image_processor, merge, max_bytes=cache_bytes)
    was_training = visual.training
    visual.train()
    losses: list[float] = []
    start = time.monotonic()
    bar = tqdm(range(steps), desc="vision warmup", disable=not progress)
    for _ in bar:
        pixels, grid, targets = cache.batch(
            rng.choice(len(dataset), size=min(batch_size, len(dataset)), replace=False).tolist()
        )
        tokens = _image_tokens(model, pixels, grid)
        out = head(tokens).float()
        types = _stack(targets, "types", device)
        values = _stack(targets, "params", device)
        coverage = _stack(targets, "coverage", device)
        covered = (types > 0).float()
        k = len(TYPES)
        loss = (
            torch.nn.functional.cross_entropy(out[:, :k], types)
            + 10.0
            * (((out[:, k : k + N_PARAMS] - values) ** 2).sum(-1) * covered).sum()
            / covered.sum().clamp(min=1)
            + torch.nn.functional.mse_loss(out[:, -1], coverage)
        )
        if angle_head is not None:
            turns = _stack(targets, "turns", device).float()
            miss = ((angle_head(tokens).float() - _stack(targets, "angle", device)) ** 2).sum(-1)
            loss = loss + angle_weight * (miss * turns).sum() / turns.sum().clamp(min=1)
        if pair_head is not None:
            loss = loss + pair_weight * _pair_loss(pair_head(tokens).float(), targets, covered, device)
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
    result = WarmupResult(losses)
    if held_out is not None:
        rows = RowCache(held_out, image_processor, merge)
        result.held_out = read_held_out(model, head, angle_head, rows, pair_head=pair_head)
        logger.info("vision warmup, held out: %s", result.held_out)
    return result
