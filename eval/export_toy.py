"""Ship a trained toy pipeline: copy its final model files to ``checkpoints/toy/`` with sampling settings.

    python eval/export_toy.py --task mask                      # runs/toy/{joint,upsampler}-mask/model.safetensors
    python eval/export_toy.py --task mask --base runs/toy/joint-mask-long/model.safetensors --guidance 8
    python eval/export_toy.py --task mask --base checkpoints/toy/piti-toy-mask-base.safetensors \
        --upsampler checkpoints/toy/piti-toy-mask-upsample.safetensors      # new settings, same weights

The base model comes from the ``joint`` run and the upsampler from the ``upsampler`` run of the toy recipe
(their model files hold the EMA weights). Each is written as
``checkpoints/toy/piti-toy-{task}-{base,upsample}.safetensors`` with its training header kept and the
recommended sampling settings added (``"sampling"``: every field of :class:`piti.settings.SamplingSettings`,
read by ``PITIPipeline.from_checkpoints``); by default the toy recipe's (``piti.settings.TOY_RECIPE``), each one
changed by its flag. With reward guidance (``--reward-guidance``, ``--upsample-reward-guidance``), the base header
also names its reward model (``"reward_model"``, relative to the output folder); with particle guidance on classes
(``--particle-guidance S --particle-features classes``), its class model (``"class_model"``, the mask reward model);
with the colour redraw (``--redraw-colour-threshold``), the class model and the colour prior (``"colour_prior"``).
Weights are stored in fp16 by default (half the size; the models are built in fp32 and the values are
widened on loading), recorded as ``"stored_dtype"`` in the header.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from piti.checkpoints import EXPORT_DTYPES, export_model
from piti.errors import PitiError
from piti.pipeline import REWARD_SCALES, TOY_BUDGET_MB, TOY_CHECKPOINT_DIR
from piti.settings import TOY_RECIPE, add_settings_arguments, settings_from_args
from piti.tasks import TASKS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--base", type=Path, help="base model file (default runs/toy/joint-TASK/model.safetensors)")
    p.add_argument("--upsampler", type=Path, help="upsampler file (default runs/toy/upsampler-TASK/model.safetensors)")
    p.add_argument("--dtype", choices=tuple(EXPORT_DTYPES), default="fp16", help="stored weight type (default fp16)")
    add_settings_arguments(p, TOY_RECIPE, title="recommended sampling settings (default: the toy recipe's)")
    p.add_argument(
        "--reward-model",
        type=Path,
        help="reward model of the reward guidance, named in the base header "
        "(default checkpoints/toy/rewards/TASK.safetensors when --reward-guidance or --upsample-reward-guidance > 0)",
    )
    p.add_argument(
        "--class-model",
        type=Path,
        help="class model of the particle guidance, named in the base header "
        "(default checkpoints/toy/rewards/mask.safetensors with --particle-features classes or the colour redraw)",
    )
    p.add_argument(
        "--colour-prior",
        type=Path,
        help="colour prior of the colour redraw, named in the base header "
        "(default checkpoints/toy/rewards/colour_prior.safetensors when --redraw-colour-threshold > 0)",
    )
    p.add_argument("--out-dir", type=Path, default=TOY_CHECKPOINT_DIR)
    args = p.parse_args(argv)

    sources = {
        "base": args.base or Path(f"runs/toy/joint-{args.task}/model.safetensors"),
        "upsample": args.upsampler or Path(f"runs/toy/upsampler-{args.task}/model.safetensors"),
    }
    sampling = settings_from_args(args)
    reward, classes, colours = args.reward_model, args.class_model, args.colour_prior
    colour_redraw = sampling.get("redraw_colour_threshold", 0) > 0
    if reward is None and any(sampling.get(k, 0) > 0 for k in REWARD_SCALES):
        reward = TOY_CHECKPOINT_DIR / "rewards" / f"{args.task}.safetensors"
    particle_classes = sampling.get("particle_guidance", 0) > 0 and sampling.get("particle_features") == "classes"
    if classes is None and (particle_classes or colour_redraw):
        classes = TOY_CHECKPOINT_DIR / "rewards" / "mask.safetensors"
    if colours is None and colour_redraw:
        colours = TOY_CHECKPOINT_DIR / "rewards" / "colour_prior.safetensors"
    for what, path, maker in (
        ("reward model", reward, "eval/train_reward_models.py"),
        ("class model", classes, "eval/train_reward_models.py"),
        ("colour prior", colours, "eval/fit_colour_prior.py"),
    ):
        if path is not None and not path.is_file():
            print(f"error: the {what} {path} is missing ({maker} makes it)", file=sys.stderr)
            return 2
    # the header names them relative to the model's folder, so a copied folder keeps working
    reward, classes, colours = (
        os.path.relpath(f.resolve(), args.out_dir.resolve()) if f else None for f in (reward, classes, colours)
    )
    try:
        for role, src in sources.items():
            dst = args.out_dir / f"piti-toy-{args.task}-{role}.safetensors"
            export_model(
                src,
                dst,
                role=role,
                task=args.task,
                sampling=sampling,
                dtype=args.dtype,
                reward_model=reward,
                class_model=classes,
                colour_prior=colours,
            )
            print(f"{src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB, {args.dtype})")
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(f.stat().st_size for f in args.out_dir.glob("*.safetensors")) / 1e6
    print(f"{args.out_dir}: {total:.1f} MB of safetensors in all (budget {TOY_BUDGET_MB} MB)")
    if total > TOY_BUDGET_MB:
        print(f"warning: the shipped models exceed the {TOY_BUDGET_MB} MB budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
