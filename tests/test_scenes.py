"""Scenes: the printer and parser agree, the NumPy mirror agrees with the renderer, stages are respected."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from earthshader.data import scene_rejection
from earthshader.render import render_many
from earthshader.scenes import (
    OPERATORS,
    PRIMITIVES,
    PRINTERS,
    STAGES,
    Annulus,
    Box,
    Capsule,
    Circle,
    Hexagon,
    Op,
    RoundBox,
    Scene,
    Triangle,
    canonical,
    coverage,
    describe,
    distance_field,
    fmt,
    from_glsl,
    order_free,
    pixel_grid,
    random_scene,
    sample_corpus,
    scene_from_json,
    scene_to_json,
    shape_types,
    to_glsl,
)

EXAMPLE = Scene(
    shapes=(Circle(0.3, -0.2, 0.25), Box(-0.1, 0.1, 0.3, 0.15, 0.5), Hexagon(0.0, 0.4, 0.2)),
    ops=(Op("subtract"), Op("smooth_union", 0.1)),
)


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    stages = sorted(STAGES)
    return [random_scene(stages[i % len(stages)], rng) for i in range(n)]


def test_to_glsl_round_trips_thousands_of_random_scenes():
    scenes = _scenes(3000, seed=1)
    failures = [s for s in scenes if from_glsl(to_glsl(s)) != s]
    assert not failures, f"{len(failures)} scenes did not round-trip, e.g. {failures[0]}"
    assert len({to_glsl(s) for s in scenes}) > 2900  # the generator is not stuck on a few scenes


def test_to_glsl_round_trips_values_finer_than_two_decimals():
    scene = Scene(shapes=(Circle(0.305, -0.2, 0.125),))
    code = to_glsl(scene)
    assert "0.305" in code and "0.125" in code
    assert from_glsl(code) == scene


def test_fmt_prints_two_decimals_and_no_negative_zero():
    assert fmt(0.3) == "0.30"
    assert fmt(-0.0) == "0.00"
    assert fmt(-0.2) == "-0.20"
    assert fmt(1) == "1.00"
    assert float(fmt(0.1234)) == 0.1234


def test_to_glsl_is_shadertoy_code_with_only_needed_helpers():
    code = to_glsl(Scene(shapes=(Circle(0.0, 0.0, 0.5),)))
    assert "void mainImage(out vec4 fragColor, in vec2 fragCoord)" in code
    assert "(2.0 * fragCoord - iResolution.xy) / iResolution.y" in code
    assert "smoothstep" in code
    assert "sdCircle" in code
    assert not re.search(r"sdBox|sdHexagon|rotate|smin", code)
    example = to_glsl(EXAMPLE)
    for name in ("sdCircle", "sdBox", "sdHexagon", "rotate(", "smin("):
        assert name in example
    assert "sdTriangle" not in example and "sdAnnulus" not in example


def test_from_glsl_tolerates_whitespace_comments_and_number_spelling():
    code = to_glsl(EXAMPLE)
    variant = code.replace("0.30", "0.3").replace("    ", "\t").replace("\n\n", "\n// a comment\n")
    assert from_glsl(variant) == EXAMPLE
    assert from_glsl("\n\n" + code.replace("(", " ( ") + "\n") == EXAMPLE


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.replace("return length(p) - r;", "return length(p) - 2.0 * r;"),  # another helper body
        lambda c: c.replace("vec4(vec3(shape), 1.0)", "vec4(shape, 0.0, 0.0, 1.0)"),  # another colour
        lambda c: c.replace("float d = d0;", "float d = d0;\n    d += 0.01;"),  # an extra statement
        lambda c: c.replace("d = max(d, -d1);", ""),  # a missing operator
        lambda c: c.replace("float d1", "float d7"),  # shapes out of order
        lambda c: c.replace("sdHexagon(", "sdPentagon("),  # an unknown primitive
        lambda c: c.replace("smin(d, d2, 0.10)", "smin(d, d2, 0.00)"),  # a degenerate blend
        lambda c: c[: len(c) // 2],  # cut short
    ],
)
def test_from_glsl_returns_none_outside_the_canonical_form(edit):
    code = to_glsl(EXAMPLE)
    edited = edit(code)
    assert edited != code
    assert from_glsl(edited) is None


@pytest.mark.parametrize(
    "code",
    [
        "",
        "not glsl at all",
        "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = vec4(1.0); }",
        None,
    ],
)
def test_from_glsl_returns_none_for_other_programs(code):
    assert from_glsl(code) is None


def test_describe_names_every_shape_in_order_with_its_operator():
    text = describe(EXAMPLE)
    assert text.startswith(
        "Three shapes: a circle at (0.30, -0.20) with radius 0.25, minus a box at (-0.10, 0.10)"
    )
    assert "rotated 0.50 rad" in text
    assert "smoothly merged (k 0.10) with a hexagon at (0.00, 0.40)" in text
    assert (
        describe(Scene(shapes=(Box(0.0, 0.0, 0.2, 0.2),)))
        == "One shape: a square at (0.00, 0.00) with half side 0.20."
    )
    # short enough to be a chain of thought, even for the largest scenes
    assert max(len(describe(s)) for s in _scenes(300)) < 700


def test_shape_types_is_a_sorted_multiset():
    assert shape_types(EXAMPLE) == ["box", "circle", "hexagon"]
    scene = Scene(
        shapes=(Circle(0, 0, 0.1), Circle(0.2, 0, 0.1), Annulus(0, 0, 0.3, 0.05)), ops=(Op("union"),) * 2
    )
    assert shape_types(scene) == ["annulus", "circle", "circle"]
    assert shape_types(from_glsl(to_glsl(scene))) == shape_types(scene)


def test_scene_json_round_trips():
    for scene in [EXAMPLE, *_scenes(200, seed=3)]:
        assert scene_from_json(scene_to_json(scene)) == scene


def test_scene_rejects_malformed_trees():
    with pytest.raises(ValueError):
        Scene(shapes=())
    with pytest.raises(ValueError):
        Scene(shapes=(Circle(0, 0, 0.1), Circle(0.1, 0, 0.1)), ops=())
    with pytest.raises(ValueError):
        Op("xor")


def test_random_scene_is_deterministic_from_its_generator():
    a = random_scene(2, np.random.default_rng([5, 17]))
    b = random_scene(2, np.random.default_rng([5, 17]))
    c = random_scene(2, np.random.default_rng([5, 18]))
    assert a == b and a != c


def test_stage_one_draws_one_or_two_circles_squares_or_rings_joined_by_union():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(500):
        scene = random_scene(1, rng)
        counts.add(len(scene.shapes))
        assert set(shape_types(scene)) <= {"circle", "box", "annulus"}
        assert all(op.kind == "union" for op in scene.ops)
        for shape in scene.shapes:
            if isinstance(shape, Box):
                assert shape.w == shape.h and shape.a == 0.0
        # reading order: left to right, so the description's order follows from the picture
        xs = [(shape.x, shape.y) for shape in scene.shapes]
        assert xs == sorted(xs)
    assert counts == {1, 2}


def test_a_coarser_step_draws_every_parameter_on_its_grid():
    coarse = dataclasses.replace(STAGES[2], step=5)
    rng = np.random.default_rng(2)
    for _ in range(300):
        scene = random_scene(coarse, rng)
        for shape in scene.shapes:
            for value in shape.params().values():
                assert round(value * 100) % 5 == 0 and fmt(value) == f"{value:.2f}", (shape, value)
        assert from_glsl(to_glsl(scene)) == scene


def test_reading_order_sorts_the_shapes_wherever_any_order_draws_the_same_picture():
    ordered = dataclasses.replace(STAGES[2], reading_order=True)
    rng = np.random.default_rng(1)
    free_pairs = unsorted_other = 0
    for _ in range(400):
        scene = random_scene(ordered, rng)
        xs = [(shape.x, shape.y) for shape in scene.shapes]
        if order_free(scene.ops):
            assert xs == sorted(xs), scene
            free_pairs += len(scene.shapes) == 2 and scene.ops[0].kind != "union"
            # the sort is free: listed the other way round, the scene draws the very same field
            flipped = Scene(shapes=scene.shapes[::-1], ops=scene.ops)
            np.testing.assert_array_equal(distance_field(flipped, 32), distance_field(scene, 32))
            assert canonical(flipped) == canonical(scene) == scene
        else:
            unsorted_other += xs != sorted(xs)
            assert canonical(scene) == scene
    assert free_pairs > 0 and unsorted_other > 0  # subtraction's order is part of the picture


def test_order_free_only_where_the_operators_commute_and_associate():
    union, inter, smooth, sub = Op("union"), Op("intersect"), Op("smooth_union", 0.2), Op("subtract")
    assert order_free([]) and order_free([smooth]) and order_free([inter])
    assert order_free([union, union, union]) and order_free([inter, inter])
    assert not order_free([sub]) and not order_free([union, inter]) and not order_free([smooth, smooth])
    # smin of three is not associative: another order of the same three circles draws another field
    circles = (Circle(-0.2, 0.0, 0.2), Circle(0.0, 0.0, 0.2), Circle(0.2, 0.0, 0.2))
    fields = [
        distance_field(Scene(shapes=order, ops=(smooth, smooth)), 32)
        for order in (circles, (circles[1], circles[2], circles[0]))
    ]
    assert np.abs(fields[0] - fields[1]).max() > 1e-3


def test_canonical_form_breaks_ties_at_one_centre_by_the_rest_of_the_shape():
    ring, disc = Annulus(0.1, 0.0, 0.3, 0.05), Circle(0.1, 0.0, 0.2)
    small = Circle(0.1, 0.0, 0.1)
    for ops in ((Op("intersect"),), (Op("smooth_union", 0.1),)):
        assert canonical(Scene((ring, disc), ops)) == canonical(Scene((disc, ring), ops))
    assert canonical(Scene((disc, small), (Op("union"),))).shapes == (small, disc)
    assert canonical(Scene((disc, ring), (Op("subtract"),))).shapes == (disc, ring)


def test_stage_two_uses_every_primitive_and_operator_with_quantised_parameters():
    rng = np.random.default_rng(0)
    types, ops, counts = set(), set(), set()
    for _ in range(500):
        scene = random_scene(2, rng)
        counts.add(len(scene.shapes))
        types.update(shape_types(scene))
        ops.update(op.kind for op in scene.ops)
        for shape in scene.shapes:
            for value in shape.params().values():
                assert value == round(value, 2) and fmt(value) == f"{value:.2f}"
    assert counts == {2, 3, 4, 5}
    assert types == set(PRIMITIVES)
    assert ops == set(OPERATORS)


def test_stages_are_consistent_data():
    for stage in STAGES.values():
        assert stage.printer in PRINTERS
        assert set(stage.primitives) <= set(PRIMITIVES)
        assert set(stage.operators) <= set(OPERATORS)
        assert 1 <= stage.min_shapes <= stage.max_shapes
        if stage.count_weights is not None:
            assert len(stage.count_weights) == stage.max_shapes - stage.min_shapes + 1


@pytest.mark.parametrize(
    "shape",
    [
        Circle(0.0, 0.0, 0.4),
        Box(0.0, 0.0, 0.5, 0.3, 0.4),
        RoundBox(0.0, 0.0, 0.5, 0.3, 0.12, 0.2),
        Annulus(0.0, 0.0, 0.5, 0.1),
        Capsule(0.0, 0.0, 0.4, 0.15, 1.0),
        Triangle(0.0, 0.0, 0.5, 0.3),
        Hexagon(0.0, 0.0, 0.5, 0.2),
    ],
)
def test_primitive_area_matches_its_distance_function(shape):
    x, y = pixel_grid(512)
    measured = np.count_nonzero(shape.sdf(x, y) < 0.0) * (2.0 / 512) ** 2
    assert math.isclose(measured, shape.area(), rel_tol=0.01)


def test_sample_corpus_holds_reasoning_and_code_across_stages():
    corpus = sample_corpus(40, seed=0)
    assert len(corpus) == 40 and corpus == sample_corpus(40, seed=0)
    assert all("```glsl\n" in text and "mainImage" in text for text in corpus)
    assert any(text.startswith("One shape") for text in corpus)
    assert any("minus" in text or "intersected" in text or "smoothly" in text for text in corpus)


def test_rendered_scenes_match_the_numpy_mirror_and_visible_ones_are_not_empty():
    scenes = _scenes(300, seed=11)
    results = render_many([to_glsl(s) for s in scenes], size=64)
    visible = 0
    for scene, result in zip(scenes, results, strict=True):
        assert result.ok, (result, to_glsl(scene))
        grey = result.image[..., 0]
        assert np.array_equal(grey, result.image[..., 1]) and np.array_equal(grey, result.image[..., 2])
        off = np.abs(grey - coverage(scene, 64)) > 0.1
        assert off.mean() < 0.002, (describe(scene), off.mean())
        if scene_rejection(scene) is None:
            visible += 1
            assert (grey > 0.5).mean() > 0.005, describe(scene)
    assert visible > 100


@pytest.mark.slow
def test_every_filtered_scene_renders_non_empty_at_full_size():
    scenes = [s for s in _scenes(3000, seed=21) if scene_rejection(s) is None]
    results = render_many([to_glsl(s) for s in scenes], size=128)
    for scene, result in zip(scenes, results, strict=True):
        assert result.ok, result
        assert (result.image[..., 0] > 0.5).mean() > 0.005, describe(scene)
        assert (np.abs(result.image[..., 0] - coverage(scene, 128)) > 0.1).mean() < 0.002
