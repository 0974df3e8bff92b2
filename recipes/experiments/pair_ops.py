"""Experiment helper (issues 5 and 7): does the answer join its first two shapes as the scene does?

For each audit folder (or its report.json) of scenes with two shapes or more: the share of answers
whose reasoning names the scene's first operator (the word ``describe`` writes for it: plus, minus,
intersected with, smoothly merged), and per true operator what the answers name instead. The truth
is read from the audited dataset's ``scene`` column, row by row (the audit's ``index``). Session 21
used it on pairs, where a Stage-2 warmup with pair targets teaches the tower the operators.

    .venv/bin/python recipes/experiments/pair_ops.py /tmp/s21/a-pw-two /tmp/s21/a-aw-two
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from compare_audits import load_report  # this folder is on sys.path when the script runs

from earthshader.scenes import OPERATORS, Op, scene_from_json

# the words that follow the first shape, per operator ("smoothly merged (k 0.10) with": before the k)
_WORD = {kind: Op(kind).words().split(" (")[0] for kind in OPERATORS}
_FIRST = re.compile("|".join(re.escape(w) for w in sorted(_WORD.values(), key=len, reverse=True)))


def named_operator(completion: str) -> str:
    """The first operator the reasoning names, or "none"."""
    reasoning = completion.split("```")[0]
    found = _FIRST.search(reasoning)
    return next(k for k, w in _WORD.items() if w == found.group(0)) if found else "none"


def main(paths: list[str]) -> None:
    from datasets import load_from_disk

    for path in paths:
        report = load_report(str(Path(path) / "report.json" if Path(path).is_dir() else path), "pair_ops")
        data = load_from_disk(report["data"])[report["split"]]
        confusion: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for s in report["samples"]:
            scene = scene_from_json(data[s["index"]]["scene"])
            if scene.ops:
                confusion[scene.ops[0].kind][named_operator(s.get("completion") or "")] += 1
        total = sum(sum(c.values()) for c in confusion.values())
        right = sum(c[kind] for kind, c in confusion.items())
        print(f"{path}: first operator right {right} of {total} ({right / max(total, 1):.1%})")
        for kind, named in sorted(confusion.items()):
            n = sum(named.values())
            instead = ", ".join(f"{k} {v}" for k, v in named.most_common() if k != kind)
            print(f"  {kind:13s} {n:4d}  right {named[kind] / n:6.1%}  instead: {instead or '-'}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(sys.argv[1:])
