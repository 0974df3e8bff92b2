"""GRPO on the real tiny Qwen2-VL with real renders: it trains, logs, draws, and resumes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from earthshader.cli import main as cli_main
from earthshader.data import assistant_turn, user_prompt
from earthshader.errors import UsageError
from earthshader.grpo import (
    EarthShaderGRPOConfig,
    build_trainer,
    last_complete_checkpoint,
    load_policy,
    parse_args,
    plot_samples,
    prepare_output_dir,
    run,
    sample_excerpt,
)
from earthshader.models import EarthShaderModelConfig, load_model_and_processor
from earthshader.render import render_many
from earthshader.scenes import completion_text, random_scene
from rewards import get_reward_funcs

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
# Two short shaders that differ in one number: a circle left or right of the centre.
CODE = "void mainImage(out vec4 c, in vec2 p) {\n    c = vec4(vec3(step(length(p / iResolution.y - vec2({x}, 0.5)), 0.3)), 1.0);\n}"
CODES = [CODE.replace("{x}", "0.4"), CODE.replace("{x}", "0.9")]


def _rows() -> list[dict]:
    results = render_many(CODES, size=SIZE)
    assert all(r.ok for r in results)
    return [
        {
            "image": Image.fromarray((r.image * 255 + 0.5).astype(np.uint8)),
            "prompt": user_prompt("Draw this."),  # short: the warmup's cost grows with it
            "code": code,
            "completion": assistant_turn(f"A circle.\n\n```glsl\n{code}\n```"),
        }
        for code, r in zip(CODES, results, strict=True)
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A saved dataset in the schema of `earthshader data` (the columns GRPO reads)."""
    from datasets import Dataset, DatasetDict

    path = tmp_path_factory.mktemp("data") / "circles"
    DatasetDict({"train": Dataset.from_list(_rows() * 2), "test": Dataset.from_list(_rows())}).save_to_disk(
        path
    )
    return path


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory) -> Path:
    """The tiny model after a short teacher-forced warmup on the two shaders.

    It cannot see yet, so it writes either shader (sometimes garbled) whatever the image: the rewards
    of a group differ, which is what gives GRPO a gradient.
    """
    torch.manual_seed(0)
    model, processor = load_model_and_processor(
        EarthShaderModelConfig(model_name_or_path="tiny", dtype="float32")
    )
    rows = _rows()
    texts = [processor.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    processor.tokenizer.padding_side = "right"
    batch = processor(images=[r["image"] for r in rows], text=texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    # Many tiny steps: a second thread costs more in synchronisation than it gains, and several
    # times more when other processes share the two cores (measured: 37 s vs 220 s under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _memorise(model, optimizer, batch, labels)
    finally:
        torch.set_num_threads(threads)
    processor.tokenizer.padding_side = "left"
    out = tmp_path_factory.mktemp("warm") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _memorise(model, optimizer, batch, labels) -> None:
    for _ in range(120):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05:  # both shaders memorised, up to a slip now and then
            break


def _args(output_dir: Path, dataset: Path, **overrides) -> EarthShaderGRPOConfig:
    settings = dict(
        output_dir=str(output_dir),
        dataset_path=str(dataset),
        reward_funcs=["compile", "mse", "iou", "format"],
        render_size=SIZE,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=64,
        learning_rate=1e-4,
        max_steps=2,
        save_steps=1,
        logging_steps=1,
        plot_every=1,
        plot_samples=4,
        report_to=["tensorboard"],
        bf16=False,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
    )
    settings.update(overrides)
    return EarthShaderGRPOConfig(**settings)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, dataset, warm_model):
    """Two GRPO steps from the warm model, a checkpoint after each."""
    out = tmp_path_factory.mktemp("grpo") / "run"
    trainer = run(
        _args(out, dataset), EarthShaderModelConfig(model_name_or_path=str(warm_model), dtype="float32")
    )
    return out, trainer


def test_grpo_trains_with_real_renders_and_parameters_change(first_run, warm_model):
    out, trainer = first_run
    assert trainer.state.global_step == 2
    from safetensors.torch import load_file

    before, after = load_file(warm_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"
    # the completions' log-probabilities came from the compact head (only their positions projected)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert hasattr(policy, "trl_fused_forward") and policy.forward != policy.trl_fused_forward
    # One render call per reward batch (per step here), whatever the number of rewards.
    assert trainer.renders.stats["calls"] == trainer.renders.stats["batches"] == 2


def test_grpo_logs_rewards_compile_rate_and_lengths(first_run):
    out, _ = first_run
    steps = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        for name in ("compile_reward", "mse_reward", "iou_reward", "format_reward"):
            assert f"rewards/{name}/mean" in record and f"rewards/{name}/std" in record
        assert 0.0 <= record["render/compile_rate"] <= 1.0
        assert record["render/compile_rate"] == pytest.approx(record["rewards/compile_reward/mean"])
        assert record["completions/mean_length"] > 0
    # The rewards of a group differ: GRPO had something to learn from.
    assert any(r["rewards/mse_reward/std"] > 0 for r in steps)
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    pngs = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert pngs == ["step-000001.png", "step-000002.png"]
    with Image.open(out / "samples" / pngs[0]) as image:
        assert image.size[0] > 600 and image.size[1] > 400


def test_grpo_resumes_from_last_complete_checkpoint(first_run, tmp_path, dataset, warm_model):
    out = tmp_path / "run"
    shutil.copytree(first_run[0], out)
    # A kill while checkpoint-2 was being written: its trainer state (written last) is missing.
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(out) == out / "checkpoint-1"
    args = _args(out, dataset, max_steps=3, plot_every=0, report_to=[])
    trainer = run(args, EarthShaderModelConfig(model_name_or_path=str(warm_model), dtype="float32"))
    assert trainer.state.global_step == 3
    assert trainer.renders.stats["batches"] == 2  # steps 2 and 3 ran; step 1 came from the checkpoint
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3]


def test_grpo_resume_loads_the_checkpoints_weights(first_run, tmp_path, dataset, warm_model):
    # Qwen2-VL saves transformers 4's key names; Trainer's own resume matched none of them and went on
    # from the starting weights (session 36). What train(resume_from_checkpoint=...) loads must be step 1.
    checkpoint = first_run[0] / "checkpoint-1"
    args = _args(tmp_path / "run", dataset, plot_every=0, report_to=[])
    trainer = build_trainer(args, EarthShaderModelConfig(model_name_or_path=str(warm_model), dtype="float32"))
    saved, _ = load_model_and_processor(
        EarthShaderModelConfig(model_name_or_path=str(checkpoint), dtype="float32")
    )
    want = saved.state_dict()

    def differing() -> list[str]:
        got = trainer.model.state_dict()
        return [k for k in want if not torch.equal(got[k], want[k])]

    assert len(differing()) > len(want) // 2  # the warm model is not step 1's
    trainer._load_from_checkpoint(str(checkpoint))
    assert differing() == []


def test_grpo_refuses_a_folder_that_is_not_a_run(tmp_path, dataset):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a GRPO run folder"):
        prepare_output_dir(_args(tmp_path, dataset))
    assert (tmp_path / "notes.txt").exists()


def test_grpo_cli_unknown_reward_exits_2(tmp_path, capsys):
    code = cli_main(
        [
            "grpo",
            "--config",
            str(ROOT / "recipes/tiny/grpo.yaml"),
            "--output_dir",
            str(tmp_path / "run"),
            "--reward_funcs",
            "pixels",
        ]
    )
    assert code == 2
    assert "unknown reward 'pixels'" in capsys.readouterr().err


def test_grpo_cli_parts_type_weight_out_of_range_exits_2(tmp_path, capsys):
    argv = ["grpo", "--config", str(ROOT / "recipes/tiny/grpo.yaml"), "--output_dir", str(tmp_path / "run")]
    code = cli_main(
        [
            *argv,
            "--reward_funcs",
            "compile",
            "parts",
            "--reward_weights",
            "1",
            "1",
            "--parts_type_weight",
            "2",
        ]
    )
    assert code == 2
    assert "parts_type_weight must lie between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_grpo_recipes_parse():
    args, model_args = parse_args(["--config", str(ROOT / "recipes/tiny/grpo.yaml")])
    assert args.reward_funcs == ["compile", "mse", "iou", "format"]
    assert model_args.model_name_or_path == "runs/tiny-sft"
    # The GPU recipe does not validate on a CPU (bf16); its keys must still all be known fields.
    known = {f.name for f in dataclasses.fields(EarthShaderGRPOConfig)} | {
        f.name for f in dataclasses.fields(EarthShaderModelConfig)
    }
    gpu = yaml.safe_load((ROOT / "recipes/qwen2-vl-7b/grpo_qlora.yaml").read_text())
    assert set(gpu) <= known, set(gpu) - known
    assert len(gpu["reward_weights"]) == len(gpu["reward_funcs"])
    assert (
        yaml.safe_load((ROOT / "recipes/accelerate/zero2.yaml").read_text())["deepspeed_config"]["zero_stage"]
        == 2
    )


@pytest.mark.parametrize(
    "recipe",
    [ROOT / "recipes/tiny/grpo.yaml", *sorted((ROOT / "recipes/experiments").glob("grpo_*.yaml"))],
    ids=lambda p: p.stem,
)
def test_grpo_cpu_recipes_parse(recipe):
    """The tiny recipe and every GRPO recipe LEARNING's commands name parse as `earthshader grpo` reads them."""
    args, _ = parse_args(["--config", str(recipe)])
    assert len(args.reward_weights) == len(args.reward_funcs)
    assert args.per_device_train_batch_size % args.num_generations == 0


def test_load_policy_continues_a_peft_adapter(tmp_path, warm_model):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, processor = load_model_and_processor(EarthShaderModelConfig(model_name_or_path=str(warm_model)))
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")
    policy, _ = load_policy(EarthShaderModelConfig(model_name_or_path=str(tmp_path / "adapter")))
    assert isinstance(policy, PeftModel)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_plot_samples_draws_failures_and_odd_text(tmp_path):

    funcs = get_reward_funcs(["compile", "mse"], size=SIZE)
    target = np.zeros((SIZE, SIZE, 3), np.float32)
    completions = [
        [{"role": "assistant", "content": f"A circle.\n```glsl\n{CODES[0]}\n```"}],
        [{"role": "assistant", "content": "costs $5 and $x^2$ \x1b[31m, no code"}],
    ]
    for f in funcs:
        f(completions=completions, image=[target, target])
    path = plot_samples(funcs[0].keywords["renders"].last, tmp_path / "s.png", step=7)
    with Image.open(path) as image:
        assert image.size[0] > 600


def test_sample_excerpt_folds_the_helpers_and_fits_a_row():
    # A real Stage-2 pair's answer: helpers for two primitives and the operator, then mainImage.
    scene = random_scene(2, np.random.default_rng(3))
    text = completion_text(scene)
    lines = text.splitlines()
    fence = next(k for k, line in enumerate(lines) if line.startswith("```"))
    main = next(k for k, line in enumerate(lines) if line.startswith("void mainImage"))
    assert main - fence > 5  # the helpers are most of the code

    excerpt = sample_excerpt(text, max_lines=200).splitlines()
    reasoning = textwrap.wrap(lines[0], 110)
    assert excerpt[: len(reasoning)] == reasoning  # the reasoning comes first, whole
    assert f"// ... {main - fence - 1} lines of helper functions" in excerpt
    assert "void mainImage" in "\n".join(excerpt)
    assert not any(line.lstrip().startswith("float sd") for line in excerpt)
    assert all(len(line) <= 110 for line in excerpt)

    short = sample_excerpt(text, max_lines=6).splitlines()
    assert len(short) == 6 and short[-1] == "..."

    # Without a mainImage there is nothing to fold; odd characters print as "?".
    assert sample_excerpt("no code\x1b[31m\nsecond") == "no code?[31m\nsecond"
