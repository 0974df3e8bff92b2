"""Experiment helper (issues 5 and 7): how far below greedy decoding can reweighting the samples go?

GRPO raises the probability of the answers a policy already samples; it does not write new ones. So
the expected best of k samples (by pixel MSE, with the picture in hand) bounds what its sharpening
can give at a group size of k. This reads a greedy audit and a best-of-N audit of the same images
(`earthshader eval --sample --num-return N`, whose rows keep every sample's MSE in ``sampled_mse``)
and prints, for k = 1, 2, 4, ... N: the expected best-of-k MSE, its change against greedy with a 95%
bootstrap interval over the images (`scipy.stats.bootstrap`, 10,000 resamples, seed 0), and on how
many images it beats the greedy answer.

    .venv/bin/python recipes/experiments/best_of_ceiling.py GREEDY/report.json BEST_OF_N/report.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from compare_audits import FIGURES, load
from scipy.stats import bootstrap

from earthshader.audit import expected_best_of

PROG = "best_of_ceiling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("greedy", help="the greedy audit's report.json")
    parser.add_argument("sampled", help="the best-of-N audit's report.json of the same images")
    args = parser.parse_args()
    greedy, sampled = load(args.greedy, PROG), load(args.sampled, PROG)
    if [s["index"] for s in greedy] != [s["index"] for s in sampled]:
        sys.exit(f"{PROG}: the two audits are not of the same images (their indices differ)")
    if not all("sampled_mse" in s for s in sampled):
        sys.exit(f"{PROG}: {args.sampled}: no sampled_mse rows (audit it with --sample --num-return N)")
    read_mse = FIGURES[0][1]
    g = np.array([read_mse(s) for s in greedy])
    n = min(len(s["sampled_mse"]) for s in sampled)
    ks = sorted({2**j for j in range(n.bit_length())} | {n})
    print(f"greedy MSE {g.mean():.4f} on {len(g)} images; {n} samples each\n")
    print("| k | best of k | against greedy | 95% interval | relative | images better |")
    print("|---:|---:|---:|---|---:|---:|")
    for k in ks:
        b = np.array([expected_best_of(s["sampled_mse"][:n], k) for s in sampled])
        d = b - g
        ci = bootstrap((d,), np.mean, n_resamples=10_000, random_state=0).confidence_interval
        print(
            f"| {k} | {b.mean():.4f} | {d.mean():+.4f} | [{ci.low:+.4f}, {ci.high:+.4f}] | "
            f"{d.mean() / g.mean():+.1%} [{ci.low / g.mean():+.1%}, {ci.high / g.mean():+.1%}] | "
            f"{int((d < -1e-6).sum())} |"
        )


if __name__ == "__main__":
    main()
