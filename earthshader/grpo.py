"""Render-in-the-loop GRPO: TRL's ``GRPOTrainer`` with rewards computed on rendered shaders.

For each target image the policy samples ``num_generations`` completions (reasoning, then a ```glsl
block); the rewards package renders every distinct shader once, headlessly, and scores compilation,
pixels, structure, shape overlap, format and length (``rewards/``). TRL turns the weighted sum into
group-relative advantages and updates the policy; nothing in the algorithm is rewritten here, only
configured: loss type, group size, beta, temperature, reward scaling and weights come from the recipe.

The policy starts from an SFT checkpoint: a full model folder, a PEFT adapter folder (its base is
loaded first, the adapter keeps training), or any model ``earthshader.models`` loads.

What the run folder holds: ``checkpoint-N/`` (resumed from when the same command runs again),
``log.jsonl`` (every logged metric, one JSON object per line), TensorBoard events under ``runs/``
when ``report_to`` includes ``tensorboard``, ``samples/step-N.png`` every ``plot_every`` steps, and
the final model with its processor.

    earthshader grpo --config recipes/tiny/grpo.yaml [--max_steps 20 ...]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, TrlParser

from earthshader.errors import UsageError
from earthshader.models import (
    CheckpointWeightsMixin,
    EarthShaderModelConfig,
    add_compact_lm_head,
    load_model_and_processor,
    load_processor,
)
from earthshader.runlog import LOG_FILE, JsonlLogCallback
from rewards import REWARDS, SharedRenders, get_reward_funcs
from rewards.parts import check_type_weight
from rewards.shared import BatchRecord, rendered

logger = logging.getLogger(__name__)

CONFIG_FILE = "grpo_run.json"  # marks a folder as a GRPO run folder (and records how it was made)
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Dataset columns GRPO does not feed to rewards: the reference completion would only confuse readers.
_DROP_COLUMNS = ("completion",)


@dataclass
class EarthShaderGRPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus what render-in-the-loop GRPO needs: data, rewards, renders, plots."""

    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "A dataset written by `earthshader data` (save_to_disk folder) with `prompt` and `image`."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of the dataset to train on."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (None: all)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["compile", "mse", "format"],
        metadata={"help": f"Reward components, by name: any of {', '.join(REWARDS)}."},
    )
    render_size: int = field(
        default=128,
        metadata={"help": "Square size in pixels of the renders and the targets they are scored on."},
    )
    render_time: float = field(default=0.0, metadata={"help": "The shader's iTime when rendered for reward."})
    fail_score: float | None = field(
        default=None,
        metadata={
            "help": "Score of an image reward (mse, ssim, iou) for a shader that does not render; None: each "
            "reward's own floor (-1 for mse and ssim, 0 for iou)."
        },
    )
    iou_threshold: float = field(
        default=0.5, metadata={"help": "Brightness above which a pixel is foreground for the iou reward."}
    )
    length_gate: float = field(
        default=0.75,
        metadata={"help": "Relative MSE similarity a render must reach before the length reward pays."},
    )
    parts_type_weight: float = field(
        default=0.0,
        metadata={
            "help": "For the parts reward: the share of a matched shape's IoU that a wrong primitive type loses "
            "(0: types do not count; 1: only shapes of the right type score)."
        },
    )
    plot_every: int = field(
        default=0,
        metadata={
            "help": "Every K steps, draw targets, renders, rewards and texts to samples/step-K.png (0: never)."
        },
    )
    plot_samples: int = field(default=8, metadata={"help": "Completions drawn in each samples PNG."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Delete output_dir and start afresh instead of resuming or refusing."},
    )

    def reward_settings(self) -> dict[str, Any]:
        """Settings for :func:`rewards.get_reward_funcs`, limited to the chosen rewards."""
        check_type_weight(self.parts_type_weight)
        settings: dict[str, Any] = {
            "iou_threshold": self.iou_threshold,
            "length_gate": self.length_gate,
            "parts_type_weight": self.parts_type_weight,
        }
        if self.fail_score is not None:
            settings["fail_score"] = self.fail_score
        takes = {
            "iou_threshold": {"iou"},
            "length_gate": {"length"},
            "parts_type_weight": {"parts"},
            "fail_score": {"mse", "ssim", "iou"},
        }
        return {k: v for k, v in settings.items() if takes[k] & set(self.reward_funcs)}


# ----------------------------------------------------------------------------------------------------
# Run folder: resume, refuse, or start afresh


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-numbered ``checkpoint-N`` whose ``trainer_state.json`` is written and readable.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint cut short by a kill lacks it (or
    holds a truncated one) and is skipped in favour of the one before.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = sorted(
        (
            (int(m.group(1)), p)
            for p in folder.iterdir()
            if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()
        ),
        reverse=True,
    )
    for _, path in steps:
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        return path
    return None


def prepare_output_dir(args: EarthShaderGRPOConfig) -> Path | None:
    """Decide what an existing ``output_dir`` means; return the checkpoint to resume from, or None.

    - ``overwrite``: delete the folder and start afresh.
    - a complete checkpoint: resume from the last one.
    - a run folder of ours without checkpoints and without a final model: start afresh in it.
    - anything else non-empty: refuse (:class:`UsageError`), so no user output is lost.
    """
    out = Path(args.output_dir)
    if args.overwrite and out.exists():
        if args.process_index == 0:
            shutil.rmtree(out)
        args.distributed_state.wait_for_everyone()
        return None
    if not out.exists() or not any(out.iterdir()):
        return None
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is not None:
        return checkpoint
    if not (out / CONFIG_FILE).exists():
        raise UsageError(f"{out} exists and is not a GRPO run folder (pass --overwrite true to replace it)")
    if (out / "model.safetensors").exists() or (out / "adapter_model.safetensors").exists():
        raise UsageError(
            f"{out} holds a finished model and no checkpoint (pass --overwrite true to train again)"
        )
    return None


def _write_run_config(args: EarthShaderGRPOConfig, model_args: EarthShaderModelConfig) -> None:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"grpo": json.loads(args.to_json_string()), "model": dataclasses.asdict(model_args)}
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))


# ----------------------------------------------------------------------------------------------------
# Data and model


def load_train_dataset(args: EarthShaderGRPOConfig):
    """The training split of ``dataset_path``, with the columns GRPO passes to rewards."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if not args.dataset_path:
        raise UsageError("no dataset: set dataset_path (a folder written by `earthshader data`)")
    if not Path(args.dataset_path).is_dir():
        raise UsageError(
            f"dataset folder {args.dataset_path!r} does not exist (make it with `earthshader data`)"
        )
    try:
        data = load_from_disk(args.dataset_path)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{args.dataset_path} is not a saved dataset ({exc})") from None
    if isinstance(data, DatasetDict):
        if args.dataset_train_split not in data:
            raise UsageError(
                f"{args.dataset_path} has no split {args.dataset_train_split!r} (has: {', '.join(data)})"
            )
        data = data[args.dataset_train_split]
    assert isinstance(data, Dataset)
    missing = {"prompt", "image"} - set(data.column_names)
    if missing:
        raise UsageError(f"{args.dataset_path} lacks the column(s) {', '.join(sorted(missing))}")
    data = data.remove_columns([c for c in _DROP_COLUMNS if c in data.column_names])
    if args.max_train_samples is not None:
        data = data.select(range(min(args.max_train_samples, len(data))))
    return data


def load_policy(model_args: EarthShaderModelConfig, gradient_checkpointing: bool = False):
    """The policy and its processor: a model folder or id as ``earthshader.models`` loads it, or a PEFT
    adapter folder (its base loaded first, the adapter trainable, no second adapter added).
    """
    path = Path(model_args.model_name_or_path or "")
    if not (path / "adapter_config.json").is_file():
        return load_model_and_processor(model_args, gradient_checkpointing=gradient_checkpointing)

    from peft import PeftConfig, PeftModel

    base_args = copy.copy(model_args)  # copy, not replace(): keep __post_init__'s checks out of it
    base_args.model_name_or_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    base_args.use_peft = False
    model, processor = load_model_and_processor(base_args, gradient_checkpointing=gradient_checkpointing)
    if (path / "tokenizer_config.json").is_file():  # the SFT run saved its processor beside the adapter
        own = copy.copy(model_args)
        own.model_name_or_path = str(path)
        processor = load_processor(own)
    model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
    logger.info("loaded adapter %s on %s", path, base_args.model_name_or_path)
    return model, processor


# ----------------------------------------------------------------------------------------------------
# What users watch


def sample_excerpt(text: str, max_lines: int = 20, width: int = 110) -> str:
    """What a samples PNG shows of a completion: its reasoning, then its code from ``mainImage`` on.

    The helper functions (``rotate``, ``sdBox``...) open every answer's code and take most of its
    lines, while what tells two samples apart is the reasoning and ``mainImage``. So the lines
    between the code fence and ``void mainImage`` fold into one comment that says how many there
    were; then the text is wrapped at ``width`` columns and cut at ``max_lines`` (the last one ``...``),
    which fit a row of the PNG. Characters that do not print become ``?``.

    >>> text = "A circle.\\n```glsl\\nfloat sd(vec2 p) {\\n    return 1.0;\\n}\\nvoid mainImage() {\\n}\\n```"
    >>> print(sample_excerpt(text))
    A circle.
    ```glsl
    // ... 3 lines of helper functions
    void mainImage() {
    }
    ```
    """
    text = "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in text)
    raw = text.splitlines() or [""]
    fence = next((k for k, line in enumerate(raw) if line.lstrip().startswith("```")), None)
    main = next((k for k, line in enumerate(raw) if line.lstrip().startswith("void mainImage")), None)
    if fence is not None and main is not None and main - fence > 2:
        raw = raw[: fence + 1] + [f"// ... {main - fence - 1} lines of helper functions"] + raw[main:]
    lines: list[str] = []
    for line in raw:
        lines += textwrap.wrap(line, width, replace_whitespace=False) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["..."]
    return "\n".join(lines)


def plot_samples(
    record: BatchRecord, path: str | os.PathLike, step: int | None = None, max_samples: int = 8
) -> Path:
    """Draw a reward batch: per completion, the target, the render (or why it failed) with its rewards,
    and the completion's text. Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = min(max_samples, len(record.codes))
    fig, axes = plt.subplots(
        n, 3, figsize=(13, 2.6 * n), gridspec_kw={"width_ratios": [1, 1, 3.2]}, squeeze=False
    )
    for i in range(n):
        target, result = record.targets[i], record.results[i]
        ax_t, ax_r, ax_x = axes[i]
        blank = np.zeros((8, 8, 3))
        ax_t.imshow(target if target is not None else blank, vmin=0, vmax=1)
        ax_t.set_title("target", fontsize=8)
        ax_r.imshow(result.image if rendered(result) else blank, vmin=0, vmax=1)
        if not rendered(result):
            ax_r.text(0.5, 0.5, result.kind, color="red", ha="center", va="center", transform=ax_r.transAxes)
        scores = [
            f"{name.removesuffix('_reward')} {s[i]:.2f}"
            for name, s in record.scores.items()
            if i < len(s) and s[i] is not None
        ]
        ax_r.set_title(" ".join(scores), fontsize=7)
        ax_x.text(
            0,
            1,
            sample_excerpt(record.texts[i]),
            family="monospace",
            fontsize=6,
            va="top",
            ha="left",
            transform=ax_x.transAxes,
            parse_math=False,
            clip_on=True,  # a long text never runs into the next row
        )
        for ax in (ax_t, ax_r, ax_x):
            ax.set_xticks([])
            ax.set_yticks([])
        ax_x.axis("off")
    fig.suptitle(f"GRPO samples, step {step}" if step is not None else "GRPO samples", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class SamplePlotCallback(TrainerCallback):
    """Every ``every`` steps, draw the latest reward batch to ``<output_dir>/samples/step-N.png``."""

    def __init__(
        self, renders: SharedRenders, output_dir: str | os.PathLike, every: int, max_samples: int = 8
    ):
        self.renders, self.every, self.max_samples = renders, every, max_samples
        self.folder = Path(output_dir) / "samples"

    def on_step_end(self, args, state, control, **kwargs):
        if self.every <= 0 or state.global_step % self.every or not state.is_world_process_zero:
            return
        if self.renders.last is None:
            return
        try:
            plot_samples(
                self.renders.last,
                self.folder / f"step-{state.global_step:06d}.png",
                state.global_step,
                self.max_samples,
            )
        except Exception:  # a figure is not worth a run
            logger.exception("drawing the samples of step %d failed", state.global_step)


# ----------------------------------------------------------------------------------------------------
# The trainer


class EarthShaderGRPOTrainer(CheckpointWeightsMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer``, resuming with the checkpoint's weights (:class:`CheckpointWeightsMixin`)."""


def build_trainer(
    args: EarthShaderGRPOConfig, model_args: EarthShaderModelConfig, train_dataset=None
) -> GRPOTrainer:
    """A ready ``GRPOTrainer``: policy, dataset, rewards over one shared render, logs and plots.

    ``train_dataset`` overrides ``args.dataset_path`` (tests and benchmarks build their own).
    """
    funcs = get_reward_funcs(
        args.reward_funcs, size=args.render_size, time=args.render_time, **args.reward_settings()
    )
    if args.reward_weights is not None and len(args.reward_weights) != len(funcs):
        raise UsageError(
            f"{len(args.reward_weights)} reward_weights for {len(funcs)} reward_funcs ({', '.join(args.reward_funcs)})"
        )
    if args.use_vllm:
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            logger.warning("use_vllm is set but vLLM is not installed: generating with transformers instead")
            args.use_vllm = False
    data = train_dataset if train_dataset is not None else load_train_dataset(args)
    model, processor = load_policy(model_args, gradient_checkpointing=args.gradient_checkpointing)
    renders: SharedRenders = funcs[0].keywords["renders"]
    callbacks = [JsonlLogCallback(args.output_dir)]
    if args.plot_every > 0:
        callbacks.append(SamplePlotCallback(renders, args.output_dir, args.plot_every, args.plot_samples))
    trainer = EarthShaderGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=data,
        processing_class=processor,
        callbacks=callbacks,
    )
    # TRL's fused head scores every position on a CPU, prompts too; this scores the completions only
    for scored in (trainer.model, trainer.ref_model):
        if scored is not None:
            add_compact_lm_head(scored, temperature=args.temperature, cast_to_fp32=args.cast_lm_head_to_fp32)
    trainer.renders = renders  # for callers that read render stats
    return trainer


def parse_args(argv: list[str]) -> tuple[EarthShaderGRPOConfig, EarthShaderModelConfig]:
    """Recipe (``--config file.yaml``) plus command-line overrides, through TRL's parser."""
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or not Path(argv[i + 1]).is_file():
            raise UsageError(f"recipe {argv[i + 1] if i + 1 < len(argv) else ''!r} does not exist")
    parser = TrlParser((EarthShaderGRPOConfig, EarthShaderModelConfig), prog="earthshader grpo")
    try:
        args, model_args = parser.parse_args_and_config(list(argv))
    except ValueError as exc:  # unknown recipe keys, bf16 on a CPU, ...
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    return args, model_args


def run(args: EarthShaderGRPOConfig, model_args: EarthShaderModelConfig, train_dataset=None) -> GRPOTrainer:
    """Train: resume from the last complete checkpoint in ``output_dir`` if there is one, then save
    the final model and processor there. Returns the trainer."""
    resume = prepare_output_dir(args)
    trainer = build_trainer(args, model_args, train_dataset)
    if args.process_index == 0:
        _write_run_config(args, model_args)
    if resume is not None:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    trainer.save_model(args.output_dir)
    if args.process_index == 0:
        trainer.processing_class.save_pretrained(args.output_dir)
    return trainer


def cli_main(argv: list[str]) -> int:
    """``earthshader grpo --config recipes/tiny/grpo.yaml [--key value ...]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, model_args = parse_args(argv)
    resume = last_complete_checkpoint(args.output_dir) if not args.overwrite else None
    if resume is not None:
        print(f"earthshader grpo: resuming from {resume}")
    trainer = run(args, model_args)
    stats = trainer.renders.stats
    print(
        f"earthshader grpo: {trainer.state.global_step} steps; model in {args.output_dir}; "
        f"{stats['calls']} render calls, {stats['sources']} shaders rendered; log in {Path(args.output_dir) / LOG_FILE}"
    )
    return 0
