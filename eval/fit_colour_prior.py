"""Fit the depth task's colour prior (the colour redraw's, ``redraw_colour_threshold``) and report its readings.

    python eval/fit_colour_prior.py                  # checkpoints/toy/rewards/colour_prior.safetensors
    python eval/fit_colour_prior.py --num 50 --out /tmp/prior.safetensors     # a quick try

Per class and depth bin, the Gaussian of the colours of ``--num`` training scenes' 64-px images
(:mod:`piti.train.colour_prior`, where the work is). Then it prints the prior's reading of ``--check`` held-out real
images, their classes read by the class model as in sampling: the scale against which a threshold is set.
The command and the readings are stored in the file's header.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from piti.errors import PitiError
from piti.pipeline import TOY_CHECKPOINT_DIR
from piti.train.colour_prior import colour_distances, fit_colour_prior, save_colour_prior
from piti.train.rewards import load_reward_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=400, help="training scenes (stream 0) to fit on (default 400)")
    p.add_argument("--check", type=int, default=400, help="held-out real images to read (scenes 1000..; default 400)")
    p.add_argument("--class-model", type=Path, default=TOY_CHECKPOINT_DIR / "rewards" / "mask.safetensors")
    p.add_argument("--out", type=Path, default=TOY_CHECKPOINT_DIR / "rewards" / "colour_prior.safetensors")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        classes = load_reward_model(args.class_model, task="mask")
        prior = fit_colour_prior(args.num, progress=True)
        real = colour_distances(prior, classes, num=args.check, start=1000)
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    readings = {q: float(np.percentile(real, q)) for q in (50, 99, 100)}
    print(f"{int(prior.seen.sum())} of {len(prior.seen)} (class, depth bin) pairs seen in {args.num} scenes")
    print(
        f"held-out real images ({args.check}): median {readings[50]:.2f}, 99th percentile {readings[99]:.2f}, "
        f"largest {readings[100]:.2f}"
    )
    command = "python " + shlex.join(["eval/fit_colour_prior.py", *(sys.argv[1:] if argv is None else argv)])
    meta = {"command": command, "scenes": args.num, "real_readings": {str(k): v for k, v in readings.items()}}
    save_colour_prior(args.out, prior, meta)
    print(f"written to {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
