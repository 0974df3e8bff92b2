"""Experiment helper (issue 7): one Markdown table row per audit, with a centre error the audit lacks.

Centre error: for each test image where the predicted code parses back into a scene with as many
shapes as the truth, the mean distance (uv units; the screen's height spans 2) between each true
shape's centre and the nearest predicted centre; averaged over those images. It moves long before
MSE does, so it tells whether a run has started to read positions off the picture at all.

"Distinct codes" counts the different shader codes among the audited images: a model that ignores the
image writes the same code for every one.

    .venv/bin/python recipes/experiments/summarise_audits.py /tmp/l7/data/stage1 /tmp/l7/audit/base-300 ...
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from earthshader.scenes import from_glsl, scene_from_json


def centre_error(report: dict, truths: list[str]) -> tuple[float | None, int]:
    """Mean nearest-centre distance over the samples whose predicted shape count is right, and their number."""
    errors = []
    for sample, truth_json in zip(report["samples"], truths, strict=False):
        pred = from_glsl(sample["code"] or "")
        truth = scene_from_json(truth_json)
        if pred is None or len(pred.shapes) != len(truth.shapes):
            continue
        d = [min(math.dist((t.x, t.y), (p.x, p.y)) for p in pred.shapes) for t in truth.shapes]
        errors.append(sum(d) / len(d))
    return (sum(errors) / len(errors) if errors else None), len(errors)


def row(data_path: str, audit: Path) -> str:
    from datasets import load_from_disk

    report = json.loads((audit / "report.json").read_text())
    n = report["num_samples"]
    truths = load_from_disk(data_path)[report["split"]]["scene"][:n]
    o = report["overall"]
    err, n_err = centre_error(report, truths)
    err_text = "-" if err is None else f"{err:.2f} (n={n_err})"
    distinct = len({s["code"] for s in report["samples"]})
    return (
        f"| {audit.name} | {o['compile_rate']:.0%} | {o['mse_all']:.4f} | {o['black_mse']:.4f} "
        f"| {o['shape_identity']:.0%} | {o['shape_count_exact']:.0%} | {err_text} | {distinct}/{n} |"
    )


def main(argv: list[str]) -> int:
    data_path, audits = argv[0], argv[1:]
    print("| audit | compile | MSE | black MSE | identity | count | centre error | distinct codes |")
    print("|---|---|---|---|---|---|---|---|")
    for audit in audits:
        print(row(data_path, Path(audit)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
