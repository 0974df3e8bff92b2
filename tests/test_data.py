"""The dataset factory: deterministic, filtered, TRL-shaped, safe with existing output; Shadereval ingestion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Image, load_from_disk

from earthshader.cli import main as earthshader
from earthshader.data import (
    PROMPT,
    FilterConfig,
    fingerprint,
    generate,
    image_rejection,
    ingest_shadereval,
    iter_files,
    read_table,
    scene_rejection,
)
from earthshader.errors import UsageError
from earthshader.glsl import extract_code
from earthshader.scenes import Annulus, Box, Circle, Op, Scene, describe, from_glsl, scene_from_json

FIXTURE = Path(__file__).parent / "fixtures" / "shadereval_sample.jsonl"
FIXTURE_KEPT = ["fx0001", "fx0002", "fx0003", "fx0004", "fx0005"]


def _build(out: Path, *args: str) -> int:
    return earthshader(["data", "--out", str(out), *args])


@pytest.fixture(scope="module")
def stage2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "stage2"
    assert (
        _build(out, "--stage", "2", "--num-samples", "40", "--seed", "3", "--size", "64", "--workers", "2")
        == 0
    )
    return out


def test_data_cli_is_deterministic_whatever_the_worker_count(stage2, tmp_path):
    other = tmp_path / "again"
    assert (
        _build(other, "--stage", "2", "--num-samples", "40", "--seed", "3", "--size", "64", "--workers", "1")
        == 0
    )
    assert fingerprint(other) == fingerprint(stage2)
    assert list(iter_files(other)) == list(iter_files(stage2))
    different = tmp_path / "seed4"
    assert _build(different, "--stage", "2", "--num-samples", "40", "--seed", "4", "--size", "64") == 0
    assert fingerprint(different)["train"] != fingerprint(stage2)["train"]


def test_data_cli_writes_a_dataset_trl_can_read(stage2):
    dataset = load_from_disk(str(stage2))
    assert sorted(dataset) == ["test", "train"]
    assert (len(dataset["train"]), len(dataset["test"])) == (36, 4)
    train = dataset["train"]
    assert isinstance(train.features["image"], Image)
    assert {"image", "prompt", "reasoning", "code", "completion", "scene", "stage", "seed"} <= set(
        train.column_names
    )
    codes = list(train["code"]) + list(dataset["test"]["code"])
    assert len(set(codes)) == len(codes)  # identical scenes appear once
    for row in train:
        assert row["image"].size == (64, 64)
        assert row["stage"] == 2 and row["seed"] == 3
        (turn,) = row["prompt"]
        assert turn["role"] == "user"
        assert [part["type"] for part in turn["content"]] == ["image", "text"]
        assert turn["content"][1]["text"] == PROMPT
        (answer,) = row["completion"]
        assert answer["role"] == "assistant"
        text = answer["content"][0]["text"]
        assert text.startswith(row["reasoning"]) and "```glsl\n" in text
        scene = scene_from_json(row["scene"])
        assert extract_code(row["completion"]) == row["code"].strip()
        assert from_glsl(row["code"]) == scene
        assert row["reasoning"] == describe(scene)
        assert image_rejection(np.asarray(row["image"], dtype=np.float32) / 255.0) is None
    meta = json.loads((stage2 / "earthshader_data.json").read_text())
    assert meta["summary"]["kept"] == 40
    assert meta["fingerprint"] == fingerprint(stage2)


def test_dataset_prompts_fit_trl_multimodal_messages(stage2):
    data_utils = pytest.importorskip("trl.data_utils")
    row = load_from_disk(str(stage2))["train"][0]
    messages = data_utils.prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    assert messages[0]["content"][0]["image"] is row["image"]
    assert data_utils.is_conversational({"prompt": row["prompt"], "completion": row["completion"]})


def test_generate_counts_every_candidate_up_to_the_last_kept():
    rows, summary = generate(2, 30, seed=9, size=32, progress=False)
    assert len(rows) == summary.kept == 30
    assert summary.kept + sum(summary.rejected.values()) == summary.candidates == rows[-1]["index"] + 1
    assert set(summary.rejected) <= {
        "duplicate",
        "off_screen",
        "too_small",
        "too_large",
        "hidden_shape",
        "near_uniform",
    }
    assert "kept 30 of" in summary.line()
    # a different batch size changes nothing
    again, summary2 = generate(2, 30, seed=9, size=32, progress=False, max_batch=7)
    assert [r["code"] for r in again] == [r["code"] for r in rows]
    assert summary2.to_json() == summary.to_json()


def test_generate_stage_one_keeps_to_its_primitives():
    rows, _ = generate(1, 30, seed=0, size=32, progress=False)
    for row in rows:
        scene = scene_from_json(row["scene"])
        assert 1 <= len(scene.shapes) <= 2
        assert {type(s) for s in scene.shapes} <= {Circle, Box, Annulus}


def test_generate_on_a_coarser_grid_with_single_shapes():
    """The first step of the tiny model's curriculum: one shape a scene, every value on the 0.05 grid."""
    rows, _ = generate(1, 40, seed=0, size=32, progress=False, grid=0.05, max_shapes=1)
    assert len(rows) == 40
    values = []
    for row in rows:
        scene = scene_from_json(row["scene"])
        assert len(scene.shapes) == 1 and row["reasoning"].startswith("One shape")
        values += [v for v in scene.shapes[0].params().values()]
    assert all(abs(v * 20 - round(v * 20)) < 1e-9 for v in values), values
    # the stage's own grid is 0.01: some of its values are off the 0.05 grid
    plain, _ = generate(1, 40, seed=0, size=32, progress=False)
    plain_values = [v for r in plain for s in scene_from_json(r["scene"]).shapes for v in s.params().values()]
    assert any(abs(v * 20 - round(v * 20)) > 1e-6 for v in plain_values)
    assert {len(scene_from_json(r["scene"]).shapes) for r in plain} == {1, 2}


def test_generate_in_reading_order_keeps_the_pictures_and_reorders_the_descriptions():
    """Stage-2 pairs under union, intersect or smooth union list their shapes left to right on asking:
    the same candidates pass the filter and draw the same images; only the texts change."""
    plain, _ = generate(2, 40, seed=3, size=32, progress=False, max_shapes=2)
    ordered, _ = generate(2, 40, seed=3, size=32, progress=False, max_shapes=2, reading_order=True)
    assert [r["index"] for r in plain] == [r["index"] for r in ordered]
    assert all(
        np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        for a, b in zip(plain, ordered, strict=True)
    )
    moved = 0
    for a, b in zip(plain, ordered, strict=True):
        before, after = scene_from_json(a["scene"]), scene_from_json(b["scene"])
        assert sorted(before.shapes, key=repr) == sorted(after.shapes, key=repr) and before.ops == after.ops
        if before != after:
            moved += 1
            assert b["completion"] != a["completion"] and before.ops[0].kind != "subtract"
            assert [(s.x, s.y) for s in after.shapes] == sorted((s.x, s.y) for s in after.shapes)
    assert moved > 0


def test_a_held_out_scene_is_kept_out_in_either_order_of_its_shapes():
    """A dataset in reading order keeps out another's scenes listed in the drawn order, and the other
    way round: the factory compares canonical forms, not the texts of the ``scene`` column."""
    plain, _ = generate(2, 40, seed=3, size=32, progress=False, max_shapes=2)
    ordered, _ = generate(2, 40, seed=3, size=32, progress=False, max_shapes=2, reading_order=True)
    plain_texts, ordered_texts = {r["scene"] for r in plain}, {r["scene"] for r in ordered}
    assert plain_texts != ordered_texts  # some pairs are listed the other way round
    drawn = {r["index"] for r in plain}
    for reading_order, held in ((True, plain_texts), (False, ordered_texts)):
        rows, summary = generate(
            2, 10, seed=3, size=32, progress=False, max_shapes=2, reading_order=reading_order, held_out=held
        )
        assert summary.rejected["held_out"] == len(held) and not drawn & {r["index"] for r in rows}


def test_data_cli_holdout_and_exclude_keep_other_datasets_scenes_out(tmp_path):
    """The demo's single shapes are drawn after the mix and never hold one of the mix's test scenes,
    which at grid 0.05, with few single-shape scenes to draw from, they otherwise would; and an
    audit set drawn with --exclude-from holds no scene of either dataset."""
    mix, one, plain = tmp_path / "mix", tmp_path / "one", tmp_path / "plain"
    common = ("--stage", "1", "--grid", "0.05", "--size", "32", "--seed", "0")
    assert _build(mix, *common, "--num-samples", "300", "--test-fraction", "0.3") == 0
    single = (*common, "--max-shapes", "1", "--num-samples", "600")
    assert _build(plain, *single) == 0
    assert _build(one, *single, "--holdout-from", str(mix)) == 0

    def scenes(path, splits=("train", "test")):
        data = load_from_disk(str(path))
        return {s for split in splits for s in data[split]["scene"]}

    test = scenes(mix, ["test"])
    assert scenes(plain) & test  # without it the leak is there
    assert not scenes(one) & test
    meta = json.loads((one / "earthshader_data.json").read_text())
    assert meta["summary"]["rejected"]["held_out"] == len(scenes(plain) & test) > 0
    assert meta["held_out"] == len(test)

    # an audit set that a model trained on both never saw: no scene of any split of either
    fresh = tmp_path / "fresh"
    draw = ("--stage", "1", "--grid", "0.05", "--size", "32", "--seed", "1", "--max-shapes", "1")
    args = (*draw, "--num-samples", "200", "--test-fraction", "0.99")
    assert _build(fresh, *args, "--exclude-from", str(mix), "--exclude-from", str(plain)) == 0
    seen = scenes(mix) | scenes(plain)
    assert not scenes(fresh) & seen and len(scenes(fresh)) == 200
    meta = json.loads((fresh / "earthshader_data.json").read_text())
    assert meta["summary"]["rejected"]["held_out"] > 0  # the seed-1 draw did meet seen scenes
    assert meta["held_out"] == len(seen) and len(meta["exclude_from"]) == 2
    assert load_from_disk(str(fresh))["test"].num_rows >= 198


@pytest.mark.parametrize(
    ("scene", "reason"),
    [
        (Scene(shapes=(Circle(0.0, 0.0, 0.4),)), None),
        (Scene(shapes=(Circle(0.95, 0.95, 0.4),)), "off_screen"),
        (Scene(shapes=(Circle(0.0, 0.0, 0.03),)), "too_small"),
        (Scene(shapes=(Box(0.0, 0.0, 1.0, 0.98),)), "too_large"),
        (
            Scene(shapes=(Circle(-0.5, 0.0, 0.3), Circle(0.5, 0.0, 0.3)), ops=(Op("subtract"),)),
            "hidden_shape",
        ),
        (
            Scene(shapes=(Circle(0.0, 0.0, 0.2), Circle(0.0, 0.0, 0.5)), ops=(Op("intersect"),)),
            "hidden_shape",
        ),
        (Scene(shapes=(Circle(0.0, 0.0, 0.5), Circle(0.1, 0.0, 0.1)), ops=(Op("union"),)), "hidden_shape"),
        (Scene(shapes=(Circle(-0.5, 0.0, 0.3), Circle(0.5, 0.0, 0.3)), ops=(Op("intersect"),)), "too_small"),
        (Scene(shapes=(Circle(0.0, 0.0, 0.5), Circle(0.3, 0.0, 0.3)), ops=(Op("subtract"),)), None),
    ],
)
def test_scene_rejection_reasons(scene, reason):
    assert scene_rejection(scene) == reason


def test_scene_rejection_drops_a_shape_mostly_under_another():
    """Under a union, a shape must show over 30% of its own area: the audit's misses on pairs were
    all such pairs (bench/LEARNING.md, session 11). A subtraction shows only where it cuts."""
    big = Circle(0.0, 0.0, 0.5)
    under = Scene(shapes=(big, Circle(0.4, 0.0, 0.2)), ops=(Op("union"),))
    assert scene_rejection(under) == "hidden_shape"
    assert scene_rejection(under, FilterConfig(min_visible_share=0.0)) is None
    assert scene_rejection(Scene(shapes=(big, Circle(0.45, 0.0, 0.2)), ops=(Op("union"),))) is None
    assert scene_rejection(Scene(shapes=(big, Circle(0.6, 0.0, 0.2)), ops=(Op("subtract"),))) is None


def test_image_rejection_catches_near_uniform_images():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 0.3, dtype=np.float32)
    assert image_rejection(flat) == "near_uniform"
    assert image_rejection(flat + rng.uniform(-0.05, 0.05, flat.shape).astype(np.float32)) == "near_uniform"
    speck = flat.copy()
    speck[:5, :5] = 1.0  # 0.6 % of the frame
    assert image_rejection(speck) == "near_uniform"
    block = flat.copy()
    block[:16, :16] = 1.0  # 6 % of the frame
    assert image_rejection(block) is None
    assert image_rejection(block, FilterConfig(min_contrast_fraction=0.1)) == "near_uniform"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage", "9"], "unknown stage 9"),
        (["--stage", "2", "--num-samples", "0"], "--num-samples must be positive"),
        (["--stage", "2", "--num-samples", "-5"], "--num-samples must be positive"),
        (["--stage", "2", "--test-fraction", "1.5"], "--test-fraction"),
        (["--stage", "two"], "invalid int value"),
        ([], "exactly one of --stage"),
        (["--stage", "1", "--from-shadereval", str(FIXTURE)], "exactly one of --stage"),
        (["--from-shadereval", "/nonexistent/shadereval.parquet"], "no such file"),
        (["--stage", "1", "--grid", "0.055"], "--grid must be a positive multiple of 0.01"),
        (["--stage", "1", "--grid", "0"], "--grid must be a positive multiple"),
        (["--stage", "1", "--max-shapes", "3"], "--max-shapes must be in 1..2"),
        (["--stage", "1", "--max-shapes", "0"], "--max-shapes must be in 1..2"),
        (["--from-shadereval", str(FIXTURE), "--grid", "0.05"], "apply to a --stage"),
        (["--from-shadereval", str(FIXTURE), "--reading-order"], "apply to a --stage"),
        (["--from-shadereval", str(FIXTURE), "--holdout-from", str(FIXTURE)], "apply to a --stage"),
        (["--from-shadereval", str(FIXTURE), "--exclude-from", str(FIXTURE)], "apply to a --stage"),
        (["--stage", "1", "--holdout-from", "/nonexistent/dataset"], "not a dataset folder"),
        (["--stage", "1", "--exclude-from", "/nonexistent/dataset"], "--exclude-from /nonexistent"),
    ],
)
def test_data_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert _build(out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_data_cli_keeps_an_existing_folder_without_overwrite(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _build(out, "--stage", "1", "--num-samples", "5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_data_cli_overwrite_replaces_the_folder_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "replace"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert _build(out, "--stage", "1", "--num-samples", "6", "--size", "32", "--overwrite") == 0
    assert not (out / "old.txt").exists()
    assert len(load_from_disk(str(out))["train"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replace"]


def test_data_cli_rejects_an_unreadable_shadereval_file(tmp_path, capsys):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"\x00\x01 not parquet")
    out = tmp_path / "out"
    assert _build(out, "--from-shadereval", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read" in err
    assert not out.exists()


def test_read_table_needs_records():
    with pytest.raises(UsageError):
        read_table(FIXTURE.parent)  # a folder that is not a saved dataset


def test_shadereval_ingestion_keeps_single_pass_programs_that_render(tmp_path):
    out = tmp_path / "shadereval"
    assert _build(out, "--from-shadereval", str(FIXTURE), "--test-fraction", "0.2") == 0
    dataset = load_from_disk(str(out))
    rows = list(dataset["train"]) + list(dataset["test"])
    assert sorted(r["id"] for r in rows) == FIXTURE_KEPT
    assert (len(dataset["train"]), len(dataset["test"])) == (4, 1)
    source = {r["id"]: r for r in read_table(FIXTURE)}
    for row in rows:
        assert row["code"] == source[row["id"]]["image_code"]
        assert row["author"] == source[row["id"]]["author"] and row["license"] == source[row["id"]]["license"]
        assert row["stage"] == 0 and row["scene"] == "null"
        assert extract_code(row["completion"]) == row["code"].strip()
        assert row["image"].size == (128, 128)
    meta = json.loads((out / "earthshader_data.json").read_text())
    assert meta["summary"]["rejected"] == {
        "duplicate": 1,
        "multipass": 1,
        "near_uniform": 1,
        "render_compile_error": 1,
    }


def test_shadereval_reads_parquet_and_saved_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    records = read_table(FIXTURE)
    parquet = tmp_path / "inputs.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    saved = tmp_path / "saved"
    Dataset.from_list(records).save_to_disk(str(saved))
    for path in (parquet, saved):
        rows, summary = ingest_shadereval(path, size=32, progress=False)
        assert [r["id"] for r in rows] == FIXTURE_KEPT, path
        assert summary.kept == 5
    rows, _ = ingest_shadereval(FIXTURE, size=32, progress=False, limit=2)
    assert [r["id"] for r in rows] == FIXTURE_KEPT[:2]


@pytest.mark.slow
def test_data_cli_full_stage_two_run(tmp_path):
    out = tmp_path / "stage2"
    assert _build(out, "--stage", "2", "--num-samples", "2000", "--seed", "0") == 0
    dataset = load_from_disk(str(out))
    assert (len(dataset["train"]), len(dataset["test"])) == (1800, 200)
    counts = {len(scene_from_json(s).shapes) for s in dataset["train"]["scene"]}
    assert counts == {2, 3, 4, 5}
