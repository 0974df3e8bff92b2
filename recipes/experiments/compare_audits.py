"""Experiment helper (issues 5 and 7): is a change between two audits of the same images more than noise?

Two audits (`earthshader eval`) of the same test images are paired image by image. For each figure
(pixel MSE with failures as black, SSIM, shape identity, shape count, compile) it prints both means,
the mean of the per-image differences (B - A), a 95% bootstrap interval for that mean
(`scipy.stats.bootstrap`, 10,000 resamples of the images, seed 0), and how many images got better
and worse. An interval that holds 0 means the 100 images cannot tell the two models apart on that
figure. `--by-count DATA` repeats the table for one-shape and two-shape images, reading each image's
shape count from the audits' own truth.

    .venv/bin/python recipes/experiments/compare_audits.py RUN_A/audit/report.json RUN_B/audit/report.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from scipy.stats import bootstrap

# (label, how to read one sample, lower is better)
FIGURES = [
    ("MSE", lambda s: s["mse"] if s["compiled"] else s["black_mse"], True),
    ("SSIM", lambda s: s["ssim"] if s["compiled"] else s["black_ssim"], False),
    ("identity", lambda s: float(bool(s["identity"])), False),
    ("count", lambda s: float(bool(s["count_exact"])), False),
    ("compile", lambda s: float(bool(s["compiled"])), False),
]


def load_report(path: str, prog: str = "compare_audits") -> dict:
    """An audit's report.json (its ``samples`` and the run's settings); one line and exit on anything else."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        sys.exit(f"{prog}: {path}: not an audit report ({exc})")
    if not isinstance(report, dict) or "samples" not in report:
        sys.exit(f"{prog}: {path}: not an audit report (no samples)")
    return report


def load(path: str, prog: str = "compare_audits") -> list[dict]:
    """The per-image samples of an audit's report.json; one line and exit on anything else."""
    return load_report(path, prog)["samples"]


def load_train_audit(report: str, data: str, out: str, prog: str):
    """For the scripts that turn an audit of DATA's train split into a new dataset folder OUT: the
    audit's report (as ``load_report`` reads it) and DATA's DatasetDict; one line and exit if OUT
    exists, DATA is not a dataset folder with a train split, or the two do not match."""
    from pathlib import Path

    from datasets import DatasetDict, load_from_disk

    if Path(out).exists():
        sys.exit(f"{prog}: {out} exists; choose a new folder")
    audit = load_report(report, prog)
    try:
        dataset = load_from_disk(data)
    except (FileNotFoundError, ValueError, OSError):
        dataset = None
    if not isinstance(dataset, DatasetDict) or "train" not in dataset:
        sys.exit(f"{prog}: {data}: not a dataset folder with a train split")
    if len(audit["samples"]) > len(dataset["train"]):
        sys.exit(
            f"{prog}: the report has {len(audit['samples'])} rows, {data}'s train split {len(dataset['train'])}"
        )
    return audit, dataset


def table(a: list[dict], b: list[dict], title: str) -> list[str]:
    lines = [
        f"{title} (n = {len(a)})",
        "",
        "| figure | A | B | B - A | 95% interval | better / worse / same |",
        "|---|---:|---:|---:|---|---|",
    ]
    for label, read, lower_better in FIGURES:
        x = np.array([read(s) for s in a], dtype=float)
        y = np.array([read(s) for s in b], dtype=float)
        d = y - x
        if len(d) > 1 and np.ptp(d) > 0:
            ci = bootstrap((d,), np.mean, n_resamples=10_000, random_state=0).confidence_interval
            interval = f"[{ci.low:+.4f}, {ci.high:+.4f}]"
        else:
            interval = "-"
        better = int(((d < -1e-6) if lower_better else (d > 1e-6)).sum())
        worse = int(((d > 1e-6) if lower_better else (d < -1e-6)).sum())
        lines.append(
            f"| {label} | {x.mean():.4f} | {y.mean():.4f} | {d.mean():+.4f} | {interval} | "
            f"{better} / {worse} / {len(d) - better - worse} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first audit's report.json")
    parser.add_argument("b", help="the second audit's report.json (differences are B - A)")
    parser.add_argument("--by-count", action="store_true", help="also one table per true shape count")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    if [s["index"] for s in a] != [s["index"] for s in b]:
        sys.exit("compare_audits: the two audits are not of the same images (their indices differ)")
    lines = table(a, b, f"A = {args.a}, B = {args.b}")
    if args.by_count:
        for n in sorted({len(s["true_types"]) for s in a}):
            keep = [i for i, s in enumerate(a) if len(s["true_types"]) == n]
            lines += table([a[i] for i in keep], [b[i] for i in keep], f"images with {n} shape(s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
