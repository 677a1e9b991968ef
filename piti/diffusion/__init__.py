"""Gaussian diffusion maths, samplers and classifier-free guidance.

The network never appears here: functions take its output. ``create_diffusion`` builds a
(possibly respaced) process; the samplers walk it with any ``denoise(x_t, t_model)``
function, and ``guided_denoiser`` wraps a conditional network into such a function.
"""

from piti.diffusion.gaussian import GaussianDiffusion, create_diffusion
from piti.diffusion.guidance import (
    anneal_condition,
    condition_annealer,
    guided_denoiser,
    normalized_guidance,
    plain_guidance,
    repulsion,
    reward_guided,
)
from piti.diffusion.samplers import (
    SAMPLERS,
    antithetic_draws,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sampler_options,
)
from piti.diffusion.schedules import get_betas, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "create_diffusion",
    "get_betas",
    "space_timesteps",
    "SAMPLERS",
    "antithetic_draws",
    "sample",
    "sampler_options",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "guided_denoiser",
    "anneal_condition",
    "condition_annealer",
    "normalized_guidance",
    "plain_guidance",
    "repulsion",
    "reward_guided",
]
