"""Experiment helper (issue 7): where an audit's pixel MSE is lost, by putting parts of the truth into each answer.

For every audited answer that parses back into a scene with as many shapes as the truth, the
predicted shapes are matched to the true ones (Hungarian, on centre distance). An answer has three
parts: its structure (the shapes' order and the operators that join them), its centres, and its
shapes (type, sizes, angle). Each of the eight ways to take each part from the answer or from the
truth is rendered and compared with the target image: "-" takes nothing from the truth (the answer
as drawn), "centres + shapes" leaves only the answer's structure, and "structure + centres + shapes"
is the truth itself (a check: about 0). Errors interact (a shape moved to its right centre under a
wrong cut can remove more of the picture), so the rows that keep one part of the answer and take
the rest from the truth say best what that part costs. The answers with another count are left out
and counted. The truth and the targets are read from the audited dataset (the report's ``data``),
row by row (the audit's ``index``).

    .venv/bin/python recipes/experiments/pair_oracle.py AUDIT [AUDIT ...]   # folders or report.json files
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
from compare_audits import load_report  # this folder is on sys.path when the script runs
from datasets import load_from_disk
from scipy.optimize import linear_sum_assignment

from earthshader.audit import pixel_mse
from earthshader.render import render_many
from earthshader.scenes import Scene, from_glsl, scene_from_json, to_glsl

PARTS = ("structure", "centres", "shapes")
# each subset of PARTS taken from the truth, from none to all
VARIANTS = tuple(
    tuple(p for p, bit in zip(PARTS, bits, strict=True) if bit)
    for bits in itertools.product((0, 1), repeat=3)
)


def variant(pred: Scene, truth: Scene, match: np.ndarray, taken: tuple[str, ...]) -> Scene:
    """The answer with the parts in ``taken`` from the truth; ``match[i]`` is true shape i's predicted shape."""
    order = range(len(match)) if "structure" in taken else np.argsort(match)  # the answer's order
    shapes = []
    for i in order:
        true, drawn = truth.shapes[i], pred.shapes[match[i]]
        base = true if "shapes" in taken else drawn
        centre = true if "centres" in taken else drawn
        shapes.append(dataclasses.replace(base, x=centre.x, y=centre.y))
    return Scene(tuple(shapes), truth.ops if "structure" in taken else pred.ops)


def oracle(report: dict) -> tuple[dict[tuple[str, ...], float], int, int]:
    """Mean MSE of each variant over the answers with the truth's count, how many those are, and of how many."""
    rows = load_from_disk(report["data"])[report["split"]]
    codes, targets, kept = [], [], 0
    for sample in report["samples"]:
        row = rows[sample["index"]]
        truth, pred = scene_from_json(row["scene"]), from_glsl(sample["code"] or "")
        if pred is None or len(pred.shapes) != len(truth.shapes):
            continue
        kept += 1
        cost = [[math.dist((t.x, t.y), (p.x, p.y)) for p in pred.shapes] for t in truth.shapes]
        match = linear_sum_assignment(np.array(cost))[1]
        codes += [to_glsl(variant(pred, truth, match, taken)) for taken in VARIANTS]
        targets.append(np.asarray(row["image"].convert("RGB"), np.float32) / 255)
    results = render_many(codes, size=targets[0].shape[0]) if codes else []
    sums = dict.fromkeys(VARIANTS, 0.0)
    for k, result in enumerate(results):
        target = targets[k // len(VARIANTS)]
        image = result.image if result.image is not None else np.zeros_like(target)
        sums[VARIANTS[k % len(VARIANTS)]] += pixel_mse(image, target)
    return {v: s / max(kept, 1) for v, s in sums.items()}, kept, len(report["samples"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "audits", nargs="+", help="audit folders (earthshader eval --out) or their report.json"
    )
    args = parser.parse_args()
    results = []
    for audit in map(Path, args.audits):
        report = load_report(str(audit / "report.json" if audit.is_dir() else audit), "pair_oracle")
        results.append((audit.name if audit.is_dir() else audit.parent.name, *oracle(report)))
    print(
        "| from the truth | " + " | ".join(f"{name} ({kept} of {n})" for name, _, kept, n in results) + " |"
    )
    print("|---|" + "---:|" * len(results))
    for taken in VARIANTS:
        cells = " | ".join(f"{means[taken]:.4f}" for _, means, _, _ in results)
        print(f"| {' + '.join(taken) or '-'} | {cells} |")


if __name__ == "__main__":
    main()
