"""Diversity: how different are several samples of one condition?

* **LPIPS** (``lpips``): the mean LPIPS distance over every pair of samples of a condition, averaged over the
  conditions (the protocol of SDM and StarGAN-v2's ``lpips.py``). Needs the LPIPS backbone (torchvision's
  VGG16 or AlexNet weights, :func:`piti.weights.lpips_model`); never downloaded, never random.
* **toy feature distance** (``features``): the same mean over pairs of an LPIPS-like distance in the toy segmenter's
  feature space (:func:`feature_distance`): every layer's activations unit-normalised over the channels, their
  squared difference summed over channels, averaged over positions, then over the layers (LPIPS without its
  learned per-channel weights). For the synthetic world only, where the segmenter has seen the images' kind;
  not comparable with LPIPS.
* **pixel L1** (``pixel``): the same mean over pairs of the L1 distance between the samples' pixels in [0, 1],
  at 64 x 64 (area reduction). Weights-free and declared as such: it measures how much the pictures differ,
  not how differently a person would see them, and is not comparable with LPIPS.

The samples are ``piti eval generate --samples K``'s ``samples/NAME/*.png`` (K >= 2 per condition).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from piti.errors import ConfigError, DatasetError
from piti.evaluation.images import check_readable, list_images, read_rgb

PIXEL_NOTE = (
    "pixel L1 diversity: mean L1 distance between the pixels (in [0, 1], at 64x64) of every pair of "
    "samples of a condition; weights-free, NOT LPIPS and not comparable with it"
)


def sample_groups(root) -> dict[str, list[Path]]:
    """``{condition name: [sample files]}`` from ``root/samples/NAME/*.png``; every file checked readable."""
    folder = Path(root) / "samples"
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} not found: diversity needs several samples per condition "
            "(`piti eval generate --samples K` with K >= 2 writes them)"
        )
    groups = {d.name: list_images(d, f"samples of {d.name}") for d in sorted(folder.iterdir()) if d.is_dir()}
    if not groups:
        raise DatasetError(f"{folder} holds no condition folder")
    few = [n for n, fs in groups.items() if len(fs) < 2]
    if few:
        raise DatasetError(
            f"diversity needs at least 2 samples per condition; {', '.join(few[:10])} "
            f"{'has' if len(few) == 1 else 'have'} fewer"
        )
    for name, files in groups.items():
        check_readable(files, f"samples of {name}")
    return groups


def _mean_over_pairs(images: torch.Tensor, distance) -> float:
    return float(
        np.mean([distance(images[i : i + 1], images[j : j + 1]) for i, j in combinations(range(len(images)), 2)])
    )


FEATURE_NOTE = (
    "toy feature diversity: mean LPIPS-like distance (unit-normalised activations of every layer of the toy "
    "segmenter, at 64x64) between every pair of samples of a condition; synthetic world only, NOT LPIPS"
)


def feature_distance(segmenter, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-like distance (N,) between images ``a`` and ``b`` (N, 3, H, W) in [-1, 1] in ``segmenter``'s layers."""
    fa, fb = segmenter.feature_maps(a), segmenter.feature_maps(b)
    per_layer = []
    for x, y in zip(fa, fb):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        per_layer.append((x - y).pow(2).sum(1).mean(dim=(1, 2)))
    return torch.stack(per_layer).mean(0)


@torch.no_grad()
def feature_distances(samples, segmenter, size: int = 64) -> np.ndarray:
    """Per condition (num_conditions,), the mean pairwise :func:`feature_distance` between its samples.

    ``samples``: a list of uint8 stacks (K, S, S, 3), K >= 2, one per condition; images reduced to ``size`` (area)."""
    import torch.nn.functional as F

    was_training = segmenter.training
    segmenter.eval()
    per = []
    try:
        for group in samples:
            if len(group) < 2:
                raise DatasetError("feature diversity needs at least 2 samples per condition")
            x = torch.from_numpy(np.ascontiguousarray(group)).permute(0, 3, 1, 2).float() / 127.5 - 1
            x = F.interpolate(x, size=(size, size), mode="area")
            i, j = zip(*combinations(range(len(x)), 2))
            per.append(float(feature_distance(segmenter, x[list(i)], x[list(j)]).mean()))
    finally:
        segmenter.train(was_training)
    return np.asarray(per)


def feature_diversity(samples, segmenter, size: int = 64) -> float:
    """:func:`feature_distances` averaged over the conditions."""
    return float(np.mean(feature_distances(samples, segmenter, size)))


def pixel_l1_diversity(samples) -> float:
    """Mean pairwise pixel L1 (in [0, 1], at 64x64) of uint8 stacks (K, S, S, 3), averaged over the stacks."""
    import torch.nn.functional as F

    per = []
    for group in samples:
        x = torch.from_numpy(np.ascontiguousarray(group)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(64, 64), mode="area")
        per.append(_mean_over_pairs(x, lambda a, b: float((a - b).abs().mean())))
    return float(np.mean(per))


def pixel_diversity(groups: dict[str, list[Path]]) -> float:
    """Mean pairwise pixel L1 (in [0, 1], at 64x64) of the sample files of each condition, averaged over them."""
    return pixel_l1_diversity([np.stack([read_rgb(f) for f in files]) for files in groups.values()])


def lpips_diversity(groups: dict[str, list[Path]], net: str = "alex", weights=None, device="cpu") -> float:
    """Mean pairwise LPIPS (inputs in [-1, 1] at their own size), averaged over the conditions."""
    from piti.weights import lpips_model

    model = lpips_model(net, weights).to(device)
    per = []
    with torch.no_grad():
        for files in groups.values():
            arrays = [read_rgb(f) for f in files]
            if len({a.shape for a in arrays}) > 1:
                size = arrays[0].shape[0]
                arrays = [read_rgb(f, size) for f in files]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
            per.append(_mean_over_pairs(x, lambda a, b: float(model(a, b).mean())))
    return float(np.mean(per))
