"""Classifier-free guidance, plain (official) and normalized (the PITI paper's).

``w`` is the paper's guidance strength: eps_hat = eps_c + w (eps_c - eps_u), w = 0 is the
conditional prediction alone. (The official code's s is 1 + w: eps_u + s (eps_c - eps_u);
:func:`piti.settings.official_to_w` converts it.) Guidance acts on epsilon only; the learned
variance channels come from the conditional prediction.

Normalized guidance (the PITI paper's "normalized classifier-free guidance") rescales eps_hat back
to the conditional prediction's statistics:  eps_tilde = sigma_c / sigma_hat * (eps_hat - mu_hat) + mu_c,
per sample over (C, H, W) (``stats="sample"``) or per sample and channel over (H, W)
(``stats="channel"``). ``sigma="analytic"`` takes the paper's moments, derived as if eps_c and eps_u
were independent: mu_hat = mu_c + w (mu_c - mu_u), sigma_hat^2 = (1 + w)^2 sigma_c^2 + w^2 sigma_u^2.
``sigma="measured"`` (the default) measures mu_hat and sigma_hat on eps_hat itself, so eps_tilde's
moments equal the conditional ones exactly. The two predictions share x_t and are strongly
correlated, so the analytic sigma_hat is larger than the real spread of eps_hat and the analytic
form shrinks the guided epsilon below the conditional one's scale.

Condition annealing (CADS, Sadat et al., ICLR 2024) adds noise to the *encoded* condition of the conditional
prediction at the early, noisy steps: y_hat = sqrt(gamma) y + s sqrt(1 - gamma) n, rescaled per sample to y's
mean and standard deviation (the paper's psi = 1), with gamma(t) 1 below ``tmin`` (a fraction t / T), 0 above
``tmax`` and linear between. The early steps, where layout and colours are drawn, then see a perturbed condition,
and the later ones the true one.

A guidance interval (Kynkaanniemi et al., NeurIPS 2024) guides only where ``tmin <= t / T < tmax``; elsewhere the
conditional prediction alone is used and the null half is not run, so each step outside the interval costs half.

Reward guidance (not official; the one-step form of universal guidance, Bansal et al., CVPR 2023 workshops, without
the backward pass through the network) nudges each step's predicted x0 down the gradient of a small reward model's
disagreement with the condition (:mod:`piti.train.rewards`), x0' = x0 - scale * H W * grad_x0 loss(x0), and
re-derives epsilon from x0'. The reward model reads the picture the step is heading for and pushes back where it
breaks the condition, so the sampler can keep its full noise (the variety) and still follow the condition.

Particle guidance (Corso et al., ICLR 2024) takes the same step on a loss that couples the samples drawn together:
a repulsion, the sum of an RBF kernel exp(-|f_i - f_j|^2 / h) over the other samples j of the batch, on features
f = phi(x0) of each sample's predicted x0, with h the median of the pairwise squared distances / log(B + 1) (the
paper's median heuristic). The samples of one call are pushed apart, so a grid of them shows different pictures of
the same condition; a batch of one is left alone, and samples of separate calls are as independent as before,
unless the later call names the earlier samples as fixed ``partners`` (the pipeline's redraw does).
"""

from __future__ import annotations

import math

import torch

from piti.errors import ConditionError, ConfigError

MODES = ("plain", "normalized")
STATS = ("sample", "channel")
SIGMAS = ("measured", "analytic")


def _check(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown guidance {name} {value!r}; expected one of {', '.join(allowed)}")


def _check_window(what: str, tmin: float, tmax: float) -> None:
    """A t/T window [tmin, tmax) must be open and within [0, 1]."""
    if not 0.0 <= tmin < tmax <= 1.0:
        raise ConfigError(f"{what} needs 0 <= tmin < tmax <= 1, got tmin={tmin:g}, tmax={tmax:g}")


def plain_guidance(eps_c, eps_u, w):
    """Classifier-free guidance: eps_c + w (eps_c - eps_u) (Ho & Salimans 2021, Eq. 6)."""
    if w == 0:
        return eps_c
    return eps_c + w * (eps_c - eps_u)


def normalized_guidance(eps_c, eps_u, w, stats="sample", sigma="measured", eps=1e-12):
    """Normalized classifier-free guidance (the PITI paper).

    The plain guided eps_hat, shifted and rescaled so that its mean and standard deviation (per
    sample, or per sample and channel) become those of ``eps_c``; ``sigma`` picks measured or
    analytic moments of eps_hat (module docstring). ``eps`` guards the division where eps_hat is constant.
    """
    _check("statistics", stats, STATS)
    _check("sigma", sigma, SIGMAS)
    if w == 0:
        return eps_c
    eps_hat = eps_c + w * (eps_c - eps_u)
    dims = tuple(range(1, eps_c.ndim)) if stats == "sample" else tuple(range(2, eps_c.ndim))
    mu_c, sigma_c = eps_c.mean(dims, keepdim=True), eps_c.std(dims, keepdim=True, unbiased=False)
    if sigma == "measured":
        mu_hat, sigma_hat = eps_hat.mean(dims, keepdim=True), eps_hat.std(dims, keepdim=True, unbiased=False)
    else:  # the paper's moments for independent eps_c, eps_u
        mu_u, sigma_u = eps_u.mean(dims, keepdim=True), eps_u.std(dims, keepdim=True, unbiased=False)
        mu_hat = mu_c + w * (mu_c - mu_u)
        sigma_hat = ((1 + w) ** 2 * sigma_c**2 + w**2 * sigma_u**2).sqrt()
    return sigma_c / sigma_hat.clamp(min=eps) * (eps_hat - mu_hat) + mu_c


def anneal_weight(t_frac: float, tmin: float, tmax: float) -> float:
    """CADS's gamma at t / T = ``t_frac``: 1 (the condition as it is) up to ``tmin``, 0 (noise only) from ``tmax``."""
    if t_frac <= tmin:
        return 1.0
    if t_frac >= tmax:
        return 0.0
    return (tmax - t_frac) / (tmax - tmin)


def anneal_condition(cond, gamma: float, noise: float, generator=None, eps=1e-12):
    """CADS on a tensor or dict of tensors: sqrt(gamma) y + noise sqrt(1 - gamma) n, rescaled per sample (over all
    but the batch dimension) to y's mean and std; ``cond`` itself where gamma is 1 or ``noise`` 0."""
    if gamma >= 1.0 or noise == 0.0:
        return cond
    if isinstance(cond, dict):
        return {k: anneal_condition(v, gamma, noise, generator, eps) for k, v in cond.items()}
    y = cond.float()
    n = torch.randn(y.shape, generator=generator, device=y.device)
    y_hat = math.sqrt(gamma) * y + noise * math.sqrt(1.0 - gamma) * n
    dims = tuple(range(1, y.ndim))
    mu, sd = y_hat.mean(dims, keepdim=True), y_hat.std(dims, keepdim=True, unbiased=False)
    out = (y_hat - mu) / sd.clamp(min=eps) * y.std(dims, keepdim=True, unbiased=False) + y.mean(dims, keepdim=True)
    return out.to(cond.dtype)


def condition_annealer(noise: float, tmin: float, tmax: float, num_timesteps: int, generator=None):
    """``anneal(cond, t_model) -> cond`` for :func:`guided_denoiser`: CADS with ``noise`` between ``tmin`` and ``tmax``
    (fractions of the trained process of ``num_timesteps`` steps); None when ``noise`` is 0."""
    if noise == 0:
        return None
    _check_window("condition annealing", tmin, tmax)

    def anneal(cond, t):
        return anneal_condition(cond, anneal_weight(float(t[0]) / num_timesteps, tmin, tmax), noise, generator)

    return anneal


def _batch(cond, null_cond, where="cond"):
    """[cond; null_cond] along the batch, for a tensor or a (nested) dict of tensors."""
    if isinstance(cond, dict):
        null_keys = sorted(null_cond) if isinstance(null_cond, dict) else type(null_cond).__name__
        if null_keys != sorted(cond):
            raise ConditionError(f"null condition keys {null_keys} do not match condition keys {sorted(cond)}")
        return {k: _batch(cond[k], null_cond[k], where=f"cond[{k!r}]") for k in cond}
    if not torch.is_tensor(cond) or not torch.is_tensor(null_cond):
        raise ConditionError(f"{where}: condition and null condition must be tensors or dicts of tensors")
    if null_cond.shape[0] == 1 and cond.shape[0] > 1:
        null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])  # one null for the whole batch
    if null_cond.shape != cond.shape:
        raise ConditionError(
            f"{where}: null condition shape {tuple(null_cond.shape)} does not match the condition "
            f"shape {tuple(cond.shape)} (a batch of 1 is broadcast)"
        )
    return torch.cat([cond, null_cond.to(device=cond.device, dtype=cond.dtype)])


def guided_denoiser(
    model_fn,
    cond,
    null_cond,
    w,
    mode="normalized",
    stats="sample",
    sigma="measured",
    anneal=None,
    tmin=0.0,
    tmax=1.0,
    num_timesteps=1000,
):
    """Wrap ``model_fn(x, t, cond) -> output`` into a guided ``denoise(x_t, t_model)``.

    As the official code does, the conditional and null predictions come from one doubled
    batch ``model_fn([x_t; x_t], [t; t], [cond; null_cond])``. ``cond`` and ``null_cond``
    are tensors or dicts of tensors (e.g. precomputed ``dict(xf_proj=..., xf_out=...)``);
    a null batch of 1 is broadcast. Guidance of strength ``w`` (``mode`` "plain" or "normalized";
    ``stats`` and ``sigma``: see the module docstring) acts on the first C channels
    (epsilon); the other channels (learned variance) are those of the conditional half.
    At zero guidance the null batch is not run and ``model_fn(x_t, t, cond)`` is returned.
    ``anneal(cond, t) -> cond`` (:func:`condition_annealer`), if given, changes the conditional half at each step.
    Guidance applies where ``tmin <= t_model / num_timesteps < tmax`` (the guidance interval); other steps run the
    conditional batch alone.
    """
    _check("mode", mode, MODES)
    _check("statistics", stats, STATS)
    _check("sigma", sigma, SIGMAS)
    w = float(w)
    _check_window("the guidance interval", tmin, tmax)

    def conditional(x_t, t):
        return model_fn(x_t, t, cond if anneal is None else anneal(cond, t))

    if w == 0:
        return conditional
    cond_in = _batch(cond, null_cond)

    def denoise(x_t, t):
        if not tmin <= float(t[0]) / num_timesteps < tmax:
            out = conditional(x_t, t)
            return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        annealed = cond if anneal is None else anneal(cond, t)
        c = cond_in if annealed is cond else _batch(annealed, null_cond)  # batched once outside the window
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), c)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # guidance statistics in float32 for half-precision networks
        out_c, out_u = out.chunk(2)
        channels = x_t.shape[1]
        eps_c, eps_u = out_c[:, :channels], out_u[:, :channels]
        if mode == "plain":
            eps_guided = plain_guidance(eps_c, eps_u, w)
        else:
            eps_guided = normalized_guidance(eps_c, eps_u, w, stats=stats, sigma=sigma)
        return torch.cat([eps_guided, out_c[:, channels:]], dim=1)

    return denoise


def repulsion(features: torch.Tensor, partners: torch.Tensor | None = None) -> torch.Tensor:
    """Particle guidance's loss (module docstring): per sample (B,), the RBF kernel summed over the other samples
    of the batch and the fixed ``partners`` (P, D) / (B + P), on ``features`` (B, D); zeros with no one else."""
    n = features.shape[0]
    everyone = features if partners is None else torch.cat([features, partners.detach().to(features)])
    m = everyone.shape[0]
    if m < 2:
        return features.sum(1) * 0.0  # keeps the graph, so the gradient is zero
    d2 = torch.cdist(features, everyone).pow(2)
    others = ~torch.eye(n, m, dtype=torch.bool, device=features.device)
    h = (d2[others].median().detach() / math.log(m + 1)).clamp(min=1e-6)  # the median heuristic
    return (torch.exp(-d2 / h) * others).sum(1) / m


def reward_guided(denoise, loss_fn, alphas_cumprod, scale, tmin=0.0, tmax=1.0, rescaled=True):
    """Wrap ``denoise(x_t, t_model)`` (epsilon in the first 3 channels) with reward guidance (module docstring).

    ``loss_fn(x0) -> (B,)`` is the per-sample mean disagreement of a reward model's reading of ``x0`` in [-1, 1]
    with the condition; ``alphas_cumprod`` (T,) those of the trained process; the gradient step applies where
    ``tmin <= t / T < tmax``. ``rescaled``: the network's timesteps are ``t * 1000 / T`` (GLIDE's convention).
    ``scale`` 0 returns ``denoise`` unchanged.
    """
    if scale < 0:
        raise ConfigError(f"reward guidance needs scale >= 0, got {scale}")
    _check_window("reward guidance", tmin, tmax)
    if scale == 0:
        return denoise
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    steps = abar.shape[0]

    def guided(x_t, t):
        out = denoise(x_t, t).float()
        index = (t.float() * steps / 1000 if rescaled else t.float()).round().long().clamp(0, steps - 1)
        if not tmin <= float(index[0]) / steps < tmax:
            return out
        a = abar.to(x_t.device)[index].view(-1, 1, 1, 1)
        x_t = x_t.float()
        channels = x_t.shape[1]
        x0 = ((x_t - (1 - a).sqrt() * out[:, :channels]) / a.sqrt()).clamp(-1, 1)
        with torch.enable_grad():
            v = x0.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(v).sum(), v)
        x0 = (x0 - scale * grad * (grad[0, 0].numel())).clamp(-1, 1)  # a per-pixel step: grad of a mean times H W
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, out[:, channels:]], dim=1)

    return guided
