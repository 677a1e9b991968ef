"""Seconds per training step of a toy PITI base model on the CPU, fp32 and bf16, before and after the dropout fix.

    python benchmarks/toy_train_speed.py                          # mask, joint stage, batch 8, 8 rounds
    python benchmarks/toy_train_speed.py --task depth --rounds 12 --threads 2
    python benchmarks/toy_train_speed.py --profile                # and torch.profiler's top operators per precision
    python benchmarks/toy_train_speed.py --quick                  # 1 round of 1 step, batch 2: checks the script

One ``Trainer`` per precision on the joint stage of ``configs/toy.yaml`` (the shipped base model as ``init``, the
data drawn once before timing, so the data loader is not timed). Its ResBlocks' dropout is swapped between
``before`` (PyTorch's ``nn.Dropout``: one random draw per element) and ``now`` (:class:`piti.nn.layers.Dropout`:
four elements per 64-bit draw) in the same process, round-robin over precisions and paths, so a busy machine
slows each alike; per round, each path runs one untimed step and ``--steps`` timed ones. Median seconds per step,
with the load average at start and end. bf16 runs only where the CPU computes it natively (AVX512-BF16 or AMX)
unless ``--precisions`` asks. The optimizer steps for real: the weights drift, which does not change the cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from piti.nn.layers import Dropout
from piti.precision import cpu_has_native_bf16

PATHS = ("before", "now")
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "toy.yaml"


def make_trainer(task: str, precision: str, batch: int, out_dir: str):
    """A joint-stage trainer on the shipped toy base model of ``task``, and fixed batches for it."""
    from piti.pipeline import toy_checkpoint_paths
    from piti.train.config import load_recipe
    from piti.train.loop import Trainer

    overrides = {
        "task": task,
        "init": str(toy_checkpoint_paths(task)[0]),
        "out_dir": out_dir,
        "precision": precision,
        "batch_size": batch,
        "num_workers": 0,
        "schedule_sampler": "uniform",
    }
    trainer = Trainer(load_recipe(RECIPE, "joint", overrides))
    data = trainer.data_iterator()
    return trainer, [next(data) for _ in range(2)]


def set_dropout(model: nn.Module, path: str) -> None:
    """Swap every dropout of ``model`` to PyTorch's (``before``) or the project's (``now``)."""
    kind = nn.Dropout if path == "before" else Dropout
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, kind(p=child.p))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="mask", choices=("mask", "sketch", "depth"))
    p.add_argument("--precisions", default=None, help="comma-separated (default: fp32,bf16; fp32 without native bf16)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8, the recipe's)")
    p.add_argument("--rounds", type=int, default=8, help="rounds over precisions and paths (default 8)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per path and round (default 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    p.add_argument("--profile", action="store_true", help="then profile one 'now' step per precision")
    p.add_argument("--quick", action="store_true", help="1 round of 1 step at batch 2: checks the script")
    args = p.parse_args(argv)
    native = cpu_has_native_bf16()
    precisions = (args.precisions or ("fp32,bf16" if native else "fp32")).split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        p.error("precisions are fp32, bf16")
    if args.quick:
        args.rounds, args.steps, args.batch = 1, 1, 2
    if min(args.rounds, args.steps, args.batch) < 1:
        p.error("--rounds, --steps and --batch must be at least 1")
    torch.set_num_threads(args.threads)

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, native bf16: "
        f"{'yes' if native else 'no (bf16 is emulated there, far slower)'}, torch {torch.__version__}, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at start"
    )
    times, trainers = {}, {}
    with tempfile.TemporaryDirectory(prefix="piti-toy-train-speed-") as folder:
        for precision in precisions:
            trainers[precision] = make_trainer(args.task, precision, args.batch, os.path.join(folder, precision))
        for rnd in range(args.rounds):
            for precision, (trainer, batches) in trainers.items():
                for path in PATHS:
                    set_dropout(trainer.model, path)
                    for i in range(1 + args.steps):  # the first step after a swap is not timed
                        start = time.perf_counter()
                        trainer.train_step(batches[i % len(batches)])
                        if i:
                            times.setdefault((precision, path), []).append(time.perf_counter() - start)
            print(f"round {rnd + 1}/{args.rounds}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        profiles = {}
        for precision, (trainer, batches) in trainers.items() if args.profile else ():
            set_dropout(trainer.model, "now")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                trainer.train_step(batches[0])
            profiles[precision] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)

    fp32_before = statistics.median(times["fp32", "before"]) if ("fp32", "before") in times else None
    print("\n| task | precision | dropout | s / step | vs fp32 before |")
    print("| --- | --- | --- | ---: | ---: |")
    for (precision, path), values in times.items():
        step = statistics.median(values)
        speedup = f"{fp32_before / step:.2f}x" if fp32_before else "-"
        print(f"| {args.task} | {precision} | {path} | {step:.3f} | {speedup} |")
    print(
        f"\n# joint stage, batch {args.batch}; median of {args.rounds} x {args.steps} step(s) per row; "
        f"load average {os.getloadavg()[0]:.1f} at end"
    )
    for precision, table in profiles.items():
        print(f"\n# torch.profiler, one {args.task} step, {precision} now:\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
