"""Render-in-the-loop GRPO: sample shaders for each target image, render them, reward the pixels.

For each target image the policy writes ``num_generations`` completions (a short description, then a
```glsl block). Every distinct shader is rendered once, headlessly, and scored: does it compile, how
close are its pixels to the target (relative to drawing nothing), how well do the shapes overlap, is
the format right. GRPO turns each group's rewards into advantages (reward minus the group mean,
scaled by the group's spread unless the recipe says ``scale_rewards: none``) and raises the
likelihood of the better completions. Every setting lives in the recipe; the library is
``earthshader.grpo``.

CPU, the embedded tiny model (after ``earthshader sft --config recipes/tiny/sft_mix.yaml``)::

    python scripts/grpo.py --config recipes/tiny/grpo.yaml

One GPU, Qwen2-VL-7B in 4 bits::

    python scripts/grpo.py --config recipes/qwen2-vl-7b/grpo_qlora.yaml

Several GPUs (DeepSpeed ZeRO-2; each rank renders on its own GPU)::

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 \\
        scripts/grpo.py --config recipes/qwen2-vl-7b/grpo_qlora.yaml

Any recipe key can be overridden on the command line (``--max_steps 10 --learning_rate 1e-5``).
Running the same command again resumes from the last complete checkpoint.
"""

import sys

from earthshader.cli import main as cli


def main() -> int:
    return cli(["grpo", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
