"""What two rewrites of the vision tower buy: the patch embedding as a matrix product, and attention in one call.

Qwen2-VL embeds each 14 x 14 patch (two frames, the tiny model's five channels) with a ``Conv3d``
whose kernel equals its stride. ``earthshader.models.patch_embed_as_linear`` computes the same map as
``linear`` on the flattened patches. One process, the tiny model, fixed batches of Stage-1 pictures
(rendered here, or ``--data``). Each repetition times, in alternating order, both ways of:

  - ``embed``: the patch embedding alone, forward and backward (its weight's gradient), on a vision
    warmup batch (32 pictures, 2,048 patches);
  - ``warmup``: one whole vision warmup step (``earthshader.vision_warmup``: preprocessing, tower,
    head, backward, AdamW), where the tower trains;
  - ``sft_forward``: the frozen tower's forward on an SFT batch (8 pictures), what each SFT step pays.

With ``--compare attention`` the two ways are instead Qwen2-VL's own vision attention (one SDPA call per
picture, then a concatenation) and ``earthshader.models.batch_vision_attention`` (one call over all the
batch's pictures, which have the same size), the patch embedding linear in both; ``sft_tower`` adds the
tower's forward and backward on an SFT batch, what each step of the mix pays (its tower trains), and
``warmup_tower`` the same on a warmup batch of 32, the part of a warmup step the attention is in (a
``warmup`` step here processes its pictures afresh; the warmup's row cache spares that after a row's
first draw).

Medians are reported; ``*_speedup`` is the old way's median over the new way's. The last line is one
JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/vision.py [--reps 20] [--data data/stage1] [--compare attention]
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
    parser.add_argument("--compare", choices=["embed", "attention"], default="embed")
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
    attentions = [block.attn for block in model.model.visual.blocks]
    batched_forwards = [attention.forward for attention in attentions]  # batch_vision_attention's
    old, new = ("conv", "linear") if args.compare == "embed" else ("per_picture", "batched")

    def use(way: str) -> None:
        if args.compare == "embed":
            embed.forward = linear_forward if way == "linear" else conv_forward
            return
        for attention, forward in zip(attentions, batched_forwards, strict=True):
            if way == "batched":
                attention.forward = forward
            else:
                vars(attention).pop("forward", None)  # the class's own

    images = [im.convert("RGB") for im in rows["image"]]
    warm_batch = processor.image_processor(images=images[:32], return_tensors="pt")
    warm_pixels = warm_batch["pixel_values"]
    sft_batch = processor.image_processor(images=images[:8], return_tensors="pt")

    def embed_step() -> None:
        embed.proj.weight.grad = None
        embed(warm_pixels).square().mean().backward()

    def warmup_step() -> None:
        warmup_vision(model, processor.image_processor, rows, 1, progress=False)

    def sft_forward() -> None:
        with torch.no_grad():
            model.model.get_image_features(sft_batch["pixel_values"], sft_batch["image_grid_thw"])

    def tower_step(batch) -> None:
        model.model.visual.zero_grad(set_to_none=True)
        tokens = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        torch.cat(tokens.pooler_output).square().mean().backward()

    def warmup_tower() -> None:
        tower_step(warm_batch)

    def sft_tower() -> None:
        tower_step(sft_batch)

    def output() -> torch.Tensor:  # what the two ways must agree on
        if args.compare == "embed":
            return embed(warm_pixels)
        return torch.cat(model.model.get_image_features(**sft_batch).pooler_output)

    with torch.no_grad():
        use(old)
        reference = output()
        use(new)
        max_diff = (output() - reference).abs().max().item()

    tasks = {"warmup": warmup_step, "sft_forward": sft_forward}
    if args.compare == "embed":
        tasks = {"embed": embed_step, **tasks}
    else:
        tasks = {**tasks, "warmup_tower": warmup_tower, "sft_tower": sft_tower}
    times: dict[str, dict[str, list[float]]] = {t: {old: [], new: []} for t in tasks}
    calibration = [calibration_ms()]
    stat0 = cpu_times()
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        order = (old, new) if rep % 2 else (new, old)
        for task, fn in tasks.items():
            for way in order:
                use(way)
                start = time.perf_counter()
                fn()
                if rep:
                    times[task][way].append(time.perf_counter() - start)
    use(new)
    steal = steal_share(stat0, cpu_times())
    calibration.append(calibration_ms())

    result: dict[str, object] = {"compare": args.compare}
    for task, by_way in times.items():
        before, after = (statistics.median(by_way[w]) for w in (old, new))
        print(
            f"{task:12s} {old} {1000 * before:8.1f} ms   {new} {1000 * after:8.1f} ms   {before / after:5.2f}x"
        )
        result[f"{task}_{old}_ms"] = round(1000 * before, 2)
        result[f"{task}_{new}_ms"] = round(1000 * after, 2)
        result[f"{task}_speedup"] = round(before / after, 3)
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
