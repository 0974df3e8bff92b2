"""The main job: `make demo` runs every stage; its output folder never replaces a user's folder."""

from __future__ import annotations

import json

import pytest

from earthshader.demo import MARKER, QUICK, main, prepare_out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(["--quick", "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not made by the demo" in err
    assert (mine / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--size", "100"], "--size must be a multiple of 28"),
        (["--size", "28"], "from 56 to 448"),
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--size", "big"], "invalid int value"),
    ],
)
def test_demo_refuses_a_size_or_seed_before_touching_the_folder(tmp_path, capsys, flags, words):
    out = tmp_path / "demo"
    assert main(["--quick", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert not out.exists()


def test_demo_replaces_its_own_previous_output(tmp_path):
    out = tmp_path / "demo"
    prepare_out(out)
    (out / "old.txt").write_text("from the last run")
    prepare_out(out)
    assert (out / MARKER).exists() and not (out / "old.txt").exists()


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sft"]["n"] == summary["grpo"]["n"] > 0
    for path in (
        "runs/sft-one/vision_warmup.json",  # step 1 of SFT warmed the tower up
        "runs/sft/audit/report.json",
        "runs/grpo/audit/grid.png",
        "curves.png",
        "export/README.md",
    ):
        assert (out / path).exists(), path
    one = json.loads((out / "runs/sft-one/sft_run.json").read_text())
    assert one["sft"]["vision_freeze_after_warmup"] and one["script"]["dataset_path"].endswith("stage1-one")
    assert QUICK.samples == 64


@pytest.mark.slow
def test_demo_quick_at_another_size_and_seed(tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "demo"
    assert main(["--quick", "--size", "56", "--seed", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["size"], summary["seed"]) == (56, 3) and summary["sft"]["n"] > 0
    for name in ("stage1", "stage1-one"):
        assert load_from_disk(str(out / "data" / name))["train"][0]["image"].size == (56, 56)
    for run in ("sft-one", "sft", "grpo"):
        processor = json.loads((out / "runs" / run / "processor_config.json").read_text())
        assert processor["image_processor"]["size"] == {"shortest_edge": 3136, "longest_edge": 3136}, run
    assert json.loads((out / "runs/sft/sft_run.json").read_text())["sft"]["seed"] == 3
