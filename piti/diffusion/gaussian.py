"""Gaussian diffusion maths: forward process, posterior, reverse-step parameters, losses.

The diffusion never calls a network. Every function takes the network's *output*
(``model_output``) and the tensors it was computed from, so the same object serves the
training loop, the samplers and the tests. The output is either

* ``(B, 2C, H, W)``: epsilon and the learned-range variance value ``v`` (GLIDE / PITI,
  Nichol & Dhariwal 2021, Eq. 15: log Sigma = frac * log beta_t + (1 - frac) * log beta~_t,
  frac = (v + 1) / 2), or
* ``(B, C, H, W)``: epsilon only, with a fixed variance (``fixed_variance``).

Timesteps ``t`` are integer indices (B,) into *this* (possibly respaced) process; what
the network receives for them is :meth:`GaussianDiffusion.model_timesteps`.

Numerics follow the official code: the schedule is float64, each coefficient is gathered
at ``t`` and cast to the working dtype (float32 unless ``x`` is float64) before use.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from piti.diffusion.schedules import get_betas, respace_betas, space_timesteps
from piti.errors import ConfigError


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    # The tanh approximation of Phi used by Ho et al. 2020 (and the official code).
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) of images in [-1, 1] quantised to 256 levels (Ho et al. 2020, Eq. 13)."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    # The edge bins extend to -inf / +inf.
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """A (possibly respaced) DDPM with epsilon prediction.

    Args:
        betas: float64 betas of this process (already respaced if it is respaced).
        timestep_map: original step index of each step of this process (default: identity).
        original_num_steps: number of steps of the process the network was trained on.
        rescale_timesteps: give the network ``t_orig * 1000 / original_num_steps`` as a
            float (the official PITI setting) instead of the integer ``t_orig``.
        fixed_variance: ``"large"`` (beta_t, Ho et al.'s sigma^2 = beta) or ``"small"``
            (the posterior variance beta~_t), used when the network predicts epsilon only.
    """

    def __init__(
        self, betas, timestep_map=None, original_num_steps=None, rescale_timesteps=True, fixed_variance="large"
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError("betas must be a 1-D array with values in (0, 1]")
        if fixed_variance not in ("large", "small"):
            raise ConfigError(f"fixed_variance must be 'large' or 'small', got {fixed_variance!r}")
        self.num_timesteps = len(betas)
        self.timestep_map = torch.as_tensor(
            np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map), dtype=torch.long
        )
        self.original_num_steps = original_num_steps or self.num_timesteps
        self.rescale_timesteps = rescale_timesteps
        self.fixed_variance = fixed_variance

        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs. 6-7).
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta~_0 is 0; its log is clipped to beta~_1 as in the official code. A one-step process has
        # no beta~_1 (the official code fails there); beta_0 stands in, and no noise is added at t = 0 anyway.
        first_variance = posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        posterior_log_variance_clipped = np.log(np.append(first_variance, posterior_variance[1:]))
        # "large" fixed variance uses beta_t, with beta~_1 at t = 0 (Ho et al.; official FIXED_LARGE).
        large_variance = np.append(first_variance, betas[1:])
        tables = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        if fixed_variance == "large":
            tables.update(variance_fixed=large_variance, log_variance_fixed=np.log(large_variance))
        else:
            tables.update(variance_fixed=posterior_variance, log_variance_fixed=posterior_log_variance_clipped)
        # float64 tensors on the CPU; gathered at t and cast by _extract.
        for name, value in tables.items():
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(value)))

    def __repr__(self):
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, original_num_steps={self.original_num_steps}, "
            f"rescale_timesteps={self.rescale_timesteps})"
        )

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _extract(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """table[t] cast to x's working dtype, shaped (B, 1, ..., 1) to broadcast against x."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        values = table[t.detach().long().cpu()].to(dtype=dtype, device=x.device)
        return values.view(-1, *([1] * (x.ndim - 1)))

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_timesteps:
            raise ValueError(
                f"t must index this {self.num_timesteps}-step process, got values in [{int(t.min())}, {int(t.max())}]"
            )

    def split_model_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """Split a network output into ``(eps, v)``; ``v`` is None for epsilon-only outputs."""
        channels = x_t.shape[1]
        if (
            model_output.shape[0] != x_t.shape[0]
            or model_output.shape[2:] != x_t.shape[2:]
            or model_output.shape[1] not in (channels, 2 * channels)
        ):
            raise ValueError(
                f"model output {tuple(model_output.shape)} does not fit x_t {tuple(x_t.shape)}: expected "
                f"{channels} (epsilon) or {2 * channels} (epsilon and variance) channels"
            )
        if model_output.shape[1] == channels:
            return model_output, None
        return model_output[:, :channels], model_output[:, channels:]

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the network receives for indices ``t`` of this process.

        Respaced indices map to original steps; with ``rescale_timesteps`` the result is the
        float ``t_orig * 1000 / original_num_steps`` (official PITI; equal to ``t_orig`` at
        1000 steps), otherwise the integer ``t_orig``.
        """
        t_orig = self.timestep_map.to(t.device)[t.long()]
        if self.rescale_timesteps:
            return t_orig.float() * (1000.0 / self.original_num_steps)
        return t_orig

    # -- forward process -----------------------------------------------------------------
    def q_sample(self, x_start, t, noise=None, generator=None):
        """Draw x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Eq. 4)."""
        self._check_t(t, x_start)
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Eqs. 6-7)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- epsilon <-> x0 --------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Eq. 4 solved for x_0)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t, t, x0):
        """The epsilon that maps x0 to x_t at step t (the inverse of predict_x0_from_eps)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    # -- reverse process -------------------------------------------------------------------
    def p_mean_variance(self, model_output, x_t, t, clip_denoised=True):
        """Parameters of p(x_{t-1} | x_t) from the network output.

        Returns a dict with ``mean``, ``variance``, ``log_variance`` and ``x0_pred`` (clamped
        to [-1, 1] when ``clip_denoised``; the mean is the posterior mean at that x0).
        """
        self._check_t(t, x_t)
        eps, v = self.split_model_output(model_output, x_t)
        if v is None:
            variance = self._extract(self.variance_fixed, t, x_t).expand_as(x_t)
            log_variance = self._extract(self.log_variance_fixed, t, x_t).expand_as(x_t)
        else:
            # Nichol & Dhariwal 2021, Eq. 15: interpolate log beta~_t and log beta_t.
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._extract(self.log_betas, t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        x0_pred = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(x0_pred, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "x0_pred": x0_pred}

    def p_sample(self, model_output, x_t, t, noise, clip_denoised=True):
        """One ancestral step x_t -> x_{t-1} with the given standard-normal ``noise``.

        No noise is added where t == 0. Returns a dict with ``sample`` and ``x0_pred``.
        """
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "x0_pred": out["x0_pred"]}

    def ddim_sample(self, model_output, x_t, t, noise=None, eta=0.0, clip_denoised=True):
        """One DDIM step x_t -> x_{t-1} (Song et al. 2021, Eq. 12); ``noise`` is needed if eta > 0.

        Epsilon is recomputed from the (clipped) x0 prediction, as in the official code.
        Returns a dict with ``sample`` and ``x0_pred``.
        """
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        x0_pred = out["x0_pred"]
        eps = self.predict_eps_from_x0(x_t, t, x0_pred)
        alpha_bar = self._extract(self.alphas_cumprod, t, x_t)
        alpha_bar_prev = self._extract(self.alphas_cumprod_prev, t, x_t)
        # Eq. 16: sigma_t(eta); eta = 1 is the DDPM posterior variance, eta = 0 deterministic.
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = x0_pred * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_sample with eta > 0 needs noise")
            nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "x0_pred": x0_pred}

    # -- training --------------------------------------------------------------------------
    def _vb_terms_bpd(self, model_output, x_start, x_t, t):
        """The VLB term L_{t} in bits per dimension: KL for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl)

    def training_losses(self, model_output, x_start, x_t, t, noise):
        """Per-sample loss terms of the official RESCALED_MSE objective.

        ``x_t`` must be ``q_sample(x_start, t, noise)``. Returns a dict of (B,) tensors:
        ``mse`` (MSE of epsilon, Ho et al. 2020, Eq. 14), ``vb`` (the VLB term that trains the
        variance, with a stop-gradient on the mean and scaled by num_timesteps / 1000,
        Nichol & Dhariwal 2021, Sec. 3.1; zeros for epsilon-only outputs), ``loss`` = mse + vb,
        and ``x0_pred``, the (B, C, H, W) x0 estimate clamped to [-1, 1], differentiable, for the
        upsampler's perceptual and adversarial losses.
        """
        self._check_t(t, x_t)
        eps, v = self.split_model_output(model_output, x_t)
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if v is None:
            terms["vb"] = torch.zeros_like(terms["mse"])
        else:
            # The VB term only trains the variance: the mean is frozen (detached epsilon).
            frozen = torch.cat([eps.detach(), v], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t) * (self.num_timesteps / 1000.0)
        terms["loss"] = terms["mse"] + terms["vb"]
        terms["x0_pred"] = self.predict_x0_from_eps(x_t, t, eps).clamp(-1, 1)
        return terms


def create_diffusion(
    noise_schedule="squaredcos_cap_v2",
    steps=1000,
    timestep_respacing="",
    rescale_timesteps=True,
    fixed_variance="large",
    last_step=None,
    skip_terminal=False,
) -> GaussianDiffusion:
    """Build the (possibly respaced) diffusion process used by GLIDE / PITI.

    Base models use ``squaredcos_cap_v2``, upsamplers ``linear``; sampling respaces to
    ``"250"`` (base) or ``"fast27"`` (upsampler). See :mod:`piti.diffusion.schedules`.

    ``last_step`` (an original step t0 < ``steps``) truncates the process to steps 0..t0 before
    respacing, for sampling that starts from a noised image at t0 instead of from pure noise
    (SDEdit, Meng et al. 2022); the model still sees the original step numbers.

    ``skip_terminal`` drops the step t = T - 1 from a respacing that holds it and at least two other steps, so that
    a sampler reads x_T as the next kept step's x_t. The cosine schedule clips its last beta to 0.999, which leaves
    alpha_bar = 2.4e-9 there: the x0 implied by an epsilon prediction is its error times 2e4, clamped to +-1, and
    the first respaced step would hand that saturated noise on as the image (the sampling setting
    ``skip_terminal``).
    """
    betas = get_betas(noise_schedule, steps)
    if last_step is not None:
        if not 0 < int(last_step) < steps:
            raise ConfigError(f"last_step must be in 1..{steps - 1}, got {last_step}")
        betas = betas[: int(last_step) + 1]  # alpha_bar of steps 0..t0 is unchanged
    use_timesteps = space_timesteps(len(betas), timestep_respacing)
    # T - 1 is absent from e.g. ddim50 (0, 20, ..., 980) or a truncation; of two steps, t = 0 alone would be left
    if skip_terminal and steps - 1 in use_timesteps and len(use_timesteps) > 2:
        use_timesteps = set(use_timesteps) - {steps - 1}
    new_betas, timestep_map = respace_betas(betas, use_timesteps)
    return GaussianDiffusion(
        new_betas,
        timestep_map,
        original_num_steps=steps,
        rescale_timesteps=rescale_timesteps,
        fixed_variance=fixed_variance,
    )
