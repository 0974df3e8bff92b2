"""Experiment helper (issue 7): Stage-1 data with every parameter on a coarser grid (default 0.05).

Runs `earthshader data --stage 1 ...` with Stage 1's ``step`` replaced, so that centres and sizes are
multiples of 0.05 instead of 0.01 (25 possible centre values per axis instead of 121):

    .venv/bin/python recipes/experiments/stage1_grid_data.py --step 5 -- \
        --num-samples 8100 --test-fraction 0.0124 --seed 0 --out /tmp/l7/data/s1q5
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from earthshader import data, scenes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=5, help="grid, in hundredths")
    parser.add_argument("data_args", nargs=argparse.REMAINDER, help="arguments of `earthshader data`")
    args = parser.parse_args()
    scenes.STAGES[1] = dataclasses.replace(scenes.STAGES[1], step=args.step)
    rest = [a for a in args.data_args if a != "--"]
    return data.cli_main(["--stage", "1", *rest])


if __name__ == "__main__":
    sys.exit(main())
