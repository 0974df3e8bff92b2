"""Experiment helper (issue 7): are the audit's misses on pairs the pairs whose shapes hide each other?

For each two-shape test scene, the smallest share of a shape's own area that is visible as that shape
alone (the pixels that change when it is removed, on a 48 x 48 grid: the data filter's
``hidden_shape`` test, as a share of the shape instead of the frame). Splits an audit's pairs at a few
thresholds of that share and prints identity, count and MSE on each side; then the share of training
pairs a rule at each threshold would drop.

    .venv/bin/python recipes/experiments/visible_share.py RUN/audit/report.json /tmp/l7/data/s1q5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from datasets import load_from_disk

from earthshader.data import inside_mask
from earthshader.scenes import pixel_grid, scene_from_json

GRID = 48


def smallest_visible_share(scene) -> float:
    x, y = pixel_grid(GRID, np.float32)
    fields = [shape.sdf(x, y) for shape in scene.shapes]

    whole = inside_mask(scene, fields)
    return min(
        np.count_nonzero(inside_mask(scene, fields, skip=i) != whole) / max(np.count_nonzero(d < 0), 1)
        for i, d in enumerate(fields)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("data")
    parser.add_argument("--train-rows", type=int, default=2000)
    args = parser.parse_args()
    data = load_from_disk(args.data)
    test = data["test"]
    rows = []
    for s in json.load(open(args.report))["samples"]:
        scene = scene_from_json(test[s["index"]]["scene"])
        if len(scene.shapes) > 1:
            rows.append((smallest_visible_share(scene), s["identity"], s["count_exact"], s["mse"]))
    for th in (0.1, 0.2, 0.3, 0.4, 0.5):
        parts = []
        for name, group in (
            ("below", [r for r in rows if r[0] < th]),
            ("above", [r for r in rows if r[0] >= th]),
        ):
            mean = [np.mean([r[k] for r in group]) if group else float("nan") for k in (1, 2, 3)]
            parts.append(
                f"{name} n={len(group)} identity {mean[0]:.2f} count {mean[1]:.2f} mse {mean[2]:.3f}"
            )
        print(f"share {th}: " + " | ".join(parts))
    train = data["train"].select(range(min(args.train_rows, len(data["train"]))))
    shares = np.array(
        [smallest_visible_share(sc) for sc in map(scene_from_json, train["scene"]) if len(sc.shapes) > 1]
    )
    print(
        f"{len(shares)} training pairs; dropped by a rule at",
        {th: round(float((shares < th).mean()), 3) for th in (0.1, 0.2, 0.3, 0.4, 0.5)},
    )


if __name__ == "__main__":
    main()
