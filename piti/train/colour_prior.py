"""A colour prior of the synthetic world: the colours each class takes at each depth in the training images.

The depth model's rare bad samples keep the layout of their condition but paint near ground in the colours of
distance (pink, mauve or brown haze). The reward model reads such a sample as faithful (it reads depth from the
layout) and the class model still names its classes, but their colours are unlike any training image's for that
class at that depth. :class:`ColourPrior` scores an image by the mean squared Mahalanobis distance of its pixels'
colours to the Gaussian of the training images' colours of the same class (the class model's reading of the image)
and depth bin (the condition's), so that the pipeline can draw such a sample again (``redraw_colour_threshold``).
It is fitted on the diffusion models' own training scenes (stream 0) and is not a judge: the evaluation's depth
estimator is a network trained on scenes of another stream, and never sees this prior.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from piti.errors import CheckpointError, ConfigError, MissingWeightsError

DEPTH_BINS = (0.25, 0.5, 0.75)  # bin edges on the depth condition's normalised log depth, log d / log(d_max + 1.01)
UNSEEN = 50.0  # squared distance of a pixel whose class the training images never show at its depth; also the cap
MIN_PIXELS = 200  # a (class, depth bin) with fewer training pixels keeps no Gaussian (its pixels count as unseen)
RIDGE = 1e-4  # added to each covariance's diagonal (colours in [0, 1]): a flat-coloured class stays invertible
KIND = "colour-prior"


class ColourPrior(nn.Module):
    """Per (class, depth bin) Gaussians of pixel colours in [0, 1]: ``mean`` (K*B, 3), ``precision`` (K*B, 3, 3) and
    ``seen`` (K*B,), row ``class * B + bin``; B = len(DEPTH_BINS) + 1."""

    def __init__(self, num_classes: int, bins=DEPTH_BINS):
        super().__init__()
        rows = num_classes * (len(bins) + 1)
        self.num_classes = int(num_classes)
        self.register_buffer("edges", torch.tensor(bins, dtype=torch.float32))
        self.register_buffer("mean", torch.zeros(rows, 3))
        self.register_buffer("precision", torch.zeros(rows, 3, 3))
        self.register_buffer("seen", torch.zeros(rows, dtype=torch.bool))

    @property
    def config(self) -> dict:
        return {"kind": KIND, "num_classes": self.num_classes, "bins": self.edges.tolist()}

    def rows(self, labels: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Each pixel's row: its class (N, H, W) and the bin of its normalised log depth (N or 1, H, W)."""
        bins = torch.bucketize(norm.float(), self.edges, right=True)  # np.digitize's convention
        return labels.long() * (len(self.edges) + 1) + bins

    def forward(self, images: torch.Tensor, labels: torch.Tensor, target: dict) -> torch.Tensor:
        """Per-image (N,) mean over the pixels with a depth of the squared Mahalanobis distance (capped at
        :data:`UNSEEN`) of their colour to their row's Gaussian. ``images`` (N, 3, H, W) in [-1, 1], read as the 8-bit
        picture they become; ``labels`` (N, H, W) class indices; ``target`` the depth condition's ``norm`` and
        ``valid`` at H x W (:func:`piti.train.rewards.condition_target`), (N or 1, H, W)."""
        if images.dim() != 4 or images.shape[1] != 3 or labels.shape != (images.shape[0], *images.shape[2:]):
            raise ConfigError(
                f"colour prior: images (N, 3, H, W) with labels (N, H, W), got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        rgb = ((images.float() + 1) * 127.5).round().clamp(0, 255).permute(0, 2, 3, 1) / 255
        row = self.rows(labels.clamp(0, self.num_classes - 1), target["norm"])
        d = rgb - self.mean[row]
        d2 = ((d.unsqueeze(-1) * self.precision[row]).sum(-2) * d).sum(-1)  # elementwise: no bf16 under autocast
        d2 = torch.where(self.seen[row], d2, torch.full_like(d2, UNSEEN)).clamp(max=UNSEEN)
        valid = target["valid"].float().expand_as(d2)
        return (d2 * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)


def fit_colour_prior(num: int = 400, seed: int = 0, size: int = 64, progress: bool = False) -> ColourPrior:
    """The prior of ``num`` scenes ``(seed, i)`` (stream 0: the diffusion models' training scenes) at the base size,
    each scene's depth condition made as :class:`~piti.data.datasets.SynthDataset` makes it, read back as the
    pipeline reads it (:func:`~piti.train.rewards.condition_target`), and its true labels."""
    from tqdm.auto import tqdm

    from piti.data.datasets import SynthDataset
    from piti.data.synth import CLASSES
    from piti.evaluation.scenes import render_example
    from piti.train.rewards import RENDER, condition_target

    prior = ColourPrior(len(CLASSES))
    ds = SynthDataset(length=num, task="depth", seed=seed, image_size=size, cond_size=RENDER, flip=False)
    colours, rows = [], []
    for i in tqdm(range(num), desc="colour prior", disable=not progress):
        image, labels = render_example((seed, i), size, RENDER)
        target = condition_target("depth", ds[i]["cond"][None].float(), size)
        valid = target["valid"][0].numpy()
        colours.append(image[valid] / 255.0)
        rows.append(prior.rows(torch.as_tensor(labels)[None], target["norm"])[0].numpy()[valid])
    colours, rows = np.concatenate(colours), np.concatenate(rows)
    for r in range(len(prior.mean)):
        x = colours[rows == r]
        if len(x) >= MIN_PIXELS:
            prior.mean[r] = torch.as_tensor(x.mean(0))
            prior.precision[r] = torch.as_tensor(np.linalg.inv(np.cov(x.T) + RIDGE * np.eye(3)))
            prior.seen[r] = True
    return prior


def save_colour_prior(path: str | os.PathLike, prior: ColourPrior, metadata: dict | None = None) -> None:
    from piti.checkpoints import save_checkpoint

    save_checkpoint(path, prior, config=prior.config, metadata=metadata)


def load_colour_prior(path: str | os.PathLike, device="cpu") -> ColourPrior:
    """A colour prior from ``path``; a missing file or another kind of file is a clear error."""
    from piti.checkpoints import load_checkpoint, load_state_dict_strict

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"colour prior not found: {path}; `python eval/fit_colour_prior.py` fits one")
    ckpt = load_checkpoint(path)
    cfg = ckpt.config or {}
    if cfg.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is not a colour prior: its header says kind {cfg.get('kind')!r}, expected {KIND!r}"
        )
    try:
        prior = ColourPrior(int(cfg["num_classes"]), tuple(cfg["bins"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: colour prior config is malformed ({e!r}): {cfg}") from None
    load_state_dict_strict(
        prior, {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}, source=str(path)
    )
    prior.checkpoint_metadata = ckpt.metadata
    return prior.to(device).eval()


def colour_distances(prior: ColourPrior, class_model, num: int, start: int = 1000) -> np.ndarray:
    """The prior's reading (N,) of ``num`` held-out real scenes' 64-px images from ``start``, their classes read by
    ``class_model`` as the pipeline reads a sample's."""
    from piti.evaluation.scenes import heldout_examples
    from piti.train.rewards import RENDER, SIZE, condition_target

    data = heldout_examples("depth", num, start, SIZE, RENDER, SIZE)
    x = torch.as_tensor(data["real_base"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    target = condition_target("depth", data["cond"].float(), SIZE)
    with torch.no_grad():
        return prior(x, class_model(x).argmax(1), target).numpy()
