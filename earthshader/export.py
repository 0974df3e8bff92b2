"""Export: take a trained model out of its run folder, in a form others load with ``from_pretrained``.

A run folder of ``earthshader sft`` or ``earthshader grpo`` holds its final model (when training
finished) and ``checkpoint-N`` folders. The export takes the final model, else the last complete
checkpoint, and writes:

- a LoRA run: the adapter in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``), or
  with ``--merge`` the base model with the adapter merged in, a plain full model;
- a full fine-tune: the full model;
- the processor (tokenizer, image processor, chat template);
- ``README.md``, a model card: base model, data, recipe, steps trained, and the latest audit figures
  (``RUN_DIR/audit/report.json``, or ``--audit DIR``).

    earthshader export runs/tiny-grpo --out exports/tiny-grpo [--merge] [--audit runs/tiny-grpo/audit]

The export is written to a temporary folder beside ``--out`` and moved into place when complete; an
existing ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from earthshader.audit import REPORT_JSON, check_out, figures_table, publish, temp_beside
from earthshader.errors import ArgumentParser, UsageError

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Recipe settings worth a line in the model card, when the run recorded them.
RECIPE_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "code_weight",
    "reasoning_weight",
    "loss_type",
    "num_generations",
    "beta",
    "temperature",
    "reward_funcs",
    "reward_weights",
    "max_completion_length",
    "seed",
)
MODEL_KEYS = ("model_name_or_path", "use_peft", "lora_r", "lora_alpha", "load_in_4bit", "train_vision_tower")


def model_kind(folder: Path) -> str | None:
    """``"adapter"``, ``"full"``, or None when the folder holds no loadable weights."""
    if (folder / "adapter_config.json").is_file() and any((folder / f).is_file() for f in ADAPTER_FILES[1:]):
        return "adapter"
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in FULL_WEIGHTS):
        return "full"
    return None


def _checkpoints(run: Path) -> list[Path]:
    found = [
        (int(m.group(1)), p) for p in run.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a checkpoint cut short lacks it or holds a broken one."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return model_kind(checkpoint) is not None


def find_model(run_dir: str | os.PathLike) -> tuple[Path, str]:
    """The folder to export from a run, and its kind: the final model, else the last complete checkpoint.

    Raises:
        UsageError: not a folder, or no final model and no complete checkpoint in it.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"run folder {run} does not exist")
    kind = model_kind(run)
    if kind is not None:
        return run, kind
    for checkpoint in _checkpoints(run):
        if _complete(checkpoint):
            return checkpoint, model_kind(checkpoint)  # type: ignore[return-value]
        logger.warning("skipping incomplete checkpoint %s", checkpoint)
    raise UsageError(f"{run} holds no final model and no complete checkpoint-N: not a finished or saved run")


# --------------------------------------------------------------------------------------------------
# What the run recorded about itself


def _training_args(folder: Path) -> dict[str, Any]:
    """The run's TrainingArguments (``training_args.bin`` of a checkpoint), as a dict; {} if unreadable."""
    path = folder / "training_args.bin"
    if not path.is_file():
        return {}
    try:
        import torch

        args = torch.load(path, weights_only=False, map_location="cpu")  # the user's own run folder
        return args.to_dict() if hasattr(args, "to_dict") else dict(vars(args))
    except Exception:  # an unpicklable or foreign file is not worth failing an export over
        logger.warning("could not read %s", path)
        return {}


def run_info(run_dir: Path, source: Path) -> dict[str, Any]:
    """What the card states: stage, base model, data, recipe settings and steps trained, as far as recorded."""
    run = Path(run_dir)
    info: dict[str, Any] = {
        "stage": None,
        "base_model": None,
        "data": None,
        "recipe": {},
        "model": {},
        "steps": None,
    }
    records = sorted(run.glob("*_run.json"))  # grpo_run.json (and sft_run.json, where a trainer writes one)
    for record_path in records:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        info["stage"] = info["stage"] or record_path.name.split("_")[0].upper()
        train: dict[str, Any] = {}  # every section but the model's: training arguments, script arguments
        for key, value in record.items():
            if key != "model" and isinstance(value, dict):
                train.update(value)
        info["data"] = info["data"] or train.get("dataset_path")
        info["recipe"].update({k: train[k] for k in RECIPE_KEYS if k in train})
        model = record.get("model", {})
        info["model"].update({k: model[k] for k in MODEL_KEYS if k in model})
        info["base_model"] = info["base_model"] or model.get("model_name_or_path")
    checkpoints = [c for c in _checkpoints(run) if _complete(c)]
    for folder in [source, *checkpoints]:
        args = _training_args(folder)
        if args:
            info["recipe"] = {**{k: args[k] for k in RECIPE_KEYS if k in args}, **info["recipe"]}
            info["data"] = info["data"] or args.get("dataset_path")
            if info["stage"] is None:
                info["stage"] = "GRPO" if "num_generations" in args else "SFT"
            break
    for folder in [source, *checkpoints]:
        try:
            info["steps"] = json.loads((folder / "trainer_state.json").read_text())["global_step"]
            break
        except (OSError, ValueError, KeyError):
            continue
    if (source / "adapter_config.json").is_file():
        adapter = json.loads((source / "adapter_config.json").read_text())
        info["base_model"] = adapter.get("base_model_name_or_path") or info["base_model"]
        info["model"].update(
            {"use_peft": True, "lora_r": adapter.get("r"), "lora_alpha": adapter.get("lora_alpha")}
        )
    return info


def read_audit(run_dir: Path, audit_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The audit report to quote: ``--audit DIR``'s ``report.json`` (must exist), else ``RUN_DIR/audit``'s."""
    if audit_dir is not None:
        path = Path(audit_dir)
        path = path if path.suffix == ".json" else path / REPORT_JSON
        if not path.is_file():
            raise UsageError(
                f"--audit {audit_dir}: no {REPORT_JSON} there (run `earthshader eval --out {audit_dir}`)"
            )
    else:
        path = run_dir / "audit" / REPORT_JSON
        if not path.is_file():
            return None
    try:
        report = json.loads(path.read_text())
        report["overall"]  # noqa: B018 - the one key the card needs
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not an audit report written by `earthshader eval`") from None
    report["_path"] = str(path)
    return report


def model_card(info: dict[str, Any], audit: dict[str, Any] | None, kind: str, source: Path) -> str:
    """The export's README.md."""
    what = {
        "adapter": "a LoRA adapter (PEFT format); load its base model, then the adapter",
        "merged": "a full model: the base model with the run's LoRA adapter merged in",
        "full": "a full model (the run fine-tuned every weight)",
    }[kind]
    base = info["base_model"] or "not recorded by the run"
    lines = [
        "---",
        "library_name: " + ("peft" if kind == "adapter" else "transformers"),
        "pipeline_tag: image-text-to-text",
        "tags: [earthshader, glsl, shadertoy, qwen2-vl]",
        "---",
        "",
        "# EarthShader model",
        "",
        "Looks at an image and writes a Shadertoy GLSL fragment shader "
        "(`void mainImage(out vec4 fragColor, in vec2 fragCoord)`) that renders it.",
        "",
        f"- contents: {what}",
        f"- base model: `{base}`",
        f"- training data: `{info['data'] or 'not recorded by the run'}`",
        f"- training stage: {info['stage'] or 'unknown'}, {info['steps'] if info['steps'] is not None else '?'} steps",
        f"- exported from: `{source}`",
        "",
        "## Recipe",
        "",
    ]
    settings = {**info["model"], **info["recipe"]}
    if settings:
        lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    else:
        lines.append("- not recorded by the run")
    lines += ["", "## Audit", ""]
    if audit is None:
        lines.append("No audit yet: run `earthshader eval --model <this folder> --data DATASET --out DIR`.")
    else:
        decoding = audit.get("decoding", {}).get("mode", "greedy")
        lines += [
            f"On {audit.get('num_samples', '?')} images of `{audit.get('data', '?')}` "
            f"(split `{audit.get('split', '?')}`), {decoding} decoding; from `{audit['_path']}`.",
            "",
            *figures_table(audit),
        ]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import earthshader.models  # registers the image-only Qwen2-VL processor (no torchvision needed)",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
    ]
    if kind == "adapter":
        lines += [
            "from peft import PeftModel",
            "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
        ]
    else:
        lines.append('model = AutoModelForImageTextToText.from_pretrained("THIS_FOLDER")')
    lines += [
        'processor = AutoProcessor.from_pretrained("THIS_FOLDER")',
        "```",
        "",
        "Or audit it: `earthshader eval --model THIS_FOLDER --data DATASET --out audit`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Export


def _processor_for(source: Path, run: Path, base: str | None):
    """The processor saved with the model (its folder, else the run folder), else the base model's."""
    from earthshader.models import EarthShaderModelConfig, load_processor

    for folder in (source, run):
        if (folder / "tokenizer_config.json").is_file():
            try:
                return load_processor(EarthShaderModelConfig(model_name_or_path=str(folder)))
            except (OSError, ValueError, UsageError):
                continue
    if base:
        return load_processor(EarthShaderModelConfig(model_name_or_path=base))
    raise UsageError(f"no processor in {source} or {run}, and no base model recorded to take one from")


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    merge: bool = False,
    overwrite: bool = False,
    audit_dir: str | os.PathLike | None = None,
) -> Path:
    """Export a run's model, processor and model card to ``out_dir``; return ``out_dir``.

    Args:
        run_dir: an SFT or GRPO output folder.
        out_dir: the folder to write; refused when non-empty unless ``overwrite``.
        merge: for a LoRA run, merge the adapter into its base and write a full model.
        audit_dir: a folder with the audit's ``report.json`` (default: ``RUN_DIR/audit`` if there).
    """
    run = Path(run_dir)
    out = check_out(out_dir, overwrite)
    source, kind = find_model(run)
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise UsageError(f"--out {out} would replace the run folder {run}; choose another folder")
    audit = read_audit(run, audit_dir)
    info = run_info(run, source)
    base = info["base_model"]
    processor = _processor_for(source, run, base if isinstance(base, str) else None)

    tmp = temp_beside(out)
    try:
        if kind == "adapter" and not merge:
            for name in ADAPTER_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, tmp / name)
            card_kind = "adapter"
        elif kind == "adapter":
            from peft import PeftConfig, PeftModel

            from earthshader.models import EarthShaderModelConfig, load_model_and_processor

            base = PeftConfig.from_pretrained(str(source)).base_model_name_or_path
            model, _ = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=base))
            model = PeftModel.from_pretrained(model, str(source)).merge_and_unload()
            model.save_pretrained(tmp)
            card_kind = "merged"
        else:
            if merge:
                logger.info("the run trained the full model: nothing to merge, exporting it as it is")
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(str(source), dtype="auto")
            model.save_pretrained(tmp)
            card_kind = "full"
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(info, audit, card_kind, source))
        (tmp / "earthshader_export.json").write_text(
            json.dumps(
                {"run_dir": str(run), "source": str(source), "kind": card_kind, **info}, indent=2, default=str
            )
            + "\n"
        )
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s (%s) to %s", source, card_kind, out)
    return out


def cli_main(argv: list[str]) -> int:
    """``earthshader export RUN_DIR --out DIR [--merge] [--audit DIR] [--overwrite]``."""
    p = ArgumentParser(
        prog="earthshader export", description="Export a run's adapter or model with a model card."
    )
    p.add_argument("run", metavar="RUN_DIR", help="an SFT or GRPO output folder")
    p.add_argument("--out", required=True, help="folder to write the export to")
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base model")
    p.add_argument("--audit", help="folder holding the audit's report.json (default: RUN_DIR/audit)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export_run(args.run, args.out, merge=args.merge, overwrite=args.overwrite, audit_dir=args.audit)
    print(f"exported to {out}")
    return 0
