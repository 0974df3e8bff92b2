"""Experiment helper (issue 5): how often does a GRPO group hold an answer better than the greedy one?

For N training images of a dataset, the model's greedy completion and K sampled ones (the GRPO
recipe's sampling: temperature, top_k), each rendered at the target's size and scored by pixel MSE
(a shader that fails scores as black). Prints the mean MSE of greedy answers and of samples, the
share of images where the best sample beats the greedy answer, and how many of the K do.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/group_vs_greedy.py /tmp/l7/demo5/runs/sft \
        /tmp/l7/data/s1q5 --images 24 --samples 8 --temperature 1.0 --top-k 2
"""

from __future__ import annotations

import argparse

import numpy as np

from earthshader.audit import generate, load_audit_model, render_codes, render_mse, to_image
from earthshader.glsl import extract_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    from datasets import load_from_disk

    model, processor = load_audit_model(args.model)
    model.generation_config.top_k = args.top_k or None
    rows = load_from_disk(args.data)["train"].select(range(args.images))
    greedy_mse, sample_mse, better = [], [], []
    for start in range(0, args.images, args.batch):
        chunk = rows.select(range(start, min(start + args.batch, args.images)))
        prompts, images = list(chunk["prompt"]), list(chunk["image"])
        greedy = generate(model, processor, prompts, images, max_new_tokens=384)
        sampled = generate(
            model, processor, prompts, images, 384, args.samples, sample=True, temperature=args.temperature
        )
        for image, g, s in zip(images, greedy, sampled, strict=True):
            target = to_image(image)
            codes = [extract_code(text) or "" for text in (*g, *s)]
            results = render_codes(codes, [target.shape[0]] * len(codes))
            mses = [render_mse(r, target) for r in results]
            greedy_mse.append(mses[0])
            sample_mse.extend(mses[1:])
            better.append(sum(m < mses[0] - 1e-9 for m in mses[1:]))
    better = np.array(better)
    print(
        f"{args.images} images, {args.samples} samples each (temperature {args.temperature}, "
        f"top_k {args.top_k or 'none'}): greedy MSE {np.mean(greedy_mse):.4f}, samples {np.mean(sample_mse):.4f}; "
        f"best sample beats greedy on {np.mean(better > 0):.0%} of images; "
        f"samples better than greedy: {better.mean() / args.samples:.0%}"
    )


if __name__ == "__main__":
    main()
