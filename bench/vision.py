"""What computing the patch embedding as a matrix product buys: Conv3d against linear, same process.

Qwen2-VL embeds each 14 x 14 patch (two frames, the tiny model's five channels) with a ``Conv3d``
whose kernel equals its stride. ``earthshader.models.patch_embed_as_linear`` computes the same map as
``linear`` on the flattened patches. One process, the tiny model, fixed batches of Stage-1 pictures
(rendered here, or ``--data``). Each repetition times, in alternating order, both ways of:

  - ``embed``: the patch embedding alone, forward and backward (its weight's gradient), on a vision
    warmup batch (32 pictures, 2,048 patches);
  - ``warmup``: one whole vision warmup step (``earthshader.vision_warmup``: preprocessing, tower,
    head, backward, AdamW), where the tower trains;
  - ``sft_forward``: the frozen tower's forward on an SFT batch (8 pictures), what each SFT step pays.

Medians are reported; ``*_speedup`` is the Conv3d way's median over the linear way's. The last line
is one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/vision.py [--reps 20] [--data data/stage1]
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
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument(
        "--data", help="a Stage-1 dataset folder (earthshader data) instead of rendering 64 rows"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from datasets import Dataset, load_from_disk

    from earthshader import data as es_data
    from earthshader import models
    from earthshader.vision_warmup import warmup_vision

    if args.data:
        rows = load_from_disk(args.data)["train"].select(range(64))
    else:
        generated, _ = es_data.generate(1, 64, seed=0, progress=False)
        rows = Dataset.from_list(generated, features=es_data.features())
    model, processor = models.load_model_and_processor(models.EarthShaderModelConfig())
    embed = model.model.visual.patch_embed
    linear_forward = embed.forward  # load_model_and_processor swapped it in
    conv_forward = type(embed).forward.__get__(embed)

    def use(way: str) -> None:
        embed.forward = linear_forward if way == "linear" else conv_forward

    images = [im.convert("RGB") for im in rows["image"]]
    warm_pixels = processor.image_processor(images=images[:32], return_tensors="pt")["pixel_values"]
    sft_batch = processor.image_processor(images=images[:8], return_tensors="pt")

    def embed_step() -> None:
        embed.proj.weight.grad = None
        embed(warm_pixels).square().mean().backward()

    def warmup_step() -> None:
        warmup_vision(model, processor.image_processor, rows, 1, progress=False)

    def sft_forward() -> None:
        with torch.no_grad():
            model.model.get_image_features(sft_batch["pixel_values"], sft_batch["image_grid_thw"])

    with torch.no_grad():
        use("conv")
        reference = embed(warm_pixels)
        use("linear")
        max_diff = (embed(warm_pixels) - reference).abs().max().item()

    tasks = {"embed": embed_step, "warmup": warmup_step, "sft_forward": sft_forward}
    times: dict[str, dict[str, list[float]]] = {t: {"conv": [], "linear": []} for t in tasks}
    calibration = [calibration_ms()]
    stat0 = cpu_times()
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        order = ("conv", "linear") if rep % 2 else ("linear", "conv")
        for task, fn in tasks.items():
            for way in order:
                use(way)
                start = time.perf_counter()
                fn()
                if rep:
                    times[task][way].append(time.perf_counter() - start)
    use("linear")
    steal = steal_share(stat0, cpu_times())
    calibration.append(calibration_ms())

    result: dict[str, object] = {}
    for task, by_way in times.items():
        conv, linear = (statistics.median(by_way[w]) for w in ("conv", "linear"))
        print(
            f"{task:12s} conv {1000 * conv:8.1f} ms   linear {1000 * linear:8.1f} ms   {conv / linear:5.2f}x"
        )
        result[f"{task}_conv_ms"] = round(1000 * conv, 2)
        result[f"{task}_linear_ms"] = round(1000 * linear, 2)
        result[f"{task}_speedup"] = round(conv / linear, 3)
    result.update(
        max_abs_diff=float(f"{max_diff:.2e}"),
        reps=args.reps,
        threads=torch.get_num_threads(),
        steal=steal,
        calibration_ms=calibration,
        machine=platform.machine(),
        numpy=np.__version__,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
