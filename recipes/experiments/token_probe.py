"""Experiment helper (issue 7): how much of the picture a model's image tokens carry, read by a ridge probe.

For a model folder (or ``tiny``), the merged image tokens of 1,500 training images are flattened (so the
probe knows which token is where) and a ridge regression is fitted to: two shapes or one, the first
shape's centre, its type, and how many shapes of each type the picture holds (rounded: the multiset of
types, which is what the audit's identity asks). On the test split it prints count accuracy, the centre error on
single-shape images (uv units, with the error of guessing the mean centre), and type accuracy, and the
image tokens' mean norm next to the text embeddings'.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/token_probe.py MODEL /tmp/l7/data/s1sorted
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from datasets import load_from_disk

from earthshader.models import EarthShaderModelConfig, load_model_and_processor
from earthshader.scenes import scene_from_json

TYPES = ("Circle", "Box", "Annulus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--train-images", type=int, default=1500)
    args = parser.parse_args()
    model, processor = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=args.model))
    data = load_from_disk(args.data)
    train = data["train"].select(range(min(args.train_images, len(data["train"]))))
    test = data["test"]

    def tokens(split) -> np.ndarray:
        out = []
        for i in range(0, len(split), 100):
            images = [im.convert("RGB") for im in split[i : i + 100]["image"]]
            batch = processor.image_processor(images=images, return_tensors="pt")
            with torch.no_grad():
                feats = model.model.get_image_features(
                    batch["pixel_values"], batch["image_grid_thw"]
                ).pooler_output
            out += [t.flatten().numpy() for t in feats]
        return np.stack(out)

    def targets(split) -> np.ndarray:
        rows = []
        for text in split["scene"]:
            scene = scene_from_json(text)
            first = scene.shapes[0]
            kind = type(first).__name__
            kinds = [type(shape).__name__ for shape in scene.shapes]
            rows.append(
                [
                    len(scene.shapes) - 1,
                    first.x,
                    first.y,
                    *(kind == t for t in TYPES),
                    *(kinds.count(t) for t in TYPES),
                ]
            )
        return np.asarray(rows, dtype=float)

    x_train, x_test = tokens(train), tokens(test)
    y_train, y_test = targets(train), targets(test)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    w = np.linalg.solve(
        x_train.T @ x_train + 100 * np.eye(x_train.shape[1]), x_train.T @ (y_train - y_train.mean(0))
    )
    pred = x_test @ w + y_train.mean(0)
    count = ((pred[:, 0] > 0.5) == (y_test[:, 0] > 0.5)).mean()
    one = y_test[:, 0] == 0
    centre = np.linalg.norm(pred[one, 1:3] - y_test[one, 1:3], axis=1).mean()
    guess = np.linalg.norm(y_test[one, 1:3] - y_train[:, 1:3].mean(0), axis=1).mean()
    n_types = len(TYPES)
    kind = (pred[:, 3 : 3 + n_types].argmax(1) == y_test[:, 3 : 3 + n_types].argmax(1)).mean()
    # every type's count, rounded: the picture's multiset of types (what the audit's identity asks)
    multiset = (np.clip(np.rint(pred[:, 3 + n_types :]), 0, 2) == y_test[:, 3 + n_types :]).all(1)
    print(
        f"count {count:.0%} (majority {max(y_test[:, 0].mean(), 1 - y_test[:, 0].mean()):.0%}), "
        f"single-shape centre error {centre:.3f} (mean guess {guess:.3f}), first type {kind:.0%}, "
        f"types {multiset.mean():.0%} (one shape {multiset[one].mean():.0%}, two {multiset[~one].mean():.0%})"
    )
    text = processor.tokenizer("One shape: a circle at (0.25, -0.10)", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text_norm = model.get_input_embeddings()(text).norm(dim=-1).mean().item()
    print(
        f"image token norm {np.linalg.norm((x_test * sd + mu).reshape(len(x_test), -1, model.config.text_config.hidden_size), axis=-1).mean():.2f}, "
        f"text embedding norm {text_norm:.2f}"
    )


if __name__ == "__main__":
    main()
