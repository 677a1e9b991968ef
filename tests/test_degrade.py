"""The upsampler's degradations: each step on its own, then the whole pipeline."""

import numpy as np
import pytest
import torch

import piti.data.degrade as dg
from piti.errors import ConfigError, DatasetError


def _image(h=64, w=64, seed=0):
    """Float image in [0, 1]: four flat blocks of different colours plus fine noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2, : w // 2] = (0.8, 0.2, 0.3)
    img[: h // 2, w // 2 :] = (0.1, 0.6, 0.9)
    img[h // 2 :, : w // 2] = (0.5, 0.5, 0.5)
    img[h // 2 :, w // 2 :] = (0.9, 0.9, 0.2)
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)


def _hf_energy(x):
    """Mean squared horizontal + vertical pixel difference."""
    return float((np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean())


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- kernels and blur -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 6, 14])
def test_kernels_are_normalised_and_centred(size):
    for k in (dg.isotropic_gaussian_kernel(size, 1.3), dg.anisotropic_gaussian_kernel(size, 0.7, 2.0, 0.3)):
        assert k.shape == (size, size)
        assert k.sum() == pytest.approx(1.0)
        assert (k >= 0).all()
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # point-symmetric about the centre


def test_tiny_widths_give_an_identity_kernel_not_nan():
    k = dg.isotropic_gaussian_kernel(5, 0.0)
    assert np.isfinite(k).all() and k[2, 2] == pytest.approx(1.0)
    k = dg.anisotropic_gaussian_kernel(7, 1.0, 0.0, 0.0)
    assert np.isfinite(k).all() and k[3, 3] == pytest.approx(1.0)


def test_anisotropic_kernel_is_elongated_along_theta():
    def second_moments(k):
        c = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
        return float((k.sum(0) * c**2).sum()), float((k.sum(1) * c**2).sum())  # var_x, var_y

    var_x, var_y = second_moments(dg.anisotropic_gaussian_kernel(15, 0.0, 4.0, 0.25))
    assert var_x > 5 * var_y
    var_x, var_y = second_moments(dg.anisotropic_gaussian_kernel(15, np.pi / 2, 4.0, 0.25))
    assert var_y > 5 * var_x


def test_shifted_kernel_moves_its_mass_up_left_by_half_the_scale_minus_one():
    k = dg.shifted_gaussian_kernel(25, 1.0, sf=4)
    c = np.arange(25)
    assert k.sum() == pytest.approx(1.0)
    assert (k.sum(0) * c).sum() == pytest.approx(12 - 1.5, abs=1e-6)
    assert (k.sum(1) * c).sum() == pytest.approx(12 - 1.5, abs=1e-6)


def test_blur_lowers_high_frequency_energy():
    x = _image()
    fixed = dg.convolve(x, dg.isotropic_gaussian_kernel(7, 1.5))
    assert fixed.shape == x.shape and fixed.dtype == np.float32
    assert _hf_energy(fixed) < 0.3 * _hf_energy(x)
    for fn in (dg.isotropic_blur, dg.anisotropic_blur, dg.random_blur):
        outs = [fn(x, _rng(s), 4) for s in range(6)]
        assert all(o.shape == x.shape and o.dtype == np.float32 for o in outs)
        assert all(_hf_energy(o) <= _hf_energy(x) * 1.001 for o in outs)  # a blur never sharpens
        assert np.mean([_hf_energy(o) for o in outs]) < 0.8 * _hf_energy(x)
        np.testing.assert_array_equal(fn(x, _rng(3), 4), outs[3])  # deterministic


# --- downsampling -----------------------------------------------------------------------------


def test_random_resize_downsample_size_range_and_determinism():
    x = _image(64, 48)
    for s in range(10):
        y = dg.random_resize_downsample(x, _rng(s), sf=2)
        assert 64 // 4 <= y.shape[0] <= 64 and 48 // 4 <= y.shape[1] <= 48 and y.shape[2] == 3
        assert y.min() >= 0 and y.max() <= 1
        np.testing.assert_array_equal(y, dg.random_resize_downsample(x, _rng(s), sf=2))


def test_shifted_gaussian_downsample_subsamples_by_sf():
    x = _image(64, 48)
    y = dg.shifted_gaussian_downsample(x, _rng(1), sf=4)
    assert y.shape == (16, 12, 3) and y.dtype == np.float32
    assert abs(y.mean() - x.mean()) < 0.02


def test_random_downsample_takes_both_branches():
    x = _image()
    shapes = {dg.random_downsample(x, _rng(s), 4).shape for s in range(30)}
    assert (16, 16, 3) in shapes  # shifted-Gaussian + nearest branch (exactly H / sf)
    assert len(shapes) > 2  # random resize factors


def test_matlab_bicubic_reproduces_constants_and_ramps():
    const = np.full((12, 10, 3), 0.3, np.float32)
    np.testing.assert_allclose(dg.matlab_bicubic_resize(const, 0.5), 0.3, atol=1e-6)
    # MATLAB's output pixel o (0-based) sits at input coordinate 2 o + 0.5 when halving; cubic
    # convolution reproduces linear functions, so an interior ramp maps onto that coordinate.
    ramp = np.tile(np.arange(40, dtype=np.float32)[:, None, None], (1, 4, 3))
    out = dg.matlab_bicubic_resize(ramp, 0.5)
    assert out.shape == (20, 2, 3)
    np.testing.assert_allclose(out[3:-3, 0, 0], 2 * np.arange(3, 17) + 0.5, atol=1e-4)


def test_first_downsample_halves_the_image():
    x = _image(64, 32)
    for s in range(6):
        assert dg.first_downsample_x2(x, _rng(s)).shape == (32, 16, 3)


# --- noise, JPEG, L0 --------------------------------------------------------------------------


def test_noise_functions_add_the_expected_variance():
    flat = np.full((128, 128, 3), 0.5, np.float32)
    sigma = 4 / 255
    color = dg.color_gaussian_noise(flat, _rng(0), sigma)
    gray = dg.gray_gaussian_noise(flat, _rng(0), sigma)
    corr = dg.correlated_gaussian_noise(flat, _rng(0), 4 / 255)
    for y in (color, gray, corr):
        assert y.shape == flat.shape and y.dtype == np.float32 and y.std() > 0
    assert color.std() == pytest.approx(sigma, rel=0.05)
    assert gray.std() == pytest.approx(sigma, rel=0.05)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # one noise value per pixel
    r = np.corrcoef(color[..., 0].ravel(), color[..., 1].ravel())[0, 1]
    assert abs(r) < 0.05  # independent channels
    noisy = [dg.random_gaussian_noise(flat, _rng(s)) for s in range(5)]
    assert all(0 < n.std() < 4 / 255 for n in noisy)  # official levels are 1 or 2 / 255
    np.testing.assert_array_equal(noisy[2], dg.random_gaussian_noise(flat, _rng(2)))


def test_jpeg_changes_pixels_and_lower_quality_loses_more():
    x = _image()
    y95, y20 = dg.jpeg_compress(x, 95), dg.jpeg_compress(x, 20)
    assert y95.shape == x.shape and y95.dtype == np.float32
    err95, err20 = np.abs(y95 - x).mean(), np.abs(y20 - x).mean()
    assert 0 < err95 < err20
    assert err95 < 0.05
    np.testing.assert_array_equal(dg.random_jpeg(x, _rng(4)), dg.random_jpeg(x, _rng(4)))


def test_l0_smoothing_keeps_brightness_and_flattens_gradients():
    x = _image(48, 48)
    y = dg.l0_smooth(x, lam=0.02)
    assert y.shape == x.shape and y.dtype == np.float32
    # The official version returned a black image; ours keeps the mean within a level or two.
    assert abs(y.mean() - x.mean()) * 255 < 2
    inner = (slice(2, 22), slice(2, 22))  # inside the top-left block: the noise is gone
    assert _hf_energy(y[inner]) < 0.05 * _hf_energy(x[inner])
    gx = np.abs(np.diff(y, axis=1)).max(axis=2)
    gx0 = np.abs(np.diff(x, axis=1)).max(axis=2)
    assert (gx > 1e-3).mean() < 0.5 * (gx0 > 1e-3).mean()  # most gradients are now zero
    # The strong block edges survive: the four colours are still there.
    assert np.abs(y[5, 5] - (0.8, 0.2, 0.3)).max() < 0.05
    assert np.abs(y[40, 40] - (0.9, 0.9, 0.2)).max() < 0.05


def test_random_l0_smooth_uses_official_lambda_range_and_keeps_brightness():
    x = _image(32, 32)
    for s in range(3):
        y = dg.random_l0_smooth(x, _rng(s))
        assert abs(y.mean() - x.mean()) * 255 < 3
        assert _hf_energy(y) < _hf_energy(x)


# --- config and pipeline ----------------------------------------------------------------------


def test_config_validates_probabilities_and_ranges():
    with pytest.raises(ConfigError, match="blur_prob"):
        dg.DegradationConfig(blur_prob=1.5)
    with pytest.raises(ConfigError, match="jpeg_quality"):
        dg.DegradationConfig(jpeg_quality=(90, 80))
    with pytest.raises(ConfigError, match="interpolations"):
        dg.DegradationConfig(interpolations=("bogus",))
    with pytest.raises(ConfigError, match="noise"):
        dg.DegradationConfig(noise_color_prob=0.7, noise_gray_prob=0.7)


ALL_ON = dg.DegradationConfig(blur_prob=1, jpeg_prob=1, scale2_prob=1, l0_prob=1)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("config", [None, ALL_ON, dg.DegradationConfig(resize_down_prob=0.0, l0_prob=1.0)])
def test_degrade_output_size_dtype_and_determinism(scale, config):
    img = dg.to_uint8(_image(64, 96, seed=1))
    for s in range(6):
        out = dg.degrade(img, scale, config, np.random.default_rng(s))
        assert out.shape == (64 // scale, 96 // scale, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, dg.degrade(img, scale, config, np.random.default_rng(s)))
    a = dg.degrade(img, scale, config, np.random.default_rng(100))
    b = dg.degrade(img, scale, config, np.random.default_rng(101))
    assert not np.array_equal(a, b)


def test_degrade_crops_to_a_multiple_of_the_scale():
    img = dg.to_uint8(_image(66, 70))
    assert dg.degrade(img, 4, rng=np.random.default_rng(0)).shape == (16, 17, 3)


def test_degrade_is_not_black_even_with_l0_always_on():
    img = dg.to_uint8(_image(64, 64))
    cfg = dg.DegradationConfig(l0_prob=1.0)
    means = [dg.degrade(img, 4, cfg, np.random.default_rng(s)).mean() for s in range(8)]
    assert all(abs(m - img.mean()) < 10 for m in means)  # the official pipeline gave ~0 here


def test_the_official_l0_switch_blacks_out_as_the_official_code():
    img = dg.to_uint8(_image(64, 64))
    official = dg.DegradationConfig(l0_prob=1.0, l0_official=True)
    means = [dg.degrade(img, 4, official, np.random.default_rng(s)).mean() for s in range(8)]
    assert all(m < 10 for m in means) and img.mean() > 50  # near black: only the later noise/JPEG steps remain
    # with L0 never drawn, the switch changes nothing (same random numbers either way)
    never = dict(l0_prob=0.0)
    for s in range(3):
        a = dg.degrade(img, 4, dg.DegradationConfig(**never), np.random.default_rng(s))
        b = dg.degrade(img, 4, dg.DegradationConfig(**never, l0_official=True), np.random.default_rng(s))
        assert np.array_equal(a, b)


def test_degrade_runs_random_downsample_before_the_final_resize(monkeypatch):
    calls = []
    real_down, real_resize = dg.random_downsample, dg.resize
    monkeypatch.setattr(dg, "random_downsample", lambda *a, **k: calls.append("down") or real_down(*a, **k))
    monkeypatch.setattr(dg, "resize", lambda *a, **k: calls.append("resize") or real_resize(*a, **k))
    img = dg.to_uint8(_image(32, 32))
    for s in range(15):
        calls.clear()
        dg.degrade(img, 2, dg.DegradationConfig(scale2_prob=0.0, resize_down_prob=0.0), np.random.default_rng(s))
        assert calls == ["down", "resize"]


def test_first_x2_downsample_only_for_scale_four(monkeypatch):
    called = []
    real = dg.first_downsample_x2
    monkeypatch.setattr(dg, "first_downsample_x2", lambda *a, **k: called.append(1) or real(*a, **k))
    img = dg.to_uint8(_image(32, 32))
    cfg = dg.DegradationConfig(scale2_prob=1.0)
    assert dg.degrade(img, 2, cfg, np.random.default_rng(0)).shape == (16, 16, 3)
    assert not called
    assert dg.degrade(img, 4, cfg, np.random.default_rng(0)).shape == (8, 8, 3)
    assert called


def test_degrade_rejects_bad_input():
    with pytest.raises(DatasetError, match="uint8"):
        dg.degrade(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(DatasetError, match="HxWx3"):
        dg.degrade(np.zeros((16, 16), np.uint8))
    with pytest.raises(ConfigError, match="scale"):
        dg.degrade(np.zeros((16, 16, 3), np.uint8), scale=0)


def test_degrade_batch_keeps_range_dtype_and_is_seeded():
    x = torch.from_numpy(np.stack([_image(32, 32, s) for s in range(3)])).permute(0, 3, 1, 2) * 2 - 1
    y = dg.degrade_batch(x, 2, rng=np.random.default_rng(0))
    assert y.shape == (3, 3, 16, 16) and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    torch.testing.assert_close(y, dg.degrade_batch(x, 2, rng=np.random.default_rng(0)))
    # each low-res image still looks like its source
    down = torch.nn.functional.avg_pool2d(x, 2)
    assert (y - down).abs().mean() < 0.2
    with pytest.raises(DatasetError):
        dg.degrade_batch(x[:, :1], 2)
