"""Scenes: 2D signed-distance shapes combined by boolean operators, printed to canonical GLSL.

A scene is a left fold over primitives, ``((s0 op1 s1) op2 s2) ...``: small enough to describe in a
sentence, canonical enough that the printed shader parses back into the scene it came from. The
printer writes readable Shadertoy code (white shape on black, anti-aliased edge, aspect-correct
coordinates) with only the helper functions the scene needs; the parser reads that form back and
returns ``None`` for anything else, which is what the audit uses to see which shapes a model wrote.

Stages are data (:class:`Stage`, :data:`STAGES`): which primitives, how many, which operators, the
parameter ranges and the printed precision. A later stage is a new entry, not a new factory.

>>> scene = Scene(shapes=(Circle(0.3, -0.2, 0.25),))
>>> from_glsl(to_glsl(scene)) == scene
True
>>> describe(scene)
'One shape: a circle at (0.30, -0.20) with radius 0.25.'
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

PRECISION = 2  # decimals printed for every parameter of a sampled scene

# ----------------------------------------------------------------------------------------------------
# Numbers


def fmt(value: float) -> str:
    """A GLSL float literal: two decimals when that is exact, else the shortest exact form.

    Sampled scenes are quantised to two decimals, so they print as ``0.30``; a hand-made scene with a
    finer value still round-trips (``0.305``) instead of being silently rounded.
    """
    value = float(value) + 0.0  # -0.0 prints as 0.00
    text = f"{value:.2f}"
    if float(text) == value:
        return "0.00" if text == "-0.00" else text
    text = repr(value)
    return text if ("." in text or "e" in text) else text + ".0"


_NUM = r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
_NUM_TOKEN_RE = re.compile(r"(?<![\w.])(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![\w.])")


# ----------------------------------------------------------------------------------------------------
# Primitives


def _rotate_np(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Mirror of the GLSL ``rotate(p, a)``: turns the point by ``-a`` so the shape turns by ``+a``."""
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


@dataclass(frozen=True)
class Shape:
    """A primitive at centre ``(x, y)`` in uv units (the screen's height spans -1..1).

    Subclasses declare their GLSL helper, how they are called, a NumPy mirror of the distance
    function (for visibility checks without rendering) and their exact area.
    """

    x: float
    y: float

    type_name: ClassVar[str] = ""
    noun: ClassVar[str] = ""
    glsl_name: ClassVar[str] = ""
    glsl_helper: ClassVar[str] = ""
    # argument template after the position: "{r}" is a float, "vec2({w}, {h})" a vector
    glsl_args: ClassVar[str] = ""
    rotatable: ClassVar[bool] = False
    # the turn that maps the shape onto itself (radians; 0: not rotatable). The data factory draws
    # angles within one such period, and the vision warmup's angle target wraps at it.
    angle_period: ClassVar[float] = 0.0

    @property
    def angle(self) -> float:
        return 0.0

    def params(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def glsl_call(self) -> str:
        pos = f"uv - vec2({fmt(self.x)}, {fmt(self.y)})"
        if self.rotatable and self.angle != 0.0:
            pos = f"rotate({pos}, {fmt(self.angle)})"
        args = self.glsl_args.format(**{k: fmt(v) for k, v in self.params().items()})
        return f"{self.glsl_name}({pos}, {args})"

    def local(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = px - self.x, py - self.y
        return _rotate_np(x, y, self.angle) if self.rotatable and self.angle != 0.0 else (x, y)

    def sdf(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def area(self) -> float:
        raise NotImplementedError

    def size_text(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        text = f"{self.noun} at ({self.x:.2f}, {self.y:.2f}) {self.size_text()}"
        if self.rotatable and self.angle != 0.0:
            text += f", rotated {self.angle:.2f} rad"
        return text


@dataclass(frozen=True)
class Circle(Shape):
    r: float

    type_name = "circle"
    noun = "a circle"
    glsl_name = "sdCircle"
    glsl_args = "{r}"
    glsl_helper = """float sdCircle(vec2 p, float r) {
    return length(p) - r;
}"""

    def sdf(self, px, py):
        x, y = self.local(px, py)
        return np.hypot(x, y) - self.r

    def area(self) -> float:
        return math.pi * self.r**2

    def size_text(self) -> str:
        return f"with radius {self.r:.2f}"


@dataclass(frozen=True)
class Box(Shape):
    """A rectangle with half sizes ``(w, h)``; a square when ``w == h``."""

    w: float
    h: float
    a: float = 0.0

    type_name = "box"
    glsl_name = "sdBox"
    glsl_args = "vec2({w}, {h})"
    rotatable = True
    angle_period = math.pi / 2  # a w x h box turned a quarter is an h x w one
    glsl_helper = """float sdBox(vec2 p, vec2 b) {
    vec2 d = abs(p) - b;
    return length(max(d, 0.0)) + min(max(d.x, d.y), 0.0);
}"""

    @property
    def angle(self) -> float:
        return self.a

    @property
    def noun(self) -> str:  # type: ignore[override]
        return "a square" if self.w == self.h else "a box"

    def sdf(self, px, py):
        x, y = self.local(px, py)
        dx, dy = np.abs(x) - self.w, np.abs(y) - self.h
        return np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0)) + np.minimum(np.maximum(dx, dy), 0.0)

    def area(self) -> float:
        return 4.0 * self.w * self.h

    def size_text(self) -> str:
        if self.w == self.h:
            return f"with half side {self.w:.2f}"
        return f"with half size ({self.w:.2f}, {self.h:.2f})"


@dataclass(frozen=True)
class RoundBox(Shape):
    """A rectangle with half sizes ``(w, h)`` whose corners are rounded with radius ``r``."""

    w: float
    h: float
    r: float
    a: float = 0.0

    type_name = "round_box"
    noun = "a rounded box"
    glsl_name = "sdRoundBox"
    glsl_args = "vec2({w}, {h}), {r}"
    rotatable = True
    angle_period = math.pi / 2
    glsl_helper = """float sdRoundBox(vec2 p, vec2 b, float r) {
    vec2 q = abs(p) - b + r;
    return min(max(q.x, q.y), 0.0) + length(max(q, 0.0)) - r;
}"""

    @property
    def angle(self) -> float:
        return self.a

    def sdf(self, px, py):
        x, y = self.local(px, py)
        qx, qy = np.abs(x) - self.w + self.r, np.abs(y) - self.h + self.r
        return (
            np.minimum(np.maximum(qx, qy), 0.0) + np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) - self.r
        )

    def area(self) -> float:
        return 4.0 * self.w * self.h - (4.0 - math.pi) * self.r**2

    def size_text(self) -> str:
        return f"with half size ({self.w:.2f}, {self.h:.2f}) and corner radius {self.r:.2f}"


@dataclass(frozen=True)
class Annulus(Shape):
    """A ring of radius ``r`` whose band reaches ``t`` either side of that circle."""

    r: float
    t: float

    type_name = "annulus"
    noun = "a ring"
    glsl_name = "sdAnnulus"
    glsl_args = "{r}, {t}"
    glsl_helper = """float sdAnnulus(vec2 p, float r, float t) {
    return abs(length(p) - r) - t;
}"""

    def sdf(self, px, py):
        x, y = self.local(px, py)
        return np.abs(np.hypot(x, y) - self.r) - self.t

    def area(self) -> float:
        outer, inner = self.r + self.t, max(self.r - self.t, 0.0)
        return math.pi * (outer**2 - inner**2)

    def size_text(self) -> str:
        return f"with radius {self.r:.2f} and half thickness {self.t:.2f}"


@dataclass(frozen=True)
class Capsule(Shape):
    """A horizontal segment of half length ``h`` thickened by radius ``r``, then rotated."""

    h: float
    r: float
    a: float = 0.0

    type_name = "capsule"
    noun = "a capsule"
    glsl_name = "sdCapsule"
    glsl_args = "{h}, {r}"
    rotatable = True
    angle_period = math.pi
    glsl_helper = """float sdCapsule(vec2 p, float h, float r) {
    p.x -= clamp(p.x, -h, h);
    return length(p) - r;
}"""

    @property
    def angle(self) -> float:
        return self.a

    def sdf(self, px, py):
        x, y = self.local(px, py)
        return np.hypot(x - np.clip(x, -self.h, self.h), y) - self.r

    def area(self) -> float:
        return 4.0 * self.h * self.r + math.pi * self.r**2

    def size_text(self) -> str:
        return f"with half length {self.h:.2f} and radius {self.r:.2f}"


@dataclass(frozen=True)
class Triangle(Shape):
    """An equilateral triangle with side ``2 r``, centred on its centroid, pointing up before rotation."""

    r: float
    a: float = 0.0

    type_name = "triangle"
    noun = "a triangle"
    glsl_name = "sdTriangle"
    glsl_args = "{r}"
    rotatable = True
    angle_period = 2 * math.pi / 3
    glsl_helper = """float sdTriangle(vec2 p, float r) {
    const float k = sqrt(3.0);
    p.x = abs(p.x) - r;
    p.y = p.y + r / k;
    if (p.x + k * p.y > 0.0) p = vec2(p.x - k * p.y, -k * p.x - p.y) / 2.0;
    p.x -= clamp(p.x, -2.0 * r, 0.0);
    return -length(p) * sign(p.y);
}"""

    @property
    def angle(self) -> float:
        return self.a

    def sdf(self, px, py):
        x, y = self.local(px, py)
        k = math.sqrt(3.0)
        x = np.abs(x) - self.r
        y = y + self.r / k
        fold = x + k * y > 0.0
        x, y = np.where(fold, (x - k * y) / 2.0, x), np.where(fold, (-k * x - y) / 2.0, y)
        x = x - np.clip(x, -2.0 * self.r, 0.0)
        return -np.hypot(x, y) * np.sign(y)

    def area(self) -> float:
        return math.sqrt(3.0) * self.r**2

    def size_text(self) -> str:
        return f"with half side {self.r:.2f}"


@dataclass(frozen=True)
class Hexagon(Shape):
    """A regular hexagon with inradius ``r`` (flat top and bottom before rotation)."""

    r: float
    a: float = 0.0

    type_name = "hexagon"
    noun = "a hexagon"
    glsl_name = "sdHexagon"
    glsl_args = "{r}"
    rotatable = True
    angle_period = math.pi / 3
    glsl_helper = """float sdHexagon(vec2 p, float r) {
    const vec3 k = vec3(-0.866025404, 0.5, 0.577350269);
    p = abs(p);
    p -= 2.0 * min(dot(k.xy, p), 0.0) * k.xy;
    p -= vec2(clamp(p.x, -k.z * r, k.z * r), r);
    return length(p) * sign(p.y);
}"""

    @property
    def angle(self) -> float:
        return self.a

    def sdf(self, px, py):
        x, y = self.local(px, py)
        kx, ky, kz = -0.866025404, 0.5, 0.577350269
        x, y = np.abs(x), np.abs(y)
        dot = np.minimum(kx * x + ky * y, 0.0)
        x, y = x - 2.0 * dot * kx, y - 2.0 * dot * ky
        x = x - np.clip(x, -kz * self.r, kz * self.r)
        y = y - self.r
        return np.hypot(x, y) * np.sign(y)

    def area(self) -> float:
        return 2.0 * math.sqrt(3.0) * self.r**2

    def size_text(self) -> str:
        return f"with inner radius {self.r:.2f}"


PRIMITIVES: dict[str, type[Shape]] = {
    cls.type_name: cls for cls in (Circle, Box, RoundBox, Annulus, Capsule, Triangle, Hexagon)
}


# ----------------------------------------------------------------------------------------------------
# Operators and scenes


OPERATORS = ("union", "subtract", "intersect", "smooth_union")

_OP_WORDS = {
    "union": "plus",
    "subtract": "minus",
    "intersect": "intersected with",
    "smooth_union": "smoothly merged (k {k}) with",
}

SMIN_HELPER = """float smin(float a, float b, float k) {
    float h = max(k - abs(a - b), 0.0) / k;
    return min(a, b) - h * h * k * 0.25;
}"""

ROTATE_HELPER = """vec2 rotate(vec2 p, float a) {
    float c = cos(a), s = sin(a);
    return vec2(c * p.x + s * p.y, -s * p.x + c * p.y);
}"""


@dataclass(frozen=True)
class Op:
    """A boolean operator; ``k`` is the blend radius of ``smooth_union`` (0 for the others)."""

    kind: str
    k: float = 0.0

    def __post_init__(self):
        if self.kind not in OPERATORS:
            raise ValueError(f"unknown operator {self.kind!r} (one of: {', '.join(OPERATORS)})")

    def glsl(self, var: str) -> str:
        return {
            "union": f"min(d, {var})",
            "subtract": f"max(d, -{var})",
            "intersect": f"max(d, {var})",
            "smooth_union": f"smin(d, {var}, {fmt(self.k)})",
        }[self.kind]

    def apply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.kind == "union":
            return np.minimum(a, b)
        if self.kind == "subtract":
            return np.maximum(a, -b)
        if self.kind == "intersect":
            return np.maximum(a, b)
        h = np.maximum(self.k - np.abs(a - b), 0.0) / self.k
        return np.minimum(a, b) - h * h * self.k * 0.25

    def words(self) -> str:
        return _OP_WORDS[self.kind].format(k=f"{self.k:.2f}")


@dataclass(frozen=True)
class Scene:
    """Shapes folded from the left: ``d = shapes[0]; d = ops[i](d, shapes[i + 1])``."""

    shapes: tuple[Shape, ...]
    ops: tuple[Op, ...] = ()

    def __post_init__(self):
        if not self.shapes:
            raise ValueError("a scene needs at least one shape")
        if len(self.ops) != len(self.shapes) - 1:
            raise ValueError(
                f"{len(self.shapes)} shapes need {len(self.shapes) - 1} operators, got {len(self.ops)}"
            )


def shape_types(scene: Scene) -> list[str]:
    """The primitive type names of a scene, sorted: a multiset that compares with ``==``."""
    return sorted(shape.type_name for shape in scene.shapes)


# ----------------------------------------------------------------------------------------------------
# Printing and parsing


_NUMBER_WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]


def _count_text(n: int) -> str:
    word = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    return f"{word} shape{'s' if n != 1 else ''}"


def to_glsl(scene: Scene) -> str:
    """Canonical Shadertoy code for a scene: helpers it needs, one distance per shape, the fold, the edge."""
    helpers = []
    if any(s.rotatable and s.angle != 0.0 for s in scene.shapes):
        helpers.append(ROTATE_HELPER)
    used = {type(s) for s in scene.shapes}
    helpers += [cls.glsl_helper for cls in PRIMITIVES.values() if cls in used]
    if any(op.kind == "smooth_union" for op in scene.ops):
        helpers.append(SMIN_HELPER)

    body = ["    vec2 uv = (2.0 * fragCoord - iResolution.xy) / iResolution.y;"]
    body += [f"    float d{i} = {shape.glsl_call()};" for i, shape in enumerate(scene.shapes)]
    body.append("    float d = d0;")
    body += [f"    d = {op.glsl(f'd{i + 1}')};" for i, op in enumerate(scene.ops)]
    body += [
        "    float aa = 1.0 / iResolution.y;  // half a pixel: the edge is one pixel wide",
        "    float shape = 1.0 - smoothstep(-aa, aa, d);",
        "    fragColor = vec4(vec3(shape), 1.0);",
    ]
    main = "void mainImage(out vec4 fragColor, in vec2 fragCoord) {\n" + "\n".join(body) + "\n}"
    header = f"// {_count_text(len(scene.shapes))}, white on black."
    return "\n\n".join([header, *helpers, main]) + "\n"


def _normalise(code: str) -> str:
    """Code without comments or whitespace, every number in one spelling: how two sources are compared."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", " ", code, flags=re.S)
    code = _NUM_TOKEN_RE.sub(lambda m: repr(float(m.group(0))), code)
    # keep one space only where it separates two words ("float d0"), none elsewhere
    code = re.sub(r"(?<=\w)\s+(?=\w)", "\0", code)
    return re.sub(r"\s+", "", code).replace("\0", " ")


_POS_RE = rf"(?:uv-vec2\(({_NUM}),({_NUM})\)|rotate\(uv-vec2\(({_NUM}),({_NUM})\),({_NUM})\))"
_SHAPE_LINE_RE = re.compile(r"float d(\d+)=(\w+)\(" + _POS_RE + r",(.*)\);")
_OP_LINE_RE = re.compile(rf"d=(?:min\(d,d(\d+)\)|max\(d,(-?)d(\d+)\)|smin\(d,d(\d+),({_NUM})\));")
_ARG_RE = re.compile(rf"vec2\(({_NUM}),({_NUM})\)|({_NUM})")


def _parse_shape(name: str, pos: tuple, rest: str) -> Shape | None:
    cls = next((c for c in PRIMITIVES.values() if c.glsl_name == name), None)
    if cls is None:
        return None
    if pos[0] is not None:
        x, y, angle = float(pos[0]), float(pos[1]), 0.0
    else:
        x, y, angle = float(pos[2]), float(pos[3]), float(pos[4])
    values: list[float] = []
    for m in _ARG_RE.finditer(rest):
        values += [float(m.group(1)), float(m.group(2))] if m.group(1) is not None else [float(m.group(3))]
    names = [f.name for f in fields(cls) if f.name not in ("x", "y", "a")]
    if len(values) != len(names):
        return None
    kwargs = dict(zip(names, values, strict=True))
    if cls.rotatable:
        kwargs["a"] = angle
    elif angle != 0.0:
        return None
    try:
        return cls(x=x, y=y, **kwargs)
    except (TypeError, ValueError):
        return None


def from_glsl(code: str) -> Scene | None:
    """The scene a canonical shader draws, or None when the code is not in the canonical form.

    Whitespace, comments and the spelling of numbers (``0.3`` or ``0.30``) may differ; anything else
    (another helper body, an extra statement, a different colour) makes it not canonical.
    """
    if not isinstance(code, str) or "mainImage" not in code:
        return None
    flat = _normalise(code)
    start = flat.find("void mainImage(")
    if start < 0:
        return None
    statements = flat[start:].split(";")
    shapes: list[Shape] = []
    ops: list[Op] = []
    for stmt in statements:
        stmt = stmt.split("{")[-1] + ";"
        m = _SHAPE_LINE_RE.fullmatch(stmt)
        if m:
            if int(m.group(1)) != len(shapes):
                return None
            shape = _parse_shape(m.group(2), m.groups()[2:7], m.group(8))
            if shape is None:
                return None
            shapes.append(shape)
            continue
        m = _OP_LINE_RE.fullmatch(stmt)
        if m:
            if m.group(1) is not None:
                index, op = m.group(1), Op("union")
            elif m.group(3) is not None:
                index, op = m.group(3), Op("subtract" if m.group(2) else "intersect")
            else:
                k = float(m.group(5))
                if k <= 0.0:
                    return None
                index, op = m.group(4), Op("smooth_union", k)
            if int(index) != len(ops) + 1:
                return None
            ops.append(op)
    if not shapes or len(ops) != len(shapes) - 1:
        return None
    scene = Scene(shapes=tuple(shapes), ops=tuple(ops))
    return scene if _normalise(to_glsl(scene)) == flat else None


def describe(scene: Scene) -> str:
    """The short factual reasoning written before the code: what shapes, where, how large, how combined."""
    parts = [scene.shapes[0].describe()]
    parts += [
        f"{op.words()} {shape.describe()}" for op, shape in zip(scene.ops, scene.shapes[1:], strict=True)
    ]
    return f"{_count_text(len(scene.shapes))}: " + ", ".join(parts) + "."


# ----------------------------------------------------------------------------------------------------
# JSON


def scene_to_json(scene: Scene) -> str:
    """A compact JSON string: ``{"shapes": [{"type": ..., params}], "ops": [{"kind": ..., "k": ...}]}``."""
    shapes = [{"type": s.type_name, **asdict(s)} for s in scene.shapes]
    ops = [asdict(op) for op in scene.ops]
    return json.dumps({"shapes": shapes, "ops": ops}, separators=(",", ":"))


def scene_from_json(text: str) -> Scene:
    data = json.loads(text)
    shapes = []
    for item in data["shapes"]:
        item = dict(item)
        cls = PRIMITIVES[item.pop("type")]
        shapes.append(cls(**item))
    return Scene(shapes=tuple(shapes), ops=tuple(Op(**op) for op in data["ops"]))


# ----------------------------------------------------------------------------------------------------
# Evaluation without a GPU: the same distances in NumPy, for visibility checks and tests


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """uv coordinates of pixel centres on a square image, top row first (as rendered images are).

    Cached and read-only: the filter asks for the same grid thousands of times.
    """
    centres = ((2.0 * (np.arange(size) + 0.5) - size) / size).astype(dtype)
    x, y = np.meshgrid(centres, centres[::-1])
    x.flags.writeable = y.flags.writeable = False
    return x, y


def distance_field(scene: Scene, size: int = 128) -> np.ndarray:
    """The scene's signed distance at every pixel centre, top row first."""
    x, y = pixel_grid(size)
    d = scene.shapes[0].sdf(x, y)
    for op, shape in zip(scene.ops, scene.shapes[1:], strict=True):
        d = op.apply(d, shape.sdf(x, y))
    return d


def coverage(scene: Scene, size: int = 128) -> np.ndarray:
    """The grey level ``to_glsl`` draws, computed in NumPy: 1 inside, 0 outside, smooth at the edge."""
    d = distance_field(scene, size)
    aa = 1.0 / size
    t = np.clip((d + aa) / (2.0 * aa), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


# ----------------------------------------------------------------------------------------------------
# Stages and sampling


@dataclass(frozen=True)
class Stage:
    """One step of the curriculum, as data: what to draw and from which ranges.

    Sizes are in uv units, where the screen's height spans -1..1. Every sampled value is a multiple of
    ``step * 10 ** -precision``, so it prints exactly and parses back to the same float.
    """

    name: str = field(metadata={"help": "Short name, used in logs."})
    primitives: tuple[str, ...] = field(
        metadata={"help": "Primitive type names drawn from (see PRIMITIVES)."}
    )
    min_shapes: int = field(default=1, metadata={"help": "Fewest shapes in a scene."})
    max_shapes: int = field(default=1, metadata={"help": "Most shapes in a scene."})
    count_weights: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "Relative odds of min_shapes..max_shapes shapes; None: even. Scenes with more shapes fail "
            "the visibility filter more often, so weighting them up keeps the kept counts balanced."
        },
    )
    operators: tuple[str, ...] = field(default=("union",), metadata={"help": "Operators drawn from."})
    center: tuple[float, float] = field(default=(-0.6, 0.6), metadata={"help": "Range of centre x and y."})
    size: tuple[float, float] = field(
        default=(0.1, 0.45), metadata={"help": "Range of radii, half sides and half lengths."}
    )
    thickness: tuple[float, float] = field(
        default=(0.03, 0.15), metadata={"help": "Range of ring half thickness and capsule radius."}
    )
    rotate: bool = field(default=False, metadata={"help": "Whether rotatable shapes get a random angle."})
    square_boxes: bool = field(default=True, metadata={"help": "Boxes have equal sides (squares)."})
    smooth_k: tuple[float, float] = field(default=(0.05, 0.25), metadata={"help": "Range of smooth-union k."})
    spread: float | None = field(
        default=None,
        metadata={
            "help": "Most distance (per axis) of each shape's centre from the previous one's; None: anywhere."
        },
    )
    precision: int = field(default=PRECISION, metadata={"help": "Decimals of every printed parameter."})
    step: int = field(
        default=1,
        metadata={
            "help": "Grid of the sampled values, in units of the last printed decimal: 5 with precision 2 "
            "draws multiples of 0.05. A coarser grid means fewer distinct numbers for a model to tell apart."
        },
    )
    reading_order: bool = field(
        default=False,
        metadata={
            "help": "Sort the shapes left to right (then bottom to top) where the operators let any order "
            "draw the same picture (order_free: all union, all intersect, or two shapes under any operator "
            "but subtract), so that the order a description names them in follows from the picture; a "
            "model learning to describe images then has one right answer, not n!."
        },
    )
    printer: str = field(
        default="sdf2d",
        metadata={"help": "Key of PRINTERS: the family of scenes and how it becomes a sample."},
    )


STAGES: dict[int, Stage] = {
    1: Stage(
        name="primitives",
        primitives=("circle", "box", "annulus"),
        min_shapes=1,
        max_shapes=2,
        operators=("union",),
        size=(0.12, 0.45),
        rotate=False,
        square_boxes=True,
        reading_order=True,
    ),
    2: Stage(
        name="boolean",
        primitives=tuple(PRIMITIVES),
        min_shapes=2,
        max_shapes=5,
        count_weights=(1.0, 1.0, 1.5, 2.0),
        operators=OPERATORS,
        size=(0.1, 0.45),
        rotate=True,
        square_boxes=False,
        spread=0.4,
    ),
}


def _uniform(rng: np.random.Generator, lo: float, hi: float, precision: int, step: int = 1) -> float:
    """A value in [lo, hi] on the grid of ``step * 10 ** -precision``, as the float its decimal text
    parses to. A range narrower than one grid step gives its lowest grid value at or above ``lo``."""
    scale = 10**precision
    first = -(-round(lo * scale) // step)  # ceil
    last = max(first, round(hi * scale) // step)
    return int(rng.integers(first, last + 1)) * step / scale


def _angle(rng: np.random.Generator, stage: Stage, period: float) -> float:
    # Angles cover one period of the shape's symmetry, so different values mean different pictures.
    return _uniform(rng, 0.0, period, stage.precision, stage.step) if stage.rotate else 0.0


def random_shape(
    kind: str, stage: Stage, rng: np.random.Generator, near: tuple[float, float] | None = None
) -> Shape:
    """One primitive of type ``kind`` with parameters from the stage's ranges.

    With ``near`` (and a stage ``spread``) the centre lies within ``spread`` of that point, per axis,
    so that boolean operators have something to cut or join.
    """
    p = stage.precision, stage.step
    lo, hi = stage.center
    if near is not None and stage.spread is not None:
        x = _uniform(rng, max(lo, near[0] - stage.spread), min(hi, near[0] + stage.spread), *p)
        y = _uniform(rng, max(lo, near[1] - stage.spread), min(hi, near[1] + stage.spread), *p)
    else:
        x, y = _uniform(rng, lo, hi, *p), _uniform(rng, lo, hi, *p)
    size = _uniform(rng, *stage.size, *p)
    if kind == "circle":
        return Circle(x, y, size)
    if kind == "box":
        h = size if stage.square_boxes else _uniform(rng, *stage.size, *p)
        return Box(x, y, size, h, _angle(rng, stage, 1.57))
    if kind == "round_box":
        h = size if stage.square_boxes else _uniform(rng, *stage.size, *p)
        r = _uniform(rng, 0.02, max(0.02, min(size, h) / 2), *p)
        return RoundBox(x, y, size, h, r, _angle(rng, stage, 1.57))
    if kind == "annulus":
        t = _uniform(rng, stage.thickness[0], min(stage.thickness[1], size / 2), *p)
        return Annulus(x, y, size, t)
    if kind == "capsule":
        return Capsule(x, y, size, _uniform(rng, *stage.thickness, *p), _angle(rng, stage, 3.14))
    if kind == "triangle":
        return Triangle(x, y, size, _angle(rng, stage, 2.09))
    if kind == "hexagon":
        return Hexagon(x, y, size, _angle(rng, stage, 1.04))
    raise ValueError(f"unknown primitive {kind!r} (one of: {', '.join(PRIMITIVES)})")


def random_scene(stage: Stage | int, rng: np.random.Generator) -> Scene:
    """A scene drawn from a stage: a shape count, shapes, and an operator between each pair."""
    if isinstance(stage, int):
        stage = STAGES[stage]
    counts = np.arange(stage.min_shapes, stage.max_shapes + 1)
    if stage.count_weights is None:
        n = int(rng.integers(stage.min_shapes, stage.max_shapes + 1))
    else:
        weights = np.asarray(stage.count_weights, dtype=float)
        n = int(rng.choice(counts, p=weights / weights.sum()))
    kinds = [stage.primitives[int(i)] for i in rng.integers(0, len(stage.primitives), size=n)]
    shapes: list[Shape] = []
    for kind in kinds:
        near = (shapes[-1].x, shapes[-1].y) if shapes else None
        shapes.append(random_shape(kind, stage, rng, near))
    ops = []
    for _ in range(n - 1):
        kind = stage.operators[int(rng.integers(0, len(stage.operators)))]
        k = _uniform(rng, *stage.smooth_k, stage.precision, stage.step) if kind == "smooth_union" else 0.0
        ops.append(Op(kind, k))
    if stage.reading_order and order_free(ops):
        shapes.sort(key=lambda s: (s.x, s.y))
    return Scene(shapes=tuple(shapes), ops=tuple(ops))


def order_free(ops: tuple[Op, ...] | list[Op]) -> bool:
    """Whether shapes joined by these operators draw the same picture in any order.

    True for one operator that is not ``subtract`` (``min``, ``max`` and :data:`SMIN_HELPER`'s ``smin``
    are symmetric in their two arguments), and for any number of ``union`` or of ``intersect`` alone
    (also associative). ``smin`` is not associative, and ``subtract`` keeps its left side.
    """
    if len(ops) == 1:
        return ops[0].kind != "subtract"
    kinds = {op.kind for op in ops}
    return len(kinds) <= 1 and kinds <= {"union", "intersect"}


def canonical(scene: Scene) -> Scene:
    """The scene with its shapes in one fixed order wherever any order draws the same picture
    (:func:`order_free`): left to right, ties broken by the rest of each shape. Two listings of one
    picture have one canonical form, which is how a held-out scene is recognised whichever order a
    dataset writes it in (``earthshader data --reading-order``)."""
    if not order_free(scene.ops):
        return scene
    shapes = sorted(scene.shapes, key=lambda s: (s.x, s.y, s.type_name, astuple(s)))
    return Scene(shapes=tuple(shapes), ops=scene.ops)


def format_completion(reasoning: str, code: str) -> str:
    """What the model is taught to write: the reasoning, then the code in a fenced glsl block."""
    return f"{reasoning}\n\n```glsl\n{code.rstrip()}\n```"


def completion_text(scene: Scene) -> str:
    """The target completion of a 2D scene: its description, then its canonical code."""
    return format_completion(describe(scene), to_glsl(scene))


@dataclass(frozen=True)
class Printer:
    """How one family of scenes becomes samples: draw one for a stage, print its code, describe it, save it.

    Scenes must be hashable (frozen dataclasses), which is how the factory finds duplicates. A later
    family (procedural textures, raymarched 3D) is a new entry here and stages that name it; the
    factory does not change.
    """

    sample: Callable[[Stage, np.random.Generator], Any]
    to_glsl: Callable[[Any], str]
    describe: Callable[[Any], str]
    to_json: Callable[[Any], str]
    # the inverse of to_json, and the one form of a scene that every listing of its picture shares
    from_json: Callable[[str], Any]
    canonical: Callable[[Any], Any]

    def key(self, scene: Any) -> str:
        """The JSON of the scene's canonical form: equal for two listings of one picture."""
        return self.to_json(self.canonical(scene))


PRINTERS: dict[str, Printer] = {
    "sdf2d": Printer(
        sample=random_scene,
        to_glsl=to_glsl,
        describe=describe,
        to_json=scene_to_json,
        from_json=scene_from_json,
        canonical=canonical,
    ),
}


def sample_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` texts (reasoning then fenced code) of random scenes across every stage, for tokenizer training."""
    rng = np.random.default_rng(seed)
    stages = sorted(STAGES)
    return [completion_text(random_scene(STAGES[stages[i % len(stages)]], rng)) for i in range(n)]
