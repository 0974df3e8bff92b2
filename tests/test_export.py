"""Export: the adapter, the merged model and a full model reload and reproduce the run's greedy outputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from conftest_audit import lora_sft_run, stage1_dataset  # noqa: E402

from earthshader import audit  # noqa: E402
from earthshader.cli import main as cli  # noqa: E402
from earthshader.export import export_run  # noqa: E402

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return stage1_dataset(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return lora_sft_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def prompts(dataset):
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset))["test"].select(range(2))
    return list(rows["prompt"]), list(rows["image"])


def greedy(model_path, prompts) -> list[str]:
    model, processor = audit.load_audit_model(str(model_path))
    texts = audit.generate(model, processor, prompts[0], prompts[1], max_new_tokens=NEW_TOKENS)
    return [group[0] for group in texts]


@pytest.fixture(scope="module")
def checkpoint_outputs(lora_run, prompts) -> list[str]:
    return greedy(lora_run / "checkpoint-2", prompts)


def test_export_adapter_reproduces_the_checkpoints_greedy_outputs(
    lora_run, dataset, prompts, checkpoint_outputs, tmp_path
):
    audit.run_audit(
        str(lora_run),
        str(dataset),
        num_samples=2,
        out_dir=lora_run / "audit",
        max_new_tokens=8,
        progress=False,
        overwrite=True,
    )
    out = export_run(lora_run, tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "model.safetensors" not in names
    card = (out / "README.md").read_text()
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert f"base model: `{base}`" in card
    assert "library_name: peft" in card and "SFT, 2 steps" in card
    assert "| compile rate | " in card and str(lora_run / "audit" / "report.json") in card
    assert greedy(out, prompts) == checkpoint_outputs
    # the adapter matters: without it the base model writes something else
    assert greedy(base, prompts) != checkpoint_outputs


def test_export_merged_model_reproduces_the_checkpoints_greedy_outputs(
    lora_run, prompts, checkpoint_outputs, tmp_path
):
    out = export_run(lora_run, tmp_path / "merged", merge=True)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "adapter_config.json" not in names
    assert "base model with the run's LoRA adapter merged in" in (out / "README.md").read_text()
    assert greedy(out, prompts) == checkpoint_outputs


def test_export_full_model_takes_the_last_complete_checkpoint(prompts, tmp_path):
    """A full fine-tune's run layout, written directly: checkpoint-2 complete, checkpoint-3 cut short."""
    from earthshader.models import ensure_tiny_model

    tiny = ensure_tiny_model()
    run = tmp_path / "run"
    for step in (2, 3):
        shutil.copytree(tiny, run / f"checkpoint-{step}")
    (run / "checkpoint-2" / "trainer_state.json").write_text(
        json.dumps({"global_step": 2, "log_history": []})
    )
    (run / "checkpoint-3" / "model.safetensors").write_bytes(b"cut short")  # no trainer_state.json
    record = {
        "grpo": {"dataset_path": "data/stage2", "learning_rate": 2e-5, "num_generations": 4},
        "model": {"model_name_or_path": "runs/tiny-sft"},
    }
    (run / "grpo_run.json").write_text(json.dumps(record))
    out = export_run(run, tmp_path / "full", merge=True)  # nothing to merge: the full model as it is
    meta = json.loads((out / "earthshader_export.json").read_text())
    assert meta["source"] == str(run / "checkpoint-2") and meta["kind"] == "full"
    card = (out / "README.md").read_text()
    assert "base model: `runs/tiny-sft`" in card and "training data: `data/stage2`" in card
    assert "- num_generations: `4`" in card and "GRPO, 2 steps" in card and "No audit yet" in card
    assert greedy(out, prompts) == greedy(tiny, prompts)


def _bad(argv, capsys) -> str:
    code = cli(["export", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_export_bad_input_is_one_line_and_exit_2_and_overwrites_nothing(lora_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert "does not exist" in _bad([str(tmp_path / "nope"), "--out", str(out)], capsys)
    (tmp_path / "empty").mkdir()
    assert "no final model and no complete checkpoint" in _bad(
        [str(tmp_path / "empty"), "--out", str(out)], capsys
    )
    assert "no report.json" in _bad(
        [str(lora_run), "--out", str(out), "--audit", str(tmp_path / "empty")], capsys
    )
    assert not out.exists()
    out.mkdir()
    (out / "README.md").write_text("mine")
    assert "--overwrite" in _bad([str(lora_run), "--out", str(out)], capsys)
    assert (out / "README.md").read_text() == "mine"
    assert "replace the run folder" in _bad([str(lora_run), "--out", str(lora_run), "--overwrite"], capsys)
    assert (lora_run / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # no temporary folder left behind
