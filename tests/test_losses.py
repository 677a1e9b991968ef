"""Perceptual and adversarial losses of the upsampler."""

import logging

import pytest
import torch
from torch import nn

from piti.errors import ConfigError, MissingWeightsError
from piti.train.losses import AdversarialLoss, PatchDiscriminator, PerceptualLoss


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache and no PITI_WEIGHTS_DIR: pretrained weights are absent."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PITI_WEIGHTS_DIR", raising=False)


def _pair(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --- perceptual -------------------------------------------------------------------------------


def test_perceptual_loss_needs_weights_unless_random_is_allowed():
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        PerceptualLoss()


def test_vgg_perceptual_loss_with_random_weights(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="piti.weights"):
        loss = PerceptualLoss(allow_random=True)
    assert "RANDOM" in caplog.text and loss.random_weights
    assert loss.weight == 0.004
    x0_pred, x0 = _pair()
    x0_pred.requires_grad_(True)
    assert torch.all(loss(x0, x0) == 0)
    per_sample = loss(x0_pred, x0)
    assert per_sample.shape == (3,) and torch.all(per_sample > 0)
    per_sample.sum().backward()
    assert x0_pred.grad is not None and x0_pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.net.parameters())
    # per sample: each value depends on its own pair only
    torch.testing.assert_close(loss(x0_pred[1:2], x0[1:2]), per_sample[1:2].detach())


def test_vgg_perceptual_loss_grows_with_the_distortion():
    torch.manual_seed(0)
    loss = PerceptualLoss(allow_random=True)
    x0, noise = _pair(2)
    small, large = loss(x0 + 0.05 * noise, x0), loss(x0 + 0.5 * noise, x0)
    assert torch.all(large > small)


def test_lpips_perceptual_loss_with_random_backbone():
    torch.manual_seed(0)
    loss = PerceptualLoss(kind="lpips", lpips_net="alex", allow_random=True)
    assert loss.random_weights
    x0_pred, x0 = _pair(2, 64)
    x0_pred.requires_grad_(True)
    assert torch.allclose(loss(x0, x0), torch.zeros(2))
    d = loss(x0_pred, x0)
    assert d.shape == (2,) and torch.all(d > 0)
    d.sum().backward()
    assert x0_pred.grad.abs().sum() > 0


def test_perceptual_loss_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="kind"):
        PerceptualLoss(kind="ssim", allow_random=True)
    loss = PerceptualLoss(allow_random=True)
    with pytest.raises(ConfigError, match="equal shape"):
        loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))


def test_losses_start_at_the_official_step():
    assert not PerceptualLoss(allow_random=True).active(99)
    assert PerceptualLoss(allow_random=True).active(100)
    adv = AdversarialLoss(PatchDiscriminator(ndf=4, n_layers=1))
    assert not adv.active(99) and adv.active(100) and adv.weight == 0.01


# --- discriminator ----------------------------------------------------------------------------


def test_official_patch_discriminator_shape_and_size():
    d = PatchDiscriminator()
    with torch.no_grad():
        assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    # convs 3->64->128->256->512->1, kernel 4, all with bias
    expected = sum(16 * c_in * c_out + c_out for c_in, c_out in [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)])
    assert sum(p.numel() for p in d.parameters()) == expected
    assert "model.11.weight" in d.state_dict()  # the official parameter names
    assert not any(isinstance(m, nn.InstanceNorm2d) and m.affine for m in d.modules())


def test_toy_patch_discriminator_shape():
    d = PatchDiscriminator(ndf=8, n_layers=2)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 14, 14)  # 64 -> 32 -> 16 -> 15 -> 14


# --- adversarial losses -----------------------------------------------------------------------


class LinearCritic(nn.Module):
    """D(x) = sum_c w_c x_c per pixel: its input gradient is known in closed form."""

    def __init__(self, w):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(w).view(1, 3, 1, 1))

    def forward(self, x):
        return self.conv(x)


def test_wgan_gp_discriminator_loss_matches_its_formula():
    w = [0.02, -0.01, 0.03]
    adv = AdversarialLoss(LinearCritic(w), kind="wgan-gp")
    real, fake = _pair(4, 8)
    d = adv.discriminator
    # |grad_x sum D(x)| = |w| sqrt(H W) for every sample
    gp = (torch.tensor(w).norm() * 8 - 1) ** 2
    expected = d(fake).mean() - d(real).mean() + 10 * gp
    torch.testing.assert_close(adv.discriminator_loss(real, fake), expected)


def test_non_saturating_losses_match_their_formulas():
    adv = AdversarialLoss(LinearCritic([0.5, -0.2, 0.1]), kind="non-saturating")
    real, fake = _pair(4, 8)
    d = adv.discriminator
    expected = nn.functional.softplus(-d(real)).mean() + nn.functional.softplus(d(fake)).mean()
    torch.testing.assert_close(adv.discriminator_loss(real, fake), expected)
    g = adv.generator_loss(fake)
    torch.testing.assert_close(g, nn.functional.softplus(-d(fake)).flatten(1).mean(1))


@pytest.mark.parametrize("kind", AdversarialLoss.KINDS)
def test_discriminator_steps_learn_to_separate_real_from_fake(kind):
    torch.manual_seed(0)
    adv = AdversarialLoss(PatchDiscriminator(ndf=8, n_layers=2), kind=kind, lr=2e-3)
    # Instance norm hides global brightness, so real and fake differ in texture: smooth vs noise.
    ramp = torch.linspace(-0.5, 0.5, 16)
    real = (ramp[None, None, :, None] + ramp[None, None, None, :]).expand(4, 3, 16, 16).contiguous()
    fake = torch.rand(4, 3, 16, 16) * 2 - 1

    def margin():
        with torch.no_grad():
            return (adv.discriminator(real).mean() - adv.discriminator(fake).mean()).item()

    before = margin()
    losses = [adv.discriminator_step(real, fake) for _ in range(10)]
    assert margin() > before + 0.1
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", AdversarialLoss.KINDS)
def test_generator_loss_is_per_sample_and_pushes_fakes_towards_real(kind):
    torch.manual_seed(0)
    adv = AdversarialLoss(PatchDiscriminator(ndf=8, n_layers=2), kind=kind)
    fake = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    g = adv.generator_loss(fake)
    assert g.shape == (3,)
    if kind == "wgan-gp":
        torch.testing.assert_close(g, -adv.discriminator(fake).flatten(1).mean(1))
    g.sum().backward()
    assert fake.grad.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in adv.discriminator.parameters())
    # a small step against the gradient lowers the generator loss
    with torch.no_grad():
        stepped = fake - 1e-2 * fake.grad / fake.grad.norm()
        assert adv.generator_loss(stepped).sum() < g.sum()


def test_wgan_gp_penalty_is_differentiable_wrt_discriminator():
    torch.manual_seed(0)
    adv = AdversarialLoss(PatchDiscriminator(ndf=4, n_layers=1), kind="wgan-gp", gp_weight=10.0)
    real, fake = _pair(2, 16)
    adv.discriminator_loss(real, fake).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adv.discriminator.parameters())


def test_adversarial_loss_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="wgan-gp"):
        AdversarialLoss(kind="hinge")
