"""Scenes of the synthetic world for the toy judges: their training streams and the held-out examples.

* Judges train on scenes ``(TRAIN_STREAM, seed, i)`` and are scored on held-out scenes ``(HELDOUT_STREAM, i)``.
  Both first elements are far from the small integer seeds of the datasets (``(seed, i)`` in
  :class:`~piti.data.datasets.SynthDataset`), so neither overlaps what the diffusion models train on.
* :func:`heldout_examples` turns held-out scenes into (condition, real image, ground truth) exactly as the
  training data makes them: the input of the toy alignment check and of ``piti eval generate --synth``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from piti.errors import ConfigError
from piti.evaluation.images import unit_to_uint8

TRAIN_STREAM = 1_000_001  # first seed element of the judges' training scenes
HELDOUT_STREAM = 1_000_002  # first seed element of the held-out scenes


def reduce_scene(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A rendered scene at ``size`` px as the datasets reduce it: image PIL bicubic, labels nearest."""
    from piti.data.conditions import resize_nearest

    if image.shape[0] == size:
        return image, labels
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)), resize_nearest(labels, (size, size))


def render_example(seed, size: int, render_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene as (image (size, size, 3) uint8, labels (size, size) uint8), rendered at
    ``render_size`` (default ``size``) and reduced as the datasets do (:class:`SynthDataset`)."""
    from piti.data.synth import generate_scene

    render_size = render_size or size
    if render_size < size:
        raise ConfigError(f"render size {render_size} is smaller than the target size {size}")
    scene = generate_scene(seed, render_size)
    return reduce_scene(scene.image, scene.labels, size)


def heldout_set(num: int, size: int, render_size: int | None = None, start: int = 0):
    """``num`` held-out scenes ``(HELDOUT_STREAM, start + i)``: (images (N, S, S, 3), labels (N, S, S)) uint8."""
    pairs = [render_example((HELDOUT_STREAM, start + i), size, render_size) for i in range(num)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def heldout_examples(
    task: str, num: int, start: int, size: int, cond_size: int, base_size: int | None = None, depth: bool = False
) -> dict:
    """Held-out scenes ``(HELDOUT_STREAM, start + i)`` as the training data makes them.

    Returns ``cond`` (N, C, cond_size, cond_size) float in [-1, 1], ``real`` (N, size, size, 3) uint8 and
    ``labels`` (N, size, size) uint8; with ``base_size``, also ``real_base`` and ``labels_base`` at that size;
    with ``depth``, ``depth`` (N, size, size) float32 metres (0 = no depth), reduced nearest as the labels.
    Conditions and images come from :class:`SynthDataset` (seed ``HELDOUT_STREAM``, no flips); the label maps
    are the same scenes reduced nearest (:func:`render_example`), at the size the dataset draws them.
    """
    from piti.data.conditions import resize_nearest
    from piti.data.datasets import SynthDataset
    from piti.data.synth import generate_scene

    ds = SynthDataset(
        length=start + num, task=task, seed=HELDOUT_STREAM, image_size=size, cond_size=cond_size, flip=False
    )
    work = max(size, cond_size)  # SynthDataset draws its scenes at this size
    items = [ds[start + i] for i in range(num)]
    out = {
        "cond": torch.stack([it["cond"] for it in items]),
        "real": unit_to_uint8(torch.stack([it["image"] for it in items])).permute(0, 2, 3, 1).numpy(),
        "labels": np.stack([render_example((HELDOUT_STREAM, start + i), size, work)[1] for i in range(num)]),
    }
    if base_size is not None:
        pairs = [render_example((HELDOUT_STREAM, start + i), base_size, work) for i in range(num)]
        out["real_base"], out["labels_base"] = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if depth:
        out["depth"] = np.stack(
            [resize_nearest(generate_scene((HELDOUT_STREAM, start + i), work).depth, (size, size)) for i in range(num)]
        ).astype(np.float32)
    return out
