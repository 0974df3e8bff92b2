"""Experiment (issue 7): weighted SFT where the reasoning's number tokens carry their own loss weight.

The reasoning is the only place where the picture is read: the code repeats its numbers, and a model
that has learned the template copies them. With the default weights (code 5.0, reasoning 0.2) the few
number tokens of the reasoning (4 to 8 of ~230 completion tokens) get almost none of the gradient.
This runner keeps ``earthshader sft`` exactly (recipe, trainer, resume, logs) and only swaps the
collator for one that gives number tokens of the reasoning (and the minus sign before them) the weight
``--number_weight``; ``--code_number_weight`` does the same for the numbers inside the code.

    OMP_NUM_THREADS=2 .venv/bin/python recipes/experiments/number_weight_sft.py \
        --number_weight 5.0 --config recipes/experiments/sft_numweight.yaml \
        --dataset_path /tmp/l7/data/stage1 --output_dir /tmp/l7/runs/numw5
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from earthshader import sft

_NUMBER = re.compile(r"^\s?-?(?:\d+\.\d*|\.\d+|\d+)$")
_MINUS = re.compile(r"^\s?-$")


def number_masks(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean tables over the vocabulary: which tokens are numbers, which are a lone minus sign."""
    n = len(tokenizer)
    texts = [tokenizer.decode([i]) for i in range(n)]
    is_number = torch.tensor([bool(_NUMBER.match(t)) for t in texts])
    is_minus = torch.tensor([bool(_MINUS.match(t)) for t in texts])
    return is_number, is_minus


@dataclass
class NumberWeightedCollator(sft.WeightedVLMCollator):
    """``WeightedVLMCollator`` plus a separate weight for number tokens (and their minus signs)."""

    number_weight: float | None = field(default=None)
    code_number_weight: float | None = field(default=None)

    def __post_init__(self):
        self._is_number, self._is_minus = number_masks(self.processor.tokenizer)

    def __call__(self, examples):
        batch = super().__call__(examples)
        ids = batch["input_ids"]
        numeric = self._is_number[ids]
        # a minus sign right before a number belongs to it
        numeric[:, :-1] |= self._is_minus[ids[:, :-1]] & numeric[:, 1:]
        cls = batch["token_class"]
        w = batch["loss_weights"]
        if self.number_weight is not None:
            w[numeric & (cls == sft.REASONING)] = self.number_weight
        if self.code_number_weight is not None:
            w[numeric & (cls == sft.CODE)] = self.code_number_weight
        return batch


def _pop(argv: list[str], name: str) -> float | None:
    if name not in argv:
        return None
    i = argv.index(name)
    value = float(argv[i + 1])
    del argv[i : i + 2]
    return value


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    number_weight = _pop(argv, "--number_weight")
    code_number_weight = _pop(argv, "--code_number_weight")

    class Collator(NumberWeightedCollator):
        def __init__(self, processor, weights, max_length=None):
            super().__init__(processor, weights, max_length, number_weight, code_number_weight)

    # WeightedSFTTrainer builds its default collator from this module-level name.
    sft.WeightedVLMCollator = Collator
    script_args, training_args, model_args = sft.parse_args(argv)
    sft.run_sft(script_args, training_args, model_args)
    (Path(training_args.output_dir) / "experiment.json").write_text(
        json.dumps({"number_weight": number_weight, "code_number_weight": code_number_weight}) + "\n"
    )
    print(f"model saved to {training_args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
