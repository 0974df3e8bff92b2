"""Curves: reading logs of finished and running runs, drawing several runs, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from earthshader import plots  # noqa: E402
from earthshader.cli import main as cli  # noqa: E402

GRPO_KEYS = {
    "loss": 0.01,
    "reward": 1.5,
    "rewards/compile_reward/mean": 0.75,
    "rewards/mse_reward/mean": 0.2,
    "rewards/format_reward/mean": 0.9,
    "render/compile_rate": 0.75,
    "completions/mean_length": 210.0,
}


def _grpo_log(run: Path, steps: int, partial: bool) -> Path:
    """A log.jsonl as the GRPO trainer writes it, optionally cut short mid-line (a run still writing)."""
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [json.dumps({"event": "train_begin", "step": 0})]
    for step in range(1, steps + 1):
        lines.append(
            json.dumps(
                {
                    "step": step,
                    **{k: v + 0.01 * step + 0.01 * rng.standard_normal() for k, v in GRPO_KEYS.items()},
                }
            )
        )
    text = "\n".join(lines) + "\n"
    if partial:
        text += json.dumps({"step": steps + 1, **GRPO_KEYS})[:37]
    (run / "log.jsonl").write_text(text)
    return run


def test_read_log_tolerates_a_partial_last_line(tmp_path):
    run = _grpo_log(tmp_path / "grpo", steps=12, partial=True)
    records = plots.read_log(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    steps, values = plots.series(records, "rewards/mse_reward/mean")
    assert len(steps) == 12 and values[-1] > values[0]


def test_read_log_keeps_the_later_record_of_a_repeated_step(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    lines = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0},
        {"event": "train_begin", "step": 1},
        {"step": 2, "loss": 1.0},
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["step"], r["loss"]) for r in plots.read_log(run)] == [(1, 3.0), (2, 1.0)]


def test_read_log_falls_back_to_the_latest_trainer_state(tmp_path):
    run = tmp_path / "no-log"
    for step, loss in ((5, 9.0), (10, 1.0)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        history = [{"step": s, "loss": loss + s} for s in range(1, step + 1)]
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    records = plots.read_log(run)
    assert len(records) == 10 and records[0]["loss"] == 2.0


def test_ema_smooths_and_follows_a_constant():
    noisy = np.array([0.0, 1.0] * 50)
    smooth = plots.ema(noisy, 10)
    assert np.allclose(plots.ema(np.full(5, 3.0), 10), 3.0)
    assert np.std(smooth[20:]) < 0.2 * np.std(noisy)
    assert plots.ema(noisy, 1).tolist() == noisy.tolist()


def test_plot_runs_overlays_a_finished_sft_run_and_a_running_grpo_run(tmp_path, tmp_path_factory):
    """A real SFT run's log (the tiny model, two LoRA steps) next to a GRPO log still being written."""
    pytest.importorskip("torch")
    from conftest_audit import lora_sft_run

    sft = lora_sft_run(tmp_path_factory.getbasetemp())
    grpo = _grpo_log(tmp_path / "grpo", steps=30, partial=True)
    runs = [plots.read_log(sft), plots.read_log(grpo)]
    titles = [t for t, _ in plots.panels_for(runs)]
    for title in (
        "loss",
        "loss of code tokens",
        "reward (weighted sum)",
        "compile rate",
        "completion length (tokens)",
    ):
        assert title in titles
    assert {"reward: compile_reward", "reward: mse_reward", "reward: format_reward"} <= set(titles)
    assert dict(plots.panels_for(runs))["compile rate"] == "render/compile_rate"

    out = plots.plot_runs([sft, grpo], tmp_path / "curves.png", smooth=5)
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 800 and height > 500
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_cli_plot_one_run_defaults_to_curves_png_in_it(tmp_path, capsys):
    run = _grpo_log(tmp_path / "grpo", steps=3, partial=False)
    assert cli(["plot", str(run), "--smooth", "1"]) == 0
    assert (run / "curves.png").stat().st_size > 1000


def _bad(argv, capsys) -> str:
    code = cli(["plot", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_plot_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = _grpo_log(tmp_path / "grpo", steps=3, partial=False)
    assert "does not exist" in _bad([str(tmp_path / "nope"), "--out", str(tmp_path / "a.png")], capsys)
    (tmp_path / "empty").mkdir()
    assert "not a run folder" in _bad([str(tmp_path / "empty"), "--out", str(tmp_path / "a.png")], capsys)
    assert "--smooth" in _bad([str(run), "--smooth", "0", "--out", str(tmp_path / "a.png")], capsys)
    assert ".png" in _bad([str(run), "--out", str(tmp_path / "a.pdf")], capsys)
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"mine")
    assert "--overwrite" in _bad([str(run), "--out", str(existing)], capsys)
    assert existing.read_bytes() == b"mine"
    assert cli(["plot", str(run), "--out", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes()[:4] == b"\x89PNG"
