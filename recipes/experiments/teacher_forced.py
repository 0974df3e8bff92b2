"""Experiment helper (issue 7): what a model reads off the picture, with the true text fed in (teacher forcing).

For the first 32 rows of a split, the true completion is fed after the prompt and the model's most
likely next token is compared with the true one, in the reasoning sentence only: the count word
("One"/"Two"), the shape words (circle/square/ring), the numbers, and the other words. For numbers it
also prints the mean absolute difference between the predicted and the true value (the sign is a
token of its own and is left out). Greedy audits hide a model that has started to read the picture
behind its most common sentence; this shows it.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/teacher_forced.py MODEL /tmp/l7/data/s1q5one test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from datasets import load_from_disk

from earthshader.models import EarthShaderModelConfig, load_model_and_processor


def _value(token: str) -> float | None:
    try:
        return float(token.replace("Ġ", "").replace("(", ""))
    except ValueError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("split", nargs="?", default="test")
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()
    model, processor = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=args.model))
    model.eval()
    rows = load_from_disk(args.data)[args.split]
    rows = rows.select(range(min(args.rows, len(rows))))
    tok = processor.tokenizer
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    errors = []
    for row in rows:
        prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        completion = row["completion"][0]["content"][0]["text"]
        image = [row["image"].convert("RGB")]
        full = processor(images=image, text=[prompt + completion], return_tensors="pt")
        start = processor(images=image, text=[prompt], return_tensors="pt")["input_ids"].shape[1]
        with torch.no_grad():
            logits = model(**full).logits[0]
        true = full["input_ids"][0][start:]
        pred = logits[start - 1 : -1].argmax(-1)
        for i, (t, p) in enumerate(
            zip(tok.convert_ids_to_tokens(true), tok.convert_ids_to_tokens(pred), strict=True)
        ):
            if "Ċ" in t:  # the reasoning ends at its first newline
                break
            if i == 0:
                kind = "count"
            elif t.strip("Ġ") in ("circle", "square", "ring"):
                kind = "shape"
            elif any(c.isdigit() for c in t):
                kind = "number"
                truth, guess = _value(t), _value(p)
                if truth is not None:
                    errors.append(abs(truth - guess) if guess is not None else np.nan)
            else:
                kind = "other"
            seen[kind] = seen.get(kind, 0) + 1
            right[kind] = right.get(kind, 0) + int(t == p)
    print(", ".join(f"{k} {right[k]}/{seen[k]}" for k in ("count", "shape", "number", "other") if k in seen))
    errors = np.asarray(errors)
    print(
        f"numbers: mean absolute error {np.nanmean(errors):.3f} over {np.isfinite(errors).sum()} "
        f"({np.isnan(errors).sum()} predictions not a number)"
    )


if __name__ == "__main__":
    main()
