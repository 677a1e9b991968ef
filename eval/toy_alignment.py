"""The toy-scale alignment check: do the embedded models' images follow their conditions?

    python eval/toy_alignment.py                                  # all three tasks, embedded models
    python eval/toy_alignment.py --tasks mask --num 100 --guidance 1.0
    python eval/toy_alignment.py --tasks sketch --base B.safetensors --upsampler U.safetensors

For each task, ``--num`` held-out synthetic scenes (seeds ``(HELDOUT_STREAM, start + i)``, disjoint
from the ``(seed, i)`` scenes the diffusion models train on) become conditions exactly as the training
data makes them (``SynthDataset``'s own conversion code), one image is sampled per condition with the
checkpoint's recommended settings (its header, else the pipeline's ``fast`` profile) unless a sampling flag
(one per field of :class:`piti.settings.SamplingSettings`: ``--guidance``, ``--sampler``, ``--steps``, ...) says
otherwise, and judges score it (the work is :func:`piti.evaluation.alignment.evaluate_toy_task`):

* **the task's own controllability**, as a ratio to the same judge on the real images of the same scenes (1 = as
  faithful as the real images): mIoU of the segmenter (mask), Canny edge F1 against the input sketch within 2 px
  (sketch), RMSE of the toy depth estimator against the input depth (depth; ratio real / generated), with its 90%
  bootstrap interval over the scenes (what another draw of as many scenes could read; docs/evaluation.md);
* **mIoU** of the segmenter on the generated images against the scene's label map, next to its mIoU on
  the real images of the same scenes, and their ratio, for every task (sketch and depth do not name the classes,
  so this is a looser check for them);
* **FID-T**: the Fréchet distance between Gaussians fitted to the *segmenter's* penultimate features
  (32-D, pooled) of the generated and of the real images of the same scenes. It is not Inception FID
  and not comparable with any published number (``piti.evaluation.fid``, ``docs/segmenter.md``);
* the **sampling time** per image (base + upsampler, one image per call, as a user runs it; with
  ``--samples-per-call K``, scene i's picture is sample i mod K of a call of K, and the time the call's / K);
* for depth, the estimator's **RMSE by distance** (generated and real; the far bands often dominate the RMSE);
* with ``--upsampler-ceiling``, the **upsampler on perfect inputs**: the real 64-px images enlarged bicubically and
  through the upsampler, judged by the task's own measure (what the upsampler adds or loses where the base is right);
* with ``--diversity K``, **variety**: K samples of each of ``--diversity-num`` held-out conditions at the chosen
  settings and at the same settings with the official sampler's noise (DDPM, ``noise_scale`` 1, guidance at every
  step, the step at t = T kept, no condition annealing, reward or particle guidance, redraws or feature caching,
  independent draws), their toy feature and pixel diversity and the ratios, the feature ratio with its 90% bootstrap
  interval over the conditions (:func:`piti.evaluation.alignment.evaluate_toy_diversity`).

With an upsampler, the figures are given at its size (the final images) and at the base size (the 64-px
base samples, against real scenes reduced as the base model's training data). Writes a JSON file
(``--out``) and a PNG grid per task (condition / generated / real), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from piti.errors import CheckpointError, ConfigError, MissingWeightsError, PitiError
from piti.evaluation.alignment import (
    evaluate_toy_diversity,
    evaluate_toy_task,
    evaluate_upsampler_ceiling,
    interval_text,
)
from piti.evaluation.diversity import FEATURE_NOTE
from piti.evaluation.fid import FID_T_NOTE
from piti.evaluation.scenes import HELDOUT_STREAM
from piti.evaluation.segmenter import load_segmenter
from piti.pipeline import TOY_CHECKPOINT_DIR, PITIPipeline, toy_checkpoint_paths
from piti.settings import add_settings_arguments, settings_from_args
from piti.tasks import TASKS


def print_table(results: dict, start: int = 0) -> None:
    head = f"{'own measure':>11} {'generated':>9} {'real':>6} {'ratio':>6} {'90% interval':>12}"
    print(f"\n{'task':<7} {'size':>4} {head}")
    for task, r in results.items():
        c = r["control"]
        print(
            f"{task:<7} {r['size']:>4} {c['measure']:>11} {c['generated']:9.3f} {c['real']:6.3f} {c['ratio']:6.2f} "
            f"{interval_text(c.get('ratio_interval')):>12}"
        )
    for task, r in results.items():
        bands = r["control"].get("by_distance")
        if bands:
            print(f"\n{task}: depth RMSE by true distance (m), generated / real; share of the squared error")
            for g, t in zip(bands["generated"], bands["real"]):
                lo, hi = g["range"]
                band = f"{lo:.0f}-{hi:.0f} m" if hi is not None else f"> {lo:.0f} m"
                rmse = "-" if g["rmse"] is None else f"{g['rmse']:.1f} / {t['rmse']:.1f}"
                print(
                    f"  {band:>10} pixels {g['pixel_share']:5.1%}  RMSE {rmse:>13}  "
                    f"error share {g['error_share']:5.1%} / {t['error_share']:5.1%}"
                )
            worst = ", ".join(
                f"{start + w['index']} {w['error_share']:.0%} / {w['error_share_real']:.0%}"
                for w in r["control"]["worst_scenes"]
            )
            print(f"  worst scenes, their share of the squared error (generated / real): {worst}")
            median = r["control"].get("scene_ratio_median")  # not in results written before it was added
            if median is not None:
                print(f"  median over the scenes of each scene's own RMSE ratio: {median:.2f}")
    for task, r in results.items():
        if r.get("redraws_per_sample") or r.get("early_redraws_per_sample"):
            print(
                f"{task}: {r['redraws_per_sample']:.3f} redraws per base sample "
                f"(redraw_threshold, redraw_colour_threshold), {r.get('early_redraws_per_sample', 0):.3f} midway "
                "(redraw_early_t)"
            )
    if any("upsampler_ceiling" in r for r in results.values()):
        print(f"\n{'task':<7} {'upsampler on real base images':<30} {'bicubic':>8} {'upsampler':>10} {'real':>6}")
        for task, r in results.items():
            c = r.get("upsampler_ceiling")
            if c:
                b, u = c["bicubic"], c["upsampler"]
                print(f"{task:<7} {b['measure'] + ' ratio':<30} {b['ratio']:8.3f} {u['ratio']:10.3f} {1:6.3f}")
    if any("diversity" in r for r in results.values()):
        head = f"{'features':>9} {'official':>9} {'ratio':>6} {'90% interval':>12} {'pixel L1':>9} {'official':>9}"
        print(f"\n{'task':<7} {'variety':>8} {head}")
        for task, r in results.items():
            d = r.get("diversity")
            if d:
                rec, off = d["recommended"], d["official_noise"]
                print(
                    f"{task:<7} {d['samples']:>4} x{d['num']:<3} {rec['features']:9.4f} {off['features']:9.4f} "
                    f"{d['features_ratio']:6.2f} {interval_text(d.get('features_ratio_interval')):>12} "
                    f"{rec['pixel_l1']:9.4f} {off['pixel_l1']:9.4f}"
                )
    print(f"\n{'task':<7} {'size':>4} {'mIoU gen':>9} {'mIoU real':>10} {'ratio':>6} {'FID-T':>8} {'s/image':>8}")
    for task, r in results.items():
        for row in [r] + ([r["at_base_size"]] if "at_base_size" in r else []):
            timing = f"{r['seconds_per_image']:8.2f}" if row is r else f"{'':>8}"
            print(
                f"{task:<7} {row['size']:>4} {row['miou_generated']:9.3f} {row['miou_real']:10.3f} "
                f"{row['miou_ratio']:6.2f} {row['fid_t']:8.3f} {timing}"
            )
    print("\nIoU per class, generated / real (at the final size):")
    for task, r in results.items():
        cells = [
            f"{name} {'-' if g is None else f'{g:.2f}'}/{'-' if t is None else f'{t:.2f}'}"
            for name, (g, t) in r["iou_per_class"].items()
        ]
        print(f"{task:<7} " + "  ".join(cells))
    print(f"\n{FID_T_NOTE}.")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to check (default all three)")
    p.add_argument("--base", type=Path, help="base checkpoint (one task only; default the embedded toy model)")
    p.add_argument("--upsampler", type=Path, help="upsampler checkpoint (with --base)")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=TOY_CHECKPOINT_DIR,
        help="folder of the piti-toy-TASK-{base,upsample}.safetensors files (default checkpoints/toy)",
    )
    p.add_argument("--no-upsample", action="store_true", help="judge the base model's 64-px images only")
    p.add_argument("--num", type=int, default=50, help="held-out scenes per task (default 50)")
    p.add_argument("--start", type=int, default=0, help="first held-out scene index (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of scene i is seed + i (default 0)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (default auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--segmenter", type=Path, help="segmenter file (default checkpoints/toy/segmenter.safetensors)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=TOY_CHECKPOINT_DIR / "alignment.json", help="JSON results file")
    p.add_argument("--grid-dir", type=Path, help="folder of the PNG grids (default: beside --out)")
    p.add_argument("--grid-rows", type=int, default=8, help="scenes shown per grid (default 8)")
    p.add_argument(
        "--samples-per-call",
        type=int,
        default=1,
        help="K > 1: scene i's picture is sample i mod K of a call of K samples, as particle guidance draws them "
        "(default 1: one call per image)",
    )
    p.add_argument("--diversity", type=int, default=0, help="K >= 2: also measure variety, K samples per condition")
    p.add_argument("--diversity-num", type=int, default=8, help="conditions of the variety check (default 8)")
    p.add_argument(
        "--upsampler-ceiling",
        action="store_true",
        help="also run the upsampler on the real 64-px images of the same scenes (against bicubic enlargement)",
    )
    add_settings_arguments(p)  # every sampling setting; None = the checkpoint's recommendation
    args = p.parse_args(argv)
    if args.num < 2:
        raise ConfigError(f"--num must be at least 2 (FID-T needs two images per set), got {args.num}")
    if args.samples_per_call < 1:
        raise ConfigError(f"--samples-per-call must be at least 1, got {args.samples_per_call}")
    if args.diversity == 1 or args.diversity < 0:
        raise ConfigError(f"--diversity must be 0 (off) or at least 2 samples per condition, got {args.diversity}")
    if args.upsampler_ceiling and args.no_upsample:
        raise ConfigError("--upsampler-ceiling checks the upsampler; drop --no-upsample")
    if args.upsampler is not None and args.base is None:
        raise ConfigError("--upsampler needs --base")
    if args.base is not None and len(args.tasks) != 1:
        raise ConfigError(f"--base/--upsampler are the checkpoints of one task; give one --tasks, not {args.tasks}")
    args.grid_dir = args.grid_dir or args.out.parent
    return args


def checkpoint_paths(args) -> dict:
    """``{task: (base, upsampler)}``, every file checked before anything is sampled."""
    paths = {
        task: (args.base, args.upsampler)
        if args.base is not None
        else tuple(args.models_dir / p.name for p in toy_checkpoint_paths(task))
        for task in args.tasks
    }
    missing = [str(p) for pair in paths.values() for p in pair if p is not None and not Path(p).is_file()]
    if missing and args.base is not None:
        raise CheckpointError(f"checkpoint file not found: {', '.join(missing)}")
    if missing:
        raise MissingWeightsError(
            f"the embedded toy models are missing ({', '.join(missing)}); "
            "`make toy-models` trains them, or give --base/--upsampler"
        )
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
            pipe = PITIPipeline.from_checkpoints(
                base, upsampler, task=task, device=args.device, precision=args.precision
            )
            print(f"{task}: sampling {args.num} held-out scenes ...", flush=True)
            settings = settings_from_args(args)
            results[task] = evaluate_toy_task(
                task,
                pipe,
                segmenter,
                args.num,
                args.start,
                args.seed,
                upsample=not args.no_upsample,
                settings=settings,
                grid=args.grid_dir / f"toy_alignment_{task}.png",
                grid_rows=args.grid_rows,
                samples_per_call=args.samples_per_call,
            )
            if args.upsampler_ceiling:
                print(f"{task}: the upsampler on the real base images of the same scenes ...", flush=True)
                results[task]["upsampler_ceiling"] = evaluate_upsampler_ceiling(
                    task, pipe, args.num, args.start, args.seed, settings=settings, segmenter=segmenter
                )
            if args.diversity:
                print(f"{task}: variety, {args.diversity} samples of {args.diversity_num} conditions ...", flush=True)
                results[task]["diversity"] = evaluate_toy_diversity(
                    task,
                    pipe,
                    segmenter,
                    args.diversity_num,
                    args.diversity,
                    args.start,
                    args.seed,
                    upsample=not args.no_upsample,
                    settings=settings,
                )
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(results, args.start)
    report = {
        "command": "python eval/toy_alignment.py " + " ".join(shlex.quote(a) for a in argv),
        "fid_t": FID_T_NOTE,
        "diversity_note": FEATURE_NOTE if args.diversity else None,
        "segmenter": str(args.segmenter or TOY_CHECKPOINT_DIR / "segmenter.safetensors"),
        "heldout_seeds": f"(HELDOUT_STREAM={HELDOUT_STREAM}, i) for i in {args.start}..{args.start + args.num - 1}",
        "num": args.num,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "tasks": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}; grids in {args.grid_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
