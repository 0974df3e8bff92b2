"""What batches of like length buy an SFT run: random batches against ``length_grouped_batches``.

A random batch of 8 is padded to its longest row. In the demo's 1-or-2-shape mix a completion runs from
160 to 270 tokens after a prompt of about 134, so about an eighth of a batch's positions are padding,
and the decoder's attention, which grows with the square of the padded length, pays for more.
``length_grouped_batches`` (``earthshader.sft.ShuffledLengthGroupedSampler``) sorts each megabatch of
50 batches by completion length, cuts it into batches and shuffles them.

One process runs a recipe's real ``trainer.train()`` for ``--train-steps`` steps with each sampler,
``--rounds`` times in alternating order, each from a fresh trainer built as ``earthshader sft`` builds it
(data loading, collation, clipping and logging included; the text decoder compiled where the recipe
says so). Each run's collator records the positions and the real tokens of every batch it builds. The
step time is the median time between step ends after the first 20 of a run; a sampler's figure is the
median over its runs. ``grouped_speedup`` is random's over grouped's. The last line is one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/batches.py --data data/stage1 --model runs/tiny-sft-one
        [--train-steps 160] [--rounds 2] [--recipe recipes/tiny/sft_mix.yaml] [-- extra recipe arguments]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from machine import calibration_ms, cpu_times, steal_share, step_end_recorder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset folder (earthshader data)")
    parser.add_argument("--model", help="a model folder (a trained run); default: the recipe's")
    parser.add_argument("--train-steps", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny/sft_mix.yaml"))
    parser.add_argument("extra", nargs="*", help="recipe overrides (after --)")
    args = parser.parse_args()

    import torch

    from earthshader import sft
    from earthshader.models import compile_language_model

    tmp = Path(tempfile.mkdtemp(prefix="es_bench_batches_"))
    steps: dict[str, list[float]] = {"random": [], "grouped": []}
    positions: dict[str, list[int]] = {"random": [], "grouped": []}
    tokens: dict[str, list[int]] = {"random": [], "grouped": []}
    calibration = [calibration_ms()]
    before = cpu_times()
    for round_ in range(args.rounds):
        for way in ("random", "grouped") if round_ % 2 == 0 else ("grouped", "random"):
            argv = ["--config", args.recipe, "--dataset_path", args.data]
            argv += ["--max_steps", str(args.train_steps), "--save_steps", "1000000"]
            argv += ["--report_to", "none", "--logging_steps", "1000", "--seed", str(round_)]
            argv += ["--output_dir", str(tmp / f"{way}-{round_}")]
            argv += ["--model_name_or_path", args.model] if args.model else []
            argv += ["--length_grouped_batches", str(way == "grouped").lower()]
            script_args, training_args, model_args = sft.parse_args(argv + args.extra)
            trainer = sft.build_trainer(script_args, training_args, model_args)
            collate = trainer.data_collator

            def recording(examples, collate=collate, way=way):
                batch = collate(examples)
                positions[way].append(int(batch["attention_mask"].numel()))
                tokens[way].append(int(batch["attention_mask"].sum()))
                return batch

            trainer.data_collator = recording
            if training_args.compile_language_model:
                compile_language_model(trainer.model)
            ends = step_end_recorder()
            trainer.add_callback(ends)
            trainer.train()
            gaps = [b - a for a, b in zip(ends.times[20:], ends.times[21:], strict=False)]
            steps[way].append(statistics.median(gaps))
            print(f"{way:8s} round {round_}: {1000 * steps[way][-1]:.1f} ms a step", flush=True)
    steal = steal_share(before, cpu_times())
    calibration.append(calibration_ms())
    median = {way: statistics.median(v) for way, v in steps.items()}
    result = {
        "random_step_s": round(median["random"], 4),
        "grouped_step_s": round(median["grouped"], 4),
        "grouped_speedup": round(median["random"] / median["grouped"], 3),
        "random_runs_s": [round(v, 4) for v in steps["random"]],
        "grouped_runs_s": [round(v, 4) for v in steps["grouped"]],
        "random_padding_share": round(1 - sum(tokens["random"]) / sum(positions["random"]), 4),
        "grouped_padding_share": round(1 - sum(tokens["grouped"]) / sum(positions["grouped"]), 4),
        "random_positions_per_batch": round(statistics.mean(positions["random"]), 1),
        "grouped_positions_per_batch": round(statistics.mean(positions["grouped"]), 1),
        "recipe": args.recipe,
        "data": args.data,
        "model": args.model,
        "extra": args.extra,
        "steps": args.train_steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "calibration_ms": calibration,
        "steal": steal,
    }
    print(
        f"step: random batches {median['random'] * 1e3:.1f} ms, grouped {median['grouped'] * 1e3:.1f} ms "
        f"({median['random'] / median['grouped']:.2f}x); padding {result['random_padding_share']:.1%} "
        f"-> {result['grouped_padding_share']:.1%}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
