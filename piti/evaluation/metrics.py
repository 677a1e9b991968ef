"""Scores that need no network: mIoU from label maps, edge F1, depth errors, and the Fréchet distance.

* :func:`miou` (and its confusion matrix): how well a segmenter's prediction matches a label map;
* :func:`edge_f1`: how well two edge maps agree within a pixel tolerance (the sketch task's score);
* :func:`depth_errors`: RMSE and AbsRel of a predicted depth map against the true one (the depth task's);
* :func:`bootstrap_interval`: how much a score over a few scenes would move on another draw of them;
* :func:`frechet_distance`: clean-fid's, the one Fréchet implementation of the project (FID-I, FID-C and
  FID-T all go through it; :mod:`piti.evaluation.fid`).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from scipy import linalg, ndimage

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
            raise ConfigError(
                f"{name} has class indices outside 0..{num_classes - 1} "
                f"(found {a.min()}..{a.max()}); pass ignore_index for unlabelled pixels"
            )
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU) of a confusion matrix; IoU_c = TP / (TP + FP + FN).

    A class absent from both prediction and target (TP + FP + FN = 0) has IoU NaN and is left
    out of the mean. Raises ConfigError when no class is present at all.
    """
    iou = _iou(*_overlaps(np.asarray(conf, dtype=np.float64)))
    if np.isnan(iou).all():
        raise ConfigError("mIoU is undefined: no pixel was counted (empty input, or every pixel ignored)")
    return float(np.nanmean(iou)), iou


def _overlaps(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's intersection (TP) and union (TP + FP + FN) of a confusion matrix."""
    tp = np.diag(conf)
    return tp, conf.sum(0) + conf.sum(1) - tp


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-class IoU, NaN where a class has an empty union."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def class_overlaps(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Per image, each class's intersection (TP) and union (TP + FP + FN): int64 (N, 2, K) for (N, H, W) label
    maps. Summed over the images they give :func:`iou_from_confusion`'s IoU (:func:`miou_from_overlaps`), so that a
    score over a set of images can be recomputed on any subset of them."""
    out = []
    for p, t in zip(_as_labels(pred, "pred"), _as_labels(target, "target")):
        out.append(_overlaps(confusion_matrix(p, t, num_classes, ignore_index)))
    return np.asarray(out, np.int64).reshape(-1, 2, num_classes)


def miou_from_overlaps(overlaps: np.ndarray) -> float:
    """mIoU of summed :func:`class_overlaps` (classes with an empty union left out); NaN when none is present."""
    iou = _iou(*np.asarray(overlaps, np.float64).sum(0))
    return float("nan") if np.isnan(iou).all() else float(np.nanmean(iou))


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


class _ScipyLinalgForCleanFid:
    """``scipy.linalg`` as clean-fid 0.1.35 calls it: ``sqrtm(A, disp=False)`` returning ``(root, error)``.
    SciPy deprecated ``disp`` (1.17 returns a bare array for a 1x1 matrix, which clean-fid would unpack as
    a tuple) and removes it in 1.18; this gives clean-fid the return it expects on every SciPy version."""

    def __getattr__(self, name):
        return getattr(linalg, name)

    @staticmethod
    def sqrtm(a, disp=True):
        root = linalg.sqrtm(a)
        return root if disp else (root, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians
    (Dowson & Landau 1982; FID's formula, Heusel et al. 2017), computed by clean-fid
    (``cleanfid.fid.frechet_distance``: when the square root is not finite it adds 1e-6 to both diagonals
    inside it). Shapes are checked first; the value is clipped at 0 against round-off."""
    from unittest import mock

    import cleanfid.fid

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ConfigError(
            f"frechet_distance: shapes do not agree: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}"
        )
    with (
        contextlib.redirect_stdout(io.StringIO()),  # clean-fid prints when it regularises
        warnings.catch_warnings(),
        mock.patch.object(cleanfid.fid, "linalg", _ScipyLinalgForCleanFid()),
    ):
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # a singular product: clean-fid's own handling
        try:
            value = cleanfid.fid.frechet_distance(mu1, sigma1, mu2, sigma2)
        except ValueError as e:  # "Imaginary component ..."
            raise ConfigError(f"frechet_distance: {e}; are the covariances positive semi-definite?") from None
    return float(max(float(np.real(value)), 0.0))


# ------------------------------------------------------------------------------------------ sketch


def edge_counts(pred, target, tolerance: int = 2) -> np.ndarray:
    """Per-image counts of :func:`edge_f1` (int64 (N, 4): matched predicted edge pixels, predicted edge pixels,
    found target edge pixels, target edge pixels) of edge maps (H, W) or stacks (N, H, W)."""
    pred, target = np.asarray(pred) > 0, np.asarray(target) > 0
    if pred.shape != target.shape:
        raise ConfigError(f"edge maps differ in shape: {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0 pixels, got {tolerance}")
    counts = []
    for p, t in zip(pred, target):
        # distance of every pixel to the nearest edge pixel of the other map (inf when that map is empty)
        dist_t = ndimage.distance_transform_edt(~t) if t.any() else np.full(t.shape, np.inf)
        dist_p = ndimage.distance_transform_edt(~p) if p.any() else np.full(p.shape, np.inf)
        counts.append([(dist_t[p] <= tolerance).sum(), p.sum(), (dist_p[t] <= tolerance).sum(), t.sum()])
    return np.asarray(counts, np.int64).reshape(-1, 4)


def f1_from_counts(counts) -> dict:
    """``{"f1", "precision", "recall"}`` of summed :func:`edge_counts` (4,); with no edge in either map, F1 is 1."""
    hit_p, n_p, hit_t, n_t = (int(c) for c in counts)
    precision = hit_p / n_p if n_p else float(n_t == 0)
    recall = hit_t / n_t if n_t else float(n_p == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def edge_f1(pred, target, tolerance: int = 2) -> dict:
    """Edge F1 of the edge map ``pred`` against ``target`` (boolean or 0/255 arrays (H, W), or stacks (N, H, W)).

    A predicted edge pixel is correct when a target edge pixel lies within ``tolerance`` pixels (Euclidean
    distance, the BSDS convention of matching within a small radius, without its one-to-one assignment), and a
    target edge pixel is found when a predicted one lies within ``tolerance``. Counts are summed over all images
    (dataset-level, as mIoU). Returns ``{"f1", "precision", "recall", "tolerance"}``; with no edge in either
    map, F1 is 1 (both empty) and precision/recall follow.
    """
    return {**f1_from_counts(edge_counts(pred, target, tolerance).sum(0)), "tolerance": tolerance}


# ------------------------------------------------------------------------------------------ depth


def _depth_pair(pred, target, valid=None):
    """``pred`` and ``target`` as float64 arrays of one shape and the mask of the pixels to score (``target > 0``
    unless ``valid`` is given); an error when they differ in shape or no pixel is left."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ConfigError(f"depth maps differ in shape: {pred.shape} vs {target.shape}")
    valid = target > 0 if valid is None else np.asarray(valid, bool)
    if not valid.any():
        raise ConfigError("no valid depth pixel to score (every target pixel is 0)")
    return pred, target, valid


def depth_errors(pred, target, valid=None) -> dict:
    """RMSE (metres) and AbsRel (mean |pred - target| / target) of a predicted depth map against the true one,
    over the valid pixels (``target > 0`` unless ``valid`` is given), all images together. Arrays (H, W) or
    (N, H, W), float metres."""
    pred, target, valid = _depth_pair(pred, target, valid)
    p, t = pred[valid], target[valid]
    return {
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "absrel": float(np.mean(np.abs(p - t) / t)),
        "pixels": int(valid.sum()),
    }


def depth_squared_errors(pred, target) -> np.ndarray:
    """Per image, the summed squared error (metres^2) over the valid pixels and their number: float64 (N, 2) for
    (N, H, W) arrays (``sqrt(sum of column 0 / sum of column 1)`` is :func:`depth_errors`' RMSE)."""
    pred, target, valid = _depth_pair(pred, target)
    if pred.ndim != 3:
        raise ConfigError(f"per-image depth errors need (N, H, W) depth maps, got shape {pred.shape}")
    sq = np.where(valid, (pred - target) ** 2, 0.0).reshape(len(pred), -1).sum(1)
    return np.stack([sq, valid.reshape(len(pred), -1).sum(1)], 1)


def depth_error_shares(pred, target) -> np.ndarray:
    """Each image's share of the squared error of :func:`depth_errors` (all images together): (N,) for (N, H, W)
    arrays, so that an RMSE that is a few scenes' doing shows as such."""
    sq = depth_squared_errors(pred, target)[:, 0]
    return sq / sq.sum() if sq.sum() > 0 else sq


DEPTH_RANGES = (0.0, 10.0, 20.0, 40.0, 100.0, float("inf"))  # metres: the bands of depth_errors_by_range


def depth_errors_by_range(pred, target, edges=DEPTH_RANGES) -> list[dict]:
    """Like :func:`depth_errors`, the RMSE split by the true depth: one dict per band ``edges[i] < target <=
    edges[i + 1]`` with ``range`` (``[lo, hi]``, hi None for an open last band), ``pixel_share`` (of the valid
    pixels), ``rmse`` (None for an empty band) and ``error_share`` (of the total squared error), so that a few far
    pixels that dominate the RMSE show as such."""
    pred, target, valid = _depth_pair(pred, target)
    sq = (pred - target) ** 2
    total_sq, total_px = float(sq[valid].sum()), int(valid.sum())
    bands = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = valid & (target > lo) & (target <= hi)
        n = int(band.sum())
        bands.append(
            {
                "range": [lo, None if np.isinf(hi) else hi],  # None: no upper bound (JSON has no infinity)
                "pixel_share": n / total_px,
                "rmse": float(np.sqrt(sq[band].mean())) if n else None,
                "error_share": float(sq[band].sum()) / total_sq if total_sq > 0 else 0.0,
            }
        )
    return bands


# ------------------------------------------------------------------------------------------ resolution


def bootstrap_interval(stat, *items, num: int = 1000, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(*items)`` over the items' first axis (scenes, conditions): ``num``
    resamplings with replacement, the same indices for every array (paired), the central ``level`` share of
    the values. What a score would read on another draw of as many scenes; not a bound on the judge's own error."""
    items = [np.asarray(a) for a in items]
    n = len(items[0]) if items else 0
    if n < 2 or any(len(a) != n for a in items):
        sizes = [len(a) for a in items]
        raise ConfigError(f"bootstrap_interval needs >= 2 items, the same number in each array, got {sizes}")
    if not 0 < level < 1 or num < 1:
        raise ConfigError(f"bootstrap_interval needs 0 < level < 1 and num >= 1, got {level}, {num}")
    rng = np.random.default_rng(seed)
    values = [stat(*(a[idx] for a in items)) for idx in rng.integers(0, n, size=(num, n))]
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
