"""What the weighted cross-entropy costs against TRL's own SFT loss, on the same model and the same batches.

One process, the tiny model, a fixed set of batches of the circle dataset. Each repetition times, in
alternating order, one optimizer step (forward, loss, backward, AdamW step) both ways:
  - weighted: ``WeightedSFTTrainer.compute_loss`` (per-token weights, normalised by their sum, plus the
    code / reasoning split it logs);
  - trl: ``SFTTrainer.compute_loss`` (the mean NLL of the completion tokens) on the same inputs.
Collation is timed too (``WeightedVLMCollator`` against TRL's ``DataCollatorForVisionLanguageModeling``),
since the weights are built there. A third way times the weighted step under bf16 autocast on the CPU
(what ``bf16: true`` does in the tiny recipes on a machine with no GPU): ``bf16_speedup`` is the fp32
weighted step's median over the bf16 one's; ``bf16_loss_diff`` is the largest difference between
the two ways' losses on the same batches before any step. With ``--compile``, a second copy of the
model has its text decoder compiled (``earthshader.models.compile_language_model``, what
``compile_language_model: true`` does in a recipe) and its bf16 step joins the rotation:
``compile_speedup`` is the bf16 step's median over the compiled one's; a third copy, compiled too,
takes fp32 steps: ``compiled_bf16_speedup`` is its median over the compiled bf16 one's, the
question for a CPU whether ``bf16: true`` pays once the decoder is compiled (below 1: it does not).
``compile_seconds`` is the
compiled copy's first steps (one per batch) less as many uncompiled ones, ``compile_loss_diff`` the
largest difference of the two copies' losses over those first steps. ``probe_bf16_speedup`` is what
``earthshader.models.cpu_bf16_speedup`` (the half-second probe behind ``cpu_bf16: auto``) reads on
this CPU, to set beside ``bf16_speedup``. Medians are reported; the last line is one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/sft.py [--reps 30 --batch-size 8]
        [--data data/stage1 --freeze-vision]   # the demo's own batches and frozen tower
        [--compile]                             # also bf16 and fp32 steps with the decoder compiled
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--data", help="a dataset folder (earthshader data) to take the batches from")
    parser.add_argument(
        "--freeze-vision", action="store_true", help="freeze the vision tower, as the tiny recipes do"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time bf16 and fp32 steps with the text decoder compiled"
    )
    args = parser.parse_args()

    import torch
    from conftest_sft import make_circle_dataset
    from datasets import load_from_disk
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from earthshader import models
    from earthshader.sft import EarthShaderSFTConfig, WeightedSFTTrainer

    tmp = Path(tempfile.mkdtemp(prefix="es_bench_sft_"))
    n_rows = args.batch_size * args.batches
    if args.data:
        data = load_from_disk(args.data)
        data["train"] = data["train"].select(range(n_rows))
    else:
        data = load_from_disk(str(make_circle_dataset(tmp / "data", n_train=n_rows, n_test=1)))

    def make_trainer() -> WeightedSFTTrainer:
        model, processor = models.load_model_and_processor(models.EarthShaderModelConfig())
        if args.freeze_vision:
            models.freeze_vision_tower(model)
        config = EarthShaderSFTConfig(
            output_dir=str(tmp / "run"), report_to="none", max_steps=1, learning_rate=1e-4
        )
        trainer = WeightedSFTTrainer(
            model=model, args=config, train_dataset=data["train"], processing_class=processor
        )
        trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
        trainer.model.train()
        return trainer

    trainer = make_trainer()
    optimizer, model = trainer.optimizer, trainer.model
    trl_collator = DataCollatorForVisionLanguageModeling(trainer.processing_class, completion_only_loss=True)

    rows = [data["train"][i] for i in range(len(data["train"]))]
    chunks = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    weighted_batches = [trainer.data_collator([dict(r) for r in c]) for c in chunks]
    trl_batches = [trl_collator([dict(r) for r in c]) for c in chunks]

    def weighted_loss(i: int, tr=trainer):
        batch = dict(weighted_batches[i % len(chunks)])
        norm = tr._get_num_items_in_batch([batch], torch.device("cpu"))
        return tr.compute_loss(tr.model, batch, num_items_in_batch=norm)

    def weighted_step(i: int, tr=trainer) -> float:
        loss = weighted_loss(i, tr)
        loss.backward()
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def bf16_step(i: int, tr=trainer) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return weighted_step(i, tr)

    def losses(autocast: bool) -> list[float]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return [float(weighted_loss(i)) for i in range(len(chunks))]

    loss_diff = max(abs(a - b) for a, b in zip(losses(False), losses(True), strict=True))

    def trl_step(i: int) -> None:
        batch = dict(weighted_batches[i % len(chunks)])
        batch.pop("loss_weights")
        batch.pop("token_class")
        norm = batch["labels"][:, 1:].ne(-100).sum()
        SFTTrainer.compute_loss(trainer, model, batch, num_items_in_batch=norm).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn, i: int) -> float:
        start = time.perf_counter()
        fn(i)
        return time.perf_counter() - start

    for i in range(3):  # warm-up
        weighted_step(i)
        trl_step(i)
        bf16_step(i)
    w_times, t_times, b_times, c_times, f_times = [], [], [], [], []
    order = [(weighted_step, w_times), (trl_step, t_times), (bf16_step, b_times)]
    extra = {}
    if args.compile:  # a second copy, compiled, from the same initial weights as the first
        compiled = make_trainer()
        models.compile_language_model(compiled.model)
        compiled_step = functools.partial(bf16_step, tr=compiled)
        eager_step = functools.partial(bf16_step, tr=make_trainer())
        first = [(timed(compiled_step, i), timed(eager_step, i)) for i in range(len(chunks))]
        diff = max(abs(compiled_step(i) - eager_step(i)) for i in range(len(chunks)))
        extra = {
            "compile_seconds": round(sum(c - e for c, e in first), 2),
            "compile_loss_diff": round(diff, 5),
        }
        order.append((compiled_step, c_times))
        compiled_fp32 = make_trainer()
        models.compile_language_model(compiled_fp32.model)
        fp32_compiled_step = functools.partial(weighted_step, tr=compiled_fp32)
        for i in range(len(chunks)):  # its own compilation, outside the timings
            fp32_compiled_step(i)
        order.append((fp32_compiled_step, f_times))
    wc_times, tc_times = [], []
    for i in range(args.reps):
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            sink.append(timed(fn, i))
        chunk = chunks[i % len(chunks)]
        cols = [(trainer.data_collator, wc_times), (trl_collator, tc_times)]
        for collate, sink in cols if i % 2 == 0 else cols[::-1]:
            start = time.perf_counter()
            collate([dict(r) for r in chunk])
            sink.append(time.perf_counter() - start)

    w, t, b = statistics.median(w_times), statistics.median(t_times), statistics.median(b_times)
    wc, tc = statistics.median(wc_times), statistics.median(tc_times)
    tokens = int(weighted_batches[0]["attention_mask"].sum())
    result = {
        "weighted_step_s": round(w, 5),
        "trl_step_s": round(t, 5),
        "overhead": round(w / t - 1, 4),
        "weighted_collate_s": round(wc, 5),
        "trl_collate_s": round(tc, 5),
        "overhead_with_collation": round((w + wc) / (t + tc) - 1, 4),
        "bf16_step_s": round(b, 5),
        "bf16_speedup": round(w / b, 3),
        "bf16_loss_diff": round(loss_diff, 5),
        "probe_bf16_speedup": round(models.cpu_bf16_speedup(), 3),
        **extra,
        "batch_size": args.batch_size,
        "data": args.data or "circles",
        "vision_frozen": args.freeze_vision,
        "tokens_per_batch": tokens,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "check_trl_labels_equal": bool(
            all(
                torch.equal(a["labels"], b["labels"])
                for a, b in zip(weighted_batches, trl_batches, strict=False)
            )
        ),
    }
    if args.compile:
        c = statistics.median(c_times)
        result["compiled_step_s"] = round(c, 5)
        result["compile_speedup"] = round(b / c, 3)
        f = statistics.median(f_times)
        result["compiled_fp32_step_s"] = round(f, 5)
        result["compiled_bf16_speedup"] = round(f / c, 3)
        print(f"bf16 step with the decoder compiled: {c * 1e3:.1f} ms ({b / c:.2f}x faster than bf16)")
        print(f"fp32 step with the decoder compiled: {f * 1e3:.1f} ms (compiled bf16 is {f / c:.2f}x faster)")
    print(
        f"step: weighted {w * 1e3:.1f} ms, TRL {t * 1e3:.1f} ms ({result['overhead']:+.1%}); "
        f"collate: weighted {wc * 1e3:.1f} ms, TRL {tc * 1e3:.1f} ms; "
        f"bf16 autocast {b * 1e3:.1f} ms ({w / b:.2f}x faster than fp32)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
