"""Supervised warmup: weighted cross-entropy on TRL's ``SFTTrainer``.

The model learns to write GLSL before reinforcement learning rewards good GLSL. Not every token of a
target completion matters equally: the fenced code is what the renderer judges, the reasoning before it
is a hint. Each completion token gets a weight by its part (the seed project's choice: code 5.0,
reasoning 0.2; fences and the end-of-turn token 1.0); prompt and padding tokens get 0. The loss is
``sum(weight * nll) / sum(weight)``, where the denominator runs over every token of the optimizer step
(all gradient-accumulation micro-batches, all ranks), so neither padding nor accumulation changes it.

Only ``compute_loss`` and the normaliser are overridden; TRL's and transformers' loop, schedule,
checkpointing and logging stay theirs. Two additions: checkpoints are written under a staging name and
renamed into place (a kill -9 never leaves a ``checkpoint-N`` that looks complete but is not), and a
JSON-lines log (``<output_dir>/log.jsonl``) beside TensorBoard.

    earthshader sft --config recipes/tiny/sft.yaml [--max_steps 5 --output_dir runs/x ...]

Running the same command again resumes from the last complete checkpoint in ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer, TrlParser
from trl.data_utils import apply_chat_template, prepare_multimodal_messages

from earthshader.errors import UsageError
from earthshader.glsl import completion_text
from earthshader.models import (
    CheckpointWeightsMixin,
    EarthShaderModelConfig,
    add_compact_lm_head,
    cpu_bf16_speedup,
    load_model_and_processor,
)
from earthshader.runlog import JsonlLogCallback

logger = logging.getLogger(__name__)

# Token classes, in increasing priority: a token that spans two parts takes the higher class.
IGNORE, REASONING, CODE, END, FENCE = 0, 1, 2, 3, 4
CLASS_NAMES = {REASONING: "reasoning", CODE: "code", END: "end", FENCE: "fence"}

_OPEN_FENCE = re.compile(r"```[\w+-]*[ \t]*\n")
REQUIRED_COLUMNS = ("image", "prompt", "completion")


@dataclass
class EarthShaderSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus the per-token loss weights; the defaults are the seed project's."""

    code_weight: float = field(
        default=5.0, metadata={"help": "Loss weight of tokens inside the fenced code block."}
    )
    reasoning_weight: float = field(
        default=0.2, metadata={"help": "Loss weight of the natural-language reasoning before the code."}
    )
    fence_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of the ```glsl and ``` fence tokens."}
    )
    end_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of the end-of-turn tokens (<|im_end|> and what follows)."}
    )
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "Learning-rate schedule after warmup (the seed's Phase-2 choice)."},
    )
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warmup length: steps if >= 1, else a fraction of all steps."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    vision_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of the dense vision warmup (earthshader.vision_warmup) before SFT starts: for a "
            "vision tower trained from scratch. 0: none."
        },
    )
    vision_warmup_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the vision warmup (linear decay to 0)."}
    )
    vision_warmup_batch_size: int = field(default=32, metadata={"help": "Images per vision warmup step."})
    vision_warmup_dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Dataset folder whose train split the vision warmup reads; default: the SFT dataset. The "
            "tiny curriculum warms the tower on the 1-or-2-shape mix while SFT starts on single shapes."
        },
    )
    vision_warmup_angle_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the vision warmup's angle target (the turn of boxes, capsules, triangles and "
            "hexagons, from Stage 2 on). 0: no angle target, as in the Stage-1 demo."
        },
    )
    vision_warmup_pair_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the vision warmup's pair targets (each token's operator, and the type and "
            "parameters of a second shape sharing it: for Stage-2 pairs). 0: none, as in the Stage-1 demo."
        },
    )
    vision_warmup_held_out_rows: int = field(
        default=256,
        metadata={
            "help": "After the warmup, read this many rows of the warmup dataset's test split through the "
            "warmup's heads and record what the tower sees there (vision_warmup.json). 0: none."
        },
    )
    vision_freeze_after_warmup: bool = field(
        default=False,
        metadata={
            "help": "After the vision warmup, freeze the vision tower for SFT: trained on, the tower loses "
            "much of where things are that the warmup taught it (bench/LEARNING.md, onetok_frozen)."
        },
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the vision tower and its merger in SFT, when they train (the "
            "schedule scales it as it scales learning_rate); default: learning_rate. A warmed tower trained "
            "at the language model's rate loses where things are (bench/LEARNING.md, onetok)."
        },
    )
    compile_language_model: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the text decoder before training (dynamic shapes; the saved model is the "
            "same). On the 2-core CPU the tiny model's mix steps ran 1.28-1.40x faster, for about 95 s of "
            "compilation a run (bench/sft.py --compile). Needs a C++ compiler when there is no GPU."
        },
    )
    # TRL turns these on by default; here they follow the machine (bf16 where the GPU has it) and the recipe.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision; default: on where a CUDA GPU supports it. Asked for on a machine "
            "with no GPU, it is bf16 autocast on the CPU, where cpu_bf16 says whether it pays."
        },
    )
    cpu_bf16: str = field(
        default="auto",
        metadata={
            "help": "What bf16 means on a machine with no GPU. 'auto': bf16 autocast only where a half-second "
            "probe (earthshader.models.cpu_bf16_speedup) finds this CPU's bf16 matrix products faster than "
            "fp32, fp32 otherwise: the demo's mix steps ran 1.29x faster in bf16 on a CPU with AMX, and "
            "1.46x slower than fp32 (both with the decoder compiled) on one without (bench/sft.py). "
            "'always': bf16 autocast regardless."
        },
    )

    length_grouped_batches: bool = field(
        default=False,
        metadata={
            "help": "Batch rows of similar completion length together, the batches in random order: less "
            "padding (the demo's mix: 12% of a random batch's positions are padding, 0.3% grouped; its steps "
            "ran 1.19x faster). Off in the tiny recipes: in the mix a batch of like length is a batch of one "
            "shape count, and the model drew worse (MSE 0.0125 -> 0.0208 on 399 unseen scenes, "
            "bench/LEARNING.md, session 24). transformers' own group_by_length sampler runs each 50-batch "
            "megabatch longest first, so that length, shape count and type would sweep in a sawtooth."
        },
    )

    length_sorted_steps: bool = field(
        default=False,
        metadata={
            "help": "Draw each optimizer step's rows at random, as usual, then order them by completion length, "
            "so that each of the step's gradient_accumulation_steps micro-batches is padded only to its own "
            "longest row. The loss is normalised by the whole step's weight, so a step's gradient is that of "
            "one random batch of per_device_train_batch_size x gradient_accumulation_steps rows: the same "
            "training, with less padding. Needs gradient_accumulation_steps > 1; not with "
            "length_grouped_batches."
        },
    )

    def __post_init__(self):
        if self.cpu_bf16 not in ("auto", "always"):
            raise UsageError(f"cpu_bf16 must be 'auto' or 'always', not {self.cpu_bf16!r}")
        if self.length_sorted_steps and self.length_grouped_batches:
            raise UsageError(
                "length_sorted_steps and length_grouped_batches are two ways to order rows: choose one"
            )
        if self.length_sorted_steps and self.gradient_accumulation_steps < 2:
            raise UsageError(
                "length_sorted_steps sorts a step's rows into its micro-batches: it needs gradient_accumulation_steps > 1"
            )
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        # bf16's speedup over fp32 on this CPU, where cpu_bf16 'auto' measured it (sft_run.json records it)
        self.cpu_bf16_speedup: float | None = None
        if self.bf16 and not torch.cuda.is_available():
            if self.cpu_bf16 == "auto":
                self.cpu_bf16_speedup = round(cpu_bf16_speedup(), 3)
                self.bf16 = self.cpu_bf16_speedup > 1.0
                logger.info(
                    "bf16 on this CPU: its matrix products run %.2fx as fast as fp32's, so training runs in %s "
                    "(cpu_bf16: always keeps bf16)",
                    self.cpu_bf16_speedup,
                    "bf16 autocast" if self.bf16 else "fp32",
                )
            if self.bf16 and not self.use_cpu:
                # transformers allows bf16 without a GPU only when told to train on the CPU
                self.use_cpu = True
        super().__post_init__()

    def weights(self) -> dict[int, float]:
        return {
            REASONING: self.reasoning_weight,
            CODE: self.code_weight,
            FENCE: self.fence_weight,
            END: self.end_weight,
        }


@dataclass
class SFTScriptArguments:
    """What to train on, and what to do with an existing output folder."""

    dataset_path: str = field(
        default="data/stage1",
        metadata={
            "help": "A dataset folder written by `earthshader data` (datasets.save_to_disk, train/test)."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on, if eval is enabled."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Delete output_dir first and start afresh (default: resume from its last checkpoint)."
        },
    )


# --------------------------------------------------------------------------------------------------
# Token weights


def completion_char_classes(text: str) -> np.ndarray:
    """Class of each character of a templated completion: reasoning, fence, code or end of turn.

    ``text`` is the assistant turn as the chat template writes it, e.g.
    ``"Two shapes ...\\n```glsl\\nvoid mainImage(...) {...}\\n```<|im_end|>\\n"``. Everything from the
    last ``<|im_end|>`` on is END. Without an opening fence the whole content counts as code (bare code).

    >>> classes = completion_char_classes("hi\\n```glsl\\nx;\\n```<|im_end|>\\n")
    >>> "".join("?RCEF"[c] for c in classes)
    'RRRFFFFFFFFCCCFFFEEEEEEEEEEE'
    """
    classes = np.full(len(text), REASONING, dtype=np.int8)
    end = text.rfind("<|im_end|>")
    end = len(text) if end < 0 else end
    classes[end:] = END
    opening = _OPEN_FENCE.search(text, 0, end)
    if opening is None:
        classes[:end] = CODE
        return classes
    classes[opening.start() : opening.end()] = FENCE
    closing = text.find("```", opening.end(), end)
    code_end = end if closing < 0 else closing
    classes[opening.end() : code_end] = CODE
    if closing >= 0:
        tail = closing + 3
        # the fence, and the blank space after it up to the end of turn
        stop = tail + (len(text[tail:end]) - len(text[tail:end].lstrip()))
        classes[closing:stop] = FENCE
    return classes


def token_classes(offsets: list[tuple[int, int]], char_classes: np.ndarray) -> np.ndarray:
    """Class of each token from its character span: the highest class among its characters."""
    out = np.empty(len(offsets), dtype=np.int8)
    n = len(char_classes)
    for i, (start, stop) in enumerate(offsets):
        start = min(start, n - 1)
        stop = max(stop, start + 1)
        out[i] = char_classes[start:stop].max()
    return out


@dataclass
class WeightedVLMCollator:
    """Batches image + prompt + completion rows for a vision-language model, with per-token loss weights.

    Like TRL's ``DataCollatorForVisionLanguageModeling`` for prompt-completion data (the prompt through
    the processor with its image, the completion through the tokenizer, prompt tokens masked), and adds
    ``loss_weights`` (float, 0 on prompt and padding) and ``token_class`` (the part each token belongs to).
    """

    processor: Any
    weights: dict[int, float]
    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        images, prompts, completions = [], [], []
        for example in examples:
            image = example["image"]
            imgs = [] if image is None else [image.convert("RGB") if hasattr(image, "convert") else image]
            row = {
                "prompt": prepare_multimodal_messages(example["prompt"], images=imgs),
                "completion": prepare_multimodal_messages(example["completion"]),
            }
            text = apply_chat_template(row, self.processor)
            images.append(imgs)
            prompts.append(text["prompt"])
            completions.append(text["completion"])

        prompt_batch = self.processor(
            images=images if any(images) else None,
            text=prompts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,
        )
        done = tokenizer(completions, add_special_tokens=False, return_offsets_mapping=True)

        weight_of = np.zeros(max(CLASS_NAMES) + 1, dtype=np.float32)
        for cls, w in self.weights.items():
            weight_of[cls] = w
        rows = []
        for i, completion in enumerate(completions):
            keep = prompt_batch["attention_mask"][i].bool()
            p_ids = prompt_batch["input_ids"][i][keep]
            c_ids = torch.tensor(done["input_ids"][i], dtype=torch.long)
            c_cls = token_classes(done["offset_mapping"][i], completion_char_classes(completion))
            cls = torch.cat([torch.zeros(len(p_ids), dtype=torch.int8), torch.from_numpy(c_cls)])
            mm = None
            if "mm_token_type_ids" in prompt_batch:
                mm = torch.cat([prompt_batch["mm_token_type_ids"][i][keep], torch.zeros_like(c_ids)])
            rows.append((torch.cat([p_ids, c_ids]), cls, mm))

        length = max(len(r[0]) for r in rows)
        if self.max_length is not None:
            length = min(length, self.max_length)
        batch_size = len(rows)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        token_class = torch.zeros((batch_size, length), dtype=torch.int8)
        mm_token_type_ids = torch.zeros((batch_size, length), dtype=torch.long)
        for i, (ids, cls, mm) in enumerate(rows):
            n = min(len(ids), length)
            input_ids[i, :n] = ids[:n]
            attention_mask[i, :n] = 1
            token_class[i, :n] = cls[:n]
            if mm is not None:
                mm_token_type_ids[i, :n] = mm[:n]

        labels = input_ids.masked_fill(token_class == IGNORE, -100)
        loss_weights = torch.from_numpy(weight_of)[token_class.long()]
        out = dict(prompt_batch)
        out.update(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            loss_weights=loss_weights,
            token_class=token_class,
        )
        if "mm_token_type_ids" in prompt_batch:
            out["mm_token_type_ids"] = mm_token_type_ids
        return out


# --------------------------------------------------------------------------------------------------
# The trainer


def completion_lengths(dataset, tokenizer) -> list[int]:
    """Tokens in each row's completion text: what varies between a stage's rows."""
    texts = [completion_text(completion) for completion in dataset["completion"]]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length, in random order.

    transformers' ``get_length_grouped_indices`` shuffles the rows, sorts each megabatch of 50 batches
    by length and concatenates them; ``LengthGroupedSampler`` yields that as it is, so a run would see
    each megabatch's batches from the longest to the shortest. Here the batches are cut from it and
    shuffled (the same generator, or torch's global one as transformers' samplers use).
    """

    def __init__(self, lengths: list[int], batch_size: int, generator=None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        return iter([i for b in order for i in batches[b]])


class LengthSortedStepSampler(torch.utils.data.Sampler):
    """Rows in random order, each step's rows sorted by length.

    The rows are shuffled (the generator given, or torch's global one as transformers' samplers use) and
    cut into steps of ``step_size``; each step's rows are yielded from the shortest to the longest. The
    trainer's dataloader cuts them into the step's micro-batches, so the short rows share one and the long
    rows another, and each is padded to its own longest row.
    """

    def __init__(self, lengths: list[int], step_size: int, generator=None):
        self.lengths = list(lengths)
        self.step_size = step_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        steps = (order[i : i + self.step_size] for i in range(0, len(order), self.step_size))
        return iter([i for step in steps for i in sorted(step, key=self.lengths.__getitem__)])


class WeightedSFTTrainer(CheckpointWeightsMixin, SFTTrainer):
    """``SFTTrainer`` whose loss is the weighted cross-entropy of the module docstring.

    It needs batches with ``loss_weights`` and ``token_class`` (from :class:`WeightedVLMCollator`, the
    default collator here). Also logs ``loss_code`` and ``loss_reasoning``: the mean unweighted NLL of
    the code and reasoning tokens.
    """

    # compute_loss normalises by the whole step's weight, so transformers must not divide again
    loss_is_scaled_for_ga = True

    def __init__(self, *args, data_collator=None, **kwargs):
        processing_class = kwargs.get("processing_class")
        config = kwargs.get("args")
        if data_collator is None:
            if processing_class is None or not isinstance(config, EarthShaderSFTConfig):
                raise ValueError("WeightedSFTTrainer needs a processing_class and an EarthShaderSFTConfig")
            data_collator = WeightedVLMCollator(processing_class, config.weights(), config.max_length)
        self._staging_dir: str | None = None
        super().__init__(*args, data_collator=data_collator, **kwargs)
        add_compact_lm_head(self.model)  # TRL's fused head scores every position on a CPU

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        ordered = self.args.length_grouped_batches or self.args.length_sorted_steps
        if not ordered or not isinstance(train_dataset, Dataset):
            return super()._get_train_sampler(train_dataset)
        lengths = completion_lengths(train_dataset, self.processing_class.tokenizer)
        step = self.args.train_batch_size * self.args.gradient_accumulation_steps
        if self.args.length_sorted_steps:
            return LengthSortedStepSampler(lengths, step)
        return ShuffledLengthGroupedSampler(lengths, step)

    # -- the optimizer

    def create_optimizer(self):
        """TRL's optimizer, with the vision tower's parameters at ``vision_learning_rate`` when set."""
        optimizer = super().create_optimizer()
        lr = self.args.vision_learning_rate
        if lr is None or lr == self.args.learning_rate:
            return optimizer
        from earthshader.models import is_vision_parameter

        vision = {id(p) for name, p in self.model.named_parameters() if is_vision_parameter(name)}
        groups = []
        for group in optimizer.param_groups:
            for is_vision in (False, True):
                params = [p for p in group["params"] if (id(p) in vision) == is_vision]
                if params:
                    groups.append({**group, "params": params, "lr": lr if is_vision else group["lr"]})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    # -- the loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The normaliser of one optimizer step: the sum of loss weights over all its micro-batches."""
        if not batch_samples or "loss_weights" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        # position 0 is never predicted: the loss scores tokens 1..T-1
        total = sum(batch["loss_weights"][:, 1:].sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "loss_weights" not in inputs:
            raise ValueError("batches need 'loss_weights' and 'token_class' (use WeightedVLMCollator)")
        mode = "train" if self.model.training else "eval"
        weights = inputs.pop("loss_weights")[:, 1:]
        token_class = inputs.pop("token_class")[:, 1:]
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        nll = -outputs.log_probs  # (B, T-1), zero where the label is -100
        weights = weights.to(nll.dtype)
        whole_step = num_items_in_batch is not None
        if not whole_step:  # evaluation, or a caller without a step: normalise by this batch
            num_items_in_batch = weights.sum()
        loss = (nll * weights).sum() / torch.as_tensor(num_items_in_batch, dtype=nll.dtype).clamp(min=1e-8)
        if whole_step and self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # the normaliser counts every rank's weights, and DDP averages the gradients across ranks
            loss = loss * self.accelerator.num_processes
        self._log_token_metrics(mode, outputs, nll.detach(), token_class, inputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _log_token_metrics(self, mode, outputs, nll, token_class, inputs) -> None:
        """Per-part mean NLL (code, reasoning), entropy and accuracy, in one device-to-host transfer."""
        parts = [token_class == CODE, token_class == REASONING, outputs.label_mask]
        sums = [nll[parts[0]].sum(), nll[parts[1]].sum(), outputs.entropy.sum(), outputs.is_top1.sum()]
        counts = [p.sum() for p in parts]
        stats = torch.stack([s.float() for s in sums] + [c.float() for c in counts])
        stats = self.accelerator.gather_for_metrics(stats.unsqueeze(0)).sum(0).tolist()
        code_sum, reasoning_sum, entropy_sum, correct, n_code, n_reasoning, n_valid = stats
        metrics = self._metrics[mode]
        if n_code:
            metrics["loss_code"].append(code_sum / n_code)
        if n_reasoning:
            metrics["loss_reasoning"].append(reasoning_sum / n_reasoning)
        metrics["entropy"].append(entropy_sum / n_valid if n_valid else 0.0)
        metrics["mean_token_accuracy"].append(correct / n_valid if n_valid else 0.0)
        if mode == "train":
            self._total_train_tokens += int(
                self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum()
            )
        metrics["num_tokens"] = [self._total_train_tokens]

    # -- checkpoints that are complete or absent

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-N`` under a staging folder, then rename it into place in one step."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = super()._get_output_dir(trial)
        staging = os.path.join(run_dir, ".checkpoint-staging")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):  # the same step saved again (e.g. the last step)
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
                self.state.best_model_checkpoint = run_dir + self.state.best_model_checkpoint[len(staging) :]
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------------
# Data and entry point


def load_sft_dataset(script_args: SFTScriptArguments):
    """The train (and test, if present) splits of a dataset folder; one clear line when it is not usable."""
    from datasets import DatasetDict, load_from_disk

    path = Path(script_args.dataset_path)
    if not path.exists():
        raise UsageError(f"dataset {path} does not exist (make one with `earthshader data --out {path}`)")
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{path} is not a dataset folder written by save_to_disk ({exc})") from None
    if not isinstance(data, DatasetDict):
        data = DatasetDict({script_args.dataset_train_split: data})
    if script_args.dataset_train_split not in data:
        raise UsageError(
            f"dataset {path} has no {script_args.dataset_train_split!r} split (has {list(data)})"
        )
    train = data[script_args.dataset_train_split]
    missing = [c for c in REQUIRED_COLUMNS if c not in train.column_names]
    if missing:
        raise UsageError(
            f"dataset {path} lacks the column(s) {', '.join(missing)} (has {train.column_names})"
        )
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    test = data.get(script_args.dataset_test_split)
    return train, test


def build_trainer(
    script_args: SFTScriptArguments, training_args: EarthShaderSFTConfig, model_args: EarthShaderModelConfig
) -> WeightedSFTTrainer:
    """Model, processor, data and callbacks, wired as the recipe says."""
    train, test = load_sft_dataset(script_args)
    model, processor = load_model_and_processor(
        model_args, gradient_checkpointing=bool(training_args.activation_checkpointing)
    )
    eval_dataset = test if training_args.eval_strategy != "no" else None
    return WeightedSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=[JsonlLogCallback(training_args.output_dir)],
    )


def run_sft(
    script_args: SFTScriptArguments, training_args: EarthShaderSFTConfig, model_args: EarthShaderModelConfig
):
    """Train, resuming from the last complete checkpoint in ``output_dir``; save the final model there."""
    out = Path(training_args.output_dir)
    if script_args.overwrite and out.exists():
        shutil.rmtree(out)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    # A run killed before its first checkpoint leaves only these behind: start it again.
    ours = {"log.jsonl", "runs", ".checkpoint-staging", "sft_run.json", "vision_warmup.json"}
    if last is None and out.is_dir() and any(p.name not in ours for p in out.iterdir()):
        raise UsageError(f"{out} exists and holds no checkpoint to resume (pass --overwrite to start afresh)")
    trainer = build_trainer(script_args, training_args, model_args)  # checks the SFT dataset
    warm = training_args.vision_warmup_dataset_path
    if last is None and training_args.vision_warmup_steps > 0 and warm and not Path(warm).exists():
        raise UsageError(
            f"vision_warmup_dataset_path {warm} does not exist (make it with `earthshader data --stage 1 "
            f"--grid 0.05 --out {warm}`, or pass --vision_warmup_dataset_path)"
        )
    if trainer.is_world_process_zero():
        # What the run was made from, for the export's model card (earthshader.export.run_info).
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "sft": json.loads(training_args.to_json_string()),
            "script": dataclasses.asdict(script_args),
            "model": dataclasses.asdict(model_args),
            "cpu_bf16_speedup": training_args.cpu_bf16_speedup,
        }
        (out / "sft_run.json").write_text(json.dumps(record, indent=2, default=str))
    if last is not None:
        logger.info("resuming from %s", last)
    prepare_vision(trainer, script_args, training_args, out, warm_up=last is None)
    if training_args.compile_language_model:
        from earthshader.models import compile_language_model

        compile_language_model(trainer.model)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
    return trainer


def prepare_vision(
    trainer: WeightedSFTTrainer,
    script_args: SFTScriptArguments,
    training_args: EarthShaderSFTConfig,
    out: Path,
    warm_up: bool = True,
) -> None:
    """The recipe's vision warmup (when ``warm_up``: a fresh run, not a resumed one) and freeze.

    The warmup reads ``vision_warmup_dataset_path`` when set, else the SFT dataset. The freeze is
    applied before ``train()`` builds its optimizer, on a resumed run too, so that the optimizer's
    state matches the checkpoint's.
    """
    if training_args.vision_warmup_steps <= 0:
        return
    if warm_up:  # a checkpoint already holds the warmed-up tower
        from earthshader.vision_warmup import warmup_vision

        source = script_args
        if training_args.vision_warmup_dataset_path:
            source = dataclasses.replace(script_args, dataset_path=training_args.vision_warmup_dataset_path)
        train, test = load_sft_dataset(source)
        rows = training_args.vision_warmup_held_out_rows
        held_out = test.select(range(min(rows, len(test)))) if test is not None and rows > 0 else None
        result = warmup_vision(
            trainer.model,
            trainer.processing_class.image_processor,
            train,
            training_args.vision_warmup_steps,
            learning_rate=training_args.vision_warmup_learning_rate,
            batch_size=training_args.vision_warmup_batch_size,
            seed=training_args.seed,
            angle_weight=training_args.vision_warmup_angle_weight,
            held_out=held_out,
            pair_weight=training_args.vision_warmup_pair_weight,
        )
        if trainer.is_world_process_zero():
            out.mkdir(parents=True, exist_ok=True)
            record = {"loss": result.losses, "held_out": result.held_out}
            (out / "vision_warmup.json").write_text(json.dumps(record))
    if training_args.vision_freeze_after_warmup:
        from earthshader.models import freeze_vision_tower

        logger.info("vision tower frozen after the warmup (%d tensors)", freeze_vision_tower(trainer.model))


def parse_args(argv: list[str] | None):
    parser = TrlParser((SFTScriptArguments, EarthShaderSFTConfig, EarthShaderModelConfig))
    try:
        return parser.parse_args_and_config(argv)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc).strip().splitlines()[0]) from None


def cli_main(argv: list[str]) -> int:
    """``earthshader sft --config RECIPE.yaml [--key value ...]``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    script_args, training_args, model_args = parse_args(argv)
    run_sft(script_args, training_args, model_args)
    print(f"model saved to {training_args.output_dir}")
    return 0
