"""How an SFT run orders its rows: random batches, ``length_grouped_batches``, ``length_sorted_steps``.

A random batch of 8 is padded to its longest row. In the demo's 1-or-2-shape mix a completion runs from
160 to 270 tokens after a prompt of about 134, so about an eighth of a batch's positions are padding,
and the decoder's attention, which grows with the square of the padded length, pays for more.

- ``random``: the recipe's random batches. ``randomK``: the same batch as K micro-batches (gradient
  accumulation) in random order: what splitting a step costs by itself.
- ``grouped``: ``length_grouped_batches`` (``earthshader.sft.ShuffledLengthGroupedSampler``) sorts each
  megabatch of 50 batches by completion length, cuts it into batches and shuffles them. Each batch is
  of one kind of row, so the training differs (bench/LEARNING.md, session 24).
- ``sortedK``: ``length_sorted_steps`` (``earthshader.sft.LengthSortedStepSampler``) draws each step's
  rows at random and sorts them by length into K micro-batches, each padded to its own longest row. A
  step's gradient is that of one random batch.

One process runs a recipe's real ``trainer.train()`` for ``--train-steps`` steps each way, ``--rounds``
times with the ways' order reversed every other round, each from a fresh trainer built as ``earthshader
sft`` builds it (data loading, collation, clipping and logging included; the text decoder compiled where
the recipe says so). Each run's collator records the positions and the real tokens of every batch it
builds. The step time is the median time between optimizer steps' ends after the first 20 of a run; a
way's figure is the median over its runs, and its speedup is random's over its own. The last line is
one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/batches.py --data data/stage1 --model runs/tiny-sft-one
        [--ways random,grouped,sorted2] [--train-steps 160] [--rounds 2]
        [--recipe recipes/tiny/sft_mix.yaml] [-- extra recipe arguments]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from machine import calibration_ms, cpu_times, steal_share, train_step_seconds, training_run_record

ROOT = Path(__file__).resolve().parents[1]


def parse_way(way: str, batch: int) -> tuple[str, int]:
    """A way's kind (random, grouped, sorted) and its micro-batches a step, for steps of ``batch`` rows."""
    kind = way.rstrip("0123456789")
    parts = int(way[len(kind) :] or 1)
    allowed = {"random": parts >= 1, "grouped": parts == 1, "sorted": parts > 1}
    if not allowed.get(kind) or batch % parts:
        raise SystemExit(
            f"bench/batches.py: unknown way {way!r} (random, randomK, grouped, sortedK; K>1 divides {batch})"
        )
    return kind, parts


def way_arguments(kind: str, parts: int, batch: int) -> list[str]:
    """The recipe overrides of one way."""
    argv = ["--per_device_train_batch_size", str(batch // parts), "--gradient_accumulation_steps", str(parts)]
    argv += ["--length_grouped_batches", str(kind == "grouped").lower()]
    return argv + ["--length_sorted_steps", str(kind == "sorted").lower()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset folder (earthshader data)")
    parser.add_argument("--model", help="a model folder (a trained run); default: the recipe's")
    parser.add_argument(
        "--ways", default="random,grouped,sorted2", help="comma-separated; the first is the baseline"
    )
    parser.add_argument("--train-steps", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny/sft_mix.yaml"))
    parser.add_argument("extra", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args()

    import torch

    from earthshader import sft

    base = ["--config", args.recipe, "--dataset_path", args.data] + (
        ["--model_name_or_path", args.model] if args.model else []
    )
    _, recipe, _ = sft.parse_args(
        base + ["--output_dir", tempfile.mkdtemp(), "--report_to", "none"] + args.extra
    )
    batch = recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps
    ways = args.ways.split(",")
    parsed = {way: parse_way(way, batch) for way in ways}
    overrides = {way: way_arguments(*parsed[way], batch) for way in ways}
    tmp = Path(tempfile.mkdtemp(prefix="es_bench_batches_"))
    steps: dict[str, list[float]] = {way: [] for way in ways}
    positions: dict[str, list[int]] = {way: [] for way in ways}
    tokens: dict[str, list[int]] = {way: [] for way in ways}
    calibration = [calibration_ms()]
    before = cpu_times()
    for round_ in range(args.rounds):
        for way in ways if round_ % 2 == 0 else ways[::-1]:
            argv = base + ["--max_steps", str(args.train_steps), "--save_steps", "1000000"]
            argv += ["--report_to", "none", "--logging_steps", "1000", "--seed", str(round_)]
            argv += ["--output_dir", str(tmp / f"{way}-{round_}")]

            def recording(trainer, way=way):
                collate = trainer.data_collator

                def record(examples):
                    batch = collate(examples)
                    positions[way].append(int(batch["attention_mask"].numel()))
                    tokens[way].append(int(batch["attention_mask"].sum()))
                    return batch

                trainer.data_collator = record

            steps[way].append(train_step_seconds(argv + args.extra + overrides[way], prepare=recording))
            print(f"{way:8s} round {round_}: {1000 * steps[way][-1]:.1f} ms a step", flush=True)
    steal = steal_share(before, cpu_times())
    calibration.append(calibration_ms())
    median = {way: statistics.median(v) for way, v in steps.items()}
    padding = {way: 1 - sum(tokens[way]) / sum(positions[way]) for way in ways}
    result = {
        "baseline": ways[0],
        "step_s": {way: round(median[way], 4) for way in ways},
        "speedup": {way: round(median[ways[0]] / median[way], 3) for way in ways},
        "runs_s": {way: [round(v, 4) for v in steps[way]] for way in ways},
        "padding_share": {way: round(padding[way], 4) for way in ways},
        # mean positions of a micro-batch times the micro-batches of a step
        "positions_per_step": {
            way: round(statistics.mean(positions[way]) * parsed[way][1], 1) for way in ways
        },
        "batch": batch,
        **training_run_record(args),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "calibration_ms": calibration,
        "steal": steal,
    }
    print(
        "step: "
        + ", ".join(
            f"{way} {median[way] * 1e3:.1f} ms ({median[ways[0]] / median[way]:.2f}x, padding {padding[way]:.1%})"
            for way in ways
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
