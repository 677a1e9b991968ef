"""Shared fixtures, and the tiny models and inputs that several test files build.

Tiny models have a few thousand parameters, so every path runs on a CPU in milliseconds; their
weights are random (perturbed, so no output layer is zero), which tests plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from piti.checkpoints import save_checkpoint
from piti.data.palettes import SYNTH_PALETTE
from piti.presets import create_model
from piti.train.config import TrainConfig

PRECISIONS = ("fp32", "bf16")  # run the precision-dependent tests in both, on every CPU


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine idle-spinning threads slow them 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- pipeline

# Tiny versions of the toy presets: 32-px base, 32 -> 64 px upsampler, 32-px condition, 8-wide tokens.
TINY = dict(
    num_channels=32,
    num_res_blocks=1,
    attention_resolutions=(16,),
    num_head_channels=32,
    dropout=0.0,
    xf_width=32,
    encoder_cnn_channels=(8, 16, 32),
    cond_size=32,
    encoder_layers=1,
    encoder_heads=2,
)
FEW = dict(steps=3, upsample_steps=2, progress=False)  # enough steps to exercise multistep samplers


def tiny_model(task: str, upsampler: bool, seed: int = 0, **changes):
    """A tiny PITI model whose every weight is perturbed (the zero-initialised output layers would make
    every prediction zero, hiding wiring mistakes); ``changes``: other model options (e.g. ``cond_hint=True``)."""
    name = f"toy-piti-{'upsample' if upsampler else 'base'}-{task}"
    model = create_model(
        name, image_size=64 if upsampler else 32, channel_mult=(1, 1, 2) if upsampler else (1, 2), **TINY, **changes
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def tiny_checkpoints(task: str, folder, sampling: dict | None = None):
    """Save a tiny base and upsampler of ``task`` in ``folder``; returns their paths."""
    base, up = folder / f"tiny-{task}-base.safetensors", folder / f"tiny-{task}-upsample.safetensors"
    meta = {"sampling": sampling} if sampling else None
    save_checkpoint(base, tiny_model(task, False), metadata=meta)
    save_checkpoint(up, tiny_model(task, True, seed=1), metadata=meta)
    return base, up


def synth_mask(h=40, w=48) -> Image.Image:
    """A colour map in the synthetic-world palette: sky above grass, a house in the middle."""
    labels = np.zeros((h, w), np.uint8)
    labels[h // 2 :] = 3
    labels[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 7
    return Image.fromarray(SYNTH_PALETTE[labels])


def sketch_picture(size=48) -> Image.Image:
    """White lines on black: a rectangle outline and a diagonal."""
    a = np.zeros((size, size), np.uint8)
    a[8, 8:40] = a[40, 8:40] = a[8:41, 8] = a[8:41, 40] = 255
    a[np.arange(size), np.arange(size)] = 255
    return Image.fromarray(a)


def depth_metres(size=40) -> np.ndarray:
    """A slanted floor: depth grows towards the top of the picture."""
    rows = np.linspace(8.0, 1.0, size, dtype=np.float32)[:, None]
    return np.repeat(rows, size, axis=1)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(np.int16)


# ---------------------------------------------------------------------------------------------- training

# Tiny versions of the toy presets: 16 px base, 16 -> 32 px upsampler, 4x4 condition tokens.
TINY_UNET = dict(
    num_channels=32,
    num_res_blocks=1,
    channel_mult=[1, 2],
    attention_resolutions=[8],
    image_size=16,
    num_head_channels=32,
    dropout=0.0,
)
TINY_TEXT = dict(xf_width=64, xf_layers=1, xf_heads=2, text_ctx=24)
TINY_ENCODER = dict(xf_width=64, cond_size=16, encoder_layers=1, encoder_heads=2, encoder_cnn_channels=[16, 32, 64])
TINY_UPSAMPLER = dict(image_size=32, channel_mult=[1, 1, 2])


def tiny_model_overrides(stage: str) -> dict:
    out = dict(TINY_UNET, **(TINY_TEXT if stage == "pretrain" else TINY_ENCODER))
    if stage == "upsampler":
        out.update(TINY_UPSAMPLER)
    return out


def tiny_settings(tmp_path: Path, stage: str) -> dict:
    """TrainConfig fields of a tiny run of ``stage`` (plain data, also written as YAML by other tests)."""
    model = {"pretrain": "toy-glide-base", "upsampler": "toy-piti-upsample-mask"}.get(stage, "toy-piti-base-mask")
    return dict(
        name=stage,
        stage=stage,
        model=model,
        model_overrides=tiny_model_overrides(stage),
        out_dir=str(tmp_path / stage),
        data={"kind": "synth", "length": 16},
        batch_size=4,
        iterations=3,
        save_interval=100,
        sample_interval=0,
        log_interval=1,
        low_res_size=16,
        device="cpu",
        lr=1e-3,
        ema_rate=0.9,
        from_scratch=stage in ("joint", "upsampler"),
        allow_random_perceptual=True,
        perceptual_start=0,
        adv_start=0,
        disc_ndf=8,
        disc_layers=2,
        tokenizer_scan=16,
    )


def tiny_config(tmp_path: Path, stage: str, **changes) -> TrainConfig:
    return TrainConfig(**dict(tiny_settings(tmp_path, stage), **changes))
