"""Experiment helper (issues 5 and 7): a model whose weights lie between two trained models of one shape.

The Stage-1 SFT model draws Stage-2 pairs better than the same model taught 1,500 steps of them
(finding 108): it hedges with discs where the Stage-2 model names types it cannot read. Weight-space
interpolation between a model and its fine-tuned descendant (WiSE-FT, Wortsman et al. 2022) often keeps
what both know. This writes ``(1 - alpha) * A + alpha * B`` for every tensor of two model folders whose
``model.safetensors`` hold the same names and shapes, into OUT with B's config, tokenizer and processor,
so that ``earthshader eval`` and ``earthshader grpo`` read it as any other model folder.

    .venv/bin/python recipes/experiments/interpolate.py A B ALPHA OUT [--overwrite]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROG = "interpolate"
WEIGHTS = "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the model at alpha 0")
    parser.add_argument("b", type=Path, help="the model at alpha 1 (its config and tokenizer are copied)")
    parser.add_argument("alpha", type=float)
    parser.add_argument("out", type=Path)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    for folder in (args.a, args.b):
        if not (folder / WEIGHTS).is_file():
            sys.exit(f"{PROG}: {folder}: no {WEIGHTS}")
    if args.out.exists() and not args.overwrite:
        sys.exit(f"{PROG}: {args.out} exists (--overwrite to replace it)")
    a, b = load_file(args.a / WEIGHTS), load_file(args.b / WEIGHTS)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        sys.exit(f"{PROG}: {args.a} and {args.b} are not models of one shape")
    mixed = {k: torch.lerp(a[k].float(), b[k].float(), args.alpha).to(b[k].dtype) for k in b}
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for path in args.b.iterdir():
        if path.is_file() and path.suffix in {".json", ".jinja"}:
            shutil.copy2(path, args.out / path.name)
    save_file(mixed, args.out / WEIGHTS, metadata={"format": "pt"})
    print(f"{args.out}: {len(mixed)} tensors, {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")


if __name__ == "__main__":
    main()
