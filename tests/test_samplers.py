"""Samplers: the official single steps, and whole runs on the exact denoiser of Gaussian data.

For data x0 ~ N(M, S^2) (independent pixels) the posterior mean E[x0 | x_t] is linear in x_t,
so the exact epsilon predictor is known in closed form; a correct sampler must produce
samples with mean M and standard deviation S, and the deterministic ones must follow the
closed-form probability-flow ODE.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from piti.diffusion import create_diffusion, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m
from piti.diffusion.samplers import antithetic_draws, ddim_step, ddpm_step
from piti.errors import ConfigError

REF = np.load(Path(__file__).parent / "data" / "diffusion_reference.npz")
CASES = [f"{s}_{r}" for s in ("squaredcos_cap_v2", "linear") for r in ("1000", "250", "fast27")]
M, S = 0.3, 0.2  # data mean and standard deviation


def gaussian_denoiser(schedule, channels_out=1, calls=None):
    """Exact epsilon for N(M, S^2) data under the 1000-step `schedule`, as a function of t_model.

    It reads alpha_bar at the *original* step it receives, so it is only exact if the sampler
    passes the original timestep values of a respaced process. With channels_out = 2 it also
    returns a zero learned-variance channel (the geometric mean of beta~ and beta).
    """
    alpha_bar_full = create_diffusion(schedule, 1000, "").alphas_cumprod

    def denoise(x_t, t_model):
        if calls is not None:
            calls.append(t_model.clone())
        alpha_bar = alpha_bar_full[t_model.round().long()].to(x_t.dtype).view(-1, 1, 1, 1)
        a, b2 = alpha_bar.sqrt(), 1 - alpha_bar
        x0 = M + a * S**2 / (alpha_bar * S**2 + b2) * (x_t - a * M)  # E[x0 | x_t]
        eps = (x_t - a * x0) / b2.sqrt()
        return eps if channels_out == 1 else torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return denoise


def exact_ode_sample(schedule, x_T):
    """Where the probability-flow ODE takes x_T (t = 999) at t = 0, then E[x0 | x_0 step]."""
    alpha_bar = create_diffusion(schedule, 1000, "").alphas_cumprod
    ab_T, ab_0 = float(alpha_bar[999]), float(alpha_bar[0])
    std_T, std_0 = math.sqrt(ab_T * S**2 + 1 - ab_T), math.sqrt(ab_0 * S**2 + 1 - ab_0)
    return M + math.sqrt(ab_0) * S**2 / (std_0 * std_T) * (x_T - math.sqrt(ab_T) * M)


def noise(n=2048, seed=0):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES)
def test_steps_reproduce_official_steps(case):
    """The samplers' own steps: DDIM eta=0, and ancestral with randn_like after a global seed."""
    schedule, respacing = case.rsplit("_", 1)
    diffusion = create_diffusion(schedule, 1000, "" if respacing == "1000" else respacing)
    x_start, noise_ = torch.from_numpy(REF["x_start"]), torch.from_numpy(REF["noise"])
    x_t = diffusion.q_sample(x_start, torch.from_numpy(REF[f"{case}_t"]), noise_)
    t_last, model_out = torch.from_numpy(REF[f"{case}_t_last"]), torch.from_numpy(REF["model_out"])
    x_prev, _ = ddim_step(diffusion, model_out, x_t, t_last, eta=0.0)
    np.testing.assert_allclose(x_prev.numpy(), REF[f"{case}_ddim_sample_eta0"], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    x_prev, _ = ddpm_step(diffusion, model_out, x_t, t_last, generator=None)
    np.testing.assert_allclose(x_prev.numpy(), REF[f"{case}_p_sample_torchseed0"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize(
    "name,respacing,std_tol", [("ddpm", "250", 0.03), ("ddim", "100", 0.08), ("dpmpp", "100", 0.02)]
)
def test_samplers_recover_gaussian_data(schedule, name, respacing, std_tol):
    diffusion = create_diffusion(schedule, 1000, respacing)
    out = sample(name, gaussian_denoiser(schedule), noise(), diffusion, generator=torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - M) < 0.01
    assert abs(out.std().item() / S - 1) < std_tol


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_deterministic_samplers_follow_the_ode_and_dpmpp_is_more_accurate(schedule):
    x_T = noise(512)
    exact = exact_ode_sample(schedule, x_T)
    diffusion = create_diffusion(schedule, 1000, "100")
    err = {
        name: (sampler(gaussian_denoiser(schedule), x_T, diffusion, clip_denoised=False) - exact).abs().max().item()
        for name, sampler in [("ddim", sample_ddim), ("dpmpp", sample_dpmpp_2m)]
    }
    fine = sample_ddim(gaussian_denoiser(schedule), x_T, create_diffusion(schedule, 1000, ""), clip_denoised=False)
    assert (fine - exact).abs().max().item() < 0.02  # DDIM converges to the ODE solution
    assert err["ddim"] < 0.1, err
    assert err["dpmpp"] < 0.2 * err["ddim"], err  # second order beats first order at 100 steps


def test_dpmpp_equals_ddim_on_three_steps():
    # With 3 steps DPM-Solver++(2M) takes only first-order steps, which are DDIM eta=0 steps.
    diffusion = create_diffusion("linear", 1000, "3")
    denoise = gaussian_denoiser("linear")
    x_T = noise(64)
    assert torch.allclose(sample_dpmpp_2m(denoise, x_T, diffusion), sample_ddim(denoise, x_T, diffusion), atol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp"])
def test_denoiser_receives_original_timesteps_and_learned_variance_works(name):
    diffusion = create_diffusion("squaredcos_cap_v2", 1000, "fast27")
    calls = []
    out = sample(name, gaussian_denoiser("squaredcos_cap_v2", channels_out=2, calls=calls), noise(256), diffusion)
    expected = diffusion.timestep_map.flip(0).float()  # 997, 800, 799, ..., 0
    assert torch.equal(torch.stack([c[0] for c in calls]), expected)
    assert all(c.shape == (256,) for c in calls)
    assert abs(out.mean().item() - M) < 0.02 and torch.isfinite(out).all()


@pytest.mark.parametrize("name,kwargs", [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_stochastic_samplers_are_reproducible_and_leave_global_rng_alone(name, kwargs):
    diffusion = create_diffusion("linear", 1000, "20")
    denoise = gaussian_denoiser("linear")
    state = torch.random.get_rng_state()
    a = sample(name, denoise, noise(8), diffusion, generator=torch.Generator().manual_seed(5), **kwargs)
    b = sample(name, denoise, noise(8), diffusion, generator=torch.Generator().manual_seed(5), **kwargs)
    c = sample(name, denoise, noise(8), diffusion, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # generator=None draws torch.randn_like from the global RNG: reproducible under a global seed.
    torch.manual_seed(3)
    d = sample(name, denoise, noise(8), diffusion, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(d, sample(name, denoise, noise(8), diffusion, **kwargs))


def test_callback_progress_and_dispatch(capsys):
    diffusion = create_diffusion("linear", 1000, "5")
    denoise = gaussian_denoiser("linear")
    seen = []
    out = sample("ddim", denoise, noise(4), diffusion, progress=True, callback=seen.append)
    assert [s["i"] for s in seen] == [0, 1, 2, 3, 4]
    assert [int(s["t"][0]) for s in seen] == [4, 3, 2, 1, 0]
    assert torch.equal(seen[-1]["x"], out) and seen[-1]["x0_pred"].shape == out.shape
    assert "ddim" in capsys.readouterr().err  # the tqdm bar
    assert torch.equal(out, sample_ddim(denoise, noise(4), diffusion))
    with pytest.raises(ConfigError, match="ddpm, ddim, dpmpp"):
        sample("euler", denoise, noise(4), diffusion)


@pytest.mark.parametrize("name,kwargs", [("ddpm", {"noise_scale": 0.8}), ("ddim", {"eta": 0.5}), ("dpmpp", {})])
def test_a_run_split_in_two_spans_is_the_whole_run(name, kwargs):
    diffusion = create_diffusion("linear", 1000, "10")
    denoise = gaussian_denoiser("linear")
    generator, seen = torch.Generator().manual_seed(5), []
    upper = sample(name, denoise, noise(8), diffusion, generator=generator, span=(9, 4), callback=seen.append, **kwargs)
    assert [int(s["t"][0]) for s in seen] == [9, 8, 7, 6, 5, 4] and torch.equal(seen[-1]["x"], upper)
    split = sample(name, denoise, upper, diffusion, generator=generator, span=(3, 0), **kwargs)
    whole = sample(name, denoise, noise(8), diffusion, generator=torch.Generator().manual_seed(5), **kwargs)
    if name == "dpmpp":  # its history restarts with a first-order step: close, not equal
        assert torch.allclose(split, whole, atol=0.05) and not torch.equal(split, whole)
    else:
        assert torch.equal(split, whole)
    for bad in ((10, 0), (3, 4), (2, -1)):
        with pytest.raises(ConfigError, match="span must be"):
            sample(name, denoise, noise(2), diffusion, span=bad)


def test_ddpm_clips_x0():
    diffusion = create_diffusion("linear", 1000, "5")
    seen = []
    sample_ddpm(lambda x, t: -10 * torch.ones_like(x), noise(4), diffusion, callback=seen.append)
    assert all(s["x0_pred"].abs().max() <= 1 for s in seen)


def test_ddpm_noise_scale_narrows_the_samples_and_zero_is_deterministic():
    diffusion = create_diffusion("linear", 1000, "250")
    denoise, x_T = gaussian_denoiser("linear"), noise()
    out = {
        scale: sample_ddpm(denoise, x_T, diffusion, generator=torch.Generator().manual_seed(1), noise_scale=scale)
        for scale in (1.0, 0.5, 0.0)
    }
    assert torch.equal(out[1.0], sample_ddpm(denoise, x_T, diffusion, generator=torch.Generator().manual_seed(1)))
    assert abs(out[1.0].std().item() / S - 1) < 0.05  # the official sampler: the data's spread
    assert out[0.0].std() < out[0.5].std() < 0.9 * out[1.0].std()  # less noise, narrower samples
    assert all(abs(o.mean().item() - M) < 0.01 for o in out.values())  # around the same mean
    # no noise is drawn into the result at 0: another generator gives the same samples
    assert torch.equal(
        out[0.0], sample_ddpm(denoise, x_T, diffusion, generator=torch.Generator().manual_seed(2), noise_scale=0.0)
    )
    for bad in (-0.1, 2.0):
        with pytest.raises(ConfigError, match="noise_scale"):
            sample_ddpm(denoise, x_T, diffusion, noise_scale=bad)


def test_ddpm_noise_scale_tmax_keeps_the_early_steps_noise():
    diffusion = create_diffusion("linear", 1000, "50")
    denoise, x_T = gaussian_denoiser("linear"), noise()

    def run(**kw):
        return sample_ddpm(denoise, x_T, diffusion, generator=torch.Generator().manual_seed(1), **kw)

    assert torch.equal(run(noise_scale=0.5, noise_scale_tmax=1.0), run(noise_scale=0.5))  # 1: every step
    assert torch.equal(run(noise_scale=0.5, noise_scale_tmax=0.0), run())  # 0: no step, the official sampler
    half = run(noise_scale=0.0, noise_scale_tmax=0.5)
    assert run(noise_scale=0.0).std() < half.std() < run().std()  # between: the early steps keep their noise
    with pytest.raises(ConfigError, match="noise_scale_tmax"):
        run(noise_scale_tmax=1.5)


def test_antithetic_draws_keep_each_rows_distribution_and_anticorrelate_the_rows():
    z = torch.randn(4, 200_000, generator=torch.Generator().manual_seed(0))
    a = antithetic_draws(z)
    assert torch.allclose(a.sum(0), torch.zeros(200_000), atol=1e-4)  # centred across the call
    assert ((a.std(1) - 1).abs() < 0.01).all() and (a.mean(1).abs() < 0.01).all()  # each row still N(0, 1)
    corr = torch.corrcoef(a)[~torch.eye(4, dtype=torch.bool)]
    assert ((corr + 1 / 3).abs() < 0.01).all()  # any two: -1 / (K - 1)
    pair = antithetic_draws(z[:2])
    assert torch.allclose(pair[0], -pair[1], atol=1e-6)  # two: z and -z
    assert torch.equal(antithetic_draws(z[:1]), z[:1])  # one: as drawn


@pytest.mark.parametrize("name,kwargs", [("ddpm", {}), ("ddpm", {"noise_scale": 0.5}), ("ddim", {"eta": 1.0})])
def test_antithetic_noise_fixes_the_mean_sample_of_an_affine_denoiser(name, kwargs):
    # the exact denoiser of Gaussian data is affine in x_t: without clipping a sample is affine in its draws, so draws
    # that sum to zero across the batch leave the batch's mean sample the same whatever the generator draws
    diffusion, denoise = create_diffusion("linear", 1000, "20"), gaussian_denoiser("linear")
    x_T = antithetic_draws(noise(4))

    def run(seed, **extra):
        gen = torch.Generator().manual_seed(seed)
        return sample(name, denoise, x_T, diffusion, clip_denoised=False, generator=gen, **kwargs, **extra)

    coupled = run(1, antithetic_noise=True)
    assert torch.allclose(coupled.mean(0), run(2, antithetic_noise=True).mean(0), atol=1e-5)
    assert not torch.allclose(run(1).mean(0), run(2).mean(0), atol=1e-3)  # independent draws: it moves
    assert not torch.allclose(coupled[0], coupled[1], atol=1e-3)  # the samples themselves still differ
    if name == "ddpm":  # that mean is the noiseless sample from x_T = 0
        centre = sample_ddpm(denoise, torch.zeros_like(x_T[:1]), diffusion, clip_denoised=False, noise_scale=0.0)
        assert torch.allclose(coupled.mean(0), centre[0], atol=1e-5)
    wide = sample(name, denoise, antithetic_draws(noise()), diffusion, antithetic_noise=True, **kwargs)
    assert abs(wide.mean().item() - M) < 0.01 and wide.std() > 0.5 * S  # a large batch keeps the data's spread
