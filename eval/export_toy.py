"""Ship a trained toy pipeline: copy its final model files to ``checkpoints/toy/`` with sampling settings.

    python eval/export_toy.py --task mask                      # runs/toy/{joint,upsampler}-mask/model.safetensors
    python eval/export_toy.py --task mask --base runs/toy/joint-mask-long/model.safetensors --guidance 8
    python eval/export_toy.py --task mask --base checkpoints/toy/piti-toy-mask-base.safetensors \
        --upsampler checkpoints/toy/piti-toy-mask-upsample.safetensors      # new settings, same weights

The base model comes from the ``joint`` run and the upsampler from the ``upsampler`` run of the toy recipe
(their model files hold the EMA weights). Each is written as
``checkpoints/toy/piti-toy-{task}-{base,upsample}.safetensors`` with its training header kept and the
recommended sampling settings added (``"sampling"``: every field of :class:`piti.settings.SamplingSettings`,
read by ``PITIPipeline.from_checkpoints``); by default the toy recipe's (``RECIPE_SAMPLING``), each one
changed by its flag.
Weights are stored in fp16 by default (half the size; the models are built in fp32 and the values are
widened on loading), recorded as ``"stored_dtype"`` in the header.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from piti.checkpoints import load_checkpoint, save_checkpoint
from piti.errors import CheckpointError, PitiError
from piti.pipeline import TOY_BUDGET_MB, TOY_CHECKPOINT_DIR
from piti.settings import PROFILES, add_settings_arguments, settings_from_args
from piti.tasks import TASKS

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
HEADER_KEYS_SET_BY_SAVE = ("format_version", "layout", "config", "step")  # save_checkpoint writes these itself
# The toy recipe's recommended sampling, chosen on held-out selection scenes (docs/experiments.md):
# normalized guidance w=5, ancestral DDPM in 25 base steps with 0.7 of the official noise per step, and the
# upsampler's 10 DDPM steps (official noise) started from the base image noised to t=0.1.
RECIPE_SAMPLING = PROFILES["fast"].replace(
    guidance=5.0, guidance_mode="normalized", sampler="ddpm", steps="25", noise_scale=0.7,
    upsample_sampler="ddpm", upsample_steps="10", upsample_start=0.1, palette="synth")


def export_model(src, dst, *, role: str, task: str, sampling: dict, dtype: str = "fp16") -> None:
    """Copy the model file ``src`` (a PITI ``role`` = "base" or "upsample" model of ``task``) to ``dst``,
    floating-point tensors cast to ``dtype``, with ``sampling`` added to its header."""
    ckpt = load_checkpoint(src)
    cfg = ckpt.config or {}
    if cfg.get("kind") != "piti" or bool(cfg.get("super_res")) != (role == "upsample") or cfg.get("task") != task:
        raise CheckpointError(f"{src} should hold a PITI {role} model of task {task!r}; its header says kind "
                              f"{cfg.get('kind')!r}, super_res {cfg.get('super_res')!r}, task {cfg.get('task')!r}")
    copy_model(src, dst, dtype=dtype, ckpt=ckpt, sampling=sampling)


def copy_model(src, dst, *, dtype: str = "fp16", ckpt=None, **metadata) -> None:
    """Copy any model file of this project (``ckpt``: ``src`` already loaded) with its floating-point tensors
    cast to ``dtype``, its header kept and ``metadata`` added (e.g. a toy GLIDE pretraining, kept in fp16)."""
    ckpt = ckpt or load_checkpoint(src)
    tensors = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{src}: {len(bad)} tensors are not finite in {dtype} (e.g. {bad[0]}); export in fp32")
    meta = {k: v for k, v in ckpt.metadata.items() if k not in HEADER_KEYS_SET_BY_SAVE}
    # re-exporting a shipped file (e.g. to change its sampling settings) keeps the name of the run it came from
    meta.update(metadata, stored_dtype=str(DTYPES[dtype]).removeprefix("torch."),
                exported_from=meta.get("exported_from", str(src)))
    save_checkpoint(dst, tensors, config=ckpt.config or {}, step=ckpt.metadata.get("step"), metadata=meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--base", type=Path, help="base model file (default runs/toy/joint-TASK/model.safetensors)")
    p.add_argument("--upsampler", type=Path, help="upsampler file (default runs/toy/upsampler-TASK/model.safetensors)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="stored weight type (default fp16)")
    add_settings_arguments(p, RECIPE_SAMPLING, title="recommended sampling settings (default: the toy recipe's)")
    p.add_argument("--out-dir", type=Path, default=TOY_CHECKPOINT_DIR)
    args = p.parse_args(argv)

    sources = {"base": args.base or Path(f"runs/toy/joint-{args.task}/model.safetensors"),
               "upsample": args.upsampler or Path(f"runs/toy/upsampler-{args.task}/model.safetensors")}
    sampling = settings_from_args(args)
    try:
        for role, src in sources.items():
            dst = args.out_dir / f"piti-toy-{args.task}-{role}.safetensors"
            export_model(src, dst, role=role, task=args.task, sampling=sampling, dtype=args.dtype)
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
