"""What the machine was doing while a benchmark ran: the share of CPU time its host took away.

On a virtual machine the hypervisor may run other guests on our cores ("steal" in /proc/stat). On
the shared 2-core machine it has been seen from 0% to 50% within an hour, which moves every
wall-clock rate by as much; the benchmarks report it beside their figures.
"""

from __future__ import annotations


def cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...), in ticks."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """Share of all CPU time between two :func:`cpu_times` readings that the host stole; None if unknown."""
    if len(before) < 8 or len(after) < 8:
        return None
    # the first eight fields: guest time is counted in user already
    delta = [b - a for a, b in zip(before[:8], after[:8], strict=True)]
    total = sum(delta)
    return round(delta[7] / total, 3) if total > 0 else None


def calibration_ms(repeats: int = 5) -> float:
    """Median milliseconds of a fixed single-threaded workload (Python loop, NumPy sort): how fast
    the machine is right now. Steal alone does not show all of a slow period: the host can also
    give slower cycles. Compare a benchmark's figures between runs only at similar calibrations."""
    import statistics
    import time

    import numpy as np

    values = np.random.default_rng(0).random(200_000)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        np.sort(values)
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 1)


def step_end_recorder():
    """A transformers ``TrainerCallback`` whose ``times`` list gets ``time.perf_counter()`` at each step's end."""
    import time

    from transformers import TrainerCallback

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, _args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepEnds()


def train_step_seconds(argv: list[str], prepare=None, skip: int = 20) -> float:
    """Median seconds between optimizer steps' ends of a real ``earthshader sft`` training in this process.

    ``argv`` are ``earthshader sft``'s arguments (a recipe and its overrides); the trainer is built as the
    command builds it, ``prepare(trainer)`` may change it (a collator that records, another head), and the
    text decoder is compiled where the recipe says so, as ``earthshader sft`` does. The first ``skip`` steps
    (compilation, warm caches) are left out.
    """
    import statistics

    from earthshader import sft
    from earthshader.models import compile_language_model

    script_args, training_args, model_args = sft.parse_args(argv)
    trainer = sft.build_trainer(script_args, training_args, model_args)
    if prepare is not None:
        prepare(trainer)
    if training_args.compile_language_model:
        compile_language_model(trainer.model)
    ends = step_end_recorder()
    trainer.add_callback(ends)
    trainer.train()
    return statistics.median(b - a for a, b in zip(ends.times[skip:], ends.times[skip + 1 :], strict=False))


def training_run_record(args) -> dict:
    """What a ``--train-steps`` benchmark ran, for its JSON line: the recipe, data, model and overrides."""
    names = ("recipe", "data", "model", "extra", "train_steps", "rounds")
    return {name.removeprefix("train_"): getattr(args, name, None) for name in names}
