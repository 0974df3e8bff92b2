"""Benchmark: the dataset factory end to end (scene generation, filter, render, PNG, save_to_disk).

    MESA_SHADER_CACHE_DISABLE=true .venv/bin/python bench/data.py            # 2,000 Stage-2 samples
    .venv/bin/python bench/data.py --num-samples 500 --workers 2 --size 128

Target: 2,000 Stage-2 samples in at most 20 s on the 2-core machine. Besides the end-to-end time it
measures, in the same process, the two parts that bound it: the renderer alone on the kept shaders
(a fresh pool, so no cache; median over chunks) and the CPU side alone (drawing scenes, the NumPy
filter and PNG encoding, no rendering). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import calibration_ms, cpu_times, steal_share  # noqa: E402

from earthshader.data import FilterConfig, build_dataset, generate, png_bytes, scene_rejection, write_dataset  # noqa: E402
from earthshader.render import RenderPool  # noqa: E402
from earthshader.scenes import STAGES, completion_text, random_scene, scene_to_json, to_glsl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=4, help="chunks of the render-only baseline (median)")
    args = parser.parse_args()
    meta = {"stage": args.stage, "num_samples": args.num_samples, "seed": args.seed, "size": args.size}

    # 1. End to end, as `earthshader data` runs it (pool start-up included).
    calibration = [calibration_ms()]
    before = cpu_times()
    start = time.perf_counter()
    with RenderPool(workers=args.workers) as pool:
        rows, summary = generate(
            args.stage,
            args.num_samples,
            seed=args.seed,
            size=args.size,
            render_many=lambda codes, size: pool.render_many(codes, size=size),
            progress=False,
        )
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(rows, 0.1, args.seed, meta)
        write_dataset(dataset, Path(tmp) / "out", overwrite=False, meta=meta)
    seconds = time.perf_counter() - start
    save_seconds = time.perf_counter() - generated
    stolen = steal_share(before, cpu_times())
    calibration.append(calibration_ms())

    # 2. The renderer alone on the kept shaders: a fresh pool (no cache), warmed on other shaders.
    codes = [row["code"] for row in rows]
    rng = np.random.default_rng(12345)
    warm = [to_glsl(random_scene(STAGES[args.stage], rng)) for _ in range(2 * args.workers)]
    rates = []
    with RenderPool(workers=args.workers) as pool:
        pool.render_many(warm, size=args.size)
        for chunk in np.array_split(np.arange(len(codes)), args.chunks):
            batch = [codes[i] for i in chunk]
            t = time.perf_counter()
            pool.render_many(batch, size=args.size)
            rates.append(len(batch) / (time.perf_counter() - t))
    renders_per_s = statistics.median(rates)

    # 3. The CPU side alone: draw, print, describe and filter as many candidates, encode as many PNGs.
    image = np.asarray(dataset["train"][0]["image"], dtype=np.float32) / 255.0
    config = FilterConfig()
    t = time.perf_counter()
    for i in range(summary.candidates):
        scene = random_scene(STAGES[args.stage], np.random.default_rng([args.seed, i]))
        to_glsl(scene)
        if scene_rejection(scene, config) is None:
            completion_text(scene)
            scene_to_json(scene)
    for _ in range(len(rows)):
        png_bytes(image)
    cpu_seconds = time.perf_counter() - t

    result = {
        "bench": "data",
        "date": time.strftime("%Y-%m-%d"),
        "stage": args.stage,
        "num_samples": len(rows),
        "size": args.size,
        "workers": args.workers,
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(rows) / seconds, 1),
        "candidates": summary.candidates,
        "renders": summary.renders,
        "render_seconds_in_run": round(summary.render_seconds, 2),
        "save_seconds": round(save_seconds, 2),
        "render_only_per_s_median": round(renders_per_s, 1),
        "render_only_seconds_for_run": round(summary.renders / renders_per_s, 2),
        "cpu_side_seconds": round(cpu_seconds, 2),
        "render_share": round(summary.render_seconds / seconds, 3),
        "target_seconds": 20.0 * args.num_samples / 2000,
        "rejected": dict(sorted(summary.rejected.items())),
        "steal_in_run": stolen,  # the host's share of our CPUs during the end-to-end run
        "calibration_ms": calibration,  # before and after it: machine/calibration_ms, lower is faster
    }
    print(summary.line())
    print(
        f"{len(rows)} samples in {seconds:.1f} s ({result['samples_per_s']}/s); rendering {summary.render_seconds:.1f} s "
        f"of it ({summary.renders} renders); renderer alone {renders_per_s:.1f} shaders/s; CPU side alone {cpu_seconds:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
