"""Classifier-free guidance: the formulas, the moments of normalized guidance, the doubled batch; condition
annealing (CADS); reward guidance."""

import pytest
import torch

from piti.diffusion import (
    anneal_condition,
    condition_annealer,
    create_diffusion,
    guided_denoiser,
    normalized_guidance,
    plain_guidance,
    repulsion,
    reward_guided,
    sample,
)
from piti.diffusion.guidance import anneal_weight
from piti.errors import ConditionError, ConfigError
from piti.settings import official_to_w


def eps_pair(seed=0, shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    eps_c = torch.randn(shape, generator=g) * 1.3 + 0.2
    eps_u = 0.5 * eps_c + torch.randn(shape, generator=g) * 0.7 - 0.4  # correlated, different moments
    return eps_c, eps_u


@pytest.mark.parametrize("stats,dims", [("sample", (1, 2, 3)), ("channel", (2, 3))])
def test_normalized_guidance_has_the_conditional_moments(stats, dims):
    eps_c, eps_u = eps_pair()
    out = normalized_guidance(eps_c, eps_u, 3.0, stats=stats)
    for reduce in (lambda x: x.mean(dims), lambda x: x.std(dims)):
        assert torch.allclose(reduce(out), reduce(eps_c), atol=1e-5)
    # ... while plain guidance changes them, and the normalized output keeps its direction.
    plain = plain_guidance(eps_c, eps_u, 3.0)
    assert not torch.allclose(plain.std(dims), eps_c.std(dims), atol=1e-2)
    standardize = lambda x: (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True)  # noqa: E731
    assert torch.allclose(standardize(out), standardize(plain), atol=1e-4)


def test_per_sample_and_per_channel_statistics_differ():
    eps_c, eps_u = eps_pair()
    per_sample = normalized_guidance(eps_c, eps_u, 2.0, stats="sample")
    per_channel = normalized_guidance(eps_c, eps_u, 2.0, stats="channel")
    assert not torch.allclose(per_sample, per_channel, atol=1e-3)


def test_plain_guidance_formula_and_the_official_scale():
    eps_c, eps_u = eps_pair()
    w = 2.5
    assert torch.allclose(plain_guidance(eps_c, eps_u, w), eps_c + w * (eps_c - eps_u))  # paper
    s = 1.3
    official = plain_guidance(eps_c, eps_u, official_to_w(s))
    assert torch.allclose(official, eps_u + s * (eps_c - eps_u), atol=1e-6)


@pytest.mark.parametrize("fn", [plain_guidance, normalized_guidance])
def test_zero_guidance_is_the_conditional_prediction(fn):
    eps_c, eps_u = eps_pair()
    assert torch.equal(fn(eps_c, eps_u, 0.0), eps_c)  # paper w = 0
    assert torch.equal(fn(eps_c, eps_u, official_to_w(1.0)), eps_c)  # official s = 1


def test_analytic_sigma_is_the_papers_formula():
    eps_c, eps_u = eps_pair()
    w, dims = 2.0, (1, 2, 3)
    out = normalized_guidance(eps_c, eps_u, w, sigma="analytic")
    eps_hat = eps_c + w * (eps_c - eps_u)
    sd = lambda x: x.std(dims, keepdim=True, unbiased=False)  # noqa: E731
    mu_hat = eps_c.mean(dims, keepdim=True) + w * (eps_c.mean(dims, keepdim=True) - eps_u.mean(dims, keepdim=True))
    sigma_hat = ((1 + w) ** 2 * sd(eps_c) ** 2 + w**2 * sd(eps_u) ** 2).sqrt()
    expected = sd(eps_c) / sigma_hat * (eps_hat - mu_hat) + eps_c.mean(dims, keepdim=True)
    assert torch.allclose(out, expected, atol=1e-5)
    # eps_c and eps_u are positively correlated here, so the analytic sigma_hat overestimates the spread of
    # eps_hat and the output is narrower than eps_c; the measured form matches eps_c's spread exactly.
    assert (sd(out) < 0.95 * sd(eps_c)).all()
    assert torch.allclose(sd(normalized_guidance(eps_c, eps_u, w)), sd(eps_c), atol=1e-5)


class ToyConditional:
    """model_fn(x, t, cond) with cond = dict(shift=(B, 3), gain=(B, 1)); records its calls."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append((x.shape[0], t.clone(), {k: v.clone() for k, v in cond.items()}))
        eps = x * cond["gain"].view(-1, 1, 1, 1) + cond["shift"].view(-1, 3, 1, 1) + 1e-3 * t.view(-1, 1, 1, 1)
        return torch.cat([eps, torch.tanh(cond["shift"]).view(-1, 3, 1, 1).expand_as(x)], dim=1)


def toy_conds(batch=2):
    cond = {"shift": torch.linspace(-1, 1, 3 * batch).view(batch, 3), "gain": torch.full((batch, 1), 0.5)}
    null = {"shift": torch.zeros(1, 3), "gain": torch.ones(1, 1)}  # one null, broadcast to the batch
    return cond, null


@pytest.mark.parametrize("mode", ["plain", "normalized"])
def test_guided_denoiser_uses_one_doubled_batch(mode):
    model = ToyConditional()
    cond, null = toy_conds()
    denoise = guided_denoiser(model, cond, null, 1.5, mode=mode)
    x_t, t = torch.randn(2, 3, 8, 8), torch.tensor([500.0, 500.0])
    out = denoise(x_t, t)
    assert len(model.batches) == 1
    batch, t_in, cond_in = model.batches[0]
    assert batch == 4 and torch.equal(t_in, torch.cat([t, t]))
    assert torch.equal(cond_in["shift"][:2], cond["shift"]) and torch.equal(cond_in["shift"][2:], torch.zeros(2, 3))
    # Epsilon is guided from the two halves; the variance channels are the conditional half's.
    null_batch = {k: v.expand(2, -1) for k, v in null.items()}
    out_c, out_u = ToyConditional()(x_t, t, cond), ToyConditional()(x_t, t, null_batch)
    guide = plain_guidance if mode == "plain" else normalized_guidance
    assert torch.allclose(out[:, :3], guide(out_c[:, :3], out_u[:, :3], 1.5), atol=1e-6)
    assert torch.equal(out[:, 3:], out_c[:, 3:])


def test_guided_denoiser_with_tensor_conditions_and_official_scale():
    model_fn = lambda x, t, c: x + c.view(-1, 1, 1, 1)  # noqa: E731  (epsilon only)
    x_t, t = torch.randn(3, 3, 4, 4), torch.zeros(3)
    cond, null = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    out = guided_denoiser(model_fn, cond, null, official_to_w(2.0), mode="plain")(x_t, t)
    assert torch.allclose(out, x_t + 2 * cond.view(-1, 1, 1, 1))  # eps_u + 2 (eps_c - eps_u)


@pytest.mark.parametrize("mode", ["plain", "normalized"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp"])
def test_zero_guidance_samples_equal_conditional_samples(mode, name):
    diffusion = create_diffusion("linear", 1000, "10")
    model = ToyConditional()
    cond, null = toy_conds()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conditional = sample(
        name, lambda x, t: model(x, t, cond), x_T, diffusion, generator=torch.Generator().manual_seed(1)
    )
    denoise = guided_denoiser(model, cond, null, 0.0, mode=mode)
    guided = sample(name, denoise, x_T, diffusion, generator=torch.Generator().manual_seed(1))
    assert torch.equal(guided, conditional)
    # And a real guidance scale changes the samples.
    guided = sample(
        name,
        guided_denoiser(model, cond, null, 2.0, mode=mode),
        x_T,
        diffusion,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.allclose(guided, conditional, atol=1e-3)


def test_bad_guidance_settings():
    model = ToyConditional()
    cond, null = toy_conds()
    with pytest.raises(ConfigError, match="plain, normalized"):
        guided_denoiser(model, cond, null, 1.0, mode="rescaled")
    with pytest.raises(ConfigError, match="measured, analytic"):
        guided_denoiser(model, cond, null, 1.0, sigma="paper")
    with pytest.raises(ConfigError, match="sample, channel"):
        guided_denoiser(model, cond, null, 1.0, stats="pixel")
    with pytest.raises(ConditionError, match="keys"):
        guided_denoiser(model, cond, {"shift": null["shift"]}, 1.0)
    with pytest.raises(ConditionError, match=r"\(3, 3\).*\(2, 3\)"):
        guided_denoiser(model, cond, {"shift": torch.zeros(3, 3), "gain": null["gain"]}, 1.0)


def test_guidance_interval_runs_the_conditional_batch_alone_outside_it():
    model = ToyConditional()
    cond, null = toy_conds()
    full = guided_denoiser(ToyConditional(), cond, null, 1.5)
    denoise = guided_denoiser(model, cond, null, 1.5, tmin=0.2, tmax=0.8, num_timesteps=1000)
    x_t = torch.randn(2, 3, 8, 8)
    for t, inside in ((100.0, False), (200.0, True), (500.0, True), (799.0, True), (800.0, False), (999.0, False)):
        ts = torch.full((2,), t)
        out = denoise(x_t, ts)
        assert model.batches[-1][0] == (4 if inside else 2)  # the null half only inside the interval
        expected = full(x_t, ts) if inside else ToyConditional()(x_t, ts, cond)
        assert torch.equal(out, expected)
    with pytest.raises(ConfigError, match="guidance interval"):
        guided_denoiser(model, cond, null, 1.5, tmin=0.8, tmax=0.8)


def test_anneal_weight_is_one_below_tmin_zero_above_tmax_and_linear_between():
    assert [anneal_weight(f, 0.5, 0.9) for f in (0.0, 0.5, 0.7, 0.9, 1.0)] == pytest.approx([1, 1, 0.5, 0, 0])


def test_annealed_condition_keeps_each_samples_moments_and_turns_to_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 16, 5, generator=g) * torch.tensor([0.5, 2.0, 4.0]).view(3, 1, 1) + 1.0
    assert anneal_condition(y, 1.0, 0.5) is y and anneal_condition(y, 0.3, 0.0) is y  # exact where it should be
    assert anneal_condition({"a": y}, 1.0, 0.5)["a"] is y
    dims = (1, 2)
    for gamma in (0.7, 0.0):
        out = anneal_condition(y, gamma, 1.0, torch.Generator().manual_seed(1))
        assert torch.allclose(out.mean(dims), y.mean(dims), atol=1e-5)
        assert torch.allclose(out.std(dims, unbiased=False), y.std(dims, unbiased=False), atol=1e-4)
    # gamma 0: noise only, whatever y held beyond its moments
    shuffled = y[:, torch.randperm(16, generator=g)]
    pure = [anneal_condition(c, 0.0, 1.0, torch.Generator().manual_seed(1)) for c in (y, shuffled)]
    assert torch.allclose(pure[0], pure[1], atol=1e-5)
    # between, the condition's share grows with gamma
    corr = lambda a: torch.corrcoef(torch.stack([a.flatten(), y.flatten()]))[0, 1]  # noqa: E731
    near, far = (anneal_condition(y, gm, 1.0, torch.Generator().manual_seed(1)) for gm in (0.9, 0.2))
    assert corr(near) > corr(far) > corr(pure[0])
    both = anneal_condition({"a": y, "b": y.half()}, 0.5, 1.0, torch.Generator().manual_seed(1))
    assert both["b"].dtype == torch.float16 and both["a"].shape == y.shape


def test_condition_annealer_acts_on_the_conditional_half_at_the_early_steps():
    assert condition_annealer(0.0, 0.5, 0.9, 1000) is None
    with pytest.raises(ConfigError, match="tmin < tmax"):
        condition_annealer(1.0, 0.9, 0.5, 1000)
    model = ToyConditional()
    cond, null = toy_conds()
    anneal = condition_annealer(1.0, 0.5, 0.9, 1000, torch.Generator().manual_seed(0))
    denoise = guided_denoiser(model, cond, null, 1.5, anneal=anneal)
    x_t = torch.randn(2, 3, 8, 8)
    for t, changed in ((400.0, False), (800.0, True), (950.0, True)):
        denoise(x_t, torch.full((2,), t))
        cond_in = model.batches[-1][2]
        assert torch.equal(cond_in["shift"][2:], torch.zeros(2, 3))  # the null half as it is
        assert torch.equal(cond_in["shift"][:2], cond["shift"]) != changed
    # without guidance the condition is annealed too
    unguided = guided_denoiser(model, cond, null, 0.0, anneal=anneal)
    unguided(x_t, torch.full((2,), 950.0))
    assert not torch.equal(model.batches[-1][2]["shift"], cond["shift"])


# ---------------------------------------------------------------------------------------------- reward guidance


def _x0(x_t, t, eps, abar):
    a = abar[t.long()].view(-1, 1, 1, 1)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def test_reward_guidance_moves_the_predicted_x0_down_the_rewards_gradient():
    abar = torch.linspace(0.99, 0.05, 1000)
    g = torch.Generator().manual_seed(0)
    x_t, target = torch.randn(2, 3, 8, 8, generator=g) * 0.5, torch.rand(2, 3, 8, 8, generator=g) - 0.5
    var = torch.randn(2, 3, 8, 8, generator=g)
    denoise = lambda x, t: torch.cat([0.3 * x, var], 1)  # noqa: E731 (a made-up epsilon and variance)
    loss = lambda x0: ((x0 - target) ** 2).sum(1).flatten(1).mean(1)  # noqa: E731 (per pixel, as a reward's)
    t = torch.full((2,), 400.0)
    plain = denoise(x_t, t)
    out = reward_guided(denoise, loss, abar, 0.05)(x_t, t)
    before, after = _x0(x_t, t, plain[:, :3], abar).clamp(-1, 1), _x0(x_t, t, out[:, :3], abar)
    # one step of 0.05 * H W * grad of the mean squared error: x0 moves 10% of the way to the target
    assert torch.allclose(after, before + 0.1 * (target - before), atol=1e-5)
    assert torch.equal(out[:, 3:], var)  # the variance channels are the denoiser's
    assert loss(after).mean() < loss(before).mean()
    outside = reward_guided(denoise, loss, abar, 0.05, tmin=0.5)(x_t, t)  # t / T = 0.4 is below the window
    assert torch.equal(outside, plain)
    assert reward_guided(denoise, loss, abar, 0.0) is denoise
    with pytest.raises(ConfigError, match="reward guidance"):
        reward_guided(denoise, loss, abar, 0.05, tmin=0.6, tmax=0.5)


def test_repulsion_pushes_the_samples_of_a_batch_apart():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 6, generator=g)
    loss = repulsion(f)
    assert loss.shape == (4,) and (loss > 0).all() and (loss < 1).all()  # each kernel term is in (0, 1], over 4
    near = torch.cat([f[:1], f[:1] + 0.01, f[2:]])  # two near copies repel each other most
    assert repulsion(near)[:2].min() > loss[:2].max()
    # one gradient step on the loss raises every pairwise distance's mean
    v = f.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(repulsion(v).sum(), v)
    assert torch.pdist(f - 0.5 * grad).mean() > torch.pdist(f).mean()
    one = torch.randn(1, 6, generator=g, requires_grad=True)
    (grad,) = torch.autograd.grad(repulsion(one).sum(), one)
    assert repulsion(one).item() == 0 and torch.equal(grad, torch.zeros_like(grad))  # a batch of one: no push


def test_repulsion_pushes_a_batch_away_from_fixed_partners():
    g = torch.Generator().manual_seed(1)
    f, partners = torch.randn(3, 6, generator=g), torch.randn(2, 6, generator=g)
    assert torch.equal(repulsion(f, None), repulsion(f))  # no partners: the batch's own loss
    coupled = repulsion(f, partners)
    assert coupled.shape == (3,) and (coupled > 0).all()
    # a sample next to a partner repels hardest; the partners are fixed (no gradient reaches them)
    near = torch.cat([partners[:1] + 0.01, f[1:]])
    assert repulsion(near, partners)[0] > repulsion(near, partners)[1:].max()
    v, p = f.clone().requires_grad_(True), partners.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(repulsion(v, p).sum(), v)
    assert torch.cdist(f - 0.5 * grad, partners).mean() > torch.cdist(f, partners).mean()
    # a batch of one is pushed once it has partners
    one = torch.randn(1, 6, generator=g, requires_grad=True)
    (grad,) = torch.autograd.grad(repulsion(one, partners).sum(), one)
    assert grad.abs().sum() > 0
