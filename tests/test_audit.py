"""The audit: its scoring on cases with known answers, a real audit of the tiny model, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from conftest_audit import stage1_dataset  # noqa: E402

from earthshader import audit  # noqa: E402
from earthshader.cli import main as cli  # noqa: E402

BLACK = "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = vec4(0.0, 0.0, 0.0, 1.0); }"
BROKEN = "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = undefined_thing; }"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return stage1_dataset(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def test_rows(dataset):
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset))["test"]
    targets = [audit.to_image(im) for im in rows["image"]]
    truths = [audit.true_shape_types(s) for s in rows["scene"]]
    return rows, targets, truths


def _score(targets, truths, codes):
    results = audit.render_codes(codes, [t.shape[0] for t in targets])
    return audit.score_all(targets, results, codes, truths, ["1"] * len(targets))


def test_score_all_ground_truth_code_is_perfect(test_rows):
    rows, targets, truths = test_rows
    samples, figures = _score(targets, truths, list(rows["code"]))
    overall = figures["overall"]
    assert overall["n"] == len(targets) >= 4
    assert overall["compile_rate"] == 1.0
    assert overall["mse_all"] < 1e-4  # the dataset's PNGs are the same renders, quantised to 8 bits
    assert overall["mse_compiled"] == overall["mse_all"]
    assert overall["ssim_all"] > 0.99
    assert overall["shape_identity"] == 1.0
    assert overall["shape_count_exact"] == 1.0
    assert overall["shape_count_single_vs_several"] == 1.0
    assert figures["stages"]["1"] == overall
    assert all(s.pred_types == s.true_types for s in samples)


def test_score_all_black_and_broken_predictions_score_as_the_black_baseline(test_rows):
    _, targets, truths = test_rows
    _, black = _score(targets, truths, [BLACK] * len(targets))
    _, broken = _score(targets, truths, [BROKEN] * len(targets))
    b, f = black["overall"], broken["overall"]
    assert b["compile_rate"] == 1.0 and f["compile_rate"] == 0.0
    assert b["mse_all"] == pytest.approx(b["black_mse"], abs=1e-9)
    assert f["mse_all"] == pytest.approx(f["black_mse"], abs=1e-9)
    assert f["ssim_all"] == pytest.approx(f["black_ssim"], abs=1e-9)
    assert f["mse_compiled"] is None and f["ssim_compiled"] is None
    # black is not the truth: the targets all have white shapes
    assert b["black_mse"] > 0.01
    assert b["shape_identity"] == 0.0 and b["shape_count_exact"] == 0.0


def test_best_constant_beats_black_and_any_other_constant(test_rows):
    _, targets, truths = test_rows
    _, figures = _score(targets, truths, [BLACK] * len(targets))
    overall, rgb = figures["overall"], np.array(figures["constant_rgb"])
    assert overall["constant_mse"] < overall["black_mse"]
    for shift in (-0.05, 0.05):
        other = float(np.mean([audit.pixel_mse(np.full_like(t, 0) + rgb + shift, t) for t in targets]))
        assert overall["constant_mse"] < other


def test_render_mse_scores_a_failure_as_black_and_the_truth_near_zero(test_rows):
    rows, targets, _ = test_rows
    results = audit.render_codes([BROKEN, BLACK, rows["code"][0]], [targets[0].shape[0]] * 3)
    broken, black, truth = (audit.render_mse(r, targets[0]) for r in results)
    assert broken == black == audit.pixel_mse(np.zeros_like(targets[0]), targets[0]) > 0.01
    assert truth < 1e-4


def test_expected_best_of_matches_every_subset_and_the_curve_ends_at_the_minimum():
    from itertools import combinations

    rng = np.random.default_rng(0)
    mses = list(rng.uniform(0, 0.1, size=7))
    mses[3] = mses[5]  # ties count once each
    for k in range(1, 8):
        brute = np.mean([min(c) for c in combinations(mses, k)])
        assert audit.expected_best_of(mses, k) == pytest.approx(brute, rel=1e-12)
    with pytest.raises(ValueError):
        audit.expected_best_of(mses, 8)
    other = list(rng.uniform(0, 0.1, size=7))
    curve = audit.best_of_curve([mses, other])
    assert list(curve) == ["1", "2", "4", "7"]
    assert curve["1"] == pytest.approx(np.mean(mses + other))
    assert curve["7"] == pytest.approx((min(mses) + min(other)) / 2)
    assert list(curve.values()) == sorted(curve.values(), reverse=True)


def test_run_audit_tiny_writes_report_md_and_grid(dataset, tmp_path):
    out = tmp_path / "audit"
    report = audit.run_audit(
        "tiny", str(dataset), num_samples=3, out_dir=out, max_new_tokens=8, batch_size=3, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "report.json", "report.md"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["num_samples"] == 3 == len(saved["samples"])
    assert saved["decoding"]["mode"] == "greedy"
    overall = saved["overall"]
    assert 0.0 <= overall["compile_rate"] <= 1.0
    # an untrained model's 8 tokens are no shader: every output scores as black
    assert overall["compile_rate"] == 0.0
    assert overall["mse_all"] == pytest.approx(overall["black_mse"])
    assert "baseline: best constant image MSE" in (out / "report.md").read_text()
    assert report["overall"] == overall
    from PIL import Image

    assert Image.open(out / "grid.png").size[0] > 300


def test_run_audit_best_of_n_records_its_decoding(dataset, tmp_path):
    report = audit.run_audit(
        "tiny",
        str(dataset),
        num_samples=2,
        out_dir=tmp_path / "audit",
        sample=True,
        num_return=3,
        max_new_tokens=6,
        progress=False,
    )
    assert report["decoding"] == {
        "mode": "best of 3 sampled",
        "num_return": 3,
        "temperature": 1.0,
        "max_new_tokens": 6,
        "seed": 0,
    }
    assert len(report["samples"]) == 2
    # every sample's N MSEs are kept, and the best-of-k curve ends at the audit's own figure
    assert [len(row["sampled_mse"]) for row in report["samples"]] == [3, 3]
    assert list(report["best_of"]) == ["1", "2", "3"]
    assert report["best_of"]["3"] == pytest.approx(report["overall"]["mse_all"], abs=1e-6)
    assert "best of k samples" in (tmp_path / "audit" / "report.md").read_text()


def _bad(argv, capsys) -> str:
    code = cli(["eval", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_eval_bad_input_is_one_line_and_exit_2(dataset, tmp_path, capsys):
    from datasets import Dataset, DatasetDict

    out = tmp_path / "out"
    assert "does not exist" in _bad(
        ["--model", str(tmp_path / "nope"), "--data", str(dataset), "--out", str(out)], capsys
    )
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "cannot load model" in _bad(
        ["--model", str(broken), "--data", str(dataset), "--out", str(out)], capsys
    )
    (tmp_path / "empty").mkdir()
    assert "holds no complete checkpoint" in _bad(
        ["--model", str(tmp_path / "empty"), "--data", str(dataset), "--out", str(out)], capsys
    )
    assert "does not exist" in _bad(
        ["--model", "tiny", "--data", str(tmp_path / "nodata"), "--out", str(out)], capsys
    )
    textonly = tmp_path / "textonly"
    DatasetDict({"test": Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(textonly))
    capsys.readouterr()  # the save's progress bar
    assert "lacks the column(s) image, prompt" in _bad(
        ["--model", "tiny", "--data", str(textonly), "--out", str(out)], capsys
    )
    assert "no split 'valid'" in _bad(
        ["--model", "tiny", "--data", str(dataset), "--split", "valid", "--out", str(out)], capsys
    )
    assert "--num-samples" in _bad(
        ["--model", "tiny", "--data", str(dataset), "--num-samples", "0", "--out", str(out)], capsys
    )
    assert not out.exists()


def test_cli_eval_never_overwrites_without_flag(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("mine")
    assert "--overwrite" in _bad(["--model", "tiny", "--data", str(dataset), "--out", str(out)], capsys)
    assert (out / "report.json").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
