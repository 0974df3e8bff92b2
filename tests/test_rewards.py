"""Rewards on real renders: right beats partly right beats empty, failures score the gate, one render
per distinct completion per step."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from earthshader.errors import UsageError
from earthshader.render import RenderPool, default_pool, render
from rewards import REWARDS, SharedRenders, get_reward_funcs
from rewards.format import has_format
from rewards.length import code_length
from rewards.shared import to_target

SIZE = 64

HEADER = "void mainImage(out vec4 fragColor, in vec2 fragCoord) {\n    vec2 uv = (2.0 * fragCoord - iResolution.xy) / iResolution.y;\n"
FOOTER = "    fragColor = vec4(vec3(1.0 - smoothstep(0.0, 0.02, d)), 1.0);\n}"
TWO_CIRCLES = (
    HEADER
    + "    float d = min(length(uv - vec2(-0.5, 0.0)) - 0.35, length(uv - vec2(0.5, 0.0)) - 0.35);\n"
    + FOOTER
)
LEFT_CIRCLE = HEADER + "    float d = length(uv - vec2(-0.5, 0.0)) - 0.35;\n" + FOOTER
ELSEWHERE = HEADER + "    float d = length(uv - vec2(0.0, 0.6)) - 0.3;\n" + FOOTER
BLACK = "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = vec4(0.0, 0.0, 0.0, 1.0); }"
# The same picture as TWO_CIRCLES from shorter code.
TWO_CIRCLES_SHORT = (
    "void mainImage(out vec4 c, in vec2 p) { vec2 u = (2.0*p - iResolution.xy)/iResolution.y;"
    " u.x = abs(u.x); c = vec4(vec3(1.0 - smoothstep(0.0, 0.02, length(u - vec2(0.5, 0.0)) - 0.35)), 1.0); }"
)
COMPILE_ERROR = "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = vec4(1.0 }"
NO_MAIN = "float f(float x) { return x; }"


def turn(code: str, reasoning: str = "Two circles side by side.") -> list[dict]:
    """A conversational completion as TRL passes it."""
    return [{"role": "assistant", "content": f"{reasoning}\n\n```glsl\n{code}\n```"}]


@pytest.fixture(scope="module")
def target() -> Image.Image:
    result = render(TWO_CIRCLES, size=SIZE)
    assert result.ok, result.message
    return Image.fromarray((result.image * 255 + 0.5).astype(np.uint8))


def score_all(completions, target, names=("compile", "mse", "ssim", "iou", "format", "length"), **settings):
    funcs = get_reward_funcs(list(names), size=SIZE, **settings)
    images = [target] * len(completions)
    out = {
        f.func.__name__: f(completions=completions, image=images, prompts=[None] * len(completions))
        for f in funcs
    }
    return out, funcs[0].keywords["renders"]


def test_rewards_correct_shader_scores_top(target):
    scores, _ = score_all([turn(TWO_CIRCLES)], target)
    assert scores["compile_reward"] == [1.0]
    assert scores["mse_reward"][0] > 0.99
    assert scores["ssim_reward"][0] > 0.98
    assert scores["iou_reward"][0] > 0.98
    assert scores["format_reward"] == [1.0]
    assert scores["length_reward"] == [1.0]


def test_rewards_empty_picture_scores_below_partly_right(target):
    scores, _ = score_all([turn(TWO_CIRCLES), turn(LEFT_CIRCLE), turn(BLACK), turn(ELSEWHERE)], target)
    for name in ("mse_reward", "ssim_reward", "iou_reward"):
        right, half, empty, wrong = scores[name]
        assert right > half > empty >= wrong, (name, scores[name])
    # Relative to black: drawing nothing is exactly the zero point of the pixel rewards.
    assert scores["mse_reward"][2] == pytest.approx(0.0, abs=1e-6)
    assert scores["ssim_reward"][2] == pytest.approx(0.0, abs=1e-6)
    assert scores["iou_reward"][2] == 0.0


def test_rewards_failed_shader_scores_gate_value(target):
    bad = [turn(COMPILE_ERROR), turn(NO_MAIN), [{"role": "assistant", "content": "no code at all"}], turn("")]
    scores, renders = score_all(bad, target)
    assert scores["compile_reward"] == [0.0] * 4
    assert scores["mse_reward"] == [-1.0] * 4
    assert scores["ssim_reward"] == [-1.0] * 4
    assert scores["iou_reward"] == [0.0] * 4
    assert scores["length_reward"] == [0.0] * 4
    assert scores["format_reward"] == [1.0, 1.0, 0.0, 0.0]
    assert [r.kind for r in renders.last.results][:2] == ["compile_error", "rejected"]
    # The gate value is a setting.
    scores, _ = score_all(bad[:1], target, names=("mse", "iou"), fail_score=-0.5)
    assert scores == {"mse_reward": [-0.5], "iou_reward": [-0.5]}


def test_rewards_one_render_per_distinct_completion(target):
    completions = [
        turn(TWO_CIRCLES),
        turn(TWO_CIRCLES),
        turn(LEFT_CIRCLE),
        turn(LEFT_CIRCLE, "Another text."),
        turn(BLACK),
    ]
    funcs = get_reward_funcs(list(REWARDS), size=SIZE, time=0.123)  # a time no other test renders at
    renders = funcs[0].keywords["renders"]
    pool_before = default_pool().stats.renders
    images = [target] * len(completions)
    for f in funcs:
        assert len(f(completions=completions, image=images)) == len(completions)
    assert renders.stats["calls"] == 1
    assert renders.stats["sources"] == 3  # three distinct shaders among five completions
    assert default_pool().stats.renders - pool_before == 3
    # The next step (a new completions list) renders again, once.
    again = list(completions)
    for f in funcs:
        f(completions=again, image=images)
    assert renders.stats["calls"] == 2
    assert renders.stats["batches"] == 2


def test_rewards_worker_timeout_costs_only_that_sample(target):
    hang = (
        "void mainImage(out vec4 fragColor, in vec2 fragCoord) {\n"
        "    float x = fragCoord.x;\n"
        "    for (int i = 0; i < 2000000000; i++) { x = fract(x * 1.0001 + 0.5); }\n"
        "    fragColor = vec4(x);\n}"
    )
    with RenderPool(workers=2, compile_timeout=2.0, draw_timeout=0.5, cache_mb=0) as pool:
        renders = SharedRenders(size=SIZE, renderer=pool.render_many)
        funcs = get_reward_funcs(["compile", "mse"], renders=renders)
        completions = [turn(hang), turn(TWO_CIRCLES)]
        scores = [f(completions=completions, image=[target, target]) for f in funcs]
    assert renders.last.results[0].kind == "timeout"
    assert scores[0] == [0.0, 1.0]
    assert scores[1][0] == -1.0 and scores[1][1] > 0.99


def test_rewards_length_prefers_shorter_code_for_the_same_picture(target):
    completions = [turn(TWO_CIRCLES), turn(TWO_CIRCLES_SHORT), turn(LEFT_CIRCLE)]
    scores, _ = score_all(completions, target, names=("mse", "length"))
    long_, short, wrong = scores["length_reward"]
    assert scores["mse_reward"][1] > 0.95  # the short code draws the same picture
    assert short == 1.0 and 0.0 < long_ < 1.0
    assert wrong == 0.0  # half the picture: below the gate, no reward for brevity
    # With the dataset's reference code, the reference length is the yardstick.
    funcs = get_reward_funcs(["length"], size=SIZE)
    ref = funcs[0](completions=completions, image=[target] * 3, code=[TWO_CIRCLES] * 3)
    assert ref == [1.0, 1.0, 0.0]
    assert code_length("a = 1; // comment\n/* block */ b") == 5


def test_format_reward_wants_reasoning_then_one_glsl_block():
    code = "void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0); }"
    assert has_format(f"A white image.\n\n```glsl\n{code}\n```\n")
    assert not has_format(f"```glsl\n{code}\n```")  # no reasoning
    assert not has_format(
        f"A white image.\n```glsl\n{code}\n```\nand more\n```glsl\n{code}\n```"
    )  # two blocks
    assert not has_format(f"A white image.\n```glsl\n{code}\n```\nTrailing words.")
    assert not has_format(f"A white image.\n```python\n{code}\n```")
    assert not has_format(f"A white image.\n```glsl\n{code}")  # cut off before the closing fence
    assert not has_format("A white image.\n```glsl\n\n```")  # an empty block


def test_get_reward_funcs_rejects_unknown_names_and_settings():
    with pytest.raises(UsageError, match="unknown reward 'pixels'"):
        get_reward_funcs(["compile", "pixels"])
    with pytest.raises(UsageError, match="length_gate"):
        get_reward_funcs(["mse"], length_gate=0.5)
    with pytest.raises(UsageError):
        get_reward_funcs([])
    funcs = get_reward_funcs(["mse", "iou"], iou_threshold=0.3)
    assert [f.func.__name__ for f in funcs] == ["mse_reward", "iou_reward"]
    assert funcs[0].keywords["renders"] is funcs[1].keywords["renders"]
    assert funcs[1].keywords["iou_threshold"] == 0.3


def test_rewards_without_target_score_none_only_where_impossible():
    funcs = get_reward_funcs(["compile", "mse", "iou"], size=SIZE)
    completions = [turn(TWO_CIRCLES)]
    assert funcs[0](completions=completions) == [1.0]
    assert funcs[1](completions=completions) == [None]
    assert funcs[2](completions=completions, images=[[None]]) == [None]


def test_to_target_converts_like_a_render():
    grey = np.linspace(0, 255, 32 * 32, dtype=np.float32).reshape(32, 32).astype(np.uint8)
    from_pil = to_target(Image.fromarray(grey).convert("RGB"), 16)
    from_uint8 = to_target(grey, 16)
    from_float = to_target(np.repeat(grey[..., None], 3, axis=2) / 255.0, 16)
    rgba = to_target(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), 16)
    for image in (from_pil, from_uint8, from_float, rgba):
        assert image.shape == (16, 16, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_allclose(image, from_pil, atol=1.5 / 255)
    assert to_target([Image.fromarray(grey)], 32).shape == (32, 32, 3)  # an `images` column's list


def test_shapes_reward_scores_the_drawn_types_against_the_scene():
    """A pair drawn as one shape pays under IoU, where a misplaced second shape costs more; the shapes
    reward ranks them the other way, and stays out of rows without a scene."""
    from earthshader.scenes import Box, Circle, Op, Scene, scene_to_json, to_glsl

    def scene(*shapes):
        return Scene(shapes=shapes, ops=tuple(Op("union") for _ in shapes[1:]))

    truth = scene(Circle(-0.4, 0.0, 0.35), Box(0.45, 0.0, 0.12, 0.12))
    dropped = scene(Circle(-0.4, 0.0, 0.35))
    misplaced = scene(Circle(-0.4, 0.0, 0.35), Box(0.45, 0.7, 0.12, 0.12))
    wrong_type = scene(Circle(-0.4, 0.0, 0.35), Circle(0.45, 0.0, 0.12))
    drawn = [truth, dropped, misplaced, wrong_type]
    completions = [turn(to_glsl(s)) for s in drawn] + [turn(COMPILE_ERROR), turn(TWO_CIRCLES)]
    target = render(to_glsl(truth), size=SIZE)
    assert target.ok, target.message
    funcs = get_reward_funcs(["iou", "shapes"], size=SIZE)
    kwargs = dict(completions=completions, image=[target.image] * 6, scene=[scene_to_json(truth)] * 6)
    iou, shapes = (f(**kwargs) for f in funcs)
    assert iou[1] > iou[2]  # pixels: leaving the box out beats drawing it in the wrong place
    assert shapes[:4] == [1.0, pytest.approx(2 / 3), 1.0, 0.5]
    assert shapes[4:] == [0.0, 0.0]  # does not compile; not the canonical form the parser reads
    assert funcs[1](completions=completions[:1], scene=[None]) == [None]


def test_parts_reward_scores_each_drawn_shape_on_its_own_mask():
    """The lens of two intersected discs (finding 92) pays under IoU but not under the parts reward;
    the operator and the order do not count there, a dropped or extra shape costs a whole part."""
    from earthshader.scenes import Box, Circle, Op, Scene, scene_to_json, to_glsl
    from rewards.parts import parts_iou

    truth = Scene((Circle(-0.2, 0.0, 0.4), Box(0.25, 0.0, 0.3, 0.3)), (Op("union"),))
    swapped_cut = Scene((truth.shapes[1], truth.shapes[0]), (Op("intersect"),))
    dropped = Scene(truth.shapes[:1])
    extra = Scene((*truth.shapes, Circle(0.0, 0.7, 0.1)), (Op("union"), Op("union")))
    # Two big discs placed wide of a thin pair: joined they spill over, intersected they cover it.
    thin = Scene((Box(0.0, 0.0, 0.15, 0.35), Circle(0.0, 0.3, 0.2)), (Op("union"),))
    lens = Scene((Circle(-0.35, 0.05, 0.5), Circle(0.35, 0.05, 0.5)), (Op("intersect"),))
    wide = Scene(lens.shapes, (Op("union"),))
    drawn = [truth, swapped_cut, dropped, extra, lens, wide]
    completions = [turn(to_glsl(s)) for s in drawn] + [turn(COMPILE_ERROR), turn(TWO_CIRCLES)]
    target = render(to_glsl(truth), size=SIZE)
    assert target.ok, target.message
    funcs = get_reward_funcs(["iou", "parts"], size=SIZE)
    thin_target = render(to_glsl(thin), size=SIZE)
    assert thin_target.ok, thin_target.message
    images = [target.image] * 4 + [thin_target.image] * 2 + [target.image] * 2
    scenes = [scene_to_json(truth)] * 4 + [scene_to_json(thin)] * 2 + [scene_to_json(truth)] * 2
    iou, parts = (f(completions=completions, image=images, scene=scenes) for f in funcs)
    assert parts[0] == parts[1] == 1.0 and iou[1] < 0.8  # same parts, another picture
    assert parts[2] == pytest.approx(0.5)
    assert parts[3] == pytest.approx(2 / 3, abs=0.01)  # the extra disc overlaps nothing of the truth's
    assert iou[4] > iou[5]  # pixels: the lens beats the same discs joined
    assert parts[4] == parts[5] < 0.3  # parts: the discs are what they are, however joined
    assert parts[6:] == [0.0, 0.0]  # does not compile; not the canonical form the parser reads
    assert funcs[1](completions=completions[:1], scene=[None]) == [None]
    # Concentric discs: the IoU is the ratio of their areas, to within the pixels of the edge.
    inner, outer = Scene((Circle(0.0, 0.0, 0.3),)), Scene((Circle(0.0, 0.0, 0.6),))
    assert parts_iou(inner, outer) == pytest.approx(0.25, abs=0.01)


def test_parts_type_weight_makes_a_disc_for_a_box_cost():
    """Finding 96's hedge: a disc at the box's place pays under the plain parts IoU, less as the
    type weight grows; a box of the right type, a little off, keeps its IoU whatever the weight."""
    from earthshader.scenes import Box, Circle, Op, Scene, scene_to_json, to_glsl

    truth = Scene((Circle(-0.4, 0.0, 0.3), Box(0.4, 0.0, 0.3, 0.3)), (Op("union"),))
    disc = Scene((truth.shapes[0], Circle(0.4, 0.0, 0.33)), (Op("union"),))
    shifted = Scene((truth.shapes[0], Box(0.45, 0.0, 0.3, 0.3)), (Op("union"),))
    completions = [turn(to_glsl(disc)), turn(to_glsl(shifted))]
    target = render(to_glsl(truth), size=SIZE)
    assert target.ok, target.message
    kwargs = dict(completions=completions, image=[target.image] * 2, scene=[scene_to_json(truth)] * 2)
    scores = {
        w: get_reward_funcs(["parts"], size=SIZE, parts_type_weight=w)[0](**kwargs) for w in (0.0, 0.5, 1.0)
    }
    assert scores[0.0][0] > scores[0.0][1]  # plain IoU: the disc beats the right type a little off
    assert scores[0.5][0] == pytest.approx((1.0 + 0.5 * (2 * scores[0.0][0] - 1.0)) / 2)
    assert scores[1.0][0] == pytest.approx(0.5)  # only the circle counts
    assert scores[0.0][1] == scores[0.5][1] == scores[1.0][1]
    assert scores[1.0][1] > scores[1.0][0]
    with pytest.raises(ValueError, match="parts_type_weight"):
        get_reward_funcs(["parts"], size=SIZE, parts_type_weight=1.5)[0](**kwargs)


def test_ops_reward_scores_the_written_operators_against_the_scene():
    """Subtract drawn as intersect (session 31's drift under the parts reward alone) scores 0 here,
    whatever the shapes; a smooth union's radius does not count."""
    from earthshader.scenes import Box, Circle, Op, Scene, scene_to_json, to_glsl

    shapes = (Circle(-0.1, 0.0, 0.4), Box(0.3, 0.0, 0.2, 0.2))
    truth = Scene(shapes, (Op("subtract"),))
    drawn = [
        truth,
        Scene(shapes, (Op("intersect"),)),
        Scene((Circle(0.5, 0.5, 0.1), shapes[1]), (Op("subtract"),)),
    ]
    smooth = Scene(shapes, (Op("smooth_union", 0.1),))
    completions = [
        turn(to_glsl(s)) for s in [*drawn, Scene((shapes[0], shapes[1]), (Op("smooth_union", 0.3),))]
    ]
    completions += [turn(COMPILE_ERROR), turn(TWO_CIRCLES)]
    target = render(to_glsl(truth), size=SIZE)
    assert target.ok, target.message
    scenes = [scene_to_json(truth)] * 3 + [scene_to_json(smooth)] + [scene_to_json(truth)] * 2
    scores = get_reward_funcs(["ops"], size=SIZE)[0](
        completions=completions, image=[target.image] * 6, scene=scenes
    )
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # the last two: no render; code the parser does not read
    assert get_reward_funcs(["ops"], size=SIZE)[0](completions=completions[:1], scene=[None]) == [None]
