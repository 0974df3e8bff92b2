"""How sure each model is of the shape count: P("Two") for the reasoning's first word, per test image.

    .venv/bin/python recipes/experiments/count_probe.py DATA_DIR MODEL [MODEL ...]

The reasoning of a Stage-1 completion starts "One shape:" or "Two shapes:". For the first 100 test
images of DATA_DIR (an `earthshader data` folder) this reads the next-token distribution at that
point (one forward pass an image) and prints, per model, the mean P("Two") on single-shape and on
two-shape images and how many images get the count wrong or nearly even (bench/LEARNING.md, session 8).
"""

import sys

import numpy as np
import torch
from datasets import load_from_disk

from earthshader.audit import load_audit_model
from earthshader.scenes import scene_from_json

data = load_from_disk(sys.argv[1])["test"].select(range(100))
n_true = np.array([len(scene_from_json(s).shapes) for s in data["scene"]])
for path in sys.argv[2:]:
    model, proc = load_audit_model(path)
    tok = proc.tokenizer
    ids = {w: tok(w, add_special_tokens=False)["input_ids"] for w in ("One", "Two")}
    assert all(len(v) == 1 for v in ids.values()), ids
    p2, masses = [], []
    for lo in range(0, 100, 25):
        rows = data.select(range(lo, lo + 25))
        texts = [
            proc.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]
        ]
        inputs = proc(
            images=[[im.convert("RGB")] for im in rows["image"]],
            text=texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = model(**inputs).logits[:, -1].float()
        pr = logits.softmax(-1)
        one, two = pr[:, ids["One"][0]], pr[:, ids["Two"][0]]
        p2 += (two / (one + two)).tolist()
        masses += (one + two).tolist()
    p2 = np.array(p2)
    right = np.where(n_true == 2, p2, 1 - p2)
    print(
        path,
        f"mass on One/Two {np.mean(masses):.3f}",
        f"| P(right count): median {np.median(right):.3f}, share < 0.5: {(right < 0.5).mean():.2f},",
        f"share in [0.2, 0.8]: {((p2 > 0.2) & (p2 < 0.8)).mean():.2f}",
        f"| singles mean P(two) {p2[n_true == 1].mean():.3f}, pairs mean P(two) {p2[n_true == 2].mean():.3f}",
    )
