"""Degradations that turn a high-resolution image into the upsampler's low-resolution input.

PITI trains its 64 -> 256 upsampler on *degraded* low-resolution inputs, with the light
BSRGAN variant of the official code (``degradation_bsrgan_variant``, called with scale 4):

1. optionally (p=0.25, only when ``scale >= 4``) a first x2 downsample, by OpenCV or by
   MATLAB-style bicubic; the remaining scale is then halved;
2. a random order of: blur (p=0.8), a random downsample, the final resize to exactly
   ``H/scale x W/scale`` (always after the random downsample), weak Gaussian noise (always),
   JPEG compression (p=0.5) and L0 gradient smoothing (p=0.2).

Every step is a separate function below (float32 ``HxWx3`` images in [0, 1] in and out), so that
a notebook can show each one; :func:`degrade` chains them as the official code does. All
randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes the result.

One deliberate difference: the official L0 smoothing expects 0..255 input, receives [0, 1] and
returns ``uint8(S * 256)`` of a [0, 1/256] image, i.e. an all-black image; about 20 % of the
official low-resolution inputs are black. :func:`l0_smooth` works on [0, 1] and keeps the
image's brightness. ``DegradationConfig(l0_official=True)`` (off by default) reproduces the official
step instead, for an exact match of the official upsampler recipe: the L0 branch then yields black,
and the steps after it in the random order still apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import linalg, ndimage

from piti.errors import ConfigError, DatasetError

__all__ = [
    "DegradationConfig",
    "isotropic_gaussian_kernel",
    "anisotropic_gaussian_kernel",
    "shifted_gaussian_kernel",
    "convolve",
    "isotropic_blur",
    "anisotropic_blur",
    "random_blur",
    "resize",
    "random_resize_downsample",
    "shifted_gaussian_downsample",
    "random_downsample",
    "matlab_bicubic_resize",
    "first_downsample_x2",
    "color_gaussian_noise",
    "gray_gaussian_noise",
    "correlated_gaussian_noise",
    "random_gaussian_noise",
    "jpeg_compress",
    "random_jpeg",
    "l0_smooth",
    "random_l0_smooth",
    "to_float",
    "to_uint8",
    "degrade",
    "degrade_batch",
]

# OpenCV interpolation flags by name; the official code draws from {1, 2, 3}.
_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


@dataclass(frozen=True)
class DegradationConfig:
    """Probabilities and ranges of the degradations; defaults are the official values.

    Integer ranges ``(lo, hi)`` are inclusive; widths that grow with the scale factor ``sf`` are
    given as ``(a, b)`` meaning ``a + b * sf``.
    """

    # Probabilities of the optional steps.
    blur_prob: float = 0.8
    jpeg_prob: float = 0.5
    scale2_prob: float = 0.25  # first x2 downsample (only when scale >= 4)
    l0_prob: float = 0.2
    # First x2 downsample: OpenCV resize with this probability, MATLAB bicubic otherwise.
    scale2_opencv_prob: float = 0.5
    # Blur: anisotropic with this probability, isotropic otherwise.
    anisotropic_prob: float = 0.5
    anisotropic_kernel_sizes: tuple[int, int] = (5, 14)
    anisotropic_eig_max: tuple[float, float] = (1.0, 0.25)  # eigenvalues ~ U(0, (4 + sf) / 4)
    isotropic_kernel_sizes: tuple[int, int] = (5, 7)
    isotropic_sigma_max: tuple[float, float] = (0.5, 0.05)  # sigma ~ U(0, (2 + 0.2 sf) / 4)
    # Random downsample: resize by 1/sf1, sf1 ~ U(1, resize_factor_max * sf), with this
    # probability; otherwise shifted Gaussian blur + nearest subsampling by sf.
    resize_down_prob: float = 0.8
    resize_factor_max: float = 2.0
    shifted_kernel_size: int = 25
    shifted_sigma_min: float = 0.1
    shifted_sigma_max_per_scale: float = 0.6  # sigma ~ U(0.1, 0.6 sf)
    interpolations: tuple[str, ...] = ("linear", "cubic", "area")
    # Gaussian noise (always applied): level ~ randint(noise_levels) / 255.
    noise_levels: tuple[int, int] = (1, 2)
    noise_color_prob: float = 0.4
    noise_gray_prob: float = 0.4  # the rest is channel-correlated noise
    correlated_noise_level: float = 2.0  # L = level / 255 (official: the upper noise level)
    # JPEG.
    jpeg_quality: tuple[int, int] = (80, 95)
    # L0 gradient smoothing (Xu et al. 2011): lambda ~ U(l0_lambda), beta from 2 lambda to beta_max.
    l0_lambda: tuple[float, float] = (1.2e-3, 4.0e-3)
    l0_kappa: float = 2.0
    l0_beta_max: float = 1e5
    l0_official: bool = False  # True: the official L0 step's all-black output (see the module docstring)

    def __post_init__(self):
        probs = (
            "blur_prob",
            "jpeg_prob",
            "scale2_prob",
            "l0_prob",
            "scale2_opencv_prob",
            "anisotropic_prob",
            "resize_down_prob",
            "noise_color_prob",
            "noise_gray_prob",
        )
        for name in probs:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"DegradationConfig.{name} must be a probability in [0, 1], got {p}")
        if self.noise_color_prob + self.noise_gray_prob > 1.0:
            raise ConfigError(
                "DegradationConfig: noise_color_prob + noise_gray_prob must be <= 1, got "
                f"{self.noise_color_prob} + {self.noise_gray_prob}"
            )
        ranges = ("anisotropic_kernel_sizes", "isotropic_kernel_sizes", "noise_levels", "jpeg_quality", "l0_lambda")
        for name in ranges:
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ConfigError(
                    f"DegradationConfig.{name} must be a range (lo, hi) with 0 <= lo <= hi, got {getattr(self, name)}"
                )
        if self.anisotropic_kernel_sizes[0] < 1 or self.isotropic_kernel_sizes[0] < 1:
            raise ConfigError("DegradationConfig: blur kernel sizes must be >= 1")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ConfigError(f"DegradationConfig.jpeg_quality must lie in 1..100, got {self.jpeg_quality}")
        if self.resize_factor_max < 0.5 or self.l0_kappa <= 1.0 or self.shifted_kernel_size < 1:
            raise ConfigError(
                "DegradationConfig: resize_factor_max must be >= 0.5, l0_kappa > 1 and shifted_kernel_size >= 1"
            )
        unknown = [i for i in self.interpolations if i not in _INTERPOLATIONS]
        if not self.interpolations or unknown:
            raise ConfigError(
                f"DegradationConfig.interpolations must be a non-empty subset of "
                f"{sorted(_INTERPOLATIONS)}, got {self.interpolations}"
            )


_DEFAULT = DegradationConfig()


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 ``HxWx3`` -> float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8, clipped and rounded (the official ``single2uint``)."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _randint(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    """An integer drawn uniformly from the inclusive range ``lo_hi``."""
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


# ---------------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------------


def _gaussian_from_quadratic(q: np.ndarray) -> np.ndarray:
    """Normalised kernel ``exp(-q / 2)``; subtracting the minimum first avoids 0/0 for tiny widths."""
    k = np.exp(-0.5 * (q - q.min()))
    return k / k.sum()


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` of a ``size x size`` kernel, centred on 0."""
    c = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    return np.meshgrid(c, c)


def isotropic_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalised ``size x size`` Gaussian kernel of standard deviation ``sigma`` (pixels)."""
    x, y = _grid(size)
    sigma = max(float(sigma), 1e-6)
    return _gaussian_from_quadratic((x * x + y * y) / sigma**2)


def anisotropic_gaussian_kernel(size: int, theta: float, l1: float, l2: float) -> np.ndarray:
    """A normalised ``size x size`` Gaussian kernel with covariance ``R(theta) diag(l1, l2) R(theta)^T``.

    ``l1`` and ``l2`` are the covariance eigenvalues (variances along the rotated axes).
    """
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([max(l1, 1e-6), max(l2, 1e-6)]) @ rot.T
    x, y = _grid(size)
    xy = np.stack([x, y], axis=-1)  # (size, size, 2)
    q = np.einsum("...i,ij,...j->...", xy, np.linalg.inv(cov), xy)  # Mahalanobis distance^2
    return _gaussian_from_quadratic(q)


def shifted_gaussian_kernel(size: int, sigma: float, sf: int) -> np.ndarray:
    """Isotropic Gaussian shifted by ``(sf - 1) / 2`` pixels towards the upper left, renormalised.

    Blurring with it and keeping every ``sf``-th pixel (``[::sf]``) centres each kept pixel on the
    block it stands for (BSRGAN's ``shift_pixel``, bilinear interpolation at clipped positions).
    """
    k = isotropic_gaussian_kernel(size, sigma)
    shift = (sf - 1) * 0.5
    grid = np.clip(np.arange(size, dtype=np.float64) + shift, 0, size - 1)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    k = ndimage.map_coordinates(k, [yy, xx], order=1, mode="nearest")
    return k / k.sum()


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of ``image`` (HxWxC) with a 2-D ``kernel``, mirror boundary."""
    return ndimage.convolve(image, kernel[:, :, None].astype(image.dtype), mode="mirror")


def _blur_width(ab: tuple[float, float], sf: int) -> float:
    return ab[0] + ab[1] * sf


def isotropic_blur(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """Isotropic Gaussian blur: size ~ randint(5, 7), sigma ~ U(0, (2 + 0.2 sf) / 4)."""
    size = _randint(rng, config.isotropic_kernel_sizes)
    sigma = _blur_width(config.isotropic_sigma_max, sf) * rng.random()
    return convolve(image, isotropic_gaussian_kernel(size, sigma))


def anisotropic_blur(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """Anisotropic Gaussian blur: size ~ randint(5, 14), theta ~ U(0, pi), eigenvalues ~ U(0, (4 + sf) / 4)."""
    size = _randint(rng, config.anisotropic_kernel_sizes)
    eig_max = _blur_width(config.anisotropic_eig_max, sf)
    l1, l2 = eig_max * rng.random(), eig_max * rng.random()
    theta = np.pi * rng.random()
    return convolve(image, anisotropic_gaussian_kernel(size, theta, l1, l2))


def random_blur(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """The official blur step: anisotropic or isotropic Gaussian blur, half and half."""
    if rng.random() < config.anisotropic_prob:
        return anisotropic_blur(image, rng, sf, config)
    return isotropic_blur(image, rng, sf, config)


# ---------------------------------------------------------------------------------------------
# Downsampling
# ---------------------------------------------------------------------------------------------


def resize(image: np.ndarray, width: int, height: int, interpolation: str = "cubic") -> np.ndarray:
    """OpenCV resize of an HxWx3 float image to ``(height, width)``, clipped to [0, 1]."""
    out = cv2.resize(image, (int(width), int(height)), interpolation=_INTERPOLATIONS[interpolation])
    return np.clip(out, 0.0, 1.0)


def _random_interpolation(rng: np.random.Generator, config: DegradationConfig) -> str:
    return config.interpolations[int(rng.integers(len(config.interpolations)))]


def random_resize_downsample(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """Resize by ``1 / sf1`` with ``sf1 ~ U(1, 2 sf)`` and a random interpolation."""
    sf1 = rng.uniform(1.0, config.resize_factor_max * sf)
    h, w = image.shape[:2]
    return resize(image, max(1, int(w / sf1)), max(1, int(h / sf1)), _random_interpolation(rng, config))


def shifted_gaussian_downsample(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """Blur with a shifted 25x25 Gaussian (sigma ~ U(0.1, 0.6 sf)), then keep every ``sf``-th pixel."""
    sigma = rng.uniform(config.shifted_sigma_min, config.shifted_sigma_max_per_scale * sf)
    k = shifted_gaussian_kernel(config.shifted_kernel_size, sigma, sf)
    return np.clip(convolve(image, k)[::sf, ::sf], 0.0, 1.0)


def random_downsample(
    image: np.ndarray, rng: np.random.Generator, sf: int = 4, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """The official "downsample2" step: a random resize (p=0.8) or shifted Gaussian + nearest."""
    if rng.random() < config.resize_down_prob:
        return random_resize_downsample(image, rng, sf, config)
    return shifted_gaussian_downsample(image, rng, sf, config)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``imresize`` bicubic)."""
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def _matlab_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Dense ``(n_out, n_in)`` matrix of MATLAB ``imresize`` bicubic weights (antialiased when shrinking)."""
    width = 4.0 / scale if scale < 1 else 4.0  # the kernel is stretched by 1/scale when shrinking
    out = np.arange(1, n_out + 1, dtype=np.float64)
    u = out / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in 1-based input coordinates
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # Symmetric boundary: index i outside 1..n_in is mirrored (1, 2, .., n, n, .., 1, 1, ..).
    period = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    src = period[(idx.astype(np.int64) - 1) % (2 * n_in)]
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.repeat(np.arange(n_out), idx.shape[1]), src.ravel()), w.ravel())
    return mat


def matlab_bicubic_resize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB-style ``imresize(image, scale, 'bicubic')`` with antialiasing (BSRGAN's ``imresize_np``)."""
    h, w = image.shape[:2]
    h_out, w_out = int(np.ceil(h * scale)), int(np.ceil(w * scale))
    wh, ww = _matlab_weights(h, h_out, scale), _matlab_weights(w, w_out, scale)
    out = np.einsum("oh,hwc->owc", wh, image.astype(np.float64))
    out = np.einsum("pw,owc->opc", ww, out)
    return out.astype(np.float32)


def first_downsample_x2(
    image: np.ndarray, rng: np.random.Generator, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """The optional first x2 downsample: OpenCV with a random interpolation, or MATLAB bicubic."""
    h, w = image.shape[:2]
    if rng.random() < config.scale2_opencv_prob:
        return resize(image, w // 2, h // 2, _random_interpolation(rng, config))
    return np.clip(matlab_bicubic_resize(image, 0.5), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Noise and compression
# ---------------------------------------------------------------------------------------------


def color_gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add independent N(0, sigma^2) noise to every pixel and channel; clip to [0, 1]."""
    noise = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)


def gray_gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add N(0, sigma^2) noise shared by the three channels of a pixel; clip to [0, 1]."""
    noise = rng.normal(0.0, sigma, (*image.shape[:2], 1)).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)


def correlated_gaussian_noise(image: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """Add noise correlated across channels: covariance ``|L^2 U^T D U|`` with random orthogonal U, diagonal D."""
    d = np.diag(rng.random(3))
    u = linalg.orth(rng.random((3, 3)))
    cov = np.abs(level**2 * (u.T @ d @ u))
    noise = rng.multivariate_normal(np.zeros(3), cov, image.shape[:2]).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)


def random_gaussian_noise(
    image: np.ndarray, rng: np.random.Generator, config: DegradationConfig = _DEFAULT
) -> np.ndarray:
    """The official noise step: level ~ randint(1, 2) / 255; colour 40 %, gray 40 %, correlated 20 %."""
    sigma = _randint(rng, config.noise_levels) / 255.0
    r = rng.random()
    if r < config.noise_color_prob:
        return color_gaussian_noise(image, rng, sigma)
    if r < config.noise_color_prob + config.noise_gray_prob:
        return gray_gaussian_noise(image, rng, sigma)
    return correlated_gaussian_noise(image, rng, config.correlated_noise_level / 255.0)


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode the RGB image as JPEG of the given quality with OpenCV and decode it again."""
    bgr = cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return to_float(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def random_jpeg(image: np.ndarray, rng: np.random.Generator, config: DegradationConfig = _DEFAULT) -> np.ndarray:
    """JPEG compression with quality ~ randint(80, 95)."""
    return jpeg_compress(image, _randint(rng, config.jpeg_quality))


# ---------------------------------------------------------------------------------------------
# L0 gradient smoothing (Xu, Lu, Xu and Jia, "Image Smoothing via L0 Gradient Minimization", 2011)
# ---------------------------------------------------------------------------------------------


def l0_smooth(image: np.ndarray, lam: float, kappa: float = 2.0, beta_max: float = 1e5) -> np.ndarray:
    """Minimise ``|S - I|^2 + lam * #{p : grad S_p != 0}`` by half-quadratic splitting.

    ``image`` is float HxWxC in [0, 1] and the result is in the same range (this is the fix of the
    official version, which rescales by 256 twice and returns black). With periodic boundaries,
    forward differences ``dx, dy`` diagonalise in Fourier space, so each S-step is one FFT solve:
    ``S = F^-1[(F(I) + beta (F(dx^T h) + F(dy^T v))) / (1 + beta (|F(dx)|^2 + |F(dy)|^2))]``.
    """
    i = image.astype(np.float64)
    h, w = i.shape[:2]
    # |F(dx)|^2 + |F(dy)|^2 for the circular difference kernels [1, -1]: 2 - 2 cos(2 pi k / n).
    mtf = (
        (2 - 2 * np.cos(2 * np.pi * np.arange(w) / w))[None, :]
        + (2 - 2 * np.cos(2 * np.pi * np.arange(h) / h))[:, None]
    )[:, :, None]
    f_i = np.fft.fft2(i, axes=(0, 1))
    s = i.copy()
    beta = 2 * lam
    while beta < beta_max:
        # h-v subproblem: keep the gradient only where its energy exceeds lam / beta.
        gx = np.roll(s, -1, axis=1) - s
        gy = np.roll(s, -1, axis=0) - s
        flat = (gx**2 + gy**2).sum(axis=2, keepdims=True) < lam / beta
        gx = np.where(flat, 0.0, gx)
        gy = np.where(flat, 0.0, gy)
        # S subproblem: dx^T gx + dy^T gy are backward differences of the kept gradients.
        div = (np.roll(gx, 1, axis=1) - gx) + (np.roll(gy, 1, axis=0) - gy)
        f_s = (f_i + beta * np.fft.fft2(div, axes=(0, 1))) / (1 + beta * mtf)
        s = np.fft.ifft2(f_s, axes=(0, 1)).real
        beta *= kappa
    return np.clip(s, 0.0, 1.0).astype(np.float32)


def random_l0_smooth(image: np.ndarray, rng: np.random.Generator, config: DegradationConfig = _DEFAULT) -> np.ndarray:
    """L0 smoothing with lambda ~ U(1.2e-3, 4e-3), kappa 2, beta up to 1e5 (black with ``config.l0_official``)."""
    lam = rng.uniform(*config.l0_lambda)  # drawn either way, so both settings consume the same random numbers
    if config.l0_official:
        return np.zeros_like(image)
    return l0_smooth(image, lam, config.l0_kappa, config.l0_beta_max)


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------


def degrade(
    image: np.ndarray, scale: int = 4, config: DegradationConfig | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Degrade a uint8 ``HxWx3`` image into a uint8 ``(H/scale, W/scale, 3)`` low-resolution input.

    The image is first cropped to a multiple of ``scale`` (the official mod-crop). Steps and order
    follow the official ``degradation_bsrgan_variant``: optional first x2 downsample, then a random
    permutation of blur, random downsample, final resize, noise, JPEG and L0 smoothing, with the
    random downsample moved before the final resize. ``rng`` is the only source of randomness.
    """
    config = _DEFAULT if config is None else config
    rng = np.random.default_rng() if rng is None else rng
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"degrade: scale must be a positive integer, got {scale!r}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DatasetError(f"degrade expects a uint8 HxWx3 RGB array, got a {desc}")
    h, w = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise DatasetError(f"degrade: image of shape {image.shape} is smaller than the scale factor {scale}")
    x = to_float(image[:h, :w])
    h_lr, w_lr = h // scale, w // scale

    sf = scale
    if sf >= 4 and sf % 2 == 0 and rng.random() < config.scale2_prob:
        x = first_downsample_x2(x, rng, config)
        sf //= 2

    # Ops: 0 blur, 1 nothing (the light variant has no second blur), 2 random downsample,
    # 3 final resize, 4 noise, 5 JPEG, 6 L0 smoothing; 2 always runs before 3.
    order = [int(i) for i in rng.permutation(7)]
    i2, i3 = order.index(2), order.index(3)
    if i2 > i3:
        order[i2], order[i3] = 3, 2
    for op in order:
        if op == 0 and rng.random() < config.blur_prob:
            x = random_blur(x, rng, sf, config)
        elif op == 2:
            x = random_downsample(x, rng, sf, config)
        elif op == 3:
            x = resize(x, w_lr, h_lr, _random_interpolation(rng, config))
        elif op == 4:
            x = random_gaussian_noise(x, rng, config)
        elif op == 5 and rng.random() < config.jpeg_prob:
            x = random_jpeg(x, rng, config)
        elif op == 6 and rng.random() < config.l0_prob:
            x = random_l0_smooth(x, rng, config)
    return to_uint8(x)


def degrade_batch(
    images: torch.Tensor,
    scale: int = 4,
    config: DegradationConfig | None = None,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Degrade a batch ``(N, 3, H, W)`` in [-1, 1]; returns ``(N, 3, H/scale, W/scale)`` in [-1, 1].

    The images are quantised to uint8 first, as the official data loader degrades uint8 images.
    The result has the dtype and device of ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise DatasetError(f"degrade_batch expects a (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
    rng = np.random.default_rng() if rng is None else rng
    u8 = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    u8 = u8.permute(0, 2, 3, 1).numpy()
    low = np.stack([degrade(img, scale, config, rng) for img in u8])
    out = torch.from_numpy(low).permute(0, 3, 1, 2).float() / 127.5 - 1
    return out.to(dtype=images.dtype, device=images.device)
