"""Train a reward model of the consistency-feedback stage and report its accuracy on held-out real scenes.

    python eval/train_reward_models.py --task depth     # checkpoints/toy/rewards/depth.safetensors
    python eval/train_reward_models.py --task sketch --steps 20 --out /tmp/sketch.safetensors   # a quick try
    python eval/train_reward_models.py --task depth --probe checkpoints/toy/piti-toy-depth-base.safetensors
    python eval/train_reward_models.py --task mask --score --sizes 64,128   # the shipped file at both sizes

``--probe MODEL`` trains nothing: it prints how far a PITI base model's one-step x0_pred disagrees with its
condition at each t, by the reward model (beside real images and mismatched conditions), i.e. at which t the
feedback term (``reward_max_t``) has something to correct.

Reward models are not the judges: another network, seed and scene stream (:mod:`piti.train.rewards`, where
the work is). The figures, the command and the timing are stored in the file's header (``results``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from piti.train.rewards import (
    REWARD_TASKS,
    RewardConfig,
    RewardNet,
    consistency_by_t,
    evaluate_reward_model,
    load_reward_model,
    save_reward_model,
    train_reward_model,
)

PROBE_T = (25, 100, 200, 400, 600, 800, 950)  # timesteps of --probe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=REWARD_TASKS, required=True)
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="scenes per step (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=1, help="training seed (default 1; the judges use 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--sizes", default="64", help="image sizes, alternated per step (default 64; 64,128 also reads the upsampler's)"
    )
    p.add_argument("--eval-num", type=int, default=200, help="held-out scenes (default 200)")
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default checkpoints/toy/rewards/TASK.safetensors)"
    )
    p.add_argument(
        "--probe", type=Path, default=None, help="a PITI base model file: print consistency by t, train nothing"
    )
    p.add_argument(
        "--score", action="store_true", help="train nothing: score the reward model --out on held-out scenes at --sizes"
    )
    p.add_argument("--probe-num", type=int, default=24, help="training scenes (seed 0) the probe scores (default 24)")
    args = p.parse_args(argv)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("checkpoints/toy/rewards") / f"{args.task}.safetensors"
    if args.probe:
        return probe(args, out)
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(v < 4 or v % 4 for v in sizes):
        p.error(f"--sizes must be multiples of 4, got {args.sizes!r}")
    if args.score:
        model = load_reward_model(out, task=args.task)
        for size in sizes:
            print_scores(size, evaluate_reward_model(model, args.eval_num, size=size))
        return 0
    torch.manual_seed(args.seed)
    model = RewardNet(RewardConfig(task=args.task))
    n_params = sum(p.numel() for p in model.parameters())
    widths, threads = model.config.widths, torch.get_num_threads()
    print(f"{args.task} reward model: {n_params / 1e3:.0f}K parameters, widths {widths}, {threads} threads")

    wall, cpu = time.perf_counter(), time.process_time()
    losses = train_reward_model(
        model, args.steps, args.batch_size, args.lr, args.seed, log_every=max(1, args.steps // 10), sizes=sizes
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    final = sum(losses[-10:]) / len(losses[-10:])
    print(f"trained {len(losses)} steps x {args.batch_size} scenes in {wall:.0f}s wall, {cpu:.0f}s CPU time")
    print(f"final training loss {final:.4f} (mean of the last 10 steps)")

    result = {}
    for size in sizes:
        result[size] = evaluate_reward_model(model, args.eval_num, size=size)
        print_scores(size, result[size])
    result = result[sizes[0]] if len(sizes) == 1 else {str(k): v for k, v in result.items()}
    meta = {"command": command, "steps": len(losses), "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    meta["sizes"] = list(sizes)
    meta.update(train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1), threads=torch.get_num_threads())
    save_reward_model(out, model, metadata={"results": {**meta, "final_loss": final, "eval": result}})
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


def print_scores(size: int, result: dict) -> None:
    scores = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
    print(f"held-out real scenes ({size} px): {scores}")


def probe(args, reward_path: Path) -> int:
    from piti.checkpoints import load_checkpoint, load_weights
    from piti.data.datasets import make_dataset
    from piti.presets import ModelConfig, create_model

    ckpt = load_checkpoint(args.probe)
    mc = ModelConfig.from_dict(ckpt.config or {})
    model = load_weights(create_model(mc), ckpt).eval()
    reward = load_reward_model(reward_path, task=mc.task)
    data = make_dataset("synth", task=mc.task, image_size=mc.image_size, cond_size=mc.cond_size, flip=False)
    r = consistency_by_t(model, reward, data, PROBE_T, num=args.probe_num)
    print(f"{mc.task} reward model {reward_path} on {r['num']} training scenes (seed 0), mean disagreement:")
    print(f"  real images {r['real']:.4f}; real images against another scene's condition {r['shuffled']:.4f}")
    print("  one-step x0_pred of the model: " + ", ".join(f"t={t} {v:.4f}" for t, v in r["by_t"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
