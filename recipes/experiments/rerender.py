"""Experiment helper (issue 7): a dataset's rows rendered again at another image size.

The scenes, texts and splits stay as they are, so that audits of models that read different sizes
pair image by image (`compare_audits.py`). `earthshader data --size` with the same seed does not give
the same scenes: the visibility filter reads pixels, so a few scenes pass at one size and not at the
other, and every later row shifts. Every image is rendered through the shared render pool, as the
data factory renders them (byte-identical to what `earthshader data --size` writes for the same scene).

    .venv/bin/python recipes/experiments/rerender.py /tmp/s19/s2two 168 /tmp/s23/s2two168p
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets import load_from_disk

from earthshader.data import png_bytes
from earthshader.render import render_many

META = "earthshader_data.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a dataset folder written by earthshader data")
    parser.add_argument("size", type=int, help="image side in pixels")
    parser.add_argument("out", help="a new folder for the re-rendered dataset")
    args = parser.parse_args()
    source, out = Path(args.data), Path(args.out)
    if not (source / META).is_file():
        return f"rerender: {source}: not a dataset written by earthshader data (no {META})"
    if out.exists() and any(out.iterdir()):
        return f"rerender: {out} is not empty; choose a new folder"

    def redo(batch: dict) -> dict:
        results = render_many(batch["code"], size=args.size)
        failed = [r.message for r in results if r.image is None]
        if failed:
            raise RuntimeError(f"a row's code no longer renders: {failed[0]}")
        batch["image"] = [{"bytes": png_bytes(r.image), "path": None} for r in results]
        return batch

    try:
        dataset = load_from_disk(str(source)).map(redo, batched=True, batch_size=256)
    except RuntimeError as exc:
        return f"rerender: {source}: {exc}"
    dataset.save_to_disk(str(out))
    meta = json.loads((source / META).read_text())
    meta.update(size=args.size, rerendered_from=str(source))
    (out / META).write_text(json.dumps(meta, indent=2))
    print(f"wrote {out}: {', '.join(f'{k} {len(v)}' for k, v in dataset.items())}, at {args.size} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
