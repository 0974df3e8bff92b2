"""Supervised warmup: teach a Qwen2-VL model to write GLSL with a weighted cross-entropy.

Each target completion is a short description of the scene and then a fenced ```glsl block. Tokens of
the code weigh 5.0 in the loss, the reasoning 0.2, the fences and end of turn 1.0, the prompt (with its
image) 0; the loss is the weighted sum over the sum of weights of the whole optimizer step. TRL's
SFTTrainer runs the loop (cosine schedule with warmup, checkpoints, TensorBoard); the library module
`earthshader.sft` holds all the logic. Running the same command again resumes from the last complete
checkpoint in output_dir.

CPU, the embedded tiny model (built on first use, no network), in two steps: a vision warmup and
single shapes, then the 1-or-2-shape mix (the data: README, "Models and the supervised warmup"):
    OMP_NUM_THREADS=2 python scripts/sft.py --config recipes/tiny/sft.yaml
    OMP_NUM_THREADS=2 python scripts/sft.py --config recipes/tiny/sft_mix.yaml

One GPU, Qwen2-VL-7B-Instruct in 4 bits with LoRA (pip install 'earthshader[train,quant]'):
    python scripts/sft.py --config recipes/qwen2-vl-7b/sft_qlora.yaml

Several GPUs (one process per GPU; the effective batch is per_device x GPUs x accumulation):
    accelerate launch --num_processes 4 scripts/sft.py --config recipes/qwen2-vl-7b/sft_qlora.yaml

Any recipe field can be overridden on the command line, e.g. --max_steps 5 --output_dir runs/x.
Same as `earthshader sft ...`.
"""

import sys

from earthshader.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
