"""The numbers of the embedded toy models' card (checkpoints/toy/README.md), from files, not by hand.

    python eval/toy_model_card.py                 # after scripts/toy_models.sh (make toy-models)
    python eval/toy_model_card.py --no-copy       # only from the logs already kept in checkpoints/toy/logs

1. copies each stage run's ``log.csv`` (``runs/toy/<run>/log.csv``; runs/ is not in git) to
   ``checkpoints/toy/logs/<run>.csv``, so the card can be rebuilt from the repository alone;
2. from those logs: steps and training seconds per stage (the sum of the logged seconds per step over
   the logged steps: compute time, without start-up and sample grids), and ``loss_curves.png``;
3. from the shipped files: parameters and megabytes of each model, and their total (budget 60 MB);
4. from ``alignment.json`` (``eval/toy_alignment.py``): mIoU of generated vs real images, FID-T, and the
   sampling time per image;
5. writes all of it to ``card.json`` and rewrites the block between ``<!-- numbers:begin -->`` and
   ``<!-- numbers:end -->`` of the card.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from safetensors import safe_open  # noqa: E402

from piti.pipeline import TASKS, TOY_BUDGET_MB, TOY_CHECKPOINT_DIR, toy_checkpoint_paths  # noqa: E402

BEGIN, END = "<!-- numbers:begin -->", "<!-- numbers:end -->"
# The recipe's stage runs (configs/toy.yaml out_dir names), in training order.
SHARED_RUNS = ("pretrain", "pretrain-upsampler")
TASK_STAGES = ("encoder", "encoder-dropout", "joint", "upsampler")


def run_names() -> list[str]:
    return list(SHARED_RUNS) + [f"{stage}-{task}" for task in TASKS for stage in TASK_STAGES]


def read_log(path: Path) -> list[dict]:
    """Rows of a training log.csv as floats (empty cells dropped)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def log_summary(rows: list[dict]) -> dict:
    """Steps, compute seconds and the last logged losses of one run's log.

    Each row holds the mean wall seconds per step since the row before; a resumed run repeats the steps
    it had done after its last checkpoint, and those repeats count too (they were computed). A row more
    than 3x slower than the run's median is an interval in which the run was paused (``kill -STOP``
    while a benchmark had the machine) and counts at the median speed."""
    interval = int(rows[0]["step"])  # the first row comes one log interval after step 0
    speeds = sorted(r["sec_per_step"] for r in rows)
    median = speeds[len(speeds) // 2]
    seconds, prev = 0.0, 0
    for row in rows:
        step = int(row["step"])
        speed = row["sec_per_step"] if row["sec_per_step"] <= 3 * median else median
        seconds += speed * (step - prev if step > prev else interval)
        prev = step
    tail = rows[-4:]
    return {"steps": int(rows[-1]["step"]), "seconds": round(seconds, 1),
            "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 4)}


def plot_curves(logs: dict, path: Path) -> None:
    """One panel per stage kind: the training loss against the step, one line per run.

    The logged ``loss``, not ``mse``: ``loss`` is weighted by the timestep sampler's importance weights, so it
    estimates the same objective whichever t the sampler favours, while the unweighted ``mse`` jumps when
    ``loss-second-moment`` starts drawing mostly small t (whose eps error is largest), e.g. at step ~2,800
    of a batch-8 run."""
    panels = [("pretrain (text-to-image)", ["pretrain"]), ("pretrain-upsampler", ["pretrain-upsampler"])]
    panels += [(stage, [f"{stage}-{t}" for t in TASKS]) for stage in TASK_STAGES]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, runs) in zip(axes.flat, panels):
        for run in runs:
            rows = logs.get(run)
            if not rows:
                continue
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=run, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Toy models: training loss (eps MSE + vb, importance-weighted as trained; logged every 25 steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def model_sizes(models_dir: Path) -> dict:
    """``{file name: {params, mb}}`` of the shipped model files."""
    sizes = {}
    for task in TASKS:
        for p in toy_checkpoint_paths(task):
            path = models_dir / p.name
            if path.is_file():
                with safe_open(str(path), "pt") as f:
                    params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
                sizes[path.name] = {"params": params, "mb": round(path.stat().st_size / 1e6, 2)}
    return sizes


def markdown(card: dict) -> str:
    """The card's generated block."""
    lines = [f"Generated by `{card['command']}`; do not edit by hand.", "",
             "**Training** (compute seconds summed from the logs; one thread per run, two runs at a time on 2 cores)", "",
             "| run | steps | minutes | final loss |", "| --- | ---: | ---: | ---: |"]
    for run, s in card["stages"].items():
        lines.append(f"| {run} | {s['steps']} | {s['seconds'] / 60:.1f} | {s['final_loss']:.4f} |")
    lines += [f"| **total** | | **{card['total_seconds'] / 60:.1f}** | |", ""]
    lines += ["**Shipped files**", "", "| file | parameters | MB |", "| --- | ---: | ---: |"]
    for name, s in card["files"].items():
        lines.append(f"| `{name}` | {s['params']:,} | {s['mb']:.1f} |")
    lines += [f"| **total** | | **{card['total_mb']:.1f}** (budget {TOY_BUDGET_MB}) |", ""]
    align = card.get("alignment")
    if align:
        lines += [f"**Alignment** (`{align['command']}`; {align['num']} held-out scenes per task, "
                  f"{align['threads']} threads)", "",
                  "| task | size | mIoU generated | mIoU real | ratio | FID-T | s / image |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for task, r in align["tasks"].items():
            lines.append(f"| {task} | {r['size']} | {r['miou_generated']:.3f} | {r['miou_real']:.3f} | "
                         f"{r['miou_ratio']:.2f} | {r['fid_t']:.2f} | {r['seconds_per_image']:.2f} |")
            if "at_base_size" in r:
                b = r["at_base_size"]
                lines.append(f"| {task} (base) | {b['size']} | {b['miou_generated']:.3f} | {b['miou_real']:.3f} | "
                             f"{b['miou_ratio']:.2f} | {b['fid_t']:.2f} | |")
        per_class = {task: r["iou_per_class"] for task, r in align["tasks"].items() if "iou_per_class" in r}
        if per_class:
            names = list(next(iter(per_class.values())))
            lines += ["", "IoU of each class, generated / real, at the final size:", "",
                      "| task | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
            for task, ious in per_class.items():
                lines.append(f"| {task} | " + " | ".join("-" if g is None else f"{g:.2f} / {t:.2f}"
                                                        for g, t in ious.values()) + " |")
        settings = {task: ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + "."
                    for task, r in align["tasks"].items()}
        if len(set(settings.values())) == 1:
            lines += ["", "Sampling settings: " + next(iter(settings.values()))]
        else:  # e.g. a different recommended guidance per task; two trailing spaces break the Markdown line
            lines += [""] + [f"Sampling settings, {task}: {text}  " for task, text in settings.items()]
        lines += ["", f"{align['fid_t']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/toy"), help="the toy recipe's run folders (default runs/toy)")
    p.add_argument("--models-dir", type=Path, default=TOY_CHECKPOINT_DIR, help="shipped folder (default checkpoints/toy)")
    p.add_argument("--no-copy", action="store_true", help="use only the logs already in MODELS_DIR/logs")
    args = p.parse_args(argv)

    log_dir = args.models_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_copy:
        for run in run_names():
            src = args.runs / run / "log.csv"
            if src.is_file():
                shutil.copyfile(src, log_dir / f"{run}.csv")
    logs = {run: read_log(log_dir / f"{run}.csv") for run in run_names() if (log_dir / f"{run}.csv").is_file()}
    if not logs:
        print(f"error: no training logs in {log_dir} (nor in {args.runs}); run `make toy-models` first", file=sys.stderr)
        return 2
    stages = {run: log_summary(rows) for run, rows in logs.items() if rows}
    files = model_sizes(args.models_dir)
    card = {"command": "python eval/toy_model_card.py" + (" --no-copy" if args.no_copy else ""),
            "stages": stages, "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
            "files": files, "total_mb": round(sum(f["mb"] for f in files.values()), 2)}
    align_path = args.models_dir / "alignment.json"
    if align_path.is_file():
        card["alignment"] = json.loads(align_path.read_text())
    plot_curves(logs, args.models_dir / "loss_curves.png")
    (args.models_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    readme = args.models_dir / "README.md"
    block = f"{BEGIN}\n{markdown(card)}\n{END}"
    if readme.is_file() and BEGIN in readme.read_text():
        text = readme.read_text()
        head, rest = text.split(BEGIN, 1)
        readme.write_text(head + block + rest.split(END, 1)[1])
        print(f"updated the numbers of {readme}")
    else:
        print(block)
        print(f"({readme} has no {BEGIN} block: the numbers above were not written into it)")
    print(f"wrote {args.models_dir / 'card.json'} and {args.models_dir / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
