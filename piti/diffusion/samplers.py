"""Samplers: plain functions over a denoiser (the k-diffusion shape).

Every sampler has the signature ``sampler(denoise, x_T, diffusion, *, clip_denoised=True,
generator=None, progress=False, callback=None, ...)`` and walks the steps of ``diffusion``
(a possibly respaced :class:`~piti.diffusion.gaussian.GaussianDiffusion`) from the noisiest
to t = 0. ``denoise(x_t, t_model)`` returns the network output, (B, 2C, H, W) (epsilon and
the learned variance value) or (B, C, H, W) (epsilon only); ``t_model`` is what the network
receives, i.e. ``diffusion.model_timesteps(t)`` (original step values for respaced
processes). Guidance is a wrapper around ``denoise`` (:mod:`piti.diffusion.guidance`), so
every sampler gets it.

Noise: with a ``torch.Generator`` the draws are ``torch.randn(..., generator=generator)``,
reproducible whatever else uses the global RNG; with ``generator=None`` they are
``torch.randn_like(x)`` from the global RNG, as the official code draws them.

``callback``, if given, is called after each step with a dict ``i`` (step number, 0 first),
``t`` (the process index), ``x`` (the new sample) and ``x0_pred``.

``span=(high, low)`` walks only the steps at process indices high down to low (both included) and returns
x_{low - 1}, so a run split at index k, ``span=(N - 1, k)`` then ``span=(k - 1, 0)`` on its result, draws
the same pixels as one run (DPM-Solver++ restarts its history with a first-order step).
"""

from __future__ import annotations

import inspect
import math

import torch
from tqdm.auto import tqdm

from piti.errors import ConfigError


def _randn_like(x, generator, antithetic=False):
    """Standard normal noise shaped like x; across the batch antithetic (:func:`antithetic_draws`) if asked."""
    if generator is None:
        z = torch.randn_like(x)
    else:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return antithetic_draws(z) if antithetic else z


def antithetic_draws(z: torch.Tensor) -> torch.Tensor:
    """Rows of ``z`` (K, ...) centred across K and rescaled by sqrt(K / (K - 1)): independent N(0, I) rows stay
    N(0, I) each, and any two now correlate -1 / (K - 1) (K = 2: z and -z, antithetic noise, Jia et al. 2025), so
    the samples they start or drive lie farther apart; one row is returned as it is."""
    k = z.shape[0]
    if k < 2:
        return z
    return (z - z.mean(0, keepdim=True)) * math.sqrt(k / (k - 1))


def _steps(diffusion, x_T, progress, desc, span=None):
    """Yield (step number, t) from the noisiest index (or ``span``'s high end) down to 0 (or its low end), with an
    optional tqdm bar."""
    high, low = (diffusion.num_timesteps - 1, 0) if span is None else span
    if not 0 <= low <= high < diffusion.num_timesteps:
        raise ConfigError(f"span must be (high, low) with 0 <= low <= high < {diffusion.num_timesteps}, got {span}")
    indices = range(high, low - 1, -1)
    for i, index in enumerate(tqdm(indices, desc=desc, disable=not progress)):
        yield i, torch.full((x_T.shape[0],), index, dtype=torch.long, device=x_T.device)


def _denoise(denoise, diffusion, x, t):
    """Run the denoiser at process index t; its output in x's dtype (e.g. bf16 model, fp32 maths)."""
    return denoise(x, diffusion.model_timesteps(t)).to(x.dtype)


def ddpm_step(
    diffusion, model_output, x_t, t, *, clip_denoised=True, generator=None, noise_scale=1.0, antithetic_noise=False
):
    """One ancestral step of ``diffusion`` with the sampler's noise times ``noise_scale`` (its draws across the batch
    made antithetic with ``antithetic_noise``, :func:`antithetic_draws`); returns ``(x_prev, x0_pred)``."""
    noise = _randn_like(x_t, generator, antithetic_noise)
    if noise_scale != 1.0:
        noise = noise * noise_scale
    out = diffusion.p_sample(model_output, x_t, t, noise, clip_denoised=clip_denoised)
    return out["sample"], out["x0_pred"]


def ddim_step(diffusion, model_output, x_t, t, *, eta=0.0, clip_denoised=True, generator=None, antithetic_noise=False):
    """One DDIM step; noise is drawn only when eta > 0 (antithetic across the batch with ``antithetic_noise``).
    Returns ``(x_prev, x0_pred)``."""
    noise = _randn_like(x_t, generator, antithetic_noise) if eta > 0 else None
    out = diffusion.ddim_sample(model_output, x_t, t, noise=noise, eta=eta, clip_denoised=clip_denoised)
    return out["sample"], out["x0_pred"]


@torch.no_grad()
def sample_ddpm(
    denoise,
    x_T,
    diffusion,
    *,
    clip_denoised=True,
    generator=None,
    progress=False,
    callback=None,
    span=None,
    noise_scale=1.0,
    noise_scale_tmax=1.0,
    antithetic_noise=False,
):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) with the learned or fixed variance.

    This is the official GLIDE / PITI sampler (250 respaced steps for the base model,
    ``fast27`` for the upsampler). ``noise_scale`` multiplies the noise added at the steps below
    ``noise_scale_tmax`` (a fraction of the trained process, t / T; the official noise above it),
    x_{t-1} = mu + noise_scale * sigma_t * z (1 = Alg. 2; k-diffusion's ``s_noise``, EDM's S_noise with S_tmax):
    below 1 it samples at a lower temperature than the posterior, trading diversity for cleaner images from
    a small model; the early, high-noise steps, where a sample's layout and colours are drawn, can keep their
    full noise. ``antithetic_noise`` draws each step's noises of the batch antithetic (:func:`antithetic_draws`).
    """
    if not 0.0 <= noise_scale <= 1.5:
        raise ConfigError(f"noise_scale must be in [0, 1.5], got {noise_scale}")
    if not 0.0 <= noise_scale_tmax <= 1.0:
        raise ConfigError(f"noise_scale_tmax must be in [0, 1], got {noise_scale_tmax}")
    x = x_T
    for i, t in _steps(diffusion, x_T, progress, "ddpm", span):
        t_frac = float(diffusion.timestep_map[t[0]]) / diffusion.original_num_steps
        x, x0_pred = ddpm_step(
            diffusion,
            _denoise(denoise, diffusion, x, t),
            x,
            t,
            clip_denoised=clip_denoised,
            generator=generator,
            noise_scale=noise_scale if t_frac < noise_scale_tmax else 1.0,
            antithetic_noise=antithetic_noise,
        )
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_ddim(
    denoise,
    x_T,
    diffusion,
    *,
    eta=0.0,
    clip_denoised=True,
    generator=None,
    progress=False,
    callback=None,
    span=None,
    antithetic_noise=False,
):
    """DDIM sampling (Song et al. 2021); ``eta=0`` is deterministic, ``eta=1`` is DDPM-like; ``antithetic_noise``
    as DDPM's, for eta > 0."""
    x = x_T
    for i, t in _steps(diffusion, x_T, progress, "ddim", span):
        x, x0_pred = ddim_step(
            diffusion,
            _denoise(denoise, diffusion, x, t),
            x,
            t,
            eta=eta,
            clip_denoised=clip_denoised,
            generator=generator,
            antithetic_noise=antithetic_noise,
        )
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise, x_T, diffusion, *, clip_denoised=True, generator=None, progress=False, callback=None, span=None
):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) for epsilon-prediction networks.

    Data-prediction multistep solver in lambda = log(alpha_t / sigma_t), with alpha_t^2 =
    alpha_bar_t over the process's (respaced) steps; x0 is clamped to [-1, 1] when
    ``clip_denoised``. The first step and the step into t = 0 are first order (= DDIM);
    the last one jumps from t = 0 to the clean image (x = x0_pred), as DDIM and DDPM do.
    Like every sampler here it walks the process's own steps, so the respacing chooses
    them (uniform in t for ``"N"``). Deterministic:
    ``generator`` is accepted for the common signature and not used.
    """
    del generator  # deterministic sampler
    alpha_bar = diffusion.alphas_cumprod.tolist()  # float64 schedule of this process

    def alpha_sigma_lambda(index):
        alpha, sigma = math.sqrt(alpha_bar[index]), math.sqrt(1.0 - alpha_bar[index])
        return alpha, sigma, math.log(alpha / sigma)

    x = x_T
    x0_prev, h_prev = None, None
    for i, t in _steps(diffusion, x_T, progress, "dpm++2m", span):
        index = int(t[0])
        eps, _ = diffusion.split_model_output(_denoise(denoise, diffusion, x, t), x)
        x0_pred = diffusion.predict_x0_from_eps(x, t, eps)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        if index == 0:
            x = x0_pred  # final jump to sigma = 0
        else:
            _, sigma, lam = alpha_sigma_lambda(index)
            alpha_next, sigma_next, lam_next = alpha_sigma_lambda(index - 1)
            h = lam_next - lam
            if x0_prev is None or index == 1:
                # First order (DPM-Solver++(1) = DDIM) on the first step, and on the step into t = 0,
                # whose lambda jump is large: extrapolating there overshoots (cf. "lower_order_final").
                d = x0_pred
            else:
                r = h_prev / h  # Alg. 2: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}
                d = (1 + 1 / (2 * r)) * x0_pred - (1 / (2 * r)) * x0_prev
            # Alg. 2 update: x_{t_i} = sigma_i / sigma_{i-1} x - alpha_i (e^{-h_i} - 1) D
            x = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * d
            x0_prev, h_prev = x0_pred, h
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp": sample_dpmpp_2m}
# the keyword parameters every sampler shares; the others are a sampler's own knobs
COMMON_PARAMETERS = ("clip_denoised", "generator", "progress", "callback", "span")


def sampler_options(name: str, settings, prefix: str = "") -> dict:
    """The knobs of sampler ``name`` (e.g. DDPM's ``noise_scale``, DDIM's ``eta``) taken from ``settings``
    (an object with attributes), where each is named ``prefix`` + the sampler's parameter name."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    params = list(inspect.signature(SAMPLERS[name]).parameters)[3:]  # after denoise, x_T, diffusion
    return {
        p: getattr(settings, prefix + p) for p in params if p not in COMMON_PARAMETERS and hasattr(settings, prefix + p)
    }


def sample(name, denoise, x_T, diffusion, **kwargs):
    """Run the sampler called ``name`` (``ddpm``, ``ddim`` or ``dpmpp``); kwargs go to it."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](denoise, x_T, diffusion, **kwargs)
