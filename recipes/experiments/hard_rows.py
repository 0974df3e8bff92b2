"""Experiment helper (issue 5): a GRPO dataset of the training rows the SFT model still gets wrong.

Most of a GRPO step goes to images the model already draws right: its 8 samples score alike, their
advantages are near 0, and the step learns nothing from them. This keeps, from a greedy audit of a
dataset's train split (`earthshader eval --split train`), the rows whose greedy answer has the wrong
shape types or count, or a pixel MSE above `--mse`, and writes them as the train split of a new
dataset folder (the test split is copied as it was), for `earthshader grpo --dataset_path OUT`.

    .venv/bin/earthshader eval --model RUN/sft --data DATA --split train --num-samples 1600 \
        --max-new-tokens 384 --out AUDIT
    .venv/bin/python recipes/experiments/hard_rows.py AUDIT/report.json DATA OUT --mse 0.01
"""

from __future__ import annotations

import argparse

import numpy as np
from compare_audits import load_train_audit  # this folder is on sys.path when the script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="report.json of a greedy audit of DATA's train split")
    parser.add_argument("data", help="the dataset folder that audit read")
    parser.add_argument("out", help="new dataset folder (must not exist)")
    parser.add_argument("--mse", type=float, default=0.01, help="keep rows whose greedy MSE is above this")
    args = parser.parse_args()
    from datasets import DatasetDict

    audit, data = load_train_audit(args.report, args.data, args.out, "hard_rows")
    samples = audit["samples"]
    train = data["train"]
    mse = np.array([s["mse"] for s in samples])  # a failure is scored as black
    wrong = np.array([s["identity"] is False or s["count_exact"] is False for s in samples])
    keep = np.flatnonzero(wrong | (mse > args.mse))
    hard = train.select(keep.tolist())
    DatasetDict({"train": hard, "test": data["test"]}).save_to_disk(args.out)
    print(
        f"{len(keep)} of {len(samples)} audited rows kept ({wrong.sum()} with wrong types or count, "
        f"{(mse > args.mse).sum()} above MSE {args.mse}); their greedy MSE {mse[keep].mean():.4f}, "
        f"the rest {np.delete(mse, keep).mean():.4f}"
    )


if __name__ == "__main__":
    main()
