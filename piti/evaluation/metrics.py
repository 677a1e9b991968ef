"""Metrics of the toy-scale alignment check: mIoU, the Fréchet distance, and FID-T.

**FID-T** ("FID on the toy segmenter") is the Fréchet distance between two Gaussians
fitted to the *segmenter's* features of real and of generated images: for each
image, the penultimate feature map of :class:`~piti.evaluation.segmenter.Segmenter`
(the input of its 1x1 classifier, ``feature_dim`` = 32 channels) averaged over
the pixels. It plays the part Inception features play in FID, in a space that
knows the synthetic world. It is **not comparable with Inception FID** (FID-I)
nor with any published number: another network, another feature space (32-D, not
2048-D), other scales. Like FID it is biased by the number of images, so compare
FID-T values only between sets of the same size judged by the same segmenter file.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from piti.errors import ConfigError


def _as_labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise ConfigError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """``C[t, p]`` = number of pixels of true class ``t`` predicted as ``p``, shape (K, K), int64.

    ``pred`` and ``target`` are integer arrays of one shape (any, e.g. (N, H, W)). Target pixels
    equal to ``ignore_index`` are left out; any other value outside ``0..K-1`` is an error.
    """
    pred, target = _as_labels(pred, "pred"), _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ConfigError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, a in (("pred", pred), ("target", target)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ConfigError(f"{name} has class indices outside 0..{num_classes - 1} "
                              f"(found {a.min()}..{a.max()}); pass ignore_index for unlabelled pixels")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU) of a confusion matrix; IoU_c = TP / (TP + FP + FN).

    A class absent from both prediction and target (TP + FP + FN = 0) has IoU NaN and is left
    out of the mean. Raises ConfigError when no class is present at all.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    if np.isnan(iou).all():
        raise ConfigError("mIoU is undefined: no pixel was counted (empty input, or every pixel ignored)")
    return float(np.nanmean(iou)), iou


def miou(pred, target, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean intersection over union over the classes present in ``pred`` or ``target``.

    The IoU of each class is computed from the pixels of all images together (a
    dataset-level confusion matrix), as segmentation benchmarks do.
    """
    return iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))[0]


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, float64) of features (N, D), N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ConfigError("features contain NaN or infinite values")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))   (Dowson & Landau 1982;
    the FID formula of Heusel et al. 2017). When the product is singular, ``eps`` is added to both
    diagonals (in the traces too, so the result stays a distance between two Gaussians); an imaginary
    part left by round-off is dropped, a large one is an error. Returns d^2 (FID's convention),
    clipped at 0 against round-off.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ConfigError(f"frechet_distance: shapes do not agree: mu {mu1.shape} {mu2.shape}, "
                          f"sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:  # scipy warns when the product is singular
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if caught or not np.isfinite(covmean).all():  # the distance between the regularised Gaussians instead
        sigma1, sigma2 = sigma1 + np.eye(d) * eps, sigma2 + np.eye(d) * eps
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise ConfigError(f"frechet_distance: the matrix square root has a large imaginary part "
                              f"({np.abs(covmean.imag).max():.3g}); are the covariances positive semi-definite?")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def fid_t(real_images, fake_images, segmenter, batch_size: int = 32) -> float:
    """FID-T: the Fréchet distance between the segmenter's pooled penultimate features of
    ``real_images`` and ``fake_images`` (see the module docstring; NOT Inception FID).

    Both sets take any form :meth:`Segmenter.embed` accepts and must have the same image size
    (features depend on the resolution) and at least two images each.
    """
    from piti.evaluation.segmenter import images_to_tensor

    real, fake = images_to_tensor(real_images), images_to_tensor(fake_images)
    if real.shape[-2:] != fake.shape[-2:]:
        raise ConfigError(f"FID-T compares images of one size; real are {tuple(real.shape[-2:])}, "
                          f"generated {tuple(fake.shape[-2:])}")
    mu_r, sigma_r = feature_statistics(segmenter.embed(real, batch_size))
    mu_f, sigma_f = feature_statistics(segmenter.embed(fake, batch_size))
    return frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
