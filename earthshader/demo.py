"""The main job, `make demo`: the whole pipeline with the embedded tiny model and its CPU recipes.

    .venv/bin/python -m earthshader.demo [--quick] [--size PX] [--seed N] [--out demo_out]

Steps, each through the same command a user runs: two Stage-1 datasets on the 0.05 grid
(`earthshader data`: single shapes, and the 1-or-2-shape mix), the supervised warmup in two steps
(`earthshader sft`: recipes/tiny/sft.yaml warms the vision tower up, freezes it and trains on single
shapes; recipes/tiny/sft_mix.yaml goes on with the mix), an audit of the SFT model, GRPO on top
(`earthshader grpo`, recipes/tiny/grpo.yaml), an audit of the GRPO model, reward and loss curves
(`earthshader plot`), and the export (`earthshader export`). It ends with a table of the audit
figures and where everything is. `--quick` runs the same steps with small settings in minutes.
`--size` renders the data at that side and has the model read it at that side (the default renders
128 px and the tiny model reads 112: 16 image tokens; 168 px gives 36). `--seed` seeds the data and
both SFT steps and GRPO, for a second draw of the same recipes.

The output folder is the demo's own: it carries a marker file, and the demo refuses to write into
an existing folder without one, so a folder of the user's is never replaced.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from earthshader.errors import ArgumentParser, UsageError

MARKER = ".earthshader-demo"


@dataclass(frozen=True)
class DemoSettings:
    """How big each step is. The full settings fit the 60-minute budget on a 2-core CPU."""

    samples: int  # rows of the single-shape dataset, test rows included
    mix_samples: int  # rows of the 1-or-2-shape mix, test rows included
    test_rows: int  # held-out rows of each dataset; the audits read the mix's
    sft_steps: int | None  # steps of each SFT step; None: the recipes' own
    warmup_steps: int | None  # vision warmup steps; None: the recipe's own
    grpo_steps: int | None
    audit_samples: int
    max_new_tokens: int


GRID = "0.05"  # spacing of every centre and size: 25 values per axis, not 121 (bench/LEARNING.md)
FULL = DemoSettings(
    samples=16200,
    mix_samples=24300,
    test_rows=100,
    sft_steps=None,
    warmup_steps=None,
    grpo_steps=None,
    audit_samples=100,
    max_new_tokens=384,
)
QUICK = DemoSettings(
    samples=64,
    mix_samples=64,
    test_rows=8,
    sft_steps=10,
    warmup_steps=4,
    grpo_steps=2,
    audit_samples=8,
    max_new_tokens=320,
)


def _step(title: str, fn, *args, **kwargs):
    print(f"\n=== {title}", flush=True)
    start = time.monotonic()
    result = fn(*args, **kwargs)
    print(f"=== {title}: done in {time.monotonic() - start:.0f} s", flush=True)
    return result


def _run_cli(module: str, argv: list[str]) -> None:
    import importlib

    code = importlib.import_module(module).cli_main(argv)
    if code:
        raise SystemExit(code)


def prepare_out(out: Path) -> None:
    """Replace a previous demo's folder; refuse any other existing, non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UsageError(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `earthshader.demo`; the next demo run replaces this folder\n")


def stage_args(size: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Extra arguments for ``earthshader data`` and for both ``earthshader sft`` steps.

    A size must be whole merged patches of the tiny model (14 px patches merged 2 x 2: a multiple of
    28), from 2 to 16 of them a side.
    """
    if seed < 0:
        raise UsageError(f"--seed must be 0 or more, not {seed}")
    if size is not None:
        from earthshader.models import TINY_SPEC  # torch and transformers: only when a size is asked for

        patch, merge = TINY_SPEC["vision"]["patch_size"], TINY_SPEC["vision"]["spatial_merge_size"]
        sizes = range(2 * patch * merge, 16 * patch * merge + 1, patch * merge)
        if size not in sizes:
            raise UsageError(
                f"--size must be a multiple of {sizes.step} from {sizes[0]} to {sizes[-1]} "
                f"(the tiny model reads {patch} px patches merged {merge} x {merge}), not {size}"
            )
    data, sft = ["--seed", str(seed)], ["--seed", str(seed)]
    if size is not None:
        data += ["--size", str(size)]
        sft += ["--min_pixels", str(size * size), "--max_pixels", str(size * size)]
    return data, sft


def run_demo(out: Path, settings: DemoSettings, size: int | None = None, seed: int = 0) -> dict:
    """Run every step into ``out``; returns the two audit reports.

    ``size``: the side the data is rendered at and the model reads (None: 128 px read at 112).
    ``seed``: the data's, both SFT steps' and GRPO's seed (the recipes' own is 0).
    """
    from earthshader.audit import report_markdown, run_audit

    data_args, sft_args = stage_args(size, seed)
    prepare_out(out)
    runs = out / "runs"
    data, one = out / "data" / "stage1", out / "data" / "stage1-one"
    sft_one_dir, sft_dir, grpo_dir = runs / "sft-one", runs / "sft", runs / "grpo"
    started = time.monotonic()

    # The mix first: its test split is the audits' held-out set, which the single shapes must not hold
    # (at grid 0.05 there are few single-shape scenes, and 16,200 of them would take in most test ones).
    for folder, extra, what, samples in (
        (data, [], "1 or 2 shapes", settings.mix_samples),
        (one, ["--max-shapes", "1", "--holdout-from", str(data)], "single shapes", settings.samples),
    ):
        _step(
            f"data: {samples} Stage-1 samples, {what}, grid {GRID}",
            _run_cli,
            "earthshader.data",
            [
                *("--stage", "1", "--grid", GRID, *extra, "--num-samples", str(samples)),
                *("--test-fraction", f"{settings.test_rows / samples:.6f}"),
                *data_args,
                *("--out", str(folder)),
            ],
        )

    steps: list[str] = []
    if settings.sft_steps is not None:
        half = str(max(1, settings.sft_steps // 2))
        steps = ["--max_steps", str(settings.sft_steps), "--save_steps", half]
    warmup = [] if settings.warmup_steps is None else ["--vision_warmup_steps", str(settings.warmup_steps)]
    _step(
        "sft 1/2: vision warmup, then single shapes, tower frozen (recipes/tiny/sft.yaml)",
        _run_cli,
        "earthshader.sft",
        [
            *("--config", "recipes/tiny/sft.yaml", "--dataset_path", str(one)),
            *("--vision_warmup_dataset_path", str(data), "--output_dir", str(sft_one_dir)),
            *warmup,
            *steps,
            *sft_args,
        ],
    )
    _step(
        "sft 2/2: the 1-or-2-shape mix (recipes/tiny/sft_mix.yaml)",
        _run_cli,
        "earthshader.sft",
        [
            *("--config", "recipes/tiny/sft_mix.yaml", "--model_name_or_path", str(sft_one_dir)),
            *("--dataset_path", str(data), "--output_dir", str(sft_dir)),
            *steps,
            *sft_args,
        ],
    )

    audit_kwargs = dict(
        split="test",
        num_samples=settings.audit_samples,
        max_new_tokens=settings.max_new_tokens,
        overwrite=True,
    )
    sft_report = _step(
        "eval: audit of the SFT model",
        run_audit,
        str(sft_dir),
        str(data),
        out_dir=sft_dir / "audit",
        **audit_kwargs,
    )

    grpo_argv = [
        "--config",
        "recipes/tiny/grpo.yaml",
        "--model_name_or_path",
        str(sft_dir),
        "--dataset_path",
        str(data),
        "--output_dir",
        str(grpo_dir),
        *("--seed", str(seed)),
    ]
    if settings.grpo_steps is not None:
        grpo_argv += ["--max_steps", str(settings.grpo_steps), "--save_steps", str(settings.grpo_steps)]
        # A smoke run: one batch a step, a plot each step.
        grpo_argv += ["--plot_every", "1", "--gradient_accumulation_steps", "1"]
    _step("grpo: render-in-the-loop RL (recipes/tiny/grpo.yaml)", _run_cli, "earthshader.grpo", grpo_argv)

    grpo_report = _step(
        "eval: audit of the GRPO model",
        run_audit,
        str(grpo_dir),
        str(data),
        out_dir=grpo_dir / "audit",
        **audit_kwargs,
    )

    from earthshader.export import export_run
    from earthshader.plots import plot_runs

    curves = _step(
        "plot: reward and loss curves",
        plot_runs,
        [sft_one_dir, sft_dir, grpo_dir],
        out / "curves.png",
        overwrite=True,
    )
    export = _step("export: the trained model", export_run, grpo_dir, out / "export", overwrite=True)

    minutes = (time.monotonic() - started) / 60
    print("\n" + "=" * 72)
    print(f"EarthShader demo finished in {minutes:.1f} min\n")
    print(_summary_table(sft_report, grpo_report))
    print()
    print(f"audit reports: {sft_dir / 'audit' / 'report.md'}")
    print(f"               {grpo_dir / 'audit' / 'report.md'}")
    print(f"sample grids:  {grpo_dir / 'audit' / 'grid.png'}")
    print(f"curves:        {curves}")
    print(f"exported:      {export}")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "minutes": minutes,
                "size": size,
                "seed": seed,
                "sft": sft_report["overall"],
                "grpo": grpo_report["overall"],
            },
            indent=2,
        )
    )
    (out / "summary.md").write_text(
        "# SFT\n\n" + report_markdown(sft_report) + "\n# GRPO\n\n" + report_markdown(grpo_report)
    )
    return {"sft": sft_report, "grpo": grpo_report}


def _summary_table(sft: dict, grpo: dict) -> str:
    from earthshader.audit import METRICS, _fmt

    rows = [("figure", "after SFT", "after GRPO")]
    for key, label in METRICS:
        rows.append((label, _fmt(key, sft["overall"].get(key)), _fmt(key, grpo["overall"].get(key))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="earthshader.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small settings: the same steps in a few minutes"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="render the data at this side and have the model read it at this side: a multiple of 28, "
        "56-448 (default: rendered at 128, read at 112)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, both SFT steps and GRPO (default 0)"
    )
    parser.add_argument("--out", default="demo_out", help="the demo's own output folder (default demo_out)")
    try:
        args = parser.parse_args(argv)
        run_demo(Path(args.out), QUICK if args.quick else FULL, size=args.size, seed=args.seed)
    except UsageError as exc:
        print(f"earthshader demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
