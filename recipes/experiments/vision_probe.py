"""Experiment (issue 7): can the tiny model's vision tower, trained from scratch, see where a shape is?

A probe that isolates the vision side. The tiny model's tower and merger (random init, as SFT starts)
plus a linear head on the flattened merged image tokens are trained with an MSE loss to
regress the Stage-1 scene directly: the first shape's centre (x, y) and whether there are two shapes.
No language model, no text: if this cannot learn in a few hundred steps, no loss weighting in SFT
will make the full model see, and the work is on the vision side (image size, patches, depth,
learning rate); if it can, the language model is not reading the image tokens.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/vision_probe.py /tmp/l7/data/stage1 \
        [--steps 300 --batch-size 32 --lr 1e-3 --pixels 12544]

Prints the held-out centre error (mean distance, uv units) and count accuracy every 50 steps, next to
the constant baseline (the mean centre, the majority count); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from earthshader.models import EarthShaderModelConfig, load_model_and_processor
from earthshader.scenes import scene_from_json


def targets(scenes: list[str]) -> torch.Tensor:
    rows = []
    for text in scenes:
        scene = scene_from_json(text)
        first = scene.shapes[0]
        rows.append([first.x, first.y, float(len(scene.shapes) > 1)])
    return torch.tensor(rows, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pixels", type=int, default=112 * 112, help="image area fed to the tower")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from datasets import load_from_disk

    torch.manual_seed(args.seed)
    cfg = EarthShaderModelConfig(min_pixels=args.pixels, max_pixels=args.pixels)
    model, processor = load_model_and_processor(cfg)
    data = load_from_disk(args.data)
    train, test = data["train"], data["test"]

    def encode(split, idx):
        images = [split[i]["image"].convert("RGB") for i in idx]
        out = processor.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def features(pixel_values, grid):
        tokens = model.get_image_features(pixel_values, grid).pooler_output
        return torch.stack([t.flatten() for t in tokens])  # (B, n_tokens * hidden)

    y_train, y_test = targets(train["scene"]), targets(test["scene"])
    test_px, test_grid = encode(test, range(len(test)))
    with torch.no_grad():
        dim = features(test_px[: test_grid[0].prod()], test_grid[:1]).shape[1]
    head = torch.nn.Linear(dim, 3)
    visual = model.model.visual
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    base_centre = float(torch.linalg.norm(y_test[:, :2] - y_train[:, :2].mean(0), dim=1).mean())
    base_count = float(max(y_test[:, 2].mean(), 1 - y_test[:, 2].mean()))
    print(f"constant baseline: centre error {base_centre:.3f}, count accuracy {base_count:.2f}")

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    result = {}
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(train), args.batch_size, replace=False).tolist()
        px, grid = encode(train, idx)
        pred = head(features(px, grid))
        y = y_train[idx]
        loss = torch.nn.functional.mse_loss(pred[:, :2], y[:, :2]) + 0.1 * (
            torch.nn.functional.binary_cross_entropy_with_logits(pred[:, 2], y[:, 2])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad():
                p = head(features(test_px, test_grid))
            centre = float(torch.linalg.norm(p[:, :2] - y_test[:, :2], dim=1).mean())
            count = float(((p[:, 2] > 0).float() == y_test[:, 2]).float().mean())
            result = {
                "step": step,
                "centre_error": round(centre, 4),
                "count_accuracy": round(count, 4),
                "baseline_centre_error": round(base_centre, 4),
                "baseline_count_accuracy": round(base_count, 4),
                "seconds": round(time.perf_counter() - start, 1),
                "pixels": args.pixels,
                "lr": args.lr,
            }
            print(
                f"step {step}: train loss {loss.item():.4f}, held-out centre error {centre:.3f}, count {count:.2f}"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
