"""The numbers of the embedded toy models' card (checkpoints/toy/README.md), from files, not by hand.

:func:`build_card` copies each stage run's ``log.csv`` beside the models, sums their compute time, plots the
loss curves, measures the shipped files, reads ``alignment.json`` (``eval/toy_alignment.py``), writes
``card.json`` and rewrites the block between ``<!-- numbers:begin -->`` and ``<!-- numbers:end -->`` of the card
(``eval/toy_model_card.py`` is its command line).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

from piti.errors import DatasetError
from piti.evaluation.alignment import interval_text
from piti.pipeline import TASKS, TOY_BUDGET_MB, toy_checkpoint_paths
from piti.settings import REDRAW_TRIES

BEGIN, END = "<!-- numbers:begin -->", "<!-- numbers:end -->"
# The recipe's stage runs (configs/toy.yaml out_dir names), in training order.
SHARED_RUNS = ("pretrain", "pretrain-upsampler")
TASK_STAGES = ("encoder", "encoder-dropout", "joint", "joint-cont", "feedback", "feedback-hint", "upsampler")
# runs that continue the joint stage in a new run from an earlier model file, with the stages they follow (their
# steps count on from those): joint-cont-{task} (more joint steps), feedback-{task} (joint + the reward term),
# feedback-hint-{task} (more feedback steps with the condition hint added, `cond_hint`)
CONTINUED = {
    "joint-cont": ("joint",),
    "feedback": ("joint", "joint-cont"),
    "feedback-hint": ("joint", "joint-cont", "feedback"),
}


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
    return {
        "steps": int(rows[-1]["step"]),
        "seconds": round(seconds, 1),
        "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 4),
    }


def step_offset(run: str, logs: dict) -> float:
    """The steps before ``run`` in its task's lineage: for a continuation (:data:`CONTINUED`), the last logged steps
    of the runs it follows that have logs; 0 for any other run."""
    stage = max((c for c in CONTINUED if run.startswith(c + "-")), key=len, default=None)  # feedback-hint, not feedback
    if stage is None:
        return 0
    task = run[len(stage) + 1 :]
    return sum(logs[f"{s}-{task}"][-1]["step"] for s in CONTINUED[stage] if logs.get(f"{s}-{task}"))


def plot_curves(logs: dict, path: Path) -> None:
    """One panel per stage kind: the training loss against the step, one line per run.

    The logged ``loss``, not ``mse``: ``loss`` is weighted by the timestep sampler's importance weights, so it
    estimates the same objective whichever t the sampler favours, while the unweighted ``mse`` jumps when
    ``loss-second-moment`` starts drawing mostly small t (whose eps error is largest), e.g. at step ~2,800
    of a batch-8 run."""
    panels = [("pretrain (text-to-image)", ["pretrain"]), ("pretrain-upsampler", ["pretrain-upsampler"])]
    panels += [(stage, [f"{stage}-{t}" for t in TASKS]) for stage in TASK_STAGES if stage not in CONTINUED]
    panels = [  # a continuation is drawn in the panel of the first stage it follows
        (title, runs + [f"{c}-{t}" for c, (first, *_) in CONTINUED.items() if first == title for t in TASKS])
        for title, runs in panels
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, runs) in zip(axes.flat, panels):
        for run in runs:
            rows = logs.get(run)
            if not rows:
                continue
            offset = step_offset(run, logs)
            ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=run, lw=1)
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
    from safetensors import safe_open

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
    lines = [
        f"Generated by `{card['command']}`; do not edit by hand.",
        "",
        "**Training** (compute seconds summed from the logs; one thread per run, two runs at a time on 2 cores)",
        "",
        "| run | steps | minutes | final loss |",
        "| --- | ---: | ---: | ---: |",
    ]
    for run, s in card["stages"].items():
        lines.append(f"| {run} | {s['steps']} | {s['seconds'] / 60:.1f} | {s['final_loss']:.4f} |")
    lines += [f"| **total** | | **{card['total_seconds'] / 60:.1f}** | |", ""]
    lines += ["**Shipped files**", "", "| file | parameters | MB |", "| --- | ---: | ---: |"]
    for name, s in card["files"].items():
        lines.append(f"| `{name}` | {s['params']:,} | {s['mb']:.1f} |")
    lines += [f"| **total** | | **{card['total_mb']:.1f}** (budget {TOY_BUDGET_MB}) |", ""]
    align = card.get("alignment")
    if align:
        k = max(r.get("samples_per_call", 1) for r in align["tasks"].values())  # one value: the script's flag
        drawn = (
            f"; scene i's picture is sample i mod {k} of a call of {k} samples, so settings that act between the "
            f"samples of a call are judged as they draw, and the time is the call's / {k}"
            if k > 1
            else "; one call per picture"
        )
        lines += [
            f"**Alignment** (`{align['command']}`; {align['num']} held-out scenes per task, "
            f"{align['threads']} threads{drawn})",
            "",
        ]
        controls = {task: r["control"] for task, r in align["tasks"].items() if "control" in r}
        if controls:
            lines += [
                "Each task by its own measure, against the same judge on the real images (ratio: 1 = as faithful "
                "as the real images; for the depth RMSE, real / generated; the 90% interval: what another draw of as "
                "many scenes could read, a percentile bootstrap over the scenes):",
                "",
                "| task | measure | generated | real | ratio | 90% interval |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for task, c in controls.items():
                lines.append(
                    f"| {task} | {c['measure']} | {c['generated']:.3f} | {c['real']:.3f} | **{c['ratio']:.2f}** | "
                    f"{interval_text(c.get('ratio_interval'))} |"
                )
            redrawn = {t: r["redraws_per_sample"] for t, r in align["tasks"].items() if r.get("redraws_per_sample")}
            if redrawn:
                shares = ", ".join(f"{task} {share:.2f}" for task, share in redrawn.items())
                lines += [
                    "",
                    "Redraws per base sample (`redraw_threshold`, `redraw_colour_threshold`; all samples of the "
                    f"calls, a sample drawn again up to {REDRAW_TRIES} times): {shares}.",
                ]
            lines += ["", "Every task by the segmenter (mIoU against the scenes' label maps) and FID-T:", ""]
        lines += [
            "| task | size | mIoU generated | mIoU real | ratio | FID-T | s / image |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for task, r in align["tasks"].items():
            lines.append(
                f"| {task} | {r['size']} | {r['miou_generated']:.3f} | {r['miou_real']:.3f} | "
                f"{r['miou_ratio']:.2f} | {r['fid_t']:.2f} | {r['seconds_per_image']:.2f} |"
            )
            if "at_base_size" in r:
                b = r["at_base_size"]
                lines.append(
                    f"| {task} (base) | {b['size']} | {b['miou_generated']:.3f} | {b['miou_real']:.3f} | "
                    f"{b['miou_ratio']:.2f} | {b['fid_t']:.2f} | |"
                )
        per_class = {task: r["iou_per_class"] for task, r in align["tasks"].items() if "iou_per_class" in r}
        if per_class:
            names = list(next(iter(per_class.values())))
            lines += [
                "",
                "IoU of each class, generated / real, at the final size:",
                "",
                "| task | " + " | ".join(names) + " |",
                "| --- |" + " ---: |" * len(names),
            ]
            for task, ious in per_class.items():
                lines.append(
                    f"| {task} | "
                    + " | ".join("-" if g is None else f"{g:.2f} / {t:.2f}" for g, t in ious.values())
                    + " |"
                )
        variety = {task: r["diversity"] for task, r in align["tasks"].items() if r.get("diversity")}
        if variety:
            d0 = next(iter(variety.values()))
            lines += [
                "",
                f"**Variety**: {d0['samples']} samples of each of {d0['num']} held-out conditions, drawn in one "
                "call per condition, at the recommended settings and with the official sampler's noise (DDPM, "
                "`noise_scale` 1, guidance at every step, the step at t = T kept, no condition annealing, reward or "
                "particle guidance, redraws or feature caching, independent draws); "
                "mean distance between the samples of a condition (toy feature distance, with the 90% bootstrap "
                "interval of the share kept over the conditions; pixel L1 at 64 px):",
                "",
                "| task | features, recommended | features, official noise | kept | 90% interval | "
                "pixel L1, recommended | pixel L1, official noise | kept |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for task, d in variety.items():
                rec, off = d["recommended"], d["official_noise"]
                lines.append(
                    f"| {task} | {rec['features']:.4f} | {off['features']:.4f} | **{d['features_ratio']:.2f}** | "
                    f"{interval_text(d.get('features_ratio_interval'))} | "
                    f"{rec['pixel_l1']:.4f} | {off['pixel_l1']:.4f} | {d['pixel_l1_ratio']:.2f} |"
                )
            lines += ["", f"{align['diversity_note']}."]
        settings = {
            task: ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + "." for task, r in align["tasks"].items()
        }
        if len(set(settings.values())) == 1:
            lines += ["", "Sampling settings: " + next(iter(settings.values()))]
        else:  # e.g. a different recommended guidance per task; two trailing spaces break the Markdown line
            lines += [""] + [f"Sampling settings, {task}: {text}  " for task, text in settings.items()]
        lines += ["", f"{align['fid_t']}."]
    return "\n".join(lines)


def build_card(runs: Path, models_dir: Path, copy: bool = True, command: str = "python eval/toy_model_card.py") -> dict:
    """Rebuild the card's numbers: returns ``{"card", "readme_updated", "block"}`` (see the module docstring).

    Raises DatasetError when there is no training log at all."""
    log_dir = models_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if copy:
        for run in run_names():
            src = runs / run / "log.csv"
            if src.is_file():
                shutil.copyfile(src, log_dir / f"{run}.csv")
    logs = {run: read_log(log_dir / f"{run}.csv") for run in run_names() if (log_dir / f"{run}.csv").is_file()}
    if not logs:
        raise DatasetError(f"no training logs in {log_dir} (nor in {runs}); run `make toy-models` first")
    stages = {run: log_summary(rows) for run, rows in logs.items() if rows}
    files = model_sizes(models_dir)
    card = {
        "command": command,
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "files": files,
        "total_mb": round(sum(f["mb"] for f in files.values()), 2),
    }
    align_path = models_dir / "alignment.json"
    if align_path.is_file():
        card["alignment"] = json.loads(align_path.read_text())
    plot_curves(logs, models_dir / "loss_curves.png")
    (models_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    readme = models_dir / "README.md"
    block = f"{BEGIN}\n{markdown(card)}\n{END}"
    updated = False
    if readme.is_file() and BEGIN in readme.read_text():
        head, rest = readme.read_text().split(BEGIN, 1)
        readme.write_text(head + block + rest.split(END, 1)[1])
        updated = True
    return {"card": card, "readme_updated": updated, "block": block}
