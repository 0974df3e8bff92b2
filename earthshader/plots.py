"""Curves: what a training run did, step by step, drawn from its logs to one PNG.

Each run folder written by ``earthshader sft`` or ``earthshader grpo`` holds ``log.jsonl`` (one JSON
object per logged step). The plot has one panel per quantity the runs logged: the loss, each reward
component (``rewards/<name>/mean``, as TRL logs them), the total reward, the compile rate and the
completion length. Each curve is drawn raw (thin) and smoothed (an exponential moving average), and
several runs share the panels in different colours, for comparison.

A run still in progress works: a last line cut short mid-write is skipped. A run without
``log.jsonl`` falls back to the ``log_history`` of its latest checkpoint's ``trainer_state.json``.

    earthshader plot runs/tiny-sft runs/tiny-grpo --out curves.png --smooth 10
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from earthshader.errors import ArgumentParser, UsageError
from earthshader.runlog import LOG_FILE

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Panels in the order drawn: (title, candidate keys; the first key a run logged is its curve).
# Reward components are found by pattern and inserted after the total reward.
FIXED_PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("loss", ("loss",)),
    ("loss of code tokens", ("loss_code",)),
    ("loss of reasoning tokens", ("loss_reasoning",)),
    ("reward (weighted sum)", ("reward",)),
    ("compile rate", ("render/compile_rate", "rewards/compile_reward/mean")),
    ("completion length (tokens)", ("completions/mean_length",)),
    ("token accuracy", ("mean_token_accuracy",)),
    ("learning rate", ("learning_rate",)),
]
_REWARD_RE = re.compile(r"^rewards/(.+)/mean$")


def _parse_lines(text: str) -> list[dict[str, Any]]:
    """JSON objects of a JSON-lines text; a line that does not parse (cut short) is skipped."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _latest_trainer_state(run_dir: Path) -> Path | None:
    steps = sorted(
        (
            (int(m.group(1)), p)
            for p in run_dir.iterdir()
            if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()
        ),
        reverse=True,
    )
    for _, path in steps:
        if (path / "trainer_state.json").is_file():
            return path / "trainer_state.json"
    top = run_dir / "trainer_state.json"
    return top if top.is_file() else None


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The logged records of a run with a ``step``: from ``log.jsonl``, else the latest checkpoint's state.

    Records of a step logged twice (a resumed run) keep the later one. Event records (``train_begin``)
    and the final summary (``train_runtime``) are left out.

    Raises:
        UsageError: the folder does not exist, or holds no log at all.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"run folder {run} does not exist")
    records: list[dict[str, Any]] = []
    log = run / LOG_FILE
    if log.is_file():
        records = _parse_lines(log.read_text(errors="replace"))
    if not records:
        state = _latest_trainer_state(run)
        if state is not None:
            try:
                records = list(json.loads(state.read_text()).get("log_history", []))
            except (ValueError, AttributeError):
                records = []
    if not log.is_file() and not records:
        raise UsageError(
            f"{run} holds no {LOG_FILE} and no checkpoint with trainer_state.json: not a run folder"
        )
    kept: dict[int, dict[str, Any]] = {}
    for r in records:
        if "event" in r or "train_runtime" in r or not isinstance(r.get("step"), int | float):
            continue
        # a step logged twice (a resumed run) keeps the later record; disjoint keys (eval and train) merge
        kept[int(r["step"])] = {**kept.get(int(r["step"]), {}), **r}
    return [kept[s] for s in sorted(kept)]


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one key, skipping records without a finite number for it."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, bias-corrected at the start.

    >>> ema(np.array([1.0, 1.0, 1.0]), 10).tolist()
    [1.0, 1.0, 1.0]
    """
    if span <= 1 or len(values) == 0:
        return values.astype(float)
    alpha = 2.0 / (span + 1.0)
    out = np.empty(len(values))
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def panels_for(runs: list[list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """(title, key) of every panel that at least one run has data for, in drawing order.

    When a run logs several candidate keys of one panel, the first listed wins for that panel.
    """
    present: set[str] = set()
    for records in runs:
        for r in records:
            present.update(k for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool))
    out: list[tuple[str, str]] = []
    for title, keys in FIXED_PANELS:
        key = next((k for k in keys if k in present), None)
        if key is not None:
            out.append((title, key))
        if title.startswith("reward"):
            for name in sorted({m.group(1) for k in present if (m := _REWARD_RE.match(k))}):
                out.append((f"reward: {name}", f"rewards/{name}/mean"))
    return out


def plot_runs(
    run_dirs: list[str | os.PathLike],
    out_path: str | os.PathLike,
    smooth: int = 10,
    labels: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Draw the curves of one or more runs to a PNG and return its path.

    Args:
        run_dirs: run folders (SFT or GRPO output dirs); several are overlaid, one colour each.
        out_path: the PNG to write (written to a temporary name beside it, then moved into place).
        smooth: EMA span in logged steps (1: no smoothing).
        labels: legend names (default: the folder names).
        overwrite: replace an existing file at ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise UsageError("give at least one run folder")
    if smooth < 1:
        raise UsageError(f"--smooth must be at least 1, not {smooth}")
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} must be a .png file")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder, not a file")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    runs = [read_log(d) for d in run_dirs]
    labels = labels or _labels([Path(d) for d in run_dirs])
    panels = panels_for(runs)
    if not panels:
        raise UsageError(
            f"no curves to draw: the logs of {', '.join(map(str, run_dirs))} hold no known metric yet"
        )

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, key) in zip(axes.flat, panels, strict=False):
        for i, (records, label) in enumerate(zip(runs, labels, strict=True)):
            steps, values = series(records, key)
            if not len(steps):
                continue
            color = colors[i % len(colors)]
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
            ax.plot(steps, ema(values, smooth), color=color, linewidth=1.8, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=min(4, len(names)), fontsize=9, frameon=False)
    fig.suptitle(f"raw (thin) and EMA over {smooth} logged steps (thick)", fontsize=9, y=0.005, va="bottom")
    fig.tight_layout(rect=(0, 0.02, 1, 0.95 if handles else 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.stem}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    logger.info("curves of %d run(s) written to %s", len(runs), out)
    return out


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, with the parent's name where two names collide."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    return names


def cli_main(argv: list[str]) -> int:
    """``earthshader plot RUN_DIR [RUN_DIR ...] [--out FILE.png] [--smooth N] [--overwrite]``."""
    p = ArgumentParser(
        prog="earthshader plot", description="Reward and loss curves of training runs, to PNG."
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (SFT or GRPO output dirs)")
    p.add_argument(
        "--out", help="PNG to write (default: RUN_DIR/curves.png for one run, curves.png for several)"
    )
    p.add_argument("--smooth", type=int, default=10, help="EMA span in logged steps (default: 10; 1: none)")
    p.add_argument("--label", action="append", help="legend name of each run, in order (repeat per run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.label and len(args.label) != len(args.runs):
        raise UsageError(f"{len(args.label)} --label for {len(args.runs)} run folders")
    out = args.out or (str(Path(args.runs[0]) / "curves.png") if len(args.runs) == 1 else "curves.png")
    path = plot_runs(args.runs, out, smooth=args.smooth, labels=args.label, overwrite=args.overwrite)
    print(f"curves written to {path}")
    return 0
