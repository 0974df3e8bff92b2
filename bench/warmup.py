"""What keeping each row's processed pixels buys the vision warmup: cached against uncached, same process.

``earthshader.vision_warmup.warmup_vision`` draws batches of 32 rows at random. Without its
``RowCache`` each draw decodes the row's PNG, runs the image processor and computes the token targets
again; with it, a row pays that once and its patches are rebuilt from a compact copy after. The
demo's warmup draws each of its 8,000 rows about ten times (2,500 steps of 32), so this benchmark
draws each of ``--rows`` rows the same number of times: ``--steps`` = 10 x rows / 32 per run.

Each repetition runs the warmup both ways (``cache_bytes=0`` and the default), in alternating order,
on the same model; the figure is the median seconds per step, and ``cache_speedup`` the uncached
median over the cached one. The last line is one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/warmup.py [--reps 5] [--rows 256] [--data data/stage1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from machine import calibration_ms, cpu_times, steal_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument(
        "--data", help="a Stage-1 dataset folder (earthshader data) instead of rendering rows"
    )
    args = parser.parse_args()

    import torch
    from datasets import Dataset, load_from_disk

    from earthshader import data as es_data
    from earthshader import models
    from earthshader.vision_warmup import warmup_vision

    if args.data:
        rows = load_from_disk(args.data)["train"].select(range(args.rows))
    else:
        generated, _ = es_data.generate(1, args.rows, seed=0, progress=False)
        rows = Dataset.from_list(generated, features=es_data.features())
    model, processor = models.load_model_and_processor(models.EarthShaderModelConfig(train_vision_tower=True))
    steps = max(1, round(10 * len(rows) / 32))
    ways = {"uncached": 0, "cached": 2 << 30}
    per_step: dict[str, list[float]] = {way: [] for way in ways}
    warmup_vision(model, processor.image_processor, rows, 2, progress=False)  # first-call costs
    calibration = [calibration_ms()]
    stat0 = cpu_times()
    for rep in range(args.reps):
        order = list(ways) if rep % 2 else list(reversed(ways))
        for way in order:
            start = time.perf_counter()
            warmup_vision(
                model, processor.image_processor, rows, steps, progress=False, cache_bytes=ways[way]
            )
            per_step[way].append((time.perf_counter() - start) / steps)
    steal = steal_share(stat0, cpu_times())
    calibration.append(calibration_ms())
    uncached, cached = (statistics.median(per_step[w]) for w in ways)
    print(
        f"per step: uncached {1000 * uncached:.1f} ms, cached {1000 * cached:.1f} ms, {uncached / cached:.2f}x"
    )
    print(
        json.dumps(
            {
                "uncached_step_ms": round(1000 * uncached, 1),
                "cached_step_ms": round(1000 * cached, 1),
                "cache_speedup": round(uncached / cached, 3),
                "rows": len(rows),
                "steps": steps,
                "reps": args.reps,
                "threads": torch.get_num_threads(),
                "steal": steal,
                "calibration_ms": calibration,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
