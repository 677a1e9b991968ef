"""mIoU, the Fréchet distance (clean-fid's), FID-T, edge F1, depth errors and the bootstrap interval."""

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from piti.errors import ConfigError
from piti.evaluation.fid import fid_t
from piti.evaluation.metrics import (
    bootstrap_interval,
    class_overlaps,
    confusion_matrix,
    depth_error_shares,
    depth_errors,
    depth_errors_by_range,
    depth_squared_errors,
    edge_counts,
    edge_f1,
    feature_statistics,
    frechet_distance,
    iou_from_confusion,
    miou,
    miou_from_overlaps,
)
from piti.evaluation.segmenter import Segmenter, SegmenterConfig

# two 2x3 images; by hand: class 0 all right (IoU 1), class 1 has one false positive (TP 2, FP 1 -> 2/3),
# class 2 one false negative (TP 1, FN 1 -> 1/2), class 3 only predicted, never true (IoU 0)
TARGET = np.array([[[0, 0, 1], [1, 2, 2]], [[0, 1, 0], [0, 0, 2]]])
PRED = np.array([[[0, 0, 1], [1, 1, 2]], [[0, 1, 0], [0, 0, 3]]])


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(PRED, TARGET, num_classes=5)
    expected = np.zeros((5, 5), np.int64)
    expected[0, 0] = 6
    expected[1, 1] = 3
    expected[2, 1] = 1
    expected[2, 2] = 1
    expected[2, 3] = 1
    np.testing.assert_array_equal(conf, expected)


def test_miou_by_hand_and_absent_classes_ignored():
    # classes 0..3 present in pred or target; class 4 absent from both: left out of the mean
    assert miou(PRED, TARGET, num_classes=5) == pytest.approx((1 + 3 / 4 + 1 / 3 + 0) / 4)
    _, iou = iou_from_confusion(confusion_matrix(PRED, TARGET, 5))
    np.testing.assert_allclose(iou[:4], [1, 3 / 4, 1 / 3, 0])
    assert np.isnan(iou[4])
    # more absent classes change nothing
    assert miou(PRED, TARGET, num_classes=9) == miou(PRED, TARGET, num_classes=5)


def test_miou_perfect_and_ignore_index():
    assert miou(TARGET, TARGET, 3) == 1.0
    target = TARGET.copy()
    target[PRED != TARGET] = 255  # hide every wrong pixel
    assert miou(PRED, target, 4, ignore_index=255) == 1.0
    conf = confusion_matrix(PRED, target, 4, ignore_index=255)
    assert conf.sum() == (PRED == TARGET).sum()


def test_metric_errors():
    with pytest.raises(ConfigError, match="shapes differ"):
        miou(PRED[0], TARGET, 5)
    with pytest.raises(ConfigError, match="outside 0..2"):
        miou(PRED, TARGET, 3)  # PRED holds a 3
    with pytest.raises(ConfigError, match="integer"):
        miou(PRED.astype(float), TARGET, 5)
    with pytest.raises(ConfigError, match="undefined"):
        miou(np.full((2, 2), 1), np.full((2, 2), 255), 3, ignore_index=255)


def test_feature_statistics():
    mu, sigma = feature_statistics([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    np.testing.assert_allclose(mu, [2, 2])
    # unbiased: var of (0, 2, 4) is 4, of (1, 1, 4) is 3, covariance (-2*-1 + 0 + 2*2) / 2 = 3
    np.testing.assert_allclose(sigma, [[4, 3], [3, 3]])
    with pytest.raises(ConfigError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal covariances: ||mu1 - mu2||^2 + sum (s1 - s2)^2, s the standard deviations
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-6)
    # the same covariances in a rotated basis (they commute): same distance
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    c1, c2 = q @ np.diag(s1**2) @ q.T, q @ np.diag(s2**2) @ q.T
    assert frechet_distance(q @ mu1, c1, q @ mu2, c2) == pytest.approx(expected, rel=1e-6)
    # symmetric, zero for identical Gaussians
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_singular_covariances_stay_finite():
    # 3 samples in 5-D: rank-2 covariances, a singular product
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)) + 2.0
    d = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(d) and d > 5 * 4.0 * 0.5  # the means differ by about 2 in each of 5 dims
    with pytest.raises(ConfigError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def _pictures(n=24, seed=0):
    """Pictures that differ as wholes (a colour each), so that their pooled features differ."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 1, 1, generator=g) * 1.2 - 0.6 + 0.2 * torch.randn(n, 3, 16, 16, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def tiny_segmenter():
    """An untrained segmenter whose batch norms are set to the statistics of the pictures (else its
    features barely vary)."""
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(widths=(4, 8), feature_dim=6))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: one batch sets the running statistics
    with torch.no_grad():
        model.train()(_pictures(seed=1))
    return model.eval()


def test_fid_t_zero_for_identical_sets_and_grows_with_a_shift(tiny_segmenter):
    real = _pictures()
    assert fid_t(real, real.clone(), tiny_segmenter) == pytest.approx(0, abs=1e-6)
    shifted = [fid_t(real, (real + s).clamp(-1, 1), tiny_segmenter) for s in (0.05, 0.2, 0.5)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    # uint8 arrays and float tensors of the same pictures give the same value
    as_uint8 = ((real.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    back = torch.from_numpy(as_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert fid_t(as_uint8, (back + 0.2).clamp(-1, 1), tiny_segmenter) == pytest.approx(
        fid_t(back, (back + 0.2).clamp(-1, 1), tiny_segmenter), rel=1e-4
    )


def test_fid_t_refuses_different_sizes(tiny_segmenter):
    with pytest.raises(ConfigError, match="one size"):
        fid_t(torch.zeros(4, 3, 16, 16), torch.zeros(4, 3, 32, 32), tiny_segmenter)


def _previous_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The project's own Fréchet distance before it moved to clean-fid's (kept here as the reference that
    FID-T keeps its meaning)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if caught or not np.isfinite(covmean).all():
        d = mu1.shape[0]
        sigma1, sigma2 = sigma1 + np.eye(d) * eps, sigma2 + np.eye(d) * eps
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean), 0.0))


def test_fid_t_keeps_its_meaning_through_clean_fid(tiny_segmenter):
    """FID-T now goes through clean-fid's Fréchet distance; on fixed pictures it equals the previous code's.
    These features have a dead (always 0) channel, so the covariance product is singular: the previous code
    then added 1e-6 to both diagonals (in the traces too), clean-fid does not; the values agree to 1e-3."""
    real = _pictures()
    for s in (0.05, 0.2, 0.5):
        fake = (real + s).clamp(-1, 1)
        old = _previous_frechet(
            *feature_statistics(tiny_segmenter.embed(real)), *feature_statistics(tiny_segmenter.embed(fake))
        )
        assert fid_t(real, fake, tiny_segmenter) == pytest.approx(old, rel=1e-3)


def test_edge_f1_is_one_on_itself_and_falls_with_a_shift():
    edges = np.zeros((40, 40), bool)
    edges[10, 5:35] = edges[5:35, 20] = True
    assert edge_f1(edges, edges)["f1"] == 1.0
    shifted = [edge_f1(np.roll(edges, k, axis=1), edges, tolerance=2)["f1"] for k in (1, 2, 3, 6)]
    assert shifted[0] == shifted[1] == 1.0  # a shift within the tolerance
    assert 1.0 > shifted[2] > shifted[3]
    assert edge_f1(np.roll(edges, 2, axis=1), edges, tolerance=0)["f1"] < 0.5  # only the horizontal line still matches
    empty = np.zeros_like(edges)
    assert edge_f1(empty, empty)["f1"] == 1.0 and edge_f1(empty, edges)["f1"] == 0.0
    with pytest.raises(ConfigError, match="shape"):
        edge_f1(edges, edges[:, :30])


def test_depth_errors_by_hand():
    target = np.array([[2.0, 4.0], [0.0, 8.0]])  # one pixel without depth
    pred = np.array([[3.0, 4.0], [5.0, 6.0]])
    e = depth_errors(pred, target)
    assert e["pixels"] == 3
    assert e["rmse"] == pytest.approx(np.sqrt((1 + 0 + 4) / 3))
    assert e["absrel"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    with pytest.raises(ConfigError, match="no valid depth"):
        depth_errors(pred, np.zeros_like(target))


def test_depth_errors_by_range_split_the_rmse_by_true_distance():
    target = np.array([[2.0, 4.0], [0.0, 50.0]])  # one pixel without depth
    pred = np.array([[3.0, 4.0], [5.0, 40.0]])
    bands = depth_errors_by_range(pred, target, edges=(0.0, 10.0, 20.0, float("inf")))
    assert [b["range"] for b in bands] == [[0.0, 10.0], [10.0, 20.0], [20.0, None]]  # JSON has no infinity
    near, empty, far = bands
    assert near["pixel_share"] == pytest.approx(2 / 3) and near["rmse"] == pytest.approx(np.sqrt(1 / 2))
    assert empty["pixel_share"] == 0 and empty["rmse"] is None and empty["error_share"] == 0
    assert far["rmse"] == pytest.approx(10.0) and far["error_share"] == pytest.approx(100 / 101)
    # the bands put together give the overall RMSE back
    total = np.sqrt(sum(b["pixel_share"] * b["rmse"] ** 2 for b in bands if b["rmse"] is not None))
    assert total == pytest.approx(depth_errors(pred, target)["rmse"])
    with pytest.raises(ConfigError, match="differ in shape"):
        depth_errors_by_range(pred, target[:1])


def test_depth_error_shares_by_hand():
    target = np.array([[[2.0, 4.0], [0.0, 8.0]], [[2.0, 2.0], [2.0, 2.0]]])  # image 0 has a pixel without depth
    pred = np.array([[[3.0, 4.0], [9.0, 6.0]], [[2.0, 2.0], [2.0, 5.0]]])
    shares = depth_error_shares(pred, target)  # squared errors 1 + 4 (the 9 m pixel has no depth) and 9
    assert shares == pytest.approx([5 / 14, 9 / 14])
    assert depth_error_shares(target, target) == pytest.approx([0.0, 0.0])  # no error: no share, no division by 0
    with pytest.raises(ConfigError, match=r"\(N, H, W\)"):
        depth_error_shares(pred[0], target[0])


def test_edge_counts_per_image_sum_to_edge_f1():
    edges = np.zeros((2, 40, 40), bool)
    edges[0, 10, 5:35] = edges[1, 5:35, 20] = True
    pred = edges.copy()
    pred[1] = False  # image 1: nothing drawn
    counts = edge_counts(pred, edges)
    assert counts.tolist() == [[30, 30, 30, 30], [0, 0, 0, 30]]
    assert edge_f1(pred, edges)["recall"] == pytest.approx(30 / 60) and edge_f1(pred, edges)["precision"] == 1.0


def test_depth_squared_errors_per_image_give_the_rmse_back():
    target = np.array([[[2.0, 4.0], [0.0, 8.0]], [[2.0, 2.0], [2.0, 2.0]]])  # image 0 has a pixel without depth
    pred = np.array([[[3.0, 4.0], [9.0, 6.0]], [[2.0, 2.0], [2.0, 5.0]]])
    per = depth_squared_errors(pred, target)
    assert per.tolist() == [[5.0, 3.0], [9.0, 4.0]]
    assert np.sqrt(per[:, 0].sum() / per[:, 1].sum()) == pytest.approx(depth_errors(pred, target)["rmse"])


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    few, many = rng.normal(5, 1, 10), rng.normal(5, 1, 400)
    lo, hi = bootstrap_interval(np.mean, few)
    assert lo < few.mean() < hi
    lo2, hi2 = bootstrap_interval(np.mean, many)
    assert lo2 < many.mean() < hi2 and hi2 - lo2 < (hi - lo) / 3  # the width falls as 1 / sqrt(n)
    assert bootstrap_interval(np.mean, few) == (lo, hi)  # seeded
    assert bootstrap_interval(np.mean, np.full(8, 3.0)) == (3.0, 3.0)
    # paired: the same indices for every array, so a ratio that holds per item holds on every resampling
    b = rng.uniform(1, 2, 20)
    assert bootstrap_interval(lambda x, y: x.mean() / y.mean(), 2 * b, b) == pytest.approx((2.0, 2.0))
    with pytest.raises(ConfigError, match="same number"):
        bootstrap_interval(lambda x, y: 0.0, b, b[:5])
    with pytest.raises(ConfigError, match=">= 2 items"):
        bootstrap_interval(np.mean, b[:1])
    with pytest.raises(ConfigError, match="level"):
        bootstrap_interval(np.mean, b, level=1.5)


def test_class_overlaps_per_image_give_the_datasets_miou_back():
    rng = np.random.default_rng(0)
    pred, target = rng.integers(0, 5, (6, 16, 16)), rng.integers(0, 5, (6, 16, 16))
    target[0, :4] = 255  # unlabelled rows
    per = class_overlaps(pred, target, 5, ignore_index=255)
    assert per.shape == (6, 2, 5) and (per[:, 0] <= per[:, 1]).all()
    assert miou_from_overlaps(per) == pytest.approx(miou(pred, target, 5, ignore_index=255))
    assert miou_from_overlaps(per[2:3]) == pytest.approx(miou(pred[2], target[2], 5))  # any subset of the images
