"""Shared, real inputs for the audit, plot and export tests: a small Stage-1 dataset rendered by the
data factory (64 px), and a LoRA SFT run of the embedded tiny model for a few steps.

Each is built once per test session (memoised here, since pytest builds a fixture once per module when
two test files import it) under pytest's base temporary folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

PROMPT_IMAGE_SIZE = 64


@functools.cache
def stage1_dataset(root: Path) -> Path:
    """24 Stage-1 samples (18 train, 6 test) at 64 px, written as `earthshader data` writes them."""
    from earthshader import data

    rows, _ = data.generate(1, 24, seed=0, size=PROMPT_IMAGE_SIZE, progress=False)
    meta = {"command": "data", "stage": 1, "num_samples": 24, "seed": 0, "size": PROMPT_IMAGE_SIZE}
    dataset = data.build_dataset(rows, 0.25, 0, meta)
    return data.write_dataset(dataset, root / "stage1", overwrite=False, meta=meta)


@functools.cache
def lora_sft_run(root: Path) -> Path:
    """A real LoRA SFT run of the tiny model: 2 steps, a checkpoint at each, the final adapter on top."""
    from earthshader.models import EarthShaderModelConfig
    from earthshader.sft import EarthShaderSFTConfig, SFTScriptArguments, run_sft

    out = root / "run-lora"
    run_sft(
        SFTScriptArguments(dataset_path=str(stage1_dataset(root))),
        EarthShaderSFTConfig(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-2,  # large, so that the adapter visibly changes the outputs
            save_strategy="steps",
            save_steps=1,
            logging_steps=1,
            report_to="none",
            max_length=1024,
            dataloader_pin_memory=False,
            seed=0,
        ),
        EarthShaderModelConfig(model_name_or_path="tiny", use_peft=True, lora_r=8, lora_alpha=16),
    )
    return out
