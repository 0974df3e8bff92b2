"""The weighted cross-entropy SFT trainer: the loss by hand, real training of the tiny model, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from conftest_sft import make_circle_dataset  # noqa: E402

from earthshader import models  # noqa: E402
from earthshader.errors import UsageError  # noqa: E402
from earthshader.glsl import completion_text  # noqa: E402
from earthshader.sft import (  # noqa: E402
    CODE,
    END,
    FENCE,
    IGNORE,
    REASONING,
    EarthShaderSFTConfig,
    LengthSortedStepSampler,
    ShuffledLengthGroupedSampler,
    WeightedSFTTrainer,
    WeightedVLMCollator,
    cli_main,
    completion_char_classes,
    completion_lengths,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "sft.yaml"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return models.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_circle_dataset(tmp_path_factory.mktemp("data") / "circles", n_train=32, n_test=4)


def _trainer(tiny_path, dataset, tmp_path, train=None, **overrides) -> WeightedSFTTrainer:
    from datasets import load_from_disk

    model, processor = models.load_model_and_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(tiny_path))
    )
    overrides = {"max_steps": 1, **overrides}
    args = EarthShaderSFTConfig(output_dir=str(tmp_path / "run"), report_to="none", **overrides)
    return WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(str(dataset))["train"] if train is None else train,
        processing_class=processor,
    )


def _collate(trainer, rows) -> dict:
    """A batch as the trainer's step sees it: collated, then on the model's device."""
    return trainer._prepare_inputs(trainer.data_collator(rows))


def _rows(dataset, n):
    """n training rows; every other one has a longer reasoning, so batches hold padding."""
    from datasets import load_from_disk

    train = load_from_disk(str(dataset))["train"]
    rows = [train[i] for i in range(n)]
    for row in rows[::2]:
        extra = " It is white on a black background, and its edge is anti-aliased."
        row["reasoning"] += extra
        content = row["completion"][0]["content"][0]
        content["text"] = content["text"].replace(".\n```glsl", "." + extra + "\n```glsl", 1)
    return rows


def test_completion_char_classes_marks_each_part():
    text = "Two shapes.\n```glsl\nfloat d;\n```<|im_end|>\n"
    classes = completion_char_classes(text)
    by_class = {
        c: "".join(ch for ch, k in zip(text, classes, strict=False) if k == c)
        for c in (REASONING, FENCE, CODE, END)
    }
    assert by_class[REASONING] == "Two shapes.\n"
    assert by_class[FENCE] == "```glsl\n```"
    assert by_class[CODE] == "float d;\n"
    assert by_class[END] == "<|im_end|>\n"
    # bare code, no fence: all of it is code
    bare = completion_char_classes("void mainImage() {}<|im_end|>\n")
    assert set(bare[:19].tolist()) == {CODE}


def test_collator_weights_follow_the_parts(tiny_path, dataset):
    processor = models.load_processor(models.EarthShaderModelConfig(model_name_or_path=str(tiny_path)))
    weights = {REASONING: 0.2, CODE: 5.0, FENCE: 1.0, END: 1.0}
    rows = _rows(dataset, 3)
    batch = WeightedVLMCollator(processor, weights)(rows)
    ids, cls, w, labels = batch["input_ids"], batch["token_class"], batch["loss_weights"], batch["labels"]
    tok = processor.tokenizer
    for i, row in enumerate(rows):
        code = tok.decode(ids[i][cls[i] == CODE])
        assert code.strip() == row["code"].strip()
        assert tok.decode(ids[i][cls[i] == REASONING]).strip() == row["reasoning"]
        assert "<|im_end|>" in tok.decode(ids[i][cls[i] == END])
        prompt = cls[i] == IGNORE
        assert (labels[i][prompt] == -100).all() and (w[i][prompt] == 0).all()
        # the image placeholder tokens sit in the masked prompt
        assert int((ids[i][prompt] == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    for c, value in weights.items():
        assert torch.allclose(w[cls == c], torch.tensor(value))
    assert batch["pixel_values"].shape[0] == 3 * 64


def _hand_loss(model, batch) -> torch.Tensor:
    """sum(w * nll) / sum(w) over the predicted positions, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights", "token_class")}
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    w = batch["loss_weights"][:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(logp * w).sum() / w.sum()


def test_weighted_loss_matches_hand_computation(tiny_path, dataset, tmp_path):
    trainer = _trainer(tiny_path, dataset, tmp_path)
    batch = _collate(trainer, _rows(dataset, 3))
    assert (batch["attention_mask"] == 0).any(), "the batch should hold padding"
    model = trainer.model.eval()
    # the recipe's weights, then arbitrary ones on the same tokens: the loss must follow the weights
    generator = torch.Generator().manual_seed(0)
    arbitrary = torch.rand(batch["loss_weights"].shape, generator=generator).to(model.device)
    arbitrary *= batch["loss_weights"] > 0
    with torch.no_grad():
        for weights in (batch["loss_weights"], arbitrary):
            weighted = {**batch, "loss_weights": weights}
            expected = _hand_loss(model, weighted)
            got = trainer.compute_loss(model, dict(weighted))
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
        # the same normaliser given explicitly (as in training) gives the same value
        norm = trainer._get_num_items_in_batch([batch], model.device)
        assert torch.allclose(
            trainer.compute_loss(model, dict(batch), num_items_in_batch=norm), _hand_loss(model, batch)
        )


@pytest.mark.parametrize("temperature, cast_to_fp32", [(1.0, False), (0.7, True)])
def test_compact_lm_head_matches_trls_fused_head(tiny_path, dataset, temperature, cast_to_fp32):
    """The compact head gives TRL's per-token outputs and gradients, projecting the labelled positions only."""
    from trl.trainer.utils import add_fused_lm_head

    config = models.EarthShaderModelConfig(model_name_or_path=str(tiny_path))
    model, processor = models.load_model_and_processor(config)
    add_fused_lm_head(
        model,
        temperature=temperature,
        cast_lm_head_to_fp32=cast_to_fp32,
        outputs=("log_probs", "entropy", "is_top1"),
    )
    assert models.add_compact_lm_head(model, temperature=temperature, cast_to_fp32=cast_to_fp32)
    batch = WeightedVLMCollator(processor, {REASONING: 1.0, CODE: 1.0, FENCE: 1.0, END: 1.0})(
        _rows(dataset, 3)
    )
    assert (batch["attention_mask"] == 0).any(), "the batch should hold padding"
    inputs = {k: v for k, v in batch.items() if k not in ("loss_weights", "token_class")}
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    projected = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: projected.append(args[0].shape[0])
    )

    def run(forward):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast_to_fp32):
            out = forward(**inputs, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out, grads

    trl, trl_grads = run(model.trl_fused_forward)
    assert projected == [], "TRL's head does not call the lm_head module"
    compact, compact_grads = run(model.forward)
    if not cast_to_fp32:  # (in fp32 it projects with the head's weights, not through the module)
        assert projected == [labelled] and labelled < batch["input_ids"].numel() * 0.8
    assert torch.equal(compact.label_mask, trl.label_mask)
    for field in ("log_probs", "entropy"):
        got, want = getattr(compact, field), getattr(trl, field)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (field, (got - want).abs().max())
    assert torch.equal(compact.is_top1, trl.is_top1)
    assert torch.allclose(compact.loss, trl.loss, rtol=1e-5)
    assert compact_grads.keys() == trl_grads.keys()
    for name, want in trl_grads.items():
        error = float((compact_grads[name] - want).abs().max() / want.abs().max())
        assert error < (2e-2 if cast_to_fp32 else 1e-4), (name, error)  # the backbone in bf16 there
    # without fused_lm_head the model is the model: full logits, as generation needs
    with torch.no_grad():
        assert model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.shape[-1] == len(
            processor.tokenizer
        )


def test_compact_lm_head_finds_the_base_model_of_a_peft_model(tiny_path, dataset):
    """TRL patches a PEFT model's base model; the compact head wraps that one, and the adapter's call reaches it."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    model, processor = models.load_model_and_processor(
        models.EarthShaderModelConfig(model_name_or_path=str(tiny_path))
    )
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    add_fused_lm_head(peft.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    assert models.add_compact_lm_head(peft)
    batch = WeightedVLMCollator(processor, {REASONING: 1.0, CODE: 1.0, FENCE: 1.0, END: 1.0})(
        _rows(dataset, 2)
    )
    inputs = {k: v for k, v in batch.items() if k not in ("loss_weights", "token_class")}
    projected = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: projected.append(args[0].shape[0])
    )
    with torch.no_grad():
        out = peft(**inputs, fused_lm_head=True)
        want = peft.get_base_model().trl_fused_forward(**inputs, fused_lm_head=True)
    assert projected == [int((batch["labels"][:, 1:] != -100).sum())]
    assert torch.allclose(out.log_probs, want.log_probs, rtol=1e-4, atol=1e-5)


def test_weighted_sft_trainer_installs_the_compact_head(tiny_path, dataset, tmp_path):
    trainer = _trainer(tiny_path, dataset, tmp_path)
    assert hasattr(trainer.model, "trl_fused_forward")
    assert trainer.model.forward != trainer.model.trl_fused_forward


def test_length_grouped_batches_are_alike_in_length_and_in_random_order():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = torch.randint(160, 271, (4000,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = list(ShuffledLengthGroupedSampler(lengths, 8, generator=torch.Generator().manual_seed(1)))
    theirs = list(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator().manual_seed(1)))
    assert sorted(ours) == list(range(len(lengths)))  # every row once
    assert ours != list(ShuffledLengthGroupedSampler(lengths, 8, generator=torch.Generator().manual_seed(2)))

    def batches(order):
        return [[lengths[i] for i in order[k : k + 8]] for k in range(0, len(order), 8)]

    def spread(order):  # mean longest-minus-shortest within a batch
        return sum(max(b) - min(b) for b in batches(order)) / len(batches(order))

    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(3)).tolist()
    assert spread(ours) == spread(theirs) < spread(random_order) / 10

    def falls(order):  # share of batches no longer than the one before, over one megabatch of 50
        tops = [max(b) for b in batches(order)[1:50]]
        return sum(b <= a for a, b in zip(tops, tops[1:], strict=False)) / (len(tops) - 1)

    assert falls(theirs) == 1.0  # transformers' sampler: each megabatch runs from long to short
    assert falls(ours) < 0.8


def _rows_of_two_lengths(dataset):
    """The training split with every third row's reasoning longer, so completion lengths differ."""
    from datasets import load_from_disk

    extra = " It is white on a black background, and its edge is anti-aliased."

    def lengthen(row, i):
        content = row["completion"][0]["content"][0]
        if i % 3 == 0:
            content["text"] = content["text"].replace(".\n```glsl", "." + extra + "\n```glsl", 1)
        return row

    return load_from_disk(str(dataset))["train"].map(lengthen, with_indices=True)


def test_trainer_batches_by_completion_length_when_asked(tiny_path, dataset, tmp_path):
    rows = _rows_of_two_lengths(dataset)
    trainer = _trainer(
        tiny_path, dataset, tmp_path, train=rows, length_grouped_batches=True, per_device_train_batch_size=4
    )
    tokenizer = trainer.processing_class.tokenizer
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, ShuffledLengthGroupedSampler) and sampler.batch_size == 4
    texts = [row["completion"][0]["content"][0]["text"] for row in rows]
    assert sampler.lengths == completion_lengths(rows, tokenizer)
    assert sampler.lengths == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert len(set(sampler.lengths)) > 1
    assert trainer.train().global_step == 1
    default = _trainer(tiny_path, dataset, tmp_path / "default")
    assert not isinstance(default._get_train_sampler(), ShuffledLengthGroupedSampler)


def test_length_sorted_steps_keep_each_steps_random_rows_and_sort_them():
    lengths = torch.randint(160, 271, (1001,), generator=torch.Generator().manual_seed(0)).tolist()
    order = list(LengthSortedStepSampler(lengths, 8, generator=torch.Generator().manual_seed(1)))
    assert sorted(order) == list(range(len(lengths)))  # every row once
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    steps = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert [sorted(step) for step in steps] == [sorted(shuffled[i : i + 8]) for i in range(0, len(order), 8)]
    assert len(steps[-1]) == 1001 % 8
    assert all([lengths[i] for i in step] == sorted(lengths[i] for i in step) for step in steps)
    assert order != list(LengthSortedStepSampler(lengths, 8, generator=torch.Generator().manual_seed(2)))


def test_trainer_sorts_each_steps_rows_into_its_micro_batches(tiny_path, dataset, tmp_path):
    rows = _rows_of_two_lengths(dataset)
    trainer = _trainer(
        tiny_path,
        dataset,
        tmp_path,
        train=rows,
        max_steps=3,
        length_sorted_steps=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthSortedStepSampler) and sampler.step_size == 4
    assert sampler.lengths == completion_lengths(rows, trainer.processing_class.tokenizer)
    collate, micro_batches = trainer.data_collator, []
    texts = [completion_text(completion) for completion in rows["completion"]]

    def recording(examples):
        micro_batches.append(
            [sampler.lengths[texts.index(completion_text(e["completion"]))] for e in examples]
        )
        return collate(examples)

    trainer.data_collator = recording
    assert trainer.train().global_step == 3
    assert len(micro_batches) >= 6  # accelerate's loader collates one batch ahead
    steps = [micro_batches[i] + micro_batches[i + 1] for i in range(0, 6, 2)]
    assert all(step == sorted(step) for step in steps)
    assert any(len(set(step)) > 1 for step in steps)  # some step mixed lengths, and sorted them


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"length_grouped_batches": True}, "choose one"),
        ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps > 1"),
    ],
)
def test_length_sorted_steps_rejects_what_it_cannot_sort(tmp_path, overrides, message):
    settings = {"length_sorted_steps": True, "gradient_accumulation_steps": 2, **overrides}
    with pytest.raises(UsageError, match=message):
        EarthShaderSFTConfig(output_dir=str(tmp_path), report_to="none", **settings)


def test_vision_learning_rate_trains_the_tower_at_its_own_rate(tiny_path, dataset, tmp_path):
    """With vision_learning_rate the tower and merger sit in optimizer groups of their own rate, which
    the schedule scales as it scales the rest; every trainable tensor is in exactly one group."""
    trainer = _trainer(
        tiny_path,
        dataset,
        tmp_path,
        learning_rate=1e-3,
        vision_learning_rate=1e-5,
        warmup_steps=0,
        max_steps=2,
    )
    trainer.train()
    named = dict(trainer.model.named_parameters())
    vision = {id(p) for n, p in named.items() if models.is_vision_parameter(n)}
    assert vision and all(named[n].requires_grad for n in named)
    grouped = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in named.values())
    factors = set()
    for group in trainer.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= vision or not ids & vision  # no group mixes the two
        assert group["initial_lr"] == pytest.approx(1e-5 if ids <= vision else 1e-3)
        factors.add(round(group["lr"] / group["initial_lr"], 9))
    assert len(factors) == 1 and factors.pop() < 1  # the schedule moved every group alike


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case under test is a machine with no GPU")
def test_bf16_without_a_gpu_trains_in_cpu_autocast(tiny_path, dataset, tmp_path):
    # transformers refuses bf16 with no GPU unless use_cpu is set; the config sets it, and the step runs
    # in bf16 autocast: its loss is close to the fp32 one on the same batch, but not bit-equal.
    first_loss = {}
    for bf16 in (False, True):
        trainer = _trainer(
            tiny_path, dataset, tmp_path / str(bf16), bf16=bf16, cpu_bf16="always", logging_steps=1, seed=0
        )
        assert trainer.args.use_cpu == bf16
        trainer.train()
        assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        first_loss[bf16] = trainer.state.log_history[0]["loss"]
    assert first_loss[True] != first_loss[False]
    assert first_loss[True] == pytest.approx(first_loss[False], rel=0.02)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case under test is a machine with no GPU")
def test_cpu_bf16_auto_keeps_bf16_only_where_the_probe_finds_it_faster(tmp_path):
    # cpu_bf16 'auto' (the default) asks the CPU: bf16 stays on only where its matrix products beat fp32's.
    speedup = models.cpu_bf16_speedup()
    assert 0.05 < speedup < 20  # a ratio of two timings of the same work, not a placeholder
    asked = EarthShaderSFTConfig(output_dir=str(tmp_path / "a"), report_to="none", bf16=True)
    assert asked.cpu_bf16_speedup == round(speedup, 3)
    assert asked.bf16 == (round(speedup, 3) > 1.0) and asked.use_cpu == asked.bf16
    # fp32 asked for, or bf16 forced: no probe, and the choice is the recipe's
    plain = EarthShaderSFTConfig(output_dir=str(tmp_path / "b"), report_to="none", bf16=False)
    forced = EarthShaderSFTConfig(
        output_dir=str(tmp_path / "c"), report_to="none", bf16=True, cpu_bf16="always"
    )
    assert plain.cpu_bf16_speedup is None and not plain.bf16
    assert forced.cpu_bf16_speedup is None and forced.bf16 and forced.use_cpu


def test_cpu_bf16_rejects_an_unknown_choice(tmp_path):
    with pytest.raises(UsageError, match="cpu_bf16 must be 'auto' or 'always'"):
        EarthShaderSFTConfig(output_dir=str(tmp_path), report_to="none", cpu_bf16="sometimes")


def test_weighted_loss_is_exact_under_gradient_accumulation(tiny_path, dataset, tmp_path):
    # Two micro-batches of 2 (different padding) must give the loss and gradient of one batch of 4.
    trainer = _trainer(tiny_path, dataset, tmp_path)
    model = trainer.model.train()
    rows = _rows(dataset, 4)
    whole = _collate(trainer, rows)
    parts = [_collate(trainer, rows[:2]), _collate(trainer, rows[2:])]
    norm = trainer._get_num_items_in_batch(parts, model.device)
    assert torch.isclose(norm, whole["loss_weights"][:, 1:].sum())

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    loss_whole = trainer.compute_loss(model, dict(whole))
    g_whole = grads(loss_whole)
    model.zero_grad()
    loss_parts = 0.0
    for part in parts:
        loss = trainer.compute_loss(model, dict(part), num_items_in_batch=norm)
        loss.backward()
        loss_parts += loss.item()
    g_parts = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert abs(loss_parts - loss_whole.item()) < 1e-4
    assert torch.allclose(g_parts, g_whole, rtol=1e-3, atol=1e-6)


def _run_sft(tiny_path, dataset, out, *extra, timeout=600):
    cmd = [
        sys.executable,
        "-m",
        "earthshader.cli",
        "sft",
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(tiny_path),
        "--dataset_path",
        str(dataset),
        "--output_dir",
        str(out),
        "--vision_warmup_steps",
        "0",
        "--vision_warmup_dataset_path",
        str(dataset),
        # these runs test checkpoints, logs and resumption; compiling (about 95 s a run here) is
        # test_models.py's, and the slow demo test runs the recipe with it
        "--compile_language_model",
        "false",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    return cmd, env


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def test_sft_trains_tiny_model_and_loss_falls(tiny_path, dataset, tmp_path):
    out = tmp_path / "run"
    cmd, env = _run_sft(
        tiny_path, dataset, out, "--max_steps", "20", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--save_steps", "10", "--learning_rate", "2e-3", "--warmup_steps", "2", "--vision_warmup_steps", "4",
        "--vision_warmup_batch_size", "4", "--vision_freeze_after_warmup", "true",
        "--vision_warmup_pair_weight", "1",
    )  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    first = sum(r["loss"] for r in steps[:3]) / 3
    last = sum(r["loss"] for r in steps[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    # the split into parts is logged, and the code part (weighted 5.0) learns
    assert all("loss_code" in r and "loss_reasoning" in r for r in steps)
    assert steps[-1]["loss_code"] < steps[0]["loss_code"] - 1.0
    # cosine with warmup: rises over 2 steps, then decays towards zero
    lrs = [r["learning_rate"] for r in steps]
    assert lrs[0] < lrs[1] and max(lrs) == pytest.approx(2e-3, rel=0.05) and lrs[-1] < 0.05 * max(lrs)
    assert list(out.glob("runs/*/events.out.tfevents.*")), "TensorBoard events"
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    # the dense vision warmup ran first, on the dataset's scenes
    warmup = json.loads((out / "vision_warmup.json").read_text())
    assert len(warmup["loss"]) == 4 and all(v > 0 for v in warmup["loss"])
    # then read the dataset's 4 test pictures through its heads: what the tower sees, recorded
    assert warmup["held_out"]["rows"] == 4 and set(warmup["held_out"]["types"]) == {"circle"}
    assert "angle_error" not in warmup["held_out"]  # no angle target unless the recipe asks
    assert {"op_accuracy", "second_accuracy"} <= set(warmup["held_out"])  # pair targets: it asked for them
    # and the tower it trained stayed as it was through SFT, while the language model moved on
    from safetensors.torch import load_file

    middle, final = (
        load_file(out / "checkpoint-10" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    tower = [k for k in final if ".visual." in f".{k}"]
    assert tower and all(torch.equal(middle[k], final[k]) for k in tower)
    assert any(not torch.equal(middle[k], final[k]) for k in final if k not in tower)


def test_sft_resumes_after_sigkill_at_the_last_complete_checkpoint(tiny_path, dataset, tmp_path):
    out = tmp_path / "run"
    cmd, env = _run_sft(
        tiny_path, dataset, out, "--max_steps", "12", "--per_device_train_batch_size", "2", "--save_steps", "2",
        "--logging_steps", "1",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("checkpoint-*")) and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved and all(step % 2 == 0 for step in saved) and saved[-1] < 12
    # a half-written checkpoint, as a kill during a save would leave it, must not be picked
    (out / ".checkpoint-staging" / "checkpoint-11").mkdir(parents=True, exist_ok=True)

    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    begins = [r for r in _records(out) if r.get("event") == "train_begin"]
    assert [b["step"] for b in begins] == [0, saved[-1]]
    steps = [r["step"] for r in _records(out) if "loss" in r]
    assert steps == list(range(1, 13)), "each step logged once, the killed run's later records dropped"
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert not (out / ".checkpoint-staging").exists()


def test_sft_cli_rejects_a_missing_dataset(tmp_path):
    with pytest.raises(UsageError, match="^dataset .*nope does not exist"):
        cli_main(
            ["--config", str(RECIPE), "--dataset_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path)]
        )


def test_sft_cli_rejects_a_missing_vision_warmup_dataset(dataset, tmp_path):
    # the default recipe warms the tower up on data/stage1: a run elsewhere must name its own
    with pytest.raises(UsageError, match="vision_warmup_dataset_path .*nope does not exist"):
        cli_main(
            [
                *("--config", str(RECIPE), "--dataset_path", str(dataset)),
                *(
                    "--vision_warmup_dataset_path",
                    str(tmp_path / "nope"),
                    "--output_dir",
                    str(tmp_path / "o"),
                ),
            ]
        )
    assert not (tmp_path / "o" / "sft_run.json").exists()  # stopped before the run was recorded


def test_sft_cli_rejects_a_dataset_without_the_columns(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UsageError, match="image, prompt, completion"):
        cli_main(
            [
                "--config",
                str(RECIPE),
                "--dataset_path",
                str(tmp_path / "ds"),
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )


def test_sft_cli_refuses_an_output_dir_it_cannot_resume(dataset, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="--overwrite"):
        cli_main(
            ["--config", str(RECIPE), "--dataset_path", str(dataset), "--output_dir", str(tmp_path / "out")]
        )
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
