"""Gaussian diffusion maths against the official GLIDE / PITI code (tests/data/diffusion_reference.npz).

The reference was produced by running the official code (see the reference README): for each
schedule x respacing it stores q_sample, the network's timestep input, p_mean_variance for a
fixed 6-channel network output, the RESCALED_MSE loss terms and one DDIM / ancestral step.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from piti.diffusion import create_diffusion, get_betas, space_timesteps
from piti.diffusion.schedules import respace_betas
from piti.errors import ConfigError

REF = np.load(Path(__file__).parent / "data" / "diffusion_reference.npz")
CASES = [f"{s}_{r}" for s in ("squaredcos_cap_v2", "linear") for r in ("1000", "250", "fast27")]
RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL):
    """Max abs error within rtol of the largest expected magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = actual.detach().cpu().double().numpy() if torch.is_tensor(actual) else np.asarray(actual, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-12)
    assert np.abs(actual - expected).max() <= rtol * scale, np.abs(actual - expected).max()


def case_setup(case):
    """The diffusion of a reference case and its stored inputs; x_t is the q_sample at t."""
    schedule, respacing = case.rsplit("_", 1)
    diffusion = create_diffusion(schedule, 1000, "" if respacing == "1000" else respacing)
    x_start, noise = torch.from_numpy(REF["x_start"]), torch.from_numpy(REF["noise"])
    t = torch.from_numpy(REF[f"{case}_t"])
    return diffusion, x_start, noise, t, diffusion.q_sample(x_start, t, noise)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_betas_match_official(schedule):
    assert_close(get_betas(schedule, 1000), REF[f"betas_{schedule}"], rtol=1e-12)


@pytest.mark.parametrize("spec", [k[len("timesteps_") :] for k in REF.files if k.startswith("timesteps_")])
def test_respaced_timesteps_match_official(spec):
    assert sorted(space_timesteps(1000, spec)) == REF[f"timesteps_{spec}"].tolist()


def test_fast27_is_sections_with_997_for_999():
    steps = space_timesteps(1000, "fast27")
    assert len(steps) == 27 and 997 in steps and 999 not in steps
    assert steps - {997} == space_timesteps(1000, "10,10,3,2,2") - {999}


def test_respacing_keeps_alpha_bar_at_kept_steps():
    betas = get_betas("linear", 1000)
    new_betas, timestep_map = respace_betas(betas, space_timesteps(1000, "50"))
    full = np.cumprod(1 - betas)
    np.testing.assert_allclose(np.cumprod(1 - new_betas), full[timestep_map], rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_q_sample_and_network_timestep(case):
    diffusion, _, _, t, x_t = case_setup(case)
    assert_close(x_t, REF[f"{case}_q_sample"])
    t_model = diffusion.model_timesteps(t)
    assert t_model.dtype == torch.float32
    assert_close(t_model, REF[f"{case}_model_t_input"])


@pytest.mark.parametrize("case", CASES)
def test_p_mean_variance(case):
    diffusion, _, _, t, x_t = case_setup(case)
    out = diffusion.p_mean_variance(torch.from_numpy(REF["model_out"]), x_t, t, clip_denoised=True)
    for ours, theirs in [
        ("mean", "mean"),
        ("variance", "variance"),
        ("log_variance", "log_variance"),
        ("x0_pred", "pred_xstart"),
    ]:
        assert_close(out[ours], REF[f"{case}_pmv_{theirs}"])


@pytest.mark.parametrize("case", CASES)
def test_training_loss_terms(case):
    diffusion, x_start, noise, t, x_t = case_setup(case)
    terms = diffusion.training_losses(torch.from_numpy(REF["model_out"]), x_start, x_t, t, noise)
    for name in ("mse", "vb", "loss"):
        assert terms[name].shape == (2,)
        assert_close(terms[name], REF[f"{case}_loss_{name}"])


@pytest.mark.parametrize("case", CASES)
def test_one_step_ddim_and_ancestral(case):
    diffusion, _, _, _, x_t = case_setup(case)
    t_last, model_out = torch.from_numpy(REF[f"{case}_t_last"]), torch.from_numpy(REF["model_out"])
    assert_close(diffusion.ddim_sample(model_out, x_t, t_last, eta=0.0)["sample"], REF[f"{case}_ddim_sample_eta0"])
    torch.manual_seed(0)
    noise = torch.randn_like(x_t)  # the reference's noise
    assert_close(diffusion.p_sample(model_out, x_t, t_last, noise)["sample"], REF[f"{case}_p_sample_torchseed0"])


def test_timesteps_without_rescaling_and_other_step_counts():
    diffusion = create_diffusion("linear", 500, "50", rescale_timesteps=False)
    t = torch.tensor([0, 10, 49])
    expected = diffusion.timestep_map[t]
    assert diffusion.model_timesteps(t).dtype == torch.long
    assert torch.equal(diffusion.model_timesteps(t), expected)
    rescaled = create_diffusion("linear", 500, "50").model_timesteps(t)
    assert torch.allclose(rescaled, expected.float() * 2.0)  # 1000 / 500


def test_eps_x0_round_trip():
    diffusion = create_diffusion("squaredcos_cap_v2", 1000, "")
    x0, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([1, 400, 990])
    x_t = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-3)
    assert torch.allclose(diffusion.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-3)


@pytest.mark.parametrize("kind", ["large", "small"])
def test_fixed_variance_for_epsilon_only_outputs(kind):
    diffusion = create_diffusion("linear", 1000, "", fixed_variance=kind)
    x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0, 500])
    out = diffusion.p_mean_variance(eps, x_t, t)
    betas = get_betas("linear", 1000)
    posterior = betas[1:] * (1 - np.cumprod(1 - betas)[:-1]) / (1 - np.cumprod(1 - betas)[1:])  # t >= 1
    # At t = 0 the posterior variance is 0: "large" uses beta~_1 there, and both clip the log to log beta~_1.
    expected = [posterior[0], betas[500]] if kind == "large" else [0.0, posterior[499]]
    assert_close(out["variance"][:, 0, 0, 0], expected)
    assert_close(out["log_variance"][0, 0, 0, 0], np.log(posterior[0]))
    terms = diffusion.training_losses(eps, torch.zeros_like(x_t), x_t, t, eps)
    assert torch.equal(terms["vb"], torch.zeros(2)) and torch.equal(terms["loss"], terms["mse"])


def test_losses_gradients_and_x0_pred():
    diffusion = create_diffusion("squaredcos_cap_v2", 1000, "")
    x_start, noise = torch.from_numpy(REF["x_start"]), torch.from_numpy(REF["noise"])
    t = torch.tensor([3, 700])
    x_t = diffusion.q_sample(x_start, t, noise)
    model_out = torch.from_numpy(REF["model_out"]).clone().requires_grad_(True)
    terms = diffusion.training_losses(model_out, x_start, x_t, t, noise)
    expected_x0 = diffusion.predict_x0_from_eps(x_t, t, model_out[:, :3]).clamp(-1, 1)
    assert torch.allclose(terms["x0_pred"], expected_x0)
    # The VB term trains only the variance channels: the mean is stop-gradient.
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), model_out, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0 and grad_vb[:, 3:].abs().max() > 0
    # x0_pred is differentiable w.r.t. epsilon (for the perceptual / adversarial losses).
    (grad_x0,) = torch.autograd.grad(terms["x0_pred"].sum(), model_out)
    assert grad_x0[:, :3].abs().max() > 0 and grad_x0[:, 3:].abs().max() == 0


@pytest.mark.parametrize("spec", ["abc", "10,x", "ddimX", "ddim7777", "2000", "0"])
def test_bad_respacing_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="respacing"):
        space_timesteps(1000, spec)


def test_bad_schedule_and_shapes():
    with pytest.raises(ConfigError, match="squaredcos_cap_v2"):
        create_diffusion("cosine-ish")
    diffusion = create_diffusion("linear", 100, "")
    x_t = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        diffusion.p_mean_variance(torch.zeros(2, 5, 4, 4), x_t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="100-step"):
        diffusion.p_mean_variance(torch.zeros(2, 6, 4, 4), x_t, torch.tensor([1, 100]))


def test_one_step_process_has_finite_variances():
    # a single respaced step (e.g. a one-step preview) must not index beyond the table
    d = create_diffusion("linear", timestep_respacing="1")
    x = torch.randn(2, 3, 4, 4)
    out = d.p_mean_variance(torch.randn(2, 6, 4, 4), x, torch.zeros(2, dtype=torch.long))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_truncated_process_keeps_alpha_bar_and_original_steps():
    full = create_diffusion("linear", 1000, "")
    short = create_diffusion("linear", 1000, "10", last_step=100)
    assert short.timestep_map[0] == 0 and short.timestep_map[-1] == 100 and len(short.timestep_map) == 10
    for i, t in enumerate(short.timestep_map.tolist()):
        assert short.alphas_cumprod[i] == pytest.approx(float(full.alphas_cumprod[t]), rel=1e-9)
    with pytest.raises(ConfigError, match="last_step"):
        create_diffusion("linear", 1000, "10", last_step=1000)


def test_skip_terminal_drops_the_step_at_T_only():
    full = create_diffusion(timestep_respacing="25")
    skipped = create_diffusion(timestep_respacing="25", skip_terminal=True)
    assert full.timestep_map[-1] == 999 and skipped.timestep_map.tolist() == full.timestep_map[:-1].tolist()
    assert np.allclose(skipped.alphas_cumprod, full.alphas_cumprod[:-1])
    # where T - 1 is not kept, the process is truncated, or only t = 0 would be left, nothing changes
    cases = (
        dict(timestep_respacing="ddim50"),
        dict(timestep_respacing="10", last_step=100),
        dict(timestep_respacing="2"),
    )
    for kwargs in cases:
        assert create_diffusion(**kwargs, skip_terminal=True).timestep_map.tolist() == (
            create_diffusion(**kwargs).timestep_map.tolist()
        )


def test_the_step_at_T_turns_a_small_epsilon_error_into_saturated_x0():
    # why skip_terminal exists: at t = T - 1 (alpha_bar 2.4e-9) an epsilon off by 1e-3 implies x0 - 20, clamped
    d = create_diffusion(timestep_respacing="25")
    x0, eps = torch.rand(1, 3, 8, 8) - 0.5, torch.randn(1, 3, 8, 8)

    def x0_pred(index):  # respaced step 24 is t = 999, 23 is t = 957
        t = torch.tensor([index])
        return d.p_mean_variance(torch.cat([eps + 1e-3, torch.zeros_like(eps)], 1), d.q_sample(x0, t, eps), t)

    assert (x0_pred(24)["x0_pred"] == -1).all()
    assert (x0_pred(23)["x0_pred"] - x0).abs().max() < 0.02
