"""Can a PITI model learn to read its condition at all? A memorisation probe.

    python eval/condition_probe.py runs/toy/joint-mask/model.safetensors
    python eval/condition_probe.py MODEL --steps 300 --every 50 --lr 5e-4 --threads 1

A few training scenes (default 8) are shown again and again at large noise levels (t in [600, 1000)),
where x_t says little about the image and only the condition tells the scenes apart. Every ``--every``
steps it prints, on those scenes at t = 900, the error of the clean-image estimate and how much it changes
when each scene gets the next scene's condition (the "other condition" column of eval/x0_error.py). If that
change rises towards the difference between the scenes, gradients do reach the decoder through the
condition path; if it stays ~0, something in that path is shut. It says nothing about generalisation:
identifying 8 scenes is much easier than following a new layout. The model is trained in memory only
(Adam, plain epsilon MSE); nothing is written.
"""

from __future__ import annotations

import argparse
import sys

import torch

from piti.checkpoints import load_model
from piti.errors import PitiError
from piti.evaluation.diagnostics import probe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a PITI base model file of this project")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--every", type=int, default=50, help="print every this many steps (default 50)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--scenes", type=int, default=8, help="training scenes shown again and again (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # network dropout
    try:
        model = load_model(args.model).float()
        print(f"{args.model}: {args.scenes} training scenes, t in [600, 1000), lr {args.lr}; measured at t = 900")
        print(f"{'step':>5} {'x0 error':>9} {'x0 change, other condition':>27}")
        for step, err, change in probe(model, args.steps, args.every, args.lr, args.scenes):
            print(f"{step:>5} {err:9.3f} {change:27.3f}", flush=True)
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
