"""The dense vision warmup: its per-token targets, and real steps on the tiny model's tower."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from earthshader import models  # noqa: E402
from earthshader.errors import UsageError  # noqa: E402
from earthshader.scenes import (  # noqa: E402
    OPERATORS,
    Annulus,
    Box,
    Circle,
    Hexagon,
    Op,
    Scene,
    Triangle,
    scene_to_json,
)
from earthshader.vision_warmup import TYPES, token_targets, warmup_vision  # noqa: E402


def test_token_targets_mark_the_covering_shape_of_each_token():
    # 4 x 4 tokens over [-1, 1]^2: each covers 0.5 x 0.5 uv. A circle inside the top-right token.
    scene = Scene(shapes=(Circle(0.75, 0.75, 0.2),), ops=())
    t = token_targets(scene, 4, 4)
    assert t.types.shape == (16,) and t.params.shape == (16, 4) and t.coverage.shape == (16,)
    assert TYPES[t.types[3]] == "circle" and (np.delete(t.types, 3) == 0).all()  # row 0 is the top
    assert t.params[3] == pytest.approx([0.75, 0.75, 0.2, 0.0])
    assert (np.delete(t.params, 3, axis=0) == 0).all()
    assert t.coverage[3] == pytest.approx(np.pi * 0.2**2 / 0.25, abs=0.05)


def test_token_targets_split_tokens_between_shapes_and_follow_the_union():
    scene = Scene(shapes=(Box(-0.5, -0.5, 0.45, 0.45), Annulus(0.5, 0.5, 0.3, 0.05)), ops=(Op("union"),))
    t = token_targets(scene, 4, 4)
    names = [TYPES[i] for i in t.types]
    # the box covers most of the bottom-left 2 x 2 tokens
    assert [names[i] for i in (8, 9, 12, 13)] == ["box"] * 4
    assert t.params[12] == pytest.approx([-0.5, -0.5, 0.45, 0.45])
    assert t.coverage[9] == pytest.approx(0.9 * 0.9, abs=0.1)  # it spans -0.95..-0.05 of -1..0
    # the ring's hole at (0.5, 0.5) is a corner shared by 4 tokens; all four touch the ring
    assert [names[i] for i in (2, 3, 6, 7)] == ["annulus"] * 4
    assert t.params[2] == pytest.approx([0.5, 0.5, 0.3, 0.05])
    assert 0.05 < t.coverage[2] < 0.6
    assert names[0] == "none" and t.coverage[0] == 0.0


def test_token_targets_give_the_turn_on_the_circle_of_the_shapes_symmetry():
    # a hexagon looks the same every 60 degrees: turned by 0 and by a whole period, one target
    same = [token_targets(Scene(shapes=(Hexagon(0.5, 0.5, 0.3, a),), ops=()), 4, 4) for a in (0, np.pi / 3)]
    assert same[0].turns[3] and same[0].angle[3] == pytest.approx([1.0, 0.0])
    assert same[1].angle[3] == pytest.approx(same[0].angle[3], abs=1e-6)
    # a triangle turned by half its period (60 of 120 degrees) is the farthest point from unturned
    half = token_targets(Scene(shapes=(Triangle(0.5, 0.5, 0.3, np.pi / 3),), ops=()), 4, 4)
    assert half.angle[3] == pytest.approx([-1.0, 0.0], abs=1e-6)
    # a box turned by a quarter of its period (22.5 of 90 degrees); circles and empty tokens do not turn
    scene = Scene(shapes=(Box(-0.5, 0.5, 0.3, 0.2, np.pi / 8), Circle(0.5, -0.5, 0.3)), ops=(Op("union"),))
    t = token_targets(scene, 4, 4)
    names = [TYPES[i] for i in t.types]
    assert t.angle[names.index("box")] == pytest.approx([0.0, 1.0], abs=1e-6)
    circle = names.index("circle")
    assert not t.turns[circle] and (t.angle[circle] == 0).all()
    assert not t.turns[names.index("none")]


def test_token_targets_name_the_operator_and_the_second_shape_where_two_meet():
    # a box over the left half, a circle cut out of it at the middle: both shapes are "subtract"
    box, hole = Box(-0.5, 0.0, 0.45, 0.9), Circle(0.0, 0.0, 0.3)
    t = token_targets(Scene(shapes=(box, hole), ops=(Op("subtract"),)), 4, 4)
    names = [TYPES[i] for i in t.types]
    assert all(OPERATORS[t.op[i]] == "subtract" for i in range(16) if t.types[i] > 0)
    assert all(t.op[i] == -1 for i in range(16) if t.types[i] == 0)
    # token 5 (row 1, column 1: x in -0.5..0, y in 0..0.5) is mostly box, with a quarter of the circle
    assert names[5] == "box" and TYPES[t.second[5]] == "circle"
    assert t.second_params[5] == pytest.approx([0.0, 0.0, 0.3, 0.0])
    # token 6 (x in 0..0.5) holds the circle alone: no second shape
    assert names[6] == "circle" and t.second[6] == 0 and (t.second_params[6] == 0).all()
    # a union of three: the first shape takes the operator that joins the second to it
    three = Scene(
        shapes=(Circle(-0.5, 0.5, 0.3), Circle(0.5, 0.5, 0.3), Hexagon(0.5, -0.5, 0.3)),
        ops=(Op("intersect"), Op("smooth_union", 0.1)),
    )
    t = token_targets(three, 4, 4)
    assert [OPERATORS[t.op[i]] for i in (0, 3, 15)] == ["intersect", "intersect", "smooth_union"]
    # one shape: no operator and no second shape anywhere
    alone = token_targets(Scene(shapes=(Circle(0.0, 0.0, 0.5),), ops=()), 4, 4)
    assert (alone.op == -1).all() and (alone.second == 0).all()


@pytest.fixture(scope="module")
def scene_dataset():
    """Images drawn by PIL from real scenes (circles and squares), with their scene JSON."""
    from datasets import Dataset
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    rows = {"image": [], "scene": []}
    for i in range(24):
        x, y, r = (round(float(v), 2) for v in (*rng.uniform(-0.5, 0.5, 2), rng.uniform(0.15, 0.4)))
        shape = Circle(x, y, r) if i % 2 else Box(x, y, r, r)
        image = Image.new("RGB", (112, 112))
        cx, cy, rad = (x + 1) * 56, (1 - y) * 56, r * 56
        box = [cx - rad, cy - rad, cx + rad, cy + rad]
        (ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle)(box, fill="white")
        rows["image"].append(image)
        rows["scene"].append(scene_to_json(Scene(shapes=(shape,), ops=())))
    return Dataset.from_dict(rows)


def test_warmup_trains_only_the_vision_tower_and_its_loss_falls(tmp_path, scene_dataset):
    path = models.build_tiny_model(tmp_path / "tiny")
    model, processor = models.load_model_and_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(path))
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = warmup_vision(
        model, processor.image_processor, scene_dataset, steps=30, batch_size=8, progress=False
    ).losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("model.visual.") for name in changed)
    assert any(".merger." in name for name in changed) and any(".patch_embed." in name for name in changed)


def test_warmup_needs_scene_labels(tmp_path, scene_dataset):
    path = models.build_tiny_model(tmp_path / "tiny")
    model, processor = models.load_model_and_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(path))
    )
    with pytest.raises(UsageError, match="'scene' column"):
        warmup_vision(model, processor.image_processor, scene_dataset.remove_columns("scene"), steps=2)
    bad = scene_dataset.map(lambda row: {"scene": json.dumps({"op": "circle"})})
    with pytest.raises(UsageError, match="not a scene"):
        warmup_vision(model, processor.image_processor, bad, steps=2, progress=False)


def test_row_cache_rebuilds_the_processors_patches_exactly_and_keeps_them_compact(tmp_path, scene_dataset):
    from earthshader.vision_warmup import RowCache

    processor = models.load_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(models.build_tiny_model(tmp_path / "tiny")))
    )
    ip = processor.image_processor
    cache = RowCache(scene_dataset, ip, merge=2)
    order = [5, 0, 17, 5 + 1]
    first = cache.batch(order)  # every row fresh: the processor's own output
    again = cache.batch(order)  # every row rebuilt from what was kept
    direct = ip(images=[scene_dataset[i]["image"].convert("RGB") for i in order], return_tensors="pt")
    for got in (first, again):
        assert torch.equal(got[0], direct["pixel_values"]) and torch.equal(got[1], direct["image_grid_thw"])
        assert [t.types.tolist() for t in got[2]] == [t.types.tolist() for t in first[2]]
    full_bytes = direct["pixel_values"].numel() * 4
    assert 0 < cache.bytes <= full_bytes / 3  # one colour copy of 3 of 5 channels, not 2 temporal x 5
    assert all(kept.dim() == 4 for kept in cache.pixels.values())

    capped = RowCache(scene_dataset, ip, merge=2, max_bytes=1)
    capped.batch([1, 2])
    assert torch.equal(capped.batch([2, 1])[0], cache.batch([2, 1])[0])
    assert len(capped.pixels) == 1  # the budget was spent by the first row kept


def test_warmup_with_and_without_the_row_cache_takes_the_same_steps(tmp_path, scene_dataset):
    path = models.build_tiny_model(tmp_path / "tiny")
    losses = []
    for cache_bytes in (0, 2 << 30):
        model, processor = models.load_model_and_processor(
            models.EarthShaderModelConfig(model_name_or_path=str(path))
        )
        torch.manual_seed(0)  # the head's initialisation
        losses.append(
            warmup_vision(
                model,
                processor.image_processor,
                scene_dataset,
                steps=6,
                batch_size=8,
                progress=False,
                cache_bytes=cache_bytes,
            ).losses
        )
    assert losses[0] == losses[1]


def _warm_a_tiny_model(tmp_path, data, **weights):
    """A fresh tiny model whose tower has had 80 warmup steps of 16 on ``data``, read on ``data``."""
    path = models.build_tiny_model(tmp_path / "tiny")
    model, processor = models.load_model_and_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(path))
    )
    torch.manual_seed(0)
    result = warmup_vision(
        model,
        processor.image_processor,
        data,
        steps=80,
        batch_size=16,
        progress=False,
        held_out=data,
        **weights,
    )
    return model, processor, result


def test_warmup_reads_held_out_rows_and_learns_the_angle(tmp_path):
    """Rotated boxes (period 90 degrees) and circles, drawn by PIL: with the angle target, the held-out
    reading places the shapes and reads the boxes' turn far better than guessing."""
    from datasets import Dataset
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    rows = {"image": [], "scene": []}
    for i in range(48):
        x, y = (round(float(v), 2) for v in rng.uniform(-0.4, 0.4, 2))
        r, a = round(float(rng.uniform(0.3, 0.45)), 2), round(float(rng.uniform(0, np.pi / 2)), 2)
        shape = Circle(x, y, r) if i % 2 else Box(x, y, r, r / 2, a)
        image = Image.new("RGB", (112, 112))
        if i % 2:
            ImageDraw.Draw(image).ellipse(
                [(x - r + 1) * 56, (1 - y - r) * 56, (x + r + 1) * 56, (1 - y + r) * 56], fill="white"
            )
        else:  # the corners of a w x h box turned by a (counter-clockwise in uv, y up)
            corners = [(sx * r, sy * r / 2) for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
            turned = [
                (x + u * np.cos(a) - v * np.sin(a), y + u * np.sin(a) + v * np.cos(a)) for u, v in corners
            ]
            ImageDraw.Draw(image).polygon([((u + 1) * 56, (1 - v) * 56) for u, v in turned], fill="white")
        rows["image"].append(image)
        rows["scene"].append(scene_to_json(Scene(shapes=(shape,), ops=())))
    data = Dataset.from_dict(rows)
    model, processor, result = _warm_a_tiny_model(tmp_path, data, angle_weight=1.0)
    seen = result.held_out
    assert seen["rows"] == 48 and set(seen["types"]) == {"box", "circle"}
    assert 0 <= seen["type_accuracy"] <= 1 and seen["none_accuracy"] > 0.8, seen
    assert seen["centre_error"] < 0.15, seen  # guessing the middle: a median of 0.3 off
    # sizes are read on their scale (writing 0 is 0.28 off); 80 steps do not beat each type's mean size (~0.03)
    assert 0 < seen["size_error"] < 0.1, seen
    assert seen["angle_error"] < np.pi / 8 * 0.7, seen  # guessing: a median of pi / 8 off
    plain = warmup_vision(model, processor.image_processor, data, steps=1, progress=False)
    assert plain.held_out == {} and len(plain.losses) == 1


def test_warmup_with_pair_targets_reads_the_operator_and_the_second_shape(tmp_path):
    """Overlapping circle-and-box pairs, joined by union or intersection and drawn from their own
    distance functions: with the pair targets, the held-out reading names each token's operator and
    the shape sharing it far better than guessing (half, for two operators) or than the untrained head."""
    from datasets import Dataset
    from PIL import Image

    from earthshader.data import inside_mask

    rng = np.random.default_rng(2)
    side = (np.arange(112) + 0.5) / 56 - 1
    px, py = np.meshgrid(side, -side)
    rows = {"image": [], "scene": []}
    for i in range(48):
        x, y = (round(float(v), 2) for v in rng.uniform(-0.2, 0.2, 2))
        r = round(float(rng.uniform(0.3, 0.45)), 2)
        shapes = (Circle(x - 0.2, y, r), Box(x + 0.2, y, r, r))
        scene = Scene(shapes=shapes, ops=(Op("intersect" if i % 2 else "union"),))
        mask = inside_mask(scene, [shape.sdf(px, py) for shape in shapes])
        rows["image"].append(Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB"))
        rows["scene"].append(scene_to_json(scene))
    data = Dataset.from_dict(rows)
    model, processor, result = _warm_a_tiny_model(tmp_path, data, pair_weight=1.0)
    seen = result.held_out
    # after one step (measured): op 0.01, second 0.08, its centre 0.19 off; after 80: 0.95, 0.79, 0.06
    assert seen["op_accuracy"] > 0.8, seen
    assert seen["second_accuracy"] > 0.6, seen
    assert seen["second_centre_error"] < 0.12, seen
    plain = warmup_vision(model, processor.image_processor, data, steps=1, progress=False, held_out=data)
    assert "op_accuracy" not in plain.held_out
