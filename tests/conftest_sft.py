"""A small dataset in the schema of `earthshader data`, drawn with PIL so the SFT tests need no renderer.

Columns: image, prompt, completion (conversational), reasoning, code, scene, stage, seed.
"""

from __future__ import annotations

import random
from pathlib import Path

PROMPT_TEXT = "Write a Shadertoy fragment shader that renders this image."

CODE_TEMPLATE = """float sdCircle(vec2 p, float r) {{
    return length(p) - r;
}}

void mainImage(out vec4 fragColor, in vec2 fragCoord) {{
    vec2 p = (2.0 * fragCoord - iResolution.xy) / iResolution.y;
    float d = sdCircle(p - vec2({x:.2f}, {y:.2f}), {r:.2f});
    float a = 1.0 - smoothstep(0.0, 2.0 / iResolution.y, d);
    fragColor = vec4(vec3(a), 1.0);
}}
"""


def circle_row(seed: int, size: int = 112) -> dict:
    """One sample: a white circle on black, its description and its shader."""
    from PIL import Image, ImageDraw

    from earthshader.scenes import Circle, Scene, scene_to_json

    rng = random.Random(seed)
    x, y, r = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.15, 0.4)
    x, y, r = round(x, 2), round(y, 2), round(r, 2)
    image = Image.new("RGB", (size, size))
    cx, cy, rad = (x + 1) * size / 2, (1 - y) * size / 2, r * size / 2
    ImageDraw.Draw(image).ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=(255, 255, 255))
    reasoning = f"One shape: a circle at ({x:.2f}, {y:.2f}) with radius {r:.2f}."
    code = CODE_TEMPLATE.format(x=x, y=y, r=r)
    return {
        "image": image,
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]}],
        "completion": [
            {"role": "assistant", "content": [{"type": "text", "text": f"{reasoning}\n```glsl\n{code}```"}]}
        ],
        "reasoning": reasoning,
        "code": code,
        "scene": scene_to_json(Scene(shapes=(Circle(x, y, r),), ops=())),
        "stage": 1,
        "seed": seed,
    }


def make_circle_dataset(path: str | Path, n_train: int = 32, n_test: int = 4) -> Path:
    """Write a DatasetDict (train/test) with ``save_to_disk`` and return its folder."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    features = Features(
        {
            "image": Image(),
            "prompt": [
                {"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}
            ],
            "completion": [
                {"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}
            ],
            "reasoning": Value("string"),
            "code": Value("string"),
            "scene": Value("string"),
            "stage": Value("int32"),
            "seed": Value("int64"),
        }
    )

    def split(seeds):
        rows = [circle_row(s) for s in seeds]
        return Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}, features=features)

    data = DatasetDict({"train": split(range(n_train)), "test": split(range(10_000, 10_000 + n_test))})
    data.save_to_disk(str(path))
    return Path(path)
