"""The toy-scale alignment check of issue 6: do the embedded models' images follow their conditions?

    python eval/toy_alignment.py                                  # all three tasks, embedded models
    python eval/toy_alignment.py --tasks mask --num 100 --guidance 1.0
    python eval/toy_alignment.py --tasks sketch --base B.safetensors --upsampler U.safetensors

For each task, ``--num`` held-out synthetic scenes (seeds ``(HELDOUT_STREAM, start + i)``, disjoint
from the ``(seed, i)`` scenes the diffusion models train on) become conditions exactly as the training
data makes them (``SynthDataset``'s own conversion code), one image is sampled per condition with the
checkpoint's recommended settings (its header, else the pipeline's ``fast`` profile) unless ``--guidance``,
``--sampler``, ``--steps``, ``--noise-scale``, ``--upsample-sampler``, ``--upsample-steps``, ``--upsample-start``
or ``--upsample-noise-scale`` say otherwise, and the shipped segmenter judges it:

* **mIoU** of the segmenter on the generated images against the scene's label map, next to its mIoU on
  the real images of the same scenes, and their ratio (issue 6's target: >= 0.7 for mask to image);
* **FID-T**: the Fréchet distance between Gaussians fitted to the *segmenter's* penultimate features
  (32-D, pooled) of the generated and of the real images of the same scenes. It is not Inception FID
  and not comparable with any published number (``piti.evaluation.metrics``, ``docs/segmenter.md``);
* the **sampling time** per image (base + upsampler, one image per call, as a user runs it).

With an upsampler, the figures are given at its size (the final images) and at the base size (the 64-px
base samples, against real scenes reduced as the base model's training data). Writes a JSON file
(``--out``) and a PNG grid per task (condition / generated / real), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from piti.data.conditions import TASK_CHANNELS
from piti.data.datasets import SynthDataset
from piti.data.synth import CLASSES
from piti.errors import CheckpointError, ConfigError, MissingWeightsError, PitiError
from piti.evaluation.metrics import confusion_matrix, fid_t, iou_from_confusion
from piti.evaluation.segmenter import HELDOUT_STREAM, load_segmenter, render_example
from piti.pipeline import TOY_CHECKPOINT_DIR, PITIPipeline, toy_checkpoint_paths

TASKS = tuple(TASK_CHANNELS)
FID_T_NOTE = ("FID-T: Fréchet distance between Gaussians fitted to the toy segmenter's pooled penultimate "
              "features (32-D) of generated and real images of the same scenes; NOT Inception FID, "
              "comparable only at the same number of images and the same segmenter file")


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The exact inverse of the datasets' ``x / 127.5 - 1`` (rounded; truncation would lose a level)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def condition_picture(task: str, cond: torch.Tensor) -> np.ndarray:
    """A condition tensor (C, S, S) in [-1, 1] as an RGB picture (S, S, 3) uint8: the colour map (mask),
    the sketch's lines (distance 0 in its distance coding) white on black (sketch), or the depth
    visualisation, channels 3..5 (depth)."""
    x = unit_to_uint8(cond).permute(1, 2, 0).numpy()
    if task == "sketch":
        return np.repeat(np.where(x == 0, 255, 0).astype(np.uint8), 3, axis=2)
    return x[..., 3:6] if task == "depth" else x


def heldout_examples(task: str, num: int, start: int, size: int, cond_size: int, base_size: int | None = None) -> dict:
    """Held-out scenes ``(HELDOUT_STREAM, start + i)`` as the training data makes them.

    Returns ``cond`` (N, C, cond_size, cond_size) float in [-1, 1], ``real`` (N, size, size, 3) uint8 and
    ``labels`` (N, size, size) uint8; with ``base_size``, also ``real_base`` and ``labels_base`` at that size.
    Conditions and images come from :class:`SynthDataset` (seed ``HELDOUT_STREAM``, no flips); the label maps
    are the same scenes reduced nearest (:func:`render_example`), at the size the dataset draws them.
    """
    ds = SynthDataset(length=start + num, task=task, seed=HELDOUT_STREAM, image_size=size, cond_size=cond_size,
                      flip=False)
    work = max(size, cond_size)  # SynthDataset draws its scenes at this size
    items = [ds[start + i] for i in range(num)]
    out = {"cond": torch.stack([it["cond"] for it in items]),
           "real": unit_to_uint8(torch.stack([it["image"] for it in items])).permute(0, 2, 3, 1).numpy(),
           "labels": np.stack([render_example((HELDOUT_STREAM, start + i), size, work)[1] for i in range(num)])}
    if base_size is not None:
        pairs = [render_example((HELDOUT_STREAM, start + i), base_size, work) for i in range(num)]
        out["real_base"], out["labels_base"] = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    return out


def judge(segmenter, generated: np.ndarray, real: np.ndarray, labels: np.ndarray) -> dict:
    """mIoU of generated and real images against ``labels``, their ratio, FID-T, and the IoU of each class
    (``iou_per_class``: class name -> [generated, real], None where a class is absent) (inputs uint8 (N, S, S, ...))."""
    k = segmenter.config.num_classes
    m_gen, iou_gen = iou_from_confusion(confusion_matrix(segmenter.predict(generated), labels, k))
    m_real, iou_real = iou_from_confusion(confusion_matrix(segmenter.predict(real), labels, k))
    names = CLASSES if len(CLASSES) == k else [str(c) for c in range(k)]
    per_class = {name: [None if np.isnan(g) else float(g), None if np.isnan(r) else float(r)]
                 for name, g, r in zip(names, iou_gen, iou_real)}
    return {"size": int(labels.shape[-1]), "miou_generated": m_gen, "miou_real": m_real,
            "miou_ratio": m_gen / m_real if m_real > 0 else float("nan"),
            "fid_t": fid_t(real, generated, segmenter), "iou_per_class": per_class}


def save_grid(path: Path, columns: dict, rows: int) -> None:
    """A PNG grid: one column per entry of ``columns`` (name -> uint8 (N, S, S, 3)), ``rows`` scenes."""
    size, pad, head = max(c.shape[1] for c in columns.values()), 2, 14
    grid = Image.new("RGB", (len(columns) * (size + pad) + pad, head + rows * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, (name, pics) in enumerate(columns.items()):
        x = pad + j * (size + pad)
        draw.text((x + 2, 1), name, fill="black")
        for i in range(rows):
            tile = Image.fromarray(pics[i]).resize((size, size), Image.NEAREST)
            grid.paste(tile, (x, head + pad + i * (size + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def evaluate_task(task: str, pipe: PITIPipeline, segmenter, args) -> dict:
    """Sample one image per held-out condition of ``task`` and judge them; returns the task's results."""
    upsample = pipe.upsampler_model is not None and not args.no_upsample
    base_cfg = pipe.base_model.config
    size = pipe.upsampler_model.config.image_size if upsample else base_cfg.image_size
    data = heldout_examples(task, args.num, args.start, size, base_cfg.cond_size,
                            base_cfg.image_size if upsample else None)
    settings = dict(guidance=args.guidance, guidance_mode=args.guidance_mode, sampler=args.sampler, steps=args.steps,
                    upsample_sampler=args.upsample_sampler, upsample_steps=args.upsample_steps,
                    upsample_start=args.upsample_start, noise_scale=args.noise_scale,
                    upsample_noise_scale=args.upsample_noise_scale)
    generated, base_images, seconds, timings, used = [], [], [], [], None
    for i, cond in enumerate(data["cond"]):
        start = time.perf_counter()
        out = pipe(cond, num_samples=1, seed=args.seed + i, upsample=upsample, progress=False, **settings)
        seconds.append(time.perf_counter() - start)
        generated.append(np.asarray(out.images[0]))
        base_images.append(np.asarray(out.base_images[0]))
        timings.append(out.settings["timings"])
        used = used or out.settings
    generated = np.stack(generated)

    result = {"base": pipe.sources["base"], "upsampler": pipe.sources["upsampler"] if upsample else None,
              **judge(segmenter, generated, data["real"], data["labels"]),
              "seconds_per_image": float(np.mean(seconds)), "seconds_per_image_max": float(np.max(seconds)),
              "base_seconds_per_image": float(np.mean([t["base_s"] for t in timings])),
              "upsample_seconds_per_image": float(np.mean([t["upsample_s"] for t in timings])) if upsample else None,
              "settings": {k: used[k] for k in ("guidance", "guidance_convention", "guidance_mode", "guidance_w",
                                                "guidance_stats", "sampler", "steps", "upsample_sampler",
                                                "upsample_steps", "upsample_start", "noise_scale",
                                                "upsample_noise_scale", "precision", "device") if k in used}}
    if upsample:
        result["at_base_size"] = judge(segmenter, np.stack(base_images), data["real_base"], data["labels_base"])
    rows = min(args.grid_rows, args.num)
    conds = np.stack([condition_picture(task, c) for c in data["cond"][:rows]])
    grid = args.grid_dir / f"toy_alignment_{task}.png"
    save_grid(grid, {"condition": conds, "generated": generated[:rows], "real": data["real"][:rows]}, rows)
    result["grid"] = str(grid)
    return result


def print_table(results: dict) -> None:
    print(f"\n{'task':<7} {'size':>4} {'mIoU gen':>9} {'mIoU real':>10} {'ratio':>6} {'FID-T':>8} {'s/image':>8}")
    for task, r in results.items():
        for row in [r] + ([r["at_base_size"]] if "at_base_size" in r else []):
            timing = f"{r['seconds_per_image']:8.2f}" if row is r else f"{'':>8}"
            print(f"{task:<7} {row['size']:>4} {row['miou_generated']:9.3f} {row['miou_real']:10.3f} "
                  f"{row['miou_ratio']:6.2f} {row['fid_t']:8.3f} {timing}")
    print("\nIoU per class, generated / real (at the final size):")
    for task, r in results.items():
        cells = [f"{name} {'-' if g is None else f'{g:.2f}'}/{'-' if t is None else f'{t:.2f}'}"
                 for name, (g, t) in r["iou_per_class"].items()]
        print(f"{task:<7} " + "  ".join(cells))
    print(f"\n{FID_T_NOTE}.")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to check (default all three)")
    p.add_argument("--base", type=Path, help="base checkpoint (one task only; default the embedded toy model)")
    p.add_argument("--upsampler", type=Path, help="upsampler checkpoint (with --base)")
    p.add_argument("--models-dir", type=Path, default=TOY_CHECKPOINT_DIR,
                   help="folder of the piti-toy-TASK-{base,upsample}.safetensors files (default checkpoints/toy)")
    p.add_argument("--no-upsample", action="store_true", help="judge the base model's 64-px images only")
    p.add_argument("--num", type=int, default=50, help="held-out scenes per task (default 50)")
    p.add_argument("--start", type=int, default=0, help="first held-out scene index (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of scene i is seed + i (default 0)")
    p.add_argument("--guidance", type=float, help="guidance strength, paper convention w (default: the checkpoint's)")
    p.add_argument("--guidance-mode", choices=("plain", "normalized"), default="normalized",
                   help="classifier-free guidance mode (default normalized)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp"), help="base sampler (default: the checkpoint's)")
    p.add_argument("--steps", help="base sampler steps (default: the checkpoint's)")
    p.add_argument("--upsample-sampler", choices=("ddpm", "ddim", "dpmpp"), help="upsampler sampler (default: the checkpoint's)")
    p.add_argument("--upsample-steps", help="upsampler steps (default: the checkpoint's)")
    p.add_argument("--upsample-start", type=float, help="upsampler start, 1 = from noise (default: the checkpoint's)")
    p.add_argument("--noise-scale", type=float, help="DDPM noise factor of the base steps (default: the checkpoint's)")
    p.add_argument("--upsample-noise-scale", type=float, help="the same for the upsampler (default: the checkpoint's)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (default auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--segmenter", type=Path, help="segmenter file (default checkpoints/toy/segmenter.safetensors)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=TOY_CHECKPOINT_DIR / "alignment.json", help="JSON results file")
    p.add_argument("--grid-dir", type=Path, help="folder of the PNG grids (default: beside --out)")
    p.add_argument("--grid-rows", type=int, default=8, help="scenes shown per grid (default 8)")
    args = p.parse_args(argv)
    if args.num < 2:
        raise ConfigError(f"--num must be at least 2 (FID-T needs two images per set), got {args.num}")
    if args.upsampler is not None and args.base is None:
        raise ConfigError("--upsampler needs --base")
    if args.base is not None and len(args.tasks) != 1:
        raise ConfigError(f"--base/--upsampler are the checkpoints of one task; give one --tasks, not {args.tasks}")
    args.grid_dir = args.grid_dir or args.out.parent
    return args


def checkpoint_paths(args) -> dict:
    """``{task: (base, upsampler)}``, every file checked before anything is sampled."""
    paths = {task: (args.base, args.upsampler) if args.base is not None else
             tuple(args.models_dir / p.name for p in toy_checkpoint_paths(task)) for task in args.tasks}
    missing = [str(p) for pair in paths.values() for p in pair if p is not None and not Path(p).is_file()]
    if missing and args.base is not None:
        raise CheckpointError(f"checkpoint file not found: {', '.join(missing)}")
    if missing:
        raise MissingWeightsError(f"the embedded toy models are missing ({', '.join(missing)}); "
                                  "`make toy-models` trains them, or give --base/--upsampler")
    return paths


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        paths = checkpoint_paths(args)
        segmenter = load_segmenter(args.segmenter)
        results = {}
        for task, (base, upsampler) in paths.items():
            pipe = PITIPipeline.from_checkpoints(base, upsampler, task=task, device=args.device,
                                                 precision=args.precision)
            print(f"{task}: sampling {args.num} held-out scenes ...", flush=True)
            results[task] = evaluate_task(task, pipe, segmenter, args)
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(results)
    report = {"command": "python eval/toy_alignment.py " + " ".join(shlex.quote(a) for a in argv),
              "fid_t": FID_T_NOTE, "segmenter": str(args.segmenter or TOY_CHECKPOINT_DIR / "segmenter.safetensors"),
              "heldout_seeds": f"(HELDOUT_STREAM={HELDOUT_STREAM}, i) for i in {args.start}..{args.start + args.num - 1}",
              "num": args.num, "seed": args.seed, "threads": torch.get_num_threads(), "tasks": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}; grids in {args.grid_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
