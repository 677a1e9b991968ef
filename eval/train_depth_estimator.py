"""Train the toy depth estimator of the synthetic world and report its error on held-out real scenes.

    python eval/train_depth_estimator.py        # the shipped file: checkpoints/toy/depth_estimator.safetensors
    python eval/train_depth_estimator.py --steps 20 --out /tmp/depth.safetensors   # a quick try

The depth estimator is the judge of the depth task's controllability (``piti eval align --task depth``): it is
run on images generated from held-out depth maps, and its error there (RMSE in metres, AbsRel, over the pixels
that have a depth) is compared with its error on the real images of the same scenes, printed here. The figures,
the command and the timings are also stored in the checkpoint's header (``results``). The work is
:mod:`piti.evaluation.depth_estimator`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from piti.evaluation.depth_estimator import (
    DepthEstimator,
    DepthEstimatorConfig,
    default_depth_estimator_path,
    evaluate_depth_estimator,
    save_depth_estimator,
    train_depth_estimator,
)
from piti.evaluation.scenes import HELDOUT_STREAM

# (size, render size) of the held-out evaluations: as the datasets reduce, then native
EVALS = ((64, 256), (128, 256), (64, 64), (128, 128))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps (default 1200, the shipped file)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="scenes per step; each gives two 64-px examples (default 16)"
    )
    p.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--max-cpu-minutes", type=float, default=20.0, help="stop after this much CPU time (default 20)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--eval-num", type=int, default=100, help="held-out scenes per evaluation (default 100)")
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default checkpoints/toy/depth_estimator.safetensors)"
    )
    args = p.parse_args(argv)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_depth_estimator_path()
    torch.manual_seed(args.seed)
    model = DepthEstimator(DepthEstimatorConfig())
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"depth estimator: {n_params / 1e3:.0f}K parameters, widths {model.config.widths}, "
        f"{torch.get_num_threads()} threads, fp32"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    losses = train_depth_estimator(
        model,
        args.steps,
        args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=max(1, args.steps // 15),
        max_cpu_seconds=60 * args.max_cpu_minutes,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    final = sum(losses[-10:]) / len(losses[-10:])
    print(
        f"trained {len(losses)} steps x {args.batch_size} scenes in {wall:.0f}s wall, {cpu:.0f}s CPU time "
        f"(final loss {final:.4f}, L1 of log depth)"
    )

    results = []
    print(f"\nheld-out real scenes (HELDOUT_STREAM={HELDOUT_STREAM}, {args.eval_num} per row):")
    print(f"{'size':>5} {'rendered at':>11} {'RMSE (m)':>9} {'AbsRel':>7}")
    for size, render in EVALS:
        r = evaluate_depth_estimator(model, args.eval_num, size, render)
        results.append(r)
        print(f"{size:>5} {render:>11} {r['rmse']:>9.2f} {r['absrel']:>7.3f}", flush=True)

    save_depth_estimator(
        out,
        model,
        metadata={
            "results": {
                "command": command,
                "steps": len(losses),
                "steps_planned": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "train_wall_s": round(wall, 1),
                "train_cpu_s": round(cpu, 1),
                "threads": torch.get_num_threads(),
                "eval": results,
                "final_loss": final,
            },
        },
    )
    print(f"\nwrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
