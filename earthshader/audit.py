"""The audit: how well a model turns held-out images into shaders, measured the way the seed project did.

For each image of a dataset split the model writes a completion (greedy by default, or the best of N
samples by pixel MSE); the code in it is rendered headlessly at the target's size, and scored:

- compile rate: the shader rendered valid pixels;
- pixel MSE (mean over pixels and channels, images in [0, 1]) over the compiled outputs, and over all
  outputs with a failure scored as a black image; SSIM likewise (scikit-image, ``data_range=1``);
- shape identity: the multiset of primitive types that ``scenes.from_glsl`` reads from the predicted
  code equals the truth's (from the ``scene`` column); code that is not in the canonical form has no
  shapes and so counts as wrong;
- shape count: exact, and single vs several (the seed's "complexity reasoning").

Every figure is given overall and per stage, next to two baselines on the same images that need no
model at all: an all-black image, and the best constant image (the per-channel mean of the evaluated
targets, the constant that minimises MSE over the set). A model that does not beat them has learned
nothing about the picture.

    earthshader eval --model runs/tiny-grpo --data data/stage1 --split test --num-samples 100 --out runs/tiny-grpo/audit

Writes ``report.json``, ``report.md`` and ``grid.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earthshader.errors import ArgumentParser, UsageError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "prompt")
REPORT_JSON, REPORT_MD, GRID_PNG = "report.json", "report.md", "grid.png"
# The figures of one group of samples, in the order report.md lists them.
METRICS = (
    ("n", "samples"),
    ("compile_rate", "compile rate"),
    ("mse_compiled", "pixel MSE (compiled)"),
    ("mse_all", "pixel MSE (all, failure = black)"),
    ("ssim_compiled", "SSIM (compiled)"),
    ("ssim_all", "SSIM (all, failure = black)"),
    ("shape_identity", "shape identity accuracy"),
    ("shape_count_exact", "shape count accuracy (exact)"),
    ("shape_count_single_vs_several", "single vs several accuracy"),
    ("black_mse", "baseline: black image MSE"),
    ("black_ssim", "baseline: black image SSIM"),
    ("constant_mse", "baseline: best constant image MSE"),
    ("constant_ssim", "baseline: best constant image SSIM"),
)


# --------------------------------------------------------------------------------------------------
# Scoring: pure functions of images, render results and code


def pixel_mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference over pixels and channels of two H x W x 3 images in [0, 1]."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two H x W x 3 images in [0, 1] (scikit-image, channels averaged)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    win = min(7, *a.shape[:2])
    win -= 1 - win % 2  # an odd window no larger than the image
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=win))


def to_image(image: Any) -> np.ndarray:
    """A dataset image (PIL, or an array in 0-255 or 0-1) as float32 H x W x 3 in [0, 1], top row first."""
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def true_shape_types(scene_json: str | None, code: str | None = None) -> list[str] | None:
    """The truth's sorted primitive types, from the ``scene`` column (or the reference code); None if unknown."""
    from earthshader.scenes import from_glsl, scene_from_json, shape_types

    if scene_json:
        try:
            return shape_types(scene_from_json(scene_json))
        except (ValueError, KeyError, TypeError):
            pass
    scene = from_glsl(code) if code else None
    return shape_types(scene) if scene is not None else None


@dataclass
class SampleScore:
    """One audited sample: what was drawn and how it scored. ``None`` where a figure does not apply."""

    index: int = field(metadata={"help": "Row of the evaluated split."})
    stage: str = field(metadata={"help": "The row's stage, as text ('all' when the dataset has none)."})
    kind: str = field(metadata={"help": "Render outcome: ok, compile_error, rejected, timeout, crash, ..."})
    compiled: bool = field(metadata={"help": "The shader rendered valid pixels."})
    mse: float = field(metadata={"help": "Pixel MSE against the target; a failure is scored as black."})
    ssim: float = field(metadata={"help": "SSIM against the target; a failure is scored as black."})
    black_mse: float = field(metadata={"help": "MSE of an all-black image against the target."})
    black_ssim: float = field(metadata={"help": "SSIM of an all-black image against the target."})
    pred_types: list[str] | None = field(metadata={"help": "Primitive types read from the code, sorted."})
    true_types: list[str] | None = field(metadata={"help": "The truth's primitive types, sorted."})
    identity: bool | None = field(metadata={"help": "pred_types == true_types."})
    count_exact: bool | None = field(metadata={"help": "Same number of shapes."})
    single_vs_several: bool | None = field(metadata={"help": "Both one shape, or both more than one."})
    message: str = ""
    code: str = ""


def score_sample(
    target: np.ndarray,
    result: Any,
    code: str,
    true_types: list[str] | None,
    index: int = 0,
    stage: str = "all",
) -> SampleScore:
    """Score one prediction.

    Args:
        target: the target image, H x W x 3 in [0, 1].
        result: the prediction's ``RenderResult`` at the target's size.
        code: the predicted shader code (for shape identity and count).
        true_types: the truth's sorted primitive types, or None when unknown (figures left out).
    """
    from earthshader.scenes import from_glsl, shape_types

    black = np.zeros_like(target)
    compiled = bool(result.ok and result.image is not None and result.image.shape == target.shape)
    drawn = result.image if compiled else black
    scene = from_glsl(code)
    pred = shape_types(scene) if scene is not None else None
    identity = count = several = None
    if true_types is not None:
        identity = pred == true_types
        count = pred is not None and len(pred) == len(true_types)
        several = pred is not None and (len(pred) > 1) == (len(true_types) > 1)
    black_mse = pixel_mse(black, target)
    black_ssim = ssim(black, target)
    return SampleScore(
        index=index,
        stage=stage,
        kind=result.kind if compiled or not result.ok else "invalid_output",
        compiled=compiled,
        mse=pixel_mse(drawn, target),
        ssim=ssim(drawn, target) if compiled else black_ssim,
        black_mse=black_mse,
        black_ssim=black_ssim,
        pred_types=pred,
        true_types=true_types,
        identity=identity,
        count_exact=count,
        single_vs_several=several,
        message=(result.message or "")[:300],
        code=code,
    )


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(samples: list[SampleScore], targets: list[np.ndarray], constant: np.ndarray) -> dict[str, Any]:
    """The figures of one group of samples, with the baselines on the same targets.

    ``constant`` is the RGB colour of the constant baseline (the best one over the whole evaluated set).
    """
    compiled = [s for s in samples if s.compiled]
    const_images = [np.broadcast_to(constant.astype(np.float32), t.shape) for t in targets]
    return {
        "n": len(samples),
        "compile_rate": _mean(s.compiled for s in samples),
        "mse_compiled": _mean(s.mse for s in compiled),
        "mse_all": _mean(s.mse for s in samples),
        "ssim_compiled": _mean(s.ssim for s in compiled),
        "ssim_all": _mean(s.ssim for s in samples),
        "shape_identity": _mean(s.identity for s in samples),
        "shape_count_exact": _mean(s.count_exact for s in samples),
        "shape_count_single_vs_several": _mean(s.single_vs_several for s in samples),
        "n_with_truth": sum(s.true_types is not None for s in samples),
        "black_mse": _mean(s.black_mse for s in samples),
        "black_ssim": _mean(s.black_ssim for s in samples),
        "constant_mse": _mean(pixel_mse(c, t) for c, t in zip(const_images, targets, strict=True)),
        "constant_ssim": _mean(
            ssim(np.ascontiguousarray(c), t) for c, t in zip(const_images, targets, strict=True)
        ),
    }


def best_constant(targets: list[np.ndarray]) -> np.ndarray:
    """The RGB colour that minimises MSE over all target pixels: their per-channel mean."""
    if not targets:
        return np.zeros(3)
    total = sum(t.reshape(-1, 3).astype(np.float64).sum(0) for t in targets)
    return total / sum(t.shape[0] * t.shape[1] for t in targets)


def score_all(
    targets: list[np.ndarray],
    results: list[Any],
    codes: list[str],
    true_types: list[list[str] | None],
    stages: list[str] | None = None,
) -> tuple[list[SampleScore], dict[str, Any]]:
    """Score every prediction and summarise overall and per stage.

    Returns ``(samples, figures)`` with ``figures = {"overall": {...}, "stages": {stage: {...}},
    "constant_rgb": [r, g, b]}``.
    """
    stages = stages or ["all"] * len(targets)
    samples = [
        score_sample(t, r, c, tt, index=i, stage=st)
        for i, (t, r, c, tt, st) in enumerate(zip(targets, results, codes, true_types, stages, strict=True))
    ]
    constant = best_constant(targets)
    by_stage = {}
    for stage in sorted(set(stages), key=lambda s: (len(s), s)):
        idx = [i for i, s in enumerate(stages) if s == stage]
        by_stage[stage] = summarise([samples[i] for i in idx], [targets[i] for i in idx], constant)
    figures = {
        "overall": summarise(samples, targets, constant),
        "stages": by_stage,
        "constant_rgb": [round(float(c), 6) for c in constant],
    }
    return samples, figures


def render_mse(result: Any, target: np.ndarray) -> float:
    """Pixel MSE of a render against its target; a failed render (or one of another size) scores as black."""
    ok = result.ok and result.image is not None and result.image.shape == target.shape
    return pixel_mse(result.image if ok else np.zeros_like(target), target)


def expected_best_of(mses: list[float], k: int) -> float:
    """The expected lowest MSE of k samples drawn without replacement from these N (k <= N).

    The unbiased estimator behind pass@k, for a minimum instead of a success: sorted ascending, the
    i-th lowest of N (0-based) is the minimum of a random k-subset with probability C(N-1-i, k-1) / C(N, k).

    >>> [round(expected_best_of([0.3, 0.1, 0.2], k), 6) for k in (1, 2, 3)]  # k = 2: pairs 0.1, 0.1, 0.2
    [0.2, 0.133333, 0.1]
    """
    n = len(mses)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, not {k}")
    weights = [math.comb(n - 1 - i, k - 1) for i in range(n)]
    return float(sum(w * m for w, m in zip(weights, sorted(mses), strict=True)) / math.comb(n, k))


def best_of_curve(sampled: list[list[float]]) -> dict[str, float]:
    """Mean over images of the expected best-of-k MSE, for k = 1, 2, 4, ... and N (each image's N samples).

    k = 1 is the sampling policy's own mean MSE; k = N is the best-of-N audit's ``mse_all``. GRPO only
    reweights what the policy samples, so this curve is the ceiling its sharpening can reach.
    """
    n = min(len(m) for m in sampled)
    ks = sorted({2**j for j in range(n.bit_length()) if 2**j <= n} | {n})
    return {str(k): float(np.mean([expected_best_of(m[:n], k) for m in sampled])) for k in ks}


def render_codes(codes: list[str], sizes: list[int]) -> list[Any]:
    """Render every code at its target's size: one ``render_many`` call per distinct size."""
    from earthshader.render import render_many

    results: list[Any] = [None] * len(codes)
    for size in sorted(set(sizes)):
        idx = [i for i, s in enumerate(sizes) if s == size]
        for i, r in zip(idx, render_many([codes[i] for i in idx], size=size), strict=True):
            results[i] = r
    return results


# --------------------------------------------------------------------------------------------------
# Inputs: model and data, each checked to one clear line


def _run_checkpoint(path: Path, model_path: str) -> Path:
    """A run folder still training (no final model yet): its last complete checkpoint."""
    from earthshader.export import find_model

    try:
        folder, _ = find_model(path)
    except UsageError:
        raise UsageError(
            f"--model {model_path} is not a model folder (no config.json or adapter_config.json) "
            "and holds no complete checkpoint"
        ) from None
    logger.info("auditing %s, the last complete checkpoint of %s", folder, path)
    return folder


def load_audit_model(model_path: str):
    """The model and processor to audit: ``tiny``, a model folder, a checkpoint folder, or a PEFT adapter.

    An adapter folder (``adapter_config.json``) loads its base first, then the adapter, merged for speed.
    A checkpoint without its own processor takes the one of its run folder, else the base model's. A
    run folder without a final model (a run still training) gives its last complete checkpoint.
    """
    from earthshader.models import TINY, EarthShaderModelConfig, load_model_and_processor, load_processor

    path = Path(model_path).expanduser()
    if model_path != TINY:
        if path.exists() and not path.is_dir():
            raise UsageError(f"--model {model_path} is a file, not a model folder")
        if (
            path.is_dir()
            and not (path / "config.json").is_file()
            and not (path / "adapter_config.json").is_file()
        ):
            path = _run_checkpoint(path, model_path)
            model_path = str(path)
        first = Path(model_path).parts[0] if Path(model_path).parts else ""
        # a relative path whose first folder is here is a local path, not a Hub id
        looks_local = (
            model_path.startswith((".", "/", "~")) or model_path.count("/") != 1 or Path(first).is_dir()
        )
        if not path.is_dir() and looks_local:
            raise UsageError(f"--model {model_path} does not exist")
    adapter = path.is_dir() and (path / "adapter_config.json").is_file()
    try:
        if adapter:
            from peft import PeftConfig, PeftModel

            base = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
            if not base:
                raise UsageError(f"adapter {model_path} does not name its base model")
            model, processor = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=base))
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        else:
            model, processor = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=model_path))
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"cannot load model {model_path}: {first}") from None
    if path.is_dir():
        # a checkpoint or adapter folder may carry its own processor (saved beside it), or its run folder's
        for folder in (path, path.parent):
            if (folder / "tokenizer_config.json").is_file():
                try:
                    processor = load_processor(EarthShaderModelConfig(model_name_or_path=str(folder)))
                except (OSError, ValueError, UsageError):
                    continue
                break
    import torch

    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    model.eval()
    return model, processor


def load_split(data_path: str, split: str, num_samples: int | None):
    """The first ``num_samples`` rows of a split of a saved dataset, with the columns the audit reads."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(data_path).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"--data {data_path} does not exist (make one with `earthshader data --out {data_path}`)"
        )
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"--data {data_path} is not a dataset written by save_to_disk ({first})") from None
    if isinstance(data, DatasetDict):
        if split not in data:
            raise UsageError(f"dataset {data_path} has no split {split!r} (has: {', '.join(data)})")
        data = data[split]
    assert isinstance(data, Dataset)
    missing = [c for c in REQUIRED_COLUMNS if c not in data.column_names]
    if missing:
        raise UsageError(
            f"dataset {data_path} lacks the column(s) {', '.join(missing)} (has: {', '.join(data.column_names)})"
        )
    if len(data) == 0:
        raise UsageError(f"split {split!r} of {data_path} is empty")
    if num_samples is not None:
        data = data.select(range(min(num_samples, len(data))))
    return data


def check_out(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder, after refusing a file or a non-empty folder without ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    return out


def publish(tmp: Path, out: Path) -> Path:
    """Move a finished temporary folder into place, replacing ``out`` only now that the new one is whole."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def temp_beside(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


# --------------------------------------------------------------------------------------------------
# Generation


def generate(
    model,
    processor,
    prompts: list[Any],
    images: list[Any],
    max_new_tokens: int = 512,
    num_return: int = 1,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[list[str]]:
    """Completions for a batch of (prompt, image): ``num_return`` texts per prompt (1 when greedy)."""
    import torch

    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    rgb = [[im.convert("RGB") if hasattr(im, "convert") else im] for im in images]
    inputs = processor(images=rgb, text=texts, padding=True, padding_side="left", return_tensors="pt")
    inputs = inputs.to(model.device)
    tokenizer = processor.tokenizer
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=num_return)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        out = model.generate(**inputs, **kwargs)
    new = out[:, inputs["input_ids"].shape[1] :]
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    per = num_return if sample else 1
    return [decoded[i * per : (i + 1) * per] for i in range(len(prompts))]


# --------------------------------------------------------------------------------------------------
# The audit


def run_audit(
    model_path: str,
    data_path: str,
    split: str = "test",
    num_samples: int | None = 100,
    out_dir: str | os.PathLike = "audit",
    overwrite: bool = False,
    sample: bool = False,
    num_return: int = 1,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    grid_samples: int = 24,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit a model on a dataset split and write ``report.json``, ``report.md`` and ``grid.png``.

    Args:
        model_path: ``tiny``, a model or checkpoint folder, or a PEFT adapter folder.
        data_path: a dataset folder written by ``earthshader data``.
        split: the split to evaluate.
        num_samples: evaluate the first N rows (None: all).
        out_dir: folder for the report; refused if non-empty unless ``overwrite``.
        sample: sample ``num_return`` completions per image and keep the one with the lowest MSE.
        max_new_tokens: generation limit per completion.
        batch_size: images per generate call.

    Returns:
        The report (what ``report.json`` holds).
    """
    import torch
    from tqdm.auto import tqdm

    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num-samples must be positive, not {num_samples}")
    if batch_size < 1 or num_return < 1 or max_new_tokens < 1:
        raise UsageError("--batch-size, --num-return and --max-new-tokens must be positive")
    if num_return > 1 and not sample:
        raise UsageError("--num-return N > 1 needs --sample (greedy decoding gives one completion)")
    out = check_out(out_dir, overwrite)
    data = load_split(data_path, split, num_samples)
    model, processor = load_audit_model(model_path)
    torch.manual_seed(seed)

    from earthshader.glsl import extract_code

    start = time.perf_counter()
    has_scene, has_stage, has_code = (c in data.column_names for c in ("scene", "stage", "code"))
    targets, codes, completions, results, truths, stages, sampled = [], [], [], [], [], [], []
    bar = tqdm(total=len(data), desc="audit", unit="image", disable=not progress)
    for lo in range(0, len(data), batch_size):
        rows = data.select(range(lo, min(lo + batch_size, len(data))))
        images = list(rows["image"])
        batch_targets = [to_image(im) for im in images]
        texts = generate(
            model, processor, list(rows["prompt"]), images, max_new_tokens, num_return, sample, temperature
        )
        flat_codes = [extract_code(t) for group in texts for t in group]
        flat_sizes = [t.shape[0] for t, group in zip(batch_targets, texts, strict=True) for _ in group]
        flat_results = render_codes(flat_codes, flat_sizes)
        k = 0
        for target, group in zip(batch_targets, texts, strict=True):
            options = list(range(k, k + len(group)))
            k += len(group)
            mses = [render_mse(flat_results[j], target) for j in options]
            best = options[int(np.argmin(mses))]  # best of N: the first of equals
            sampled.append(mses)
            completions.append(group[best - options[0]])
            codes.append(flat_codes[best])
            results.append(flat_results[best])
        targets += batch_targets
        for row in rows:
            truths.append(
                true_shape_types(row["scene"] if has_scene else None, row["code"] if has_code else None)
            )
            stages.append(str(row["stage"]) if has_stage and row["stage"] is not None else "all")
        bar.update(len(rows))
    bar.close()

    samples, figures = score_all(targets, results, codes, truths, stages)
    report = {
        "model": str(model_path),
        "data": str(data_path),
        "split": split,
        "num_samples": len(samples),
        "decoding": {
            "mode": f"best of {num_return} sampled" if sample else "greedy",
            "num_return": num_return if sample else 1,
            "temperature": temperature if sample else None,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        },
        "seconds": round(time.perf_counter() - start, 2),
        **figures,
        "samples": [{**asdict(s), "completion": c} for s, c in zip(samples, completions, strict=True)],
    }
    if sample and num_return > 1:
        report["best_of"] = best_of_curve(sampled)
        for row, mses in zip(report["samples"], sampled, strict=True):
            row["sampled_mse"] = [round(m, 6) for m in mses]

    tmp = temp_beside(out)
    try:
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / REPORT_MD).write_text(report_markdown(report))
        draw_grid(targets, results, samples, tmp / GRID_PNG, max_samples=grid_samples)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("audit of %s on %d images written to %s", model_path, len(samples), out)
    return report


# --------------------------------------------------------------------------------------------------
# Writing


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "n":
        return str(int(value))
    if key in ("compile_rate", "shape_identity", "shape_count_exact", "shape_count_single_vs_several"):
        return f"{100 * value:.1f}%"
    return f"{value:.4f}"


def figures_table(report: dict[str, Any]) -> list[str]:
    """The figures as Markdown table lines: overall, and per stage where there are several."""
    stages = report.get("stages", {})
    groups = [("overall", report["overall"])] + [(f"stage {k}", v) for k, v in stages.items()]
    if len(stages) <= 1:
        groups = groups[:1]
    lines = ["| figure | " + " | ".join(name for name, _ in groups) + " |", "|---|" + "---|" * len(groups)]
    for key, label in METRICS:
        lines.append(f"| {label} | " + " | ".join(_fmt(key, g.get(key)) for _, g in groups) + " |")
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: settings, then one table of figures by stage."""
    lines = [
        "# EarthShader audit",
        "",
        f"- model: `{report['model']}`",
        f"- data: `{report['data']}` (split `{report['split']}`, {report['num_samples']} images)",
        f"- decoding: {report['decoding']['mode']}, at most {report['decoding']['max_new_tokens']} new tokens",
        f"- best constant image: RGB {tuple(round(c, 3) for c in report['constant_rgb'])}",
        f"- time: {report['seconds']:.0f} s",
        "",
        *figures_table(report),
    ]
    if "best_of" in report:
        curve = ", ".join(f"{k}: {v:.4f}" for k, v in report["best_of"].items())
        lines += [
            "",
            f"Expected pixel MSE of the best of k samples (k: MSE; k = 1 is the sampled mean): {curve}. "
            "GRPO only reweights what the policy samples: this is the ceiling of its sharpening.",
        ]
    lines += [
        "",
        "MSE is the mean squared pixel difference (images in [0, 1]); a shader that fails is scored as a "
        "black image in the 'all' figures. Shape identity compares the multiset of primitive types read "
        "from the predicted code with the truth's; non-canonical code counts as wrong.",
        "",
    ]
    return "\n".join(lines)


def draw_grid(
    targets: list[np.ndarray],
    results: list[Any],
    samples: list[SampleScore],
    path: str | os.PathLike,
    max_samples: int = 24,
    per_row: int = 2,
) -> Path:
    """Per sample: target, prediction and absolute difference side by side, titled with its numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, min(len(samples), max_samples))
    rows = (n + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(min(len(samples), max_samples)):
        s, target, result = samples[i], targets[i], results[i]
        pred = result.image if s.compiled else np.zeros_like(target)
        diff = np.abs(pred - target)
        r, c = divmod(i, per_row)
        a_t, a_p, a_d = axes[r, 3 * c], axes[r, 3 * c + 1], axes[r, 3 * c + 2]
        a_t.imshow(np.clip(target, 0, 1))
        a_t.set_title(f"#{s.index} stage {s.stage}\ntarget", fontsize=7)
        a_p.imshow(np.clip(pred, 0, 1))
        ident = "" if s.identity is None else (" id ok" if s.identity else " id wrong")
        label = "prediction" if s.compiled else f"failed: {s.kind}"
        a_p.set_title(f"{label}\n{len(s.pred_types or [])} shape(s){ident}", fontsize=7)
        a_d.imshow(np.clip(diff, 0, 1))
        a_d.set_title(f"|difference|\nMSE {s.mse:.4f} SSIM {s.ssim:.2f}", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="earthshader eval", description="Audit a model on held-out images.")
    p.add_argument(
        "--model", required=True, help="'tiny', a model or checkpoint folder, or a PEFT adapter folder"
    )
    p.add_argument("--data", required=True, help="a dataset folder written by `earthshader data`")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--num-samples", type=int, default=100, help="first N rows of the split (default: 100)")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and grid.png")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument(
        "--num-return", type=int, default=1, help="with --sample: N completions, keep the best by MSE"
    )
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample: sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=512, help="generation limit (default: 512)")
    p.add_argument("--batch-size", type=int, default=16, help="images per generate call (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--grid-samples", type=int, default=24, help="samples drawn in grid.png (default: 24)")
    return p


def cli_main(argv: list[str]) -> int:
    """``earthshader eval --model PATH --data DATASET [--split test] [--num-samples 100] --out DIR``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_audit(
        args.model,
        args.data,
        split=args.split,
        num_samples=args.num_samples,
        out_dir=args.out,
        overwrite=args.overwrite,
        sample=args.sample,
        num_return=args.num_return,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        seed=args.seed,
        grid_samples=args.grid_samples,
    )
    print(report_markdown(report))
    print(f"report written to {args.out}")
    return 0
