"""Experiment helper (issue 7): the dense vision warmup alone, saved as a model folder to start SFT from.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/vision_warmup.py /tmp/l7/data/s1q5 \
        /tmp/l7/warm1000 --steps 1000

Builds the tiny model, runs ``earthshader.vision_warmup.warmup_vision`` on the dataset's train split
and saves model and processor to OUT. Prints the seconds taken and the loss every tenth of the run, then
what the warmed tower reads on the dataset's test split (``read_held_out``). ``--model`` warms an
existing model's tower instead (a Stage-1 model's, for Stage 2), ``--angle-weight`` adds the angle target,
``--pair-weight`` the pair targets (each token's operator, and a second shape sharing it).
``--tower-depth``, ``--tower-width`` and ``--tower-heads`` swap in a fresh tower of that shape (its merger
still projects to the text width), to measure what a larger tower reads; the folder saved loads as any
model folder does (its config names the new tower). Session 27's probe of towers on
Stage-2 pairs (bench/LEARNING.md, findings 84-85):

    .venv/bin/python recipes/experiments/vision_warmup.py /tmp/s19/s2two /tmp/s28/tp-wide --steps 3000 \
        --angle-weight 1 --tower-width 256
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from datasets import load_from_disk

from earthshader.models import (
    EarthShaderModelConfig,
    batch_vision_attention,
    load_model_and_processor,
    patch_embed_as_linear,
)
from earthshader.vision_warmup import warmup_vision


def fresh_tower(model, shape: dict) -> None:
    """Replace ``model``'s vision tower by a randomly initialised one with ``shape`` changed."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    config = copy.deepcopy(model.config.vision_config)
    for key, value in shape.items():
        setattr(config, key, value)
    old = model.model.visual
    like = next(old.parameters())
    tower = Qwen2VisionTransformerPretrainedModel._from_config(config).to(
        device=like.device, dtype=like.dtype
    )
    model.model.visual = tower
    model.config.vision_config = config
    patch_embed_as_linear(model)
    batch_vision_attention(model)
    count, was = (sum(p.numel() for p in m.parameters()) / 1e6 for m in (tower, old))
    print(f"fresh tower {shape}: {count:.2f}M parameters (was {was:.2f}M)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pixels", type=int, default=None, help="image area after resizing (224 px: 50176)")
    parser.add_argument("--model", default=None, help="warm this model's tower (default: a fresh tiny model)")
    parser.add_argument("--angle-weight", type=float, default=0.0)
    parser.add_argument("--pair-weight", type=float, default=0.0)
    parser.add_argument("--held-out", type=int, default=400, help="test rows to read afterwards (0: none)")
    parser.add_argument("--tower-depth", type=int, default=None, help="a fresh tower of this many blocks")
    parser.add_argument("--tower-width", type=int, default=None, help="a fresh tower of this embed_dim")
    parser.add_argument("--tower-heads", type=int, default=None, help="a fresh tower with this many heads")
    args = parser.parse_args()
    model, processor = load_model_and_processor(
        EarthShaderModelConfig(model_name_or_path=args.model, min_pixels=args.pixels, max_pixels=args.pixels)
    )
    asked = {"depth": args.tower_depth, "embed_dim": args.tower_width, "num_heads": args.tower_heads}
    shape = {key: value for key, value in asked.items() if value is not None}
    if shape:
        fresh_tower(model, shape)
    data = load_from_disk(args.data)
    test = data["test"].select(range(min(args.held_out, len(data["test"])))) if args.held_out else None
    start = time.perf_counter()
    result = warmup_vision(
        model,
        processor.image_processor,
        data["train"],
        args.steps,
        args.lr,
        progress=False,
        angle_weight=args.angle_weight,
        held_out=test,
        pair_weight=args.pair_weight,
    )
    losses = result.losses
    every = max(1, args.steps // 10)
    print(
        f"{time.perf_counter() - start:.0f} s; loss",
        [round(v, 3) for v in losses[::every]],
        round(losses[-1], 3),
    )
    print(json.dumps(result.held_out))
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)


if __name__ == "__main__":
    main()
