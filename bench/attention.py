"""The text decoder's attention on a CPU: PyTorch's SDPA kernel against two matrix products and a softmax.

``earthshader.models.matmul_attention_forward`` (the decoder's default attention, ``use_cpu_half_attention``)
is transformers' ``sdpa_attention_forward`` except in bf16 or fp16 on a CPU, where it computes the scores
with one matrix product, masks them, takes the softmax (fp32 inside, half out) and multiplies by the
values. Two measurements, in one process:

- The attention alone (always): one decoder layer's attention, forward and backward, on a batch shaped
  like the demo's mix (``--batch`` rows of ``--length`` tokens, the shortest ``--length`` - 100, right
  padding, causal; 4 query heads of 64 sharing 2 key-value heads), both ways in alternating order for
  ``--reps`` repetitions, in bf16 and in fp32. ``op_speedup`` is SDPA's median over the other's;
  ``op_error`` is each way's largest output difference from an fp32 computation of the same inputs.
- With ``--train-steps``: the recipe's real ``trainer.train()`` both ways (``--attn_implementation sdpa``
  against the default), ``--rounds`` times in alternating order, each from a fresh trainer built as
  ``earthshader sft`` builds it, the decoder compiled where the recipe says so.
  ``train_speedup`` is SDPA's median time between steps over the default's.

The last line is one JSON object.

    OMP_NUM_THREADS=2 .venv/bin/python bench/attention.py [--reps 20]
        [--train-steps 100 --rounds 2 --data data/stage1 --model runs/tiny-sft-one]
        [--recipe recipes/tiny/sft_mix.yaml] [-- extra recipe arguments]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import types
from pathlib import Path

from machine import calibration_ms, cpu_times, steal_share, train_step_seconds, training_run_record

ROOT = Path(__file__).resolve().parents[1]
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 64  # the tiny model's text decoder


def time_attention(args, torch) -> dict:
    """Forward and backward of one layer's attention both ways, per dtype; medians and errors."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    from earthshader.models import matmul_attention_forward

    generator = torch.Generator().manual_seed(0)
    length, batch = args.length, args.batch
    lengths = torch.randint(length - 100, length + 1, (batch,), generator=generator)
    lengths[0] = length
    padding = torch.arange(length)[None, :] < lengths[:, None]
    mask = sdpa_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=padding)
    module = types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True, training=True)
    shapes = {"query": (batch, HEADS, length, HEAD_DIM), "key": (batch, KV_HEADS, length, HEAD_DIM)}
    inputs = [torch.randn(shapes[n], generator=generator) for n in ("query", "key", "key")]
    ways = {"sdpa": sdpa_attention_forward, "matmul": matmul_attention_forward}
    exact = sdpa_attention_forward(module, *[x.double() for x in inputs], mask, scaling=HEAD_DIM**-0.5)[0]
    result: dict = {}
    for dtype in (torch.bfloat16, torch.float32):
        tensors = [x.to(dtype).requires_grad_() for x in inputs]
        times: dict[str, list[float]] = {way: [] for way in ways}
        errors = {}
        for rep in range(args.reps + 2):
            for way in ways if rep % 2 == 0 else list(ways)[::-1]:
                start = time.perf_counter()
                out = ways[way](module, *tensors, mask, scaling=HEAD_DIM**-0.5)[0]
                out.float().square().sum().backward()
                if rep >= 2:  # the first two warm the allocator and the kernels' choices
                    times[way].append(time.perf_counter() - start)
                errors[way] = (out.double() - exact).abs().max().item()
        name = str(dtype).removeprefix("torch.")
        median = {way: statistics.median(v) for way, v in times.items()}
        result[name] = {
            "sdpa_ms": round(1000 * median["sdpa"], 2),
            "matmul_ms": round(1000 * median["matmul"], 2),
            "op_speedup": round(median["sdpa"] / median["matmul"], 3),
            "op_error": {way: float(f"{errors[way]:.3g}") for way in ways},
        }
        print(
            f"{name}: SDPA {1000 * median['sdpa']:.1f} ms, matrix products and softmax {1000 * median['matmul']:.1f} ms "
            f"({median['sdpa'] / median['matmul']:.2f}x); largest error SDPA {errors['sdpa']:.2g}, "
            f"products {errors['matmul']:.2g}",
            flush=True,
        )
    return result


def time_training(args) -> dict:
    """The recipe's real training both ways, alternating."""
    tmp = Path(tempfile.mkdtemp(prefix="es_bench_attention_"))
    ways = {"default": [], "sdpa": ["--attn_implementation", "sdpa"]}
    steps: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in ways if round_ % 2 == 0 else list(ways)[::-1]:
            argv = [
                "--config",
                args.recipe,
                "--dataset_path",
                args.data,
                "--max_steps",
                str(args.train_steps),
            ]
            argv += ["--save_steps", "1000000", "--report_to", "none", "--logging_steps", "1000"]
            argv += ["--seed", str(round_), "--output_dir", str(tmp / f"{way}-{round_}")]
            argv += ["--model_name_or_path", args.model] if args.model else []
            steps[way].append(train_step_seconds(argv + args.extra + ways[way]))
            print(f"{way:8s} round {round_}: {1000 * steps[way][-1]:.1f} ms a step", flush=True)
    median = {way: statistics.median(v) for way, v in steps.items()}
    print(
        f"training: SDPA {1000 * median['sdpa']:.1f} ms a step, default {1000 * median['default']:.1f} ms "
        f"({median['sdpa'] / median['default']:.2f}x)"
    )
    return {
        "train_sdpa_step_s": round(median["sdpa"], 4),
        "train_default_step_s": round(median["default"], 4),
        "train_speedup": round(median["sdpa"] / median["default"], 3),
        "train_runs_s": {way: [round(v, 4) for v in steps[way]] for way in ways},
        **training_run_record(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=0, help="also time real training")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", help="a dataset folder (earthshader data), for --train-steps")
    parser.add_argument("--model", help="a model folder (a trained run); default: the recipe's")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny/sft_mix.yaml"))
    parser.add_argument("extra", nargs="*", help="recipe overrides for --train-steps (after --)")
    args = parser.parse_args()
    if args.train_steps and not args.data:
        raise SystemExit("bench/attention.py: --train-steps needs --data")

    import torch

    calibration = [calibration_ms()]
    before = cpu_times()
    result = {
        "op": time_attention(args, torch),
        "batch": args.batch,
        "length": args.length,
        "reps": args.reps,
    }
    if args.train_steps:
        result.update(time_training(args))
    calibration.append(calibration_ms())
    result.update(
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        calibration_ms=calibration,
        steal=steal_share(before, cpu_times()),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
