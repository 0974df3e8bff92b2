"""Experiment helper (issue 7): how precise must the numbers be? Pixel MSE of truths with noisy parameters.

Every test scene's centres, sizes, or both get Gaussian noise of standard deviation sigma (uv units,
rounded to the printed 0.01); the perturbed scene is rendered and compared with the true image.

    .venv/bin/python recipes/experiments/noise_mse.py /tmp/l7/data/s1sorted
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from datasets import load_from_disk

from earthshader.render import render_many
from earthshader.scenes import scene_from_json, to_glsl

CENTRE = ("x", "y")
SIZE = ("r", "w", "h", "t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    args = parser.parse_args()
    test = load_from_disk(args.data)["test"]
    scenes = [scene_from_json(s) for s in test["scene"]]
    targets = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in test["image"]]
    rng = np.random.default_rng(0)

    def perturb(shape, sigma, names):
        values = {}
        for f in dataclasses.fields(shape):
            v = getattr(shape, f.name)
            if f.name in names:
                v = round(v + rng.normal(0, sigma), 2)
                v = v if f.name in CENTRE else max(0.02, v)
            values[f.name] = v
        return type(shape)(**values)

    print("| noise on | sigma 0.01 | 0.02 | 0.03 | 0.05 | 0.08 |\n|---|---|---|---|---|---|")
    for label, names in (("centres", CENTRE), ("sizes", SIZE), ("both", CENTRE + SIZE)):
        cells = []
        for sigma in (0.01, 0.02, 0.03, 0.05, 0.08):
            codes = [
                to_glsl(dataclasses.replace(s, shapes=tuple(perturb(x, sigma, names) for x in s.shapes)))
                for s in scenes
            ]
            results = render_many(codes, size=targets[0].shape[0])
            cells.append(
                np.mean([((r.image - t) ** 2).mean() for r, t in zip(results, targets, strict=True)])
            )
        print(f"| {label} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
