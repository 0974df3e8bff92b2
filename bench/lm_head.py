"""What scoring only the labelled positions buys an SFT step on a CPU: TRL's fused LM head against the compact one.

TRL's trainers compute per-token log-probabilities through a fused LM head
(``trl.trainer.utils.add_fused_lm_head``). On a device without Triton it scores every position of
the batch, prompt and padding too, folding each ``(tokens, vocab)`` tile into its statistics in
about ten unfused fp32 passes. ``earthshader.models.add_compact_lm_head`` (what ``WeightedSFTTrainer``
and ``earthshader grpo`` install) projects only the positions that have a label and takes one
``log_softmax``.

One process, one model, the same batches: each repetition takes one optimizer step (forward, weighted
loss, backward, AdamW) with TRL's head and one with the compact head, in alternating order, under the
recipe's precision (bf16 autocast where ``cpu_bf16_speedup`` finds it pays, as ``cpu_bf16: auto`` does).
``compact_speedup`` is the median TRL step over the median compact step. Before any step, both heads
score each batch: ``loss_diff`` is the largest difference of the two losses, ``grad_rel_diff`` the
largest difference of the two gradients over the largest gradient. With ``--compile`` the text
decoder is compiled first (``compile_language_model``, as the tiny recipes do), outside the timings.
The last line is one JSON object.

With ``--train-steps N`` it instead runs a recipe's real ``trainer.train()`` for N steps with each
head, one after the other in this process, each from a fresh trainer built as ``earthshader sft``
builds it (data loading, collation, clipping and logging included), and compares the median time
between step ends after the first 20 (``train_compact_speedup``).

    OMP_NUM_THREADS=2 .venv/bin/python bench/lm_head.py [--reps 20] [--data data/stage1]
        [--model runs/tiny-sft] [--freeze-vision] [--compile]
    OMP_NUM_THREADS=2 .venv/bin/python bench/lm_head.py --train-steps 160 --data data/stage1
        --model runs/tiny-sft [--recipe recipes/tiny/sft_mix.yaml] [-- extra recipe arguments]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import calibration_ms, cpu_times, steal_share, train_step_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--data", help="a dataset folder (earthshader data) to take the batches from")
    parser.add_argument("--model", help="a model folder (a trained run); default: the embedded tiny model")
    parser.add_argument("--freeze-vision", action="store_true", help="freeze the vision tower")
    parser.add_argument("--compile", action="store_true", help="compile the text decoder first")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--train-steps", type=int, default=0, help="time real training instead")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny/sft_mix.yaml"))
    parser.add_argument("extra", nargs="*", help="recipe overrides for --train-steps (after --)")
    args = parser.parse_args()
    if args.train_steps:
        train_both_ways(args)
        return

    import torch
    from conftest_sft import make_circle_dataset
    from datasets import load_from_disk

    from earthshader import models
    from earthshader.sft import EarthShaderSFTConfig, WeightedSFTTrainer

    tmp = Path(tempfile.mkdtemp(prefix="es_bench_lm_head_"))
    n_rows = args.batch_size * args.batches
    if args.data:
        train = load_from_disk(args.data)["train"].select(range(n_rows))
    else:
        train = load_from_disk(str(make_circle_dataset(tmp / "data", n_train=n_rows, n_test=1)))["train"]
    model_config = models.EarthShaderModelConfig()
    if args.model:
        model_config.model_name_or_path = args.model
    model, processor = models.load_model_and_processor(model_config)
    if args.freeze_vision:
        models.freeze_vision_tower(model)
    config = EarthShaderSFTConfig(
        output_dir=str(tmp / "run"), report_to="none", max_steps=1, learning_rate=1e-5
    )
    trainer = WeightedSFTTrainer(model=model, args=config, train_dataset=train, processing_class=processor)
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    model.train()
    heads = {"trl": model.trl_fused_forward, "compact": model.forward}
    bf16 = {"auto": models.cpu_bf16_speedup() > 1.0, "true": True, "false": False}[args.bf16]

    rows = [dict(train[i]) for i in range(n_rows)]
    batches = [
        trainer.data_collator(rows[i : i + args.batch_size]) for i in range(0, n_rows, args.batch_size)
    ]

    def loss_of(head: str, i: int) -> torch.Tensor:
        model.forward = heads[head]
        batch = dict(batches[i % len(batches)])
        norm = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.compute_loss(model, batch, num_items_in_batch=norm)
            loss.backward()
        return loss.detach()

    def grads() -> torch.Tensor:
        flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return flat

    loss_diff = grad_rel_diff = 0.0
    for i in range(len(batches)):
        a, ga = loss_of("trl", i), grads()
        b, gb = loss_of("compact", i), grads()
        loss_diff = max(loss_diff, abs(float(a - b)))
        grad_rel_diff = max(grad_rel_diff, float((ga - gb).abs().max() / ga.abs().max()))

    compile_seconds = None
    if args.compile:
        models.compile_language_model(model)
        start = time.perf_counter()
        for head in heads:
            for i in range(len(batches)):
                loss_of(head, i)
                grads()
        compile_seconds = round(time.perf_counter() - start, 1)

    def step(head: str, i: int) -> float:
        start = time.perf_counter()
        loss_of(head, i)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for i in range(2):  # warm-up
        step("trl", i)
        step("compact", i)
    calibration = calibration_ms()
    before = cpu_times()
    times: dict[str, list[float]] = {"trl": [], "compact": []}
    for i in range(args.reps):
        for head in ("trl", "compact") if i % 2 == 0 else ("compact", "trl"):
            times[head].append(step(head, i))
    steal = steal_share(before, cpu_times())
    trl_s, compact_s = statistics.median(times["trl"]), statistics.median(times["compact"])
    first = batches[0]
    result = {
        "trl_step_s": round(trl_s, 4),
        "compact_step_s": round(compact_s, 4),
        "compact_speedup": round(trl_s / compact_s, 3),
        "loss_diff": float(f"{loss_diff:.2e}"),
        "grad_rel_diff": float(f"{grad_rel_diff:.2e}"),
        "bf16": bf16,
        "compiled": args.compile,
        "compile_seconds": compile_seconds,
        "positions_per_batch": int(first["input_ids"].numel()),
        "labelled_share": round(float((first["labels"][:, 1:] != -100).float().mean()), 3),
        "vocab": int(model.get_output_embeddings().weight.shape[0]),
        "batch_size": args.batch_size,
        "data": args.data or "circles",
        "model": args.model or "tiny (untrained)",
        "vision_frozen": args.freeze_vision,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "calibration_ms": calibration,
        "steal": steal,
    }
    print(
        f"step: TRL's head {trl_s * 1e3:.1f} ms, compact head {compact_s * 1e3:.1f} ms "
        f"({trl_s / compact_s:.2f}x); loss difference {loss_diff:.1e}, gradient {grad_rel_diff:.1e} of the largest"
    )
    print(json.dumps(result))


def train_both_ways(args) -> None:
    """The recipe's real training for ``args.train_steps`` steps with each head, in this process."""

    tmp = Path(tempfile.mkdtemp(prefix="es_bench_lm_head_"))
    medians = {}
    for head in ("compact", "trl"):
        argv = ["--config", args.recipe, "--dataset_path", args.data, "--max_steps", str(args.train_steps)]
        argv += ["--save_steps", "1000000", "--report_to", "none", "--logging_steps", "1000"]
        argv += [
            "--output_dir",
            str(tmp / head),
            *(["--model_name_or_path", args.model] if args.model else []),
        ]

        def trls_head(trainer):
            trainer.model.forward = trainer.model.trl_fused_forward

        medians[head] = train_step_seconds(argv + args.extra, prepare=trls_head if head == "trl" else None)
    print(
        json.dumps(
            {
                "train_trl_step_s": round(medians["trl"], 4),
                "train_compact_step_s": round(medians["compact"], 4),
                "train_compact_speedup": round(medians["trl"] / medians["compact"], 3),
                "recipe": args.recipe,
                "data": args.data,
                "model": args.model,
                "extra": args.extra,
                "steps": args.train_steps,
                "calibration_ms": calibration_ms(),
            }
        )
    )


if __name__ == "__main__":
    main()
