"""Train the toy segmenter of the synthetic world and report its mIoU on held-out real scenes.

    python eval/train_segmenter.py                      # the shipped file: checkpoints/toy/segmenter.safetensors
    python eval/train_segmenter.py --steps 20 --out /tmp/seg.safetensors   # a quick try

The segmenter is the judge of the toy-scale alignment check: it is run on images
generated from held-out label maps, and its mIoU there is compared with its mIoU on real
scenes, printed here. Real scenes are judged at 64 and 128 px, both as the datasets make
them (rendered at 256 and reduced with bicubic) and rendered natively at that size; 256-px
scenes are judged through the segmenter's reduction to 128. The figures, the command and
the timings are also stored in the checkpoint's header (``results``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from piti.evaluation.segmenter import (
    HELDOUT_STREAM,
    Segmenter,
    SegmenterConfig,
    default_segmenter_path,
    evaluate_segmenter,
    save_segmenter,
    train_segmenter,
)

# (size, render size) of the held-out evaluations: as the datasets reduce, then native
EVALS = ((64, 256), (128, 256), (64, 64), (128, 128), (256, 256))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="optimiser steps (default 400)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="scenes per step; each gives two 64-px examples (default 16)"
    )
    p.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="training seed: scenes (TRAIN_STREAM, seed, i) (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (slower on CPUs without native bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--eval-num", type=int, default=100, help="held-out scenes per evaluation (default 100)")
    p.add_argument("--out", type=Path, default=None, help="output file (default checkpoints/toy/segmenter.safetensors)")
    args = p.parse_args(argv)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_segmenter_path()
    torch.manual_seed(args.seed)
    model = Segmenter(SegmenterConfig()).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"segmenter: {n_params / 1e3:.0f}K parameters, widths {model.config.widths}, "
        f"{torch.get_num_threads()} threads, {'bf16' if args.bf16 else 'fp32'}"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    losses = train_segmenter(
        model,
        args.steps,
        args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=args.bf16,
        log_every=max(1, args.steps // 15),
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"trained {args.steps} steps x {args.batch_size} scenes in {wall:.0f}s wall, {cpu:.0f}s CPU time "
        f"(final loss {sum(losses[-10:]) / len(losses[-10:]):.4f})"
    )

    model.cpu()
    results = []
    print(f"\nheld-out real scenes (HELDOUT_STREAM={HELDOUT_STREAM}, {args.eval_num} per row):")
    print(f"{'size':>5} {'rendered at':>11} {'mIoU':>6}   per class IoU")
    for size, render in EVALS:
        r = evaluate_segmenter(model, args.eval_num, size, render)
        results.append(r)
        per_class = "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in r["per_class"].items())
        print(f"{size:>5} {render:>11} {r['miou']:>6.3f}   {per_class}", flush=True)

    save_segmenter(
        out,
        model,
        metadata={
            "results": {
                "command": command,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "train_wall_s": round(wall, 1),
                "train_cpu_s": round(cpu, 1),
                "threads": torch.get_num_threads(),
                "bf16": args.bf16,
                "eval": results,
                "final_loss": sum(losses[-10:]) / len(losses[-10:]),
            },
        },
    )
    print(f"\nwrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
