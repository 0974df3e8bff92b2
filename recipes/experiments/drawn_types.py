"""Experiment helper (issues 5 and 7): what a model draws, per audit, beside what the scenes hold.

For each audit folder (or its report.json): how many shapes each answer draws, how often each
primitive type is drawn, and the mean MSE (a failed shader scores as black) by the truth's shape
count. Session 18 used it to see what GRPO on Stage 2 learned: discs instead of rings.

With ``--confusion``, each audit's single-shape images also get a confusion table: per true type, how
often the answer draws that type alone, the mean MSE, and what it draws instead. Session 19 used it on
Stage-2 single primitives, where boxes, triangles and hexagons are read as each other and as circles.

    .venv/bin/python recipes/experiments/drawn_types.py [--confusion] /tmp/s18/a-base /tmp/s18/a-ga150 ...
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from compare_audits import FIGURES, load  # this folder is on sys.path when the script runs

SAMPLE_MSE = next(read for label, read, _ in FIGURES if label == "MSE")  # a failed shader scores as black


def summary(samples: list[dict]) -> dict:
    """Drawn shape counts, drawn types and MSE by true shape count, of one audit's samples."""
    drawn_counts: Counter[int] = Counter()
    drawn_types: Counter[str] = Counter()
    mse_by_truth: defaultdict[int, list[float]] = defaultdict(list)
    for s in samples:
        pred = s.get("pred_types") or []
        drawn_counts[len(pred)] += 1
        drawn_types.update(pred)
        mse_by_truth[len(s.get("true_types") or [])].append(SAMPLE_MSE(s))
    return {
        "drawn_counts": dict(sorted(drawn_counts.items())),
        "drawn_types": dict(drawn_types.most_common()),
        "mse_by_true_count": {k: round(sum(v) / len(v), 4) for k, v in sorted(mse_by_truth.items())},
        "true_counts": {k: len(v) for k, v in sorted(mse_by_truth.items())},
    }


def confusion(samples: list[dict]) -> list[str]:
    """Markdown rows for the single-shape images: true type, images, share drawn right, MSE, drawn instead."""
    drawn: defaultdict[str, Counter[str]] = defaultdict(Counter)
    mse: defaultdict[str, list[float]] = defaultdict(list)
    for s in samples:
        truth = s.get("true_types") or []
        if len(truth) == 1:
            drawn[truth[0]][" + ".join(s.get("pred_types") or []) or "nothing"] += 1
            mse[truth[0]].append(SAMPLE_MSE(s))
    rows = ["| true type | images | drawn right | MSE | drawn instead |", "|---|---:|---:|---:|---|"]
    for kind, counts in sorted(drawn.items()):
        n = sum(counts.values())
        instead = ", ".join(f"{k} {v}" for k, v in counts.most_common() if k != kind)
        rows.append(
            f"| {kind} | {n} | {counts[kind] / n:.0%} | {sum(mse[kind]) / n:.4f} | {instead or '-'} |"
        )
    return rows


def main(argv: list[str]) -> int:
    table = "--confusion" in argv
    argv = [a for a in argv if a != "--confusion"]
    if not argv:
        print(
            "usage: drawn_types.py [--confusion] AUDIT [AUDIT ...] (audit folders or report.json files)",
            file=sys.stderr,
        )
        return 2
    for arg in argv:
        path = Path(arg) / "report.json" if Path(arg).is_dir() else Path(arg)
        samples = load(str(path), "drawn_types")
        print(arg, json.dumps(summary(samples)))
        if table:
            print("\n".join(confusion(samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
