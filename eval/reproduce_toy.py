"""The paper's claims re-run at toy scale (finetuning strategy, pretraining, upsampler, guidance, steps).

    python eval/reproduce_toy.py --quick --out /tmp/toy-quick            # plumbing check, a few minutes
    python eval/reproduce_toy.py --experiments guidance steps            # the experiments without training
    OMP_NUM_THREADS=1 python eval/reproduce_toy.py --lane 0 --lanes 2 &  # two lanes side by side, one per core
    OMP_NUM_THREADS=1 python eval/reproduce_toy.py --lane 1 --lanes 2 &
    python eval/reproduce_toy.py --summarize                             # tables and plots of what exists

Every arm writes OUT/arms/EXPERIMENT/ARM.json; an arm whose file exists is skipped, and training runs resume
from their run folders (runs/reproduce-toy/train/), so the same command continues an interrupted run.
The work is in :mod:`piti.evaluation.reproduce`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from piti.errors import PitiError
from piti.evaluation import reproduce as rp


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--experiments",
        nargs="+",
        choices=rp.EXPERIMENTS,
        default=list(rp.EXPERIMENTS),
        help="experiments to run (default all, in this order)",
    )
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing in a few minutes")
    p.add_argument("--out", type=Path, help="results folder (default eval/results/toy, or eval/results/toy-quick)")
    p.add_argument("--lane", type=int, default=0, help="this process's lane (default 0)")
    p.add_argument("--lanes", type=int, default=1, help="number of lanes the arms are split into (default 1)")
    p.add_argument("--scenes", type=int, help="held-out scenes per evaluation (default: the mode's)")
    p.add_argument("--train-steps", type=int, help="steps of every base-model training arm (default: the mode's)")
    p.add_argument("--train-seed", type=int, help="seed of every training run (default 0); results ARM@trainT.json")
    p.add_argument("--upsampler-steps", type=int, help="steps of every upsampler training arm (default: the mode's)")
    p.add_argument("--arms", nargs="+", help="run only these arms (names, or EXPERIMENT/NAME)")
    p.add_argument("--precision", default="auto", help="sampling precision: auto, fp32, bf16 (default auto)")
    p.add_argument(
        "--train-precision",
        default="auto",
        help="training precision: auto (bf16 where the CPU computes it natively), fp32, bf16, fp16",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="0: held-out scenes 0..N-1 sampled with seeds 0..N-1; S: the next disjoint block of scenes, "
        "seeds S*1000 + i (results ARM@seedS.json: the spread of a comparison)",
    )
    p.add_argument(
        "--runs", type=Path, default=rp.RUNS_DIR, help="folder of the training runs (default runs/reproduce-toy)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--hours", type=float, default=0.0, help="stop starting work after this many hours (0 = no limit)")
    p.add_argument("--summarize", action="store_true", help="only write the tables and plots of existing results")
    p.add_argument("--list", action="store_true", help="print this lane's arms and whether each is done")
    p.add_argument(
        "--time-steps",
        action="store_true",
        help="measure the seconds of a training step (encoder, joint, upsampler) in fp32 and bf16, and exit",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = args.out or rp.RESULTS_DIR.parent / ("toy-quick" if args.quick else "toy")
    budget = rp.BUDGETS["quick" if args.quick else "full"]
    for name, value in (
        ("scenes", args.scenes),
        ("train_steps", args.train_steps),
        ("upsampler_steps", args.upsampler_steps),
        ("train_seed", args.train_seed),
    ):
        if value is not None:
            budget = dataclasses.replace(budget, **{name: value})
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.time_steps:
            for section in ("encoder", "joint", "upsampler"):
                batch = 4 if section == "upsampler" else 8
                for precision in ("fp32", "bf16"):
                    sec = rp.step_seconds(section, precision, batch_size=batch, device=args.device)
                    threads = torch.get_num_threads()
                    print(f"{section:<10} batch {batch} {precision} {sec:.2f} s/step (threads {threads})", flush=True)
            return 0
        arms = rp.all_arms(args.experiments, budget)
        if args.arms:
            arms = [a for a in arms if a.name in args.arms or a.key in args.arms]
        mine = rp.lane_arms(arms, args.lane, args.lanes, budget)
        if args.list:
            for arm in mine:
                done = rp.is_done(out, arm, budget, args.seed)
                print(f"{'done   ' if done else 'pending'} {arm.key}")
            return 0
        out.mkdir(parents=True, exist_ok=True)
        status = None
        if not args.summarize:
            command = "python eval/reproduce_toy.py " + " ".join(shlex.quote(a) for a in argv)
            with open(out / "commands.txt", "a") as f:
                f.write(
                    f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  threads={torch.get_num_threads()}  {command}\n"
                )
            ctx = rp.Context(
                budget=budget,
                out=out,
                precision=args.precision,
                train_precision=args.train_precision,
                device=args.device,
                command=command,
                seed=args.seed,
                runs_dir=args.runs,
                deadline=time.time() + 3600 * args.hours if args.hours else None,
                log=lambda m: print(m, flush=True),
            )
            print(f"lane {args.lane}/{args.lanes}: {len(mine)} arms", flush=True)
            status = rp.run(mine, ctx)
        summary = rp.summarize(out, rp.all_arms(rp.EXPERIMENTS, budget))
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if status is not None:
        print(
            f"done {len(status['done'])}, skipped (already done) {len(status['skipped'])}, "
            f"stopped by the time limit {len(status['stopped'])}"
        )
    print(f"tables in {out}/summary.md; {len(summary['pending'])} arms pending in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
