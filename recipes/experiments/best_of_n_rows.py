"""Experiment helper (issues 5 and 7): an SFT dataset of the model's own best-of-N answers.

Rejection-sampling fine-tuning (expert iteration, ReST, STaR): sample N shaders for each training
picture, keep the one whose render is closest to the picture, and fine-tune on those. Session 13 found
that the best of GRPO's 8 samples at temperature 1.0 beats the greedy answer by 29% in MSE on unseen
scenes while no GRPO setting moved the greedy answer; this tests whether that gain can be distilled.

From a sampled audit of a dataset's train split (`earthshader eval --split train --sample
--num-return 8`, whose report keeps each picture's best completion), this writes the rows whose best
answer compiled, has the right shape types and count and an MSE of at most `--mse`, with that answer
as their completion. `--truth` writes the same rows with their own (ground-truth) completions instead:
the control arm, the same pictures and steps without the model's answers. The test split is copied.
A greedy audit works too (filtered self-training); the summary line names the report's decoding.

    .venv/bin/earthshader eval --model RUN/sft --data DATA --split train --num-samples 1600 --sample \
        --num-return 8 --temperature 1.0 --max-new-tokens 384 --grid-samples 0 --out BEST8
    .venv/bin/python recipes/experiments/best_of_n_rows.py BEST8/report.json DATA OUT [--truth]
    .venv/bin/earthshader sft --config recipes/experiments/sft_best_of_n.yaml \
        --model_name_or_path RUN/sft --dataset_path OUT --output_dir RUN/rft
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from compare_audits import load_train_audit  # this folder is on sys.path when the script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "report", help="report.json of a sampled (--num-return N) audit of DATA's train split"
    )
    parser.add_argument("data", help="the dataset folder that audit read")
    parser.add_argument("out", help="new dataset folder (must not exist)")
    parser.add_argument(
        "--mse", type=float, default=0.02, help="keep rows whose best answer's MSE is at most this"
    )
    parser.add_argument(
        "--truth", action="store_true", help="the kept rows with their own completions (control)"
    )
    args = parser.parse_args()
    from datasets import DatasetDict

    audit, data = load_train_audit(args.report, args.data, args.out, "best_of_n_rows")
    samples = audit["samples"]
    train = data["train"]
    if any("completion" not in s for s in samples):
        sys.exit(f"best_of_n_rows: {args.report} keeps no completions; audit again with this version")
    decoding = audit.get("decoding", {}).get("mode", "unknown decoding")
    mse = np.array([s["mse"] for s in samples])  # a failure is scored as black
    good = np.array(
        [
            s["compiled"]
            and s["identity"] is not False
            and s["count_exact"] is not False
            and s["mse"] <= args.mse
            for s in samples
        ]
    )
    keep = [s for s, g in zip(samples, good, strict=True) if g]
    rows = train.select([s["index"] for s in keep])  # an audit's index is the row's position
    if not args.truth:
        answers = [s["completion"] for s in keep]  # in the order of `rows`
        rows = rows.map(
            lambda _, i: {
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": answers[i]}]}]
            },
            with_indices=True,
            desc="best answers",
        )
    DatasetDict({"train": rows, "test": data["test"]}).save_to_disk(args.out)
    print(
        f"{good.sum()} of {len(samples)} rows ({decoding}) kept ({'ground truth' if args.truth else 'best answers'}); "
        f"best-answer MSE {mse[good].mean():.4f} kept, {mse.mean():.4f} all"
    )


if __name__ == "__main__":
    main()
