"""``piti sample``: translate a condition picture into photos and write them with their settings.

    piti sample --task mask --cond labels.png --out out/ --num 4 --seed 0

writes ``out/base-000.png`` ... (64 px), ``out/sample-000.png`` ... (upsampled; the base pictures again with
``--no-upsample``) and ``out/settings.json`` (every setting, the seed, the notes on the condition, timings).
Without ``--base`` the embedded default models of the task are used. Every user error (a condition that does
not fit the task, an unreadable file, a missing checkpoint, fp16 on a CPU) is one line on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from piti.errors import ConfigError, PitiError


def configure_parser(parser) -> None:
    from piti.precision import PRECISIONS
    from piti.settings import PROFILES, add_settings_arguments
    from piti.tasks import TASKS

    parser.add_argument("--task", required=True, choices=TASKS, help="what the condition is")
    parser.add_argument(
        "--cond",
        required=True,
        nargs="+",
        metavar="PATH",
        help="condition file: a colour map (mask), a sketch, or depth (16-bit PNG in metres x 256, a "
        ".npy in metres, or two files: the normal and depth visualisations)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and settings.json")
    parser.add_argument("--num", type=int, default=1, help="number of samples (one batch; default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same pixels (default 0)")
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help="default settings: official (DDPM 250 + fast27, fp32) or fast (DPM-Solver++ 20 + 10); "
        "default: official for official checkpoints, fast otherwise",
    )
    parser.add_argument("--no-upsample", action="store_true", help="stop at the 64-px base samples")
    parser.add_argument(
        "--base", default=None, metavar="CKPT", help="base checkpoint (official .pt or project .safetensors)"
    )
    parser.add_argument("--upsampler", default=None, metavar="CKPT", help="upsampler checkpoint")
    parser.add_argument(
        "--reward-model",
        default=None,
        metavar="CKPT",
        help="reward model for --reward-guidance (default: the one the base header names, if any)",
    )
    parser.add_argument(
        "--class-model",
        default=None,
        metavar="CKPT",
        help="class model (a mask reward model) for --particle-features classes and --redraw-colour-threshold "
        "(default: the base header's, if any)",
    )
    parser.add_argument(
        "--colour-prior",
        default=None,
        metavar="FILE",
        help="depth colour prior for --redraw-colour-threshold (default: the base header's, if any)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: fp32 in the official profile; auto (bf16 where the hardware computes it, else "
        "fp32) in the fast one; fp16 is CUDA only",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (slow first call)")
    parser.add_argument(
        "--sketch-from-photo", action="store_true", help="(sketch) extract the sketch from a photo first"
    )
    parser.add_argument(
        "--snap", action="store_true", help="(mask) map colours outside the palette to the nearest class"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_settings_arguments(parser)


def _condition(args):
    """The --cond argument: one file, or the (normal, depth) pair of visualisations for depth."""
    from piti.data.conditions import open_condition

    paths = args.cond
    if len(paths) == 2 and args.task == "depth":
        return tuple(open_condition(p) for p in paths), f"{paths[0]} + {paths[1]}"
    if len(paths) != 1:
        raise ConfigError(f"--cond takes one file ({len(paths)} given); only --task depth takes two (normal, depth)")
    return open_condition(paths[0]), paths[0]


def run(args) -> int:
    import torch

    import piti
    from piti.pipeline import PITIPipeline
    from piti.settings import settings_from_args

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if args.upsampler and not args.base:
        raise ConfigError("--upsampler needs --base as well")
    condition, source = _condition(args)  # read first: a bad condition fails before loading models
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")

    pipe = PITIPipeline.from_checkpoints(
        args.base,
        args.upsampler,
        task=args.task,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        profile=args.profile,
        reward_model=args.reward_model,
        class_model=args.class_model,
        colour_prior=args.colour_prior,
    )
    settings = settings_from_args(args)
    out = pipe(
        condition,
        num_samples=args.num,
        seed=args.seed,
        upsample=False if args.no_upsample else None,
        sketch_from_photo=args.sketch_from_photo,
        snap=args.snap,
        progress=not args.no_progress,
        source=source,
        **settings,
    )
    if pipe.upsampler_model is None and not args.no_upsample:
        out.notes.append("no --upsampler given: the samples are the base model's")
    for note in out.notes:
        print(f"piti sample: note: {note}", file=sys.stderr)

    files = {f"base-{i:03d}.png": im for i, im in enumerate(out.base_images)}
    files.update({f"sample-{i:03d}.png": im for i, im in enumerate(out.images)})
    record = {
        "condition": source,
        "settings": out.settings,
        "notes": out.notes,
        "files": sorted(files),
        "versions": {"piti": piti.__version__, "torch": torch.__version__},
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, image in files.items():
            image.save(out_dir / name)
        (out_dir / "settings.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as e:
        raise PitiError(f"cannot write the results to {out_dir}: {e}") from None
    t = out.settings["timings"]
    took = f"base {t['base_s']:.1f} s" + (f", upsampler {t['upsample_s']:.1f} s" if "upsample_s" in t else "")
    redrawn = sum(n > 0 for n in out.settings["redraws"])
    took += f"; {redrawn} base sample(s) drawn again (redraw_threshold, redraw_colour_threshold)" if redrawn else ""
    early = out.settings["early_redraws"]
    took += f"; {early} draw(s) restarted midway (redraw_early_t)" if early else ""
    print(
        f"piti sample: wrote {len(out.images)} sample(s) of {out.images[0].width} px to {out_dir} ({took}; "
        f"seed {out.settings['seed']}, {out.settings['profile']} profile)"
    )
    return 0
