"""Experiment helper (issues 5 and 7): what each answer's shapes and operators draw, against the truth's.

For each audit folder (or its report.json) of a dataset with a ``scene`` column, over the answers whose
code the scene parser reads (``earthshader.scenes.from_glsl``), all computed in NumPy from the scenes:

- parts: the `parts` reward's matched IoU of each drawn primitive's own mask with the truth's, and
  "typed": the same with a type weight of 1 (only shapes of the right type count; session 31);
- area: the area the answer's scene covers over the truth's (median), and how many answers cover
  less than 90% of it;
- IoU: the foreground IoU of the two scenes' inside masks (mean);
- the operators the code writes, counted.

With ``--by-type``, per true primitive type: how its matched drawn primitives are typed, with their
mean IoU, the commonest first. Session 31 used it to see why GRPO on geometric rewards draws discs: a
disc at a box's, hexagon's or triangle's place overlaps it as well as or better than the model's own
box, hexagon or triangle, whose angles and sizes it gets wrong.

Session 30 used it on the pairs of s2two, where GRPO at 5e-5 had learned to draw the lens of two
intersected discs (finding 92); session 29 measured area and IoU by thresholding the rendered pictures.

    .venv/bin/python recipes/experiments/pair_parts.py [--by-type] /tmp/s30/a-keep /tmp/s30/a-gb /tmp/s30/a-gq
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from compare_audits import load_report  # this folder is on sys.path when the script runs

from earthshader.scenes import distance_field, from_glsl, scene_from_json
from rewards.parts import GRID, match_parts, parts_iou


def main(paths: list[str], by_type: bool = False) -> None:
    from datasets import load_from_disk

    for path in paths:
        report = load_report(str(Path(path) / "report.json" if Path(path).is_dir() else path), "pair_parts")
        data = load_from_disk(report["data"])[report["split"]]
        parts, typed, areas, ious, ops = [], [], [], [], Counter()
        matched: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for s in report["samples"]:
            drawn = from_glsl(s.get("code") or "")
            if drawn is None:
                continue
            truth = scene_from_json(data[s["index"]]["scene"])
            mine, theirs = distance_field(drawn, GRID) < 0.0, distance_field(truth, GRID) < 0.0
            parts.append(parts_iou(drawn, truth))
            typed.append(parts_iou(drawn, truth, type_weight=1.0))
            areas.append(np.count_nonzero(mine) / max(np.count_nonzero(theirs), 1))
            ious.append(np.count_nonzero(mine & theirs) / max(np.count_nonzero(mine | theirs), 1))
            ops.update(op.kind for op in drawn.ops)
            if by_type:
                rows, cols, scores = match_parts(drawn, truth)
                for i, j in zip(rows, cols, strict=True):
                    matched[truth.shapes[j].type_name][drawn.shapes[i].type_name].append(float(scores[i, j]))
        n = len(parts)
        if not n:
            print(f"{path}: no answer the parser reads")
            continue
        less = sum(a < 0.9 for a in areas)
        print(
            f"{path}: {n} of {len(report['samples'])} read; parts {np.mean(parts):.3f}, typed {np.mean(typed):.3f}; "
            f"area {statistics.median(areas):.2f} (under 90%: {less}); IoU {np.mean(ious):.3f}; "
            f"operators {', '.join(f'{k} {v}' for k, v in ops.most_common())}"
        )
        if by_type:
            for true_type, drawn_as in sorted(matched.items()):
                ranked = sorted(drawn_as.items(), key=lambda kv: -len(kv[1]))
                cells = ", ".join(f"{t} {len(v)} (IoU {np.mean(v):.2f})" for t, v in ranked)
                print(f"  {true_type:<10} drawn as: {cells}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    flag = "--by-type" in argv
    paths = [a for a in argv if a != "--by-type"]
    if not paths:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(paths, by_type=flag)
