"""Reward time as a share of a GRPO step on the tiny CPU recipe (target: at most 3%).

Runs ``recipes/tiny/grpo.yaml`` (group size, batch, completion length, render size, rewards) for a
few steps on a fresh Stage-1 dataset and times, per step, the reward functions (render included)
against the whole step. The render pool's cache is off, so a shader repeated from an earlier step
renders again; within a step, identical completions render once, as in training.

The policy is ``--model`` (an SFT checkpoint such as ``runs/tiny-sft``), or by default the tiny model
after a short teacher-forced warmup on a handful of the dataset's completions: it writes complete,
Stage-1 shaders, about half of which compile (it cannot see yet, so it picks among those it
memorised, with slips). The warm model is kept in ``$EARTHSHADER_HOME`` for the next run. A second figure,
``reward_share_all_distinct``, re-times each step's rewards with every completion made distinct (a
unique comment appended): the worst case, a policy that never repeats itself.

    python bench/grpo.py [--steps 6] [--model runs/tiny-sft]

The last line is a JSON object: medians over the measured steps (the first step, which starts the
render workers, is left out).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback

from earthshader.data import build_dataset, generate
from earthshader.grpo import build_trainer, parse_args
from earthshader.models import (
    EarthShaderModelConfig,
    earthshader_home,
    load_model_and_processor,
    tiny_spec_hash,
)
from earthshader.render import RenderPool, set_default_pool

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation, rewards, loss, update)."""

    def __init__(self):
        self.steps: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._start)


def timed(func, log: list[float]):
    """``func`` with its wall time appended to ``log`` on every call; keeps TRL's name for it."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            log.append(time.perf_counter() - start)

    wrapper.__name__ = func.func.__name__ if isinstance(func, functools.partial) else func.__name__
    return wrapper


def warm_model(rows: list[dict], out: Path, steps: int, lr: float = 3e-3, until: float = 0.01) -> Path:
    """The tiny model after teacher forcing on ``rows`` until it writes them back (or ``steps`` run out)."""
    from PIL import Image

    model, processor = load_model_and_processor(
        EarthShaderModelConfig(model_name_or_path="tiny", dtype="float32")
    )

    images = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in rows]
    texts = [processor.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    processor.tokenizer.padding_side = "right"
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small steps: a second thread mostly waits (tests/test_grpo.py)
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        done += 1
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < until:
            break
    print(f"warmup: {done} steps, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    torch.set_num_threads(threads)
    processor.tokenizer.padding_side = "left"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps (the first is not measured)")
    parser.add_argument("--model", default=None, help="SFT checkpoint; default: warm up the tiny model")
    parser.add_argument("--memorise", type=int, default=4, help="completions the default warmup teaches")
    parser.add_argument("--warmup-steps", type=int, default=400)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny/grpo.yaml"))
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    rows, _ = generate(stage=1, num_samples=32, seed=0, progress=False)
    data_dir = work / "data"
    build_dataset(rows, test_fraction=0.1, seed=0, meta={"bench": "grpo"}).save_to_disk(data_dir)
    if opts.model is None:
        # The warmup takes minutes on two cores: keep its result for the next run.
        cached = (
            earthshader_home() / f"bench-grpo-warm-{tiny_spec_hash()}-{opts.memorise}-{opts.warmup_steps}"
        )
        if not (cached / "config.json").exists():
            warm_model(rows[: opts.memorise], work / "warm", opts.warmup_steps)
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work / "warm"), cached)
        opts.model = str(cached)
    model = opts.model

    args, model_args = parse_args(
        [
            "--config", opts.recipe,
            "--model_name_or_path", model,
            "--dataset_path", str(data_dir),
            "--output_dir", str(work / "run"),
            "--max_steps", str(opts.steps),
            "--save_strategy", "no",
            "--report_to", "none",
            "--plot_every", "0",
        ]
    )  # fmt: skip
    set_default_pool(RenderPool(cache_mb=0))  # no help from earlier steps' renders
    trainer = build_trainer(args, model_args)
    reward_times: list[float] = []
    trainer.reward_funcs = [timed(f, reward_times) for f in trainer.reward_funcs]
    funcs = list(trainer.reward_funcs)
    timer = StepTimer()
    trainer.add_callback(timer)

    per_step_reward: list[float] = []
    distinct_reward: list[float] = []
    renders = trainer.renders

    class RewardSplit(TrainerCallback):
        """Reward time of each step; then the same batch re-scored with every completion distinct."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.mark = len(reward_times)

        def on_step_end(self, args, state, control, **kwargs):
            per_step_reward.append(sum(reward_times[self.mark :]))
            batch = renders.last
            distinct = [
                [{"role": "assistant", "content": _unique(t, f"{state.global_step}.{i}")}]
                for i, t in enumerate(batch.texts)
            ]
            targets = batch.targets
            start = time.perf_counter()
            for f in funcs:
                f(completions=distinct, image=targets)
            distinct_reward.append(time.perf_counter() - start)
            del reward_times[self.mark :]  # keep the re-scoring out of the next step's sum

    trainer.add_callback(RewardSplit())
    kinds: Counter[str] = Counter()

    class Kinds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            kinds.update(r.kind for r in renders.last.results)

    trainer.callback_handler.callbacks.insert(0, Kinds())  # before RewardSplit replaces `last`
    trainer.train()

    steps = timer.steps[1:]
    rewards = per_step_reward[1:]
    worst = distinct_reward[1:]
    shares = [r / s for r, s in zip(rewards, steps, strict=True)]
    worst_shares = [r / s for r, s in zip(worst, steps, strict=True)]
    log = [h for h in trainer.state.log_history if "rewards/compile_reward/mean" in h]
    result = {
        "bench": "grpo",
        "steps_measured": len(steps),
        "step_s": round(statistics.median(steps), 3),
        "reward_s": round(statistics.median(rewards), 4),
        "reward_share": round(statistics.median(shares), 4),
        "reward_share_all_distinct": round(statistics.median(worst_shares), 4),
        "reward_all_distinct_s": round(statistics.median(worst), 4),
        "completions_per_step": args.per_device_train_batch_size,
        "mean_completion_tokens": round(statistics.mean(h["completions/mean_length"] for h in log), 1),
        "compile_rate": round(statistics.mean(h["rewards/compile_reward/mean"] for h in log), 3),
        "render_kinds": dict(kinds),
        "distinct_per_step": round(statistics.mean(h["render/distinct"] for h in log), 3),
        "threads": torch.get_num_threads(),
        "model": model,
    }
    for i, (s, r, w) in enumerate(zip(timer.steps, per_step_reward, distinct_reward, strict=True)):
        print(f"step {i + 1}: {s:.2f} s, rewards {r * 1000:.0f} ms, all-distinct rewards {w * 1000:.0f} ms")
    print(json.dumps(result))


def _unique(text: str, tag: str) -> str:
    """The completion with a comment that makes its shader distinct (inside the code block if any)."""
    end = text.rfind("```")
    if end > 0 and text.count("```") >= 2:
        return text[:end] + f"// {tag}\n" + text[end:]
    return text + f"\n// {tag}"


if __name__ == "__main__":
    main()
