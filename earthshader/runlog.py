"""The run log: ``<output_dir>/log.jsonl``, one JSON object per logged step, for every trainer.

SFT and GRPO both write it through :class:`JsonlLogCallback`; ``earthshader plot`` reads it, also while
a run is still writing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

LOG_FILE = "log.jsonl"


def _jsonable(value: Any) -> Any:
    """Numbers as numbers (tensors, numpy scalars), anything else as its text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _record_step(line: str) -> int | None:
    """The step of a log line, or None for a line cut short by a kill."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


class JsonlLogCallback(TrainerCallback):
    """Appends every log record to ``<output_dir>/log.jsonl``: one JSON object per line, with the step.

    On resume it first drops the records of steps after the checkpoint (they will be logged again) and
    any line cut short, then writes a ``{"event": "train_begin", "step": N}`` record, so the file tells
    where each run started.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOG_FILE

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                step = _record_step(line)
                if step is not None and step <= state.global_step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))
        self._write(
            {
                "event": "train_begin",
                "step": state.global_step,
                "max_steps": state.max_steps,
                "time": time.time(),
            }
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self._write({"step": state.global_step, "epoch": state.epoch, **logs, "time": time.time()})
