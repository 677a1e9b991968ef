"""Extra losses of the upsampler: perceptual and adversarial, both on the predicted ``x0_pred``.

Official recipe (PITI ``train_util.py``, ``vgg.py``, ``adv.py``): from step 100 on, the upsampler's
loss is ``mse + vb + 0.004 * perceptual + 0.01 * adversarial``, where ``x0_pred`` is recovered from
the predicted epsilon at the sampled timestep and clamped to [-1, 1]. The perceptual term is the
MSE of VGG19 conv2_2 features; the adversarial term is WGAN-GP with a PatchGAN discriminator that
takes one Adam step (lr 1e-5) per training step. The paper writes the standard GAN loss instead;
both forms are here.

The losses return per-sample values of shape ``(N,)``, unweighted; ``weight`` and ``start_step``
say how the training loop combines them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from piti.errors import ConfigError
from piti.weights import lpips_model, uses_random_weights, vgg19_features

__all__ = ["PerceptualLoss", "PatchDiscriminator", "AdversarialLoss"]

# ImageNet statistics expected by torchvision's VGG.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the batch one."""
    return x.flatten(1).mean(dim=1)


class PerceptualLoss(nn.Module):
    """Perceptual distance between ``x0_pred`` and the target, both in [-1, 1]; per sample.

    ``kind="vgg"`` (official): MSE of VGG19 ``features[:8]`` (conv2_2, before ReLU) on
    ImageNet-normalised [0, 1] images. ``kind="lpips"``: the LPIPS metric with a VGG16 or AlexNet
    backbone (``lpips_net``). The network is frozen; the target branch gets no gradient.
    Weights come from :mod:`piti.weights`; ``allow_random`` permits a random stand-in network.
    """

    def __init__(
        self,
        kind: str = "vgg",
        lpips_net: str = "vgg",
        weights_path: str | os.PathLike | None = None,
        allow_random: bool = False,
        weight: float = 0.004,
        start_step: int = 100,
    ):
        super().__init__()
        if kind not in ("vgg", "lpips"):
            raise ConfigError(f"perceptual loss kind must be 'vgg' or 'lpips', got {kind!r}")
        self.kind, self.weight, self.start_step = kind, weight, start_step
        if kind == "vgg":
            self.net = vgg19_features(8, weights_path, allow_random)
        else:
            self.net = lpips_model(lpips_net, weights_path, allow_random)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def random_weights(self) -> bool:
        """True when the network is a random stand-in (to be recorded in checkpoint metadata)."""
        return uses_random_weights(self.net)

    def active(self, step: int) -> bool:
        """Whether the term is used at training ``step`` (official: from step 100 on)."""
        return step >= self.start_step

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen feature extractor: LPIPS dropout stays off
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # [-1, 1] -> [0, 1]
        return self.net((x - self.mean) / self.std)

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``(N,)``; gradients flow into ``x0_pred`` only."""
        if x0_pred.shape != x0.shape or x0_pred.ndim != 4 or x0_pred.shape[1] != 3:
            raise ConfigError(
                f"perceptual loss expects two (N, 3, H, W) tensors of equal shape, "
                f"got {tuple(x0_pred.shape)} and {tuple(x0.shape)}"
            )
        if self.kind == "lpips":
            return self.net(x0_pred, x0.detach()).flatten()  # LPIPS takes [-1, 1] inputs
        with torch.no_grad():
            f_target = self._features(x0)
        return _per_sample_mean((self._features(x0_pred) - f_target) ** 2)


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (``NLayerDiscriminator``): a map of real/fake scores, one per patch.

    Kernel 4, padding 1; ``n_layers`` stride-2 convs (the first without normalisation), then one
    stride-1 conv and a stride-1 conv to one channel; widths ``ndf * min(2^n, 8)``; InstanceNorm
    without affine parameters and LeakyReLU(0.2). Official: ``ndf=64, n_layers=3``, which maps a
    256x256 image to a 30x30 score map. Parameter names match the official ``model.<i>`` keys.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ConfigError(f"PatchDiscriminator needs n_layers >= 1 and ndf >= 1, got {n_layers}, {ndf}")

        def block(c_in, c_out, stride, norm):
            layers = [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=True)]  # bias kept: InstanceNorm is not affine
            if norm:
                layers.append(nn.InstanceNorm2d(c_out, affine=False))
            return layers + [nn.LeakyReLU(0.2)]

        widths = [ndf * min(2**n, 8) for n in range(n_layers + 1)]
        layers = block(in_channels, widths[0], 2, norm=False)
        for n in range(1, n_layers):
            layers += block(widths[n - 1], widths[n], 2, norm=True)
        layers += block(widths[n_layers - 1], widths[n_layers], 1, norm=True)
        layers.append(nn.Conv2d(widths[n_layers], 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AdversarialLoss(nn.Module):
    """The adversarial term, owning the discriminator and its optimiser.

    ``kind="wgan-gp"`` (official code): ``L_D = mean D(fake) - mean D(real) + 10 (|grad D(x_hat)|_2 - 1)^2``
    with ``x_hat`` a random per-sample mix of fake and real; ``L_G = -D(fake)``.
    ``kind="non-saturating"`` (the paper's standard GAN): ``L_D = softplus(-D(real)) + softplus(D(fake))``,
    ``L_G = softplus(-D(fake))``. Per step: call :meth:`discriminator_step` (one optimiser step on
    detached fakes), then add ``weight * generator_loss(x0_pred)`` to the model's loss.
    For DDP, wrap ``self.discriminator`` after construction; the optimiser keeps its parameters.
    """

    KINDS = ("wgan-gp", "non-saturating")

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        kind: str = "wgan-gp",
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        gp_weight: float | None = None,
        weight: float = 0.01,
        start_step: int = 100,
    ):
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"adversarial loss kind must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.weight, self.start_step = kind, weight, start_step
        # The gradient penalty belongs to WGAN-GP (official weight 10); off by default otherwise.
        self.gp_weight = (10.0 if kind == "wgan-gp" else 0.0) if gp_weight is None else gp_weight
        self.discriminator = PatchDiscriminator() if discriminator is None else discriminator
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def active(self, step: int) -> bool:
        """Whether the term is used at training ``step`` (official: from step 100 on)."""
        return step >= self.start_step

    def gradient_penalty(self, d_hat: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """``mean_n (|dD(x_hat_n)/dx_hat_n|_2 - 1)^2`` (Gulrajani et al. 2017), differentiable."""
        (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Scalar discriminator loss; ``fake`` is detached. Instance norm is per sample, so the
        fake, real (and interpolated) batches share one forward pass."""
        fake = fake.detach()
        real = real.detach()
        n = real.shape[0]
        batch = [fake, real]
        if self.gp_weight > 0:
            eps = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
            x_hat = (fake * (1 - eps) + real * eps).requires_grad_(True)
            batch.append(x_hat)
        scores = self.discriminator(torch.cat(batch))
        d_fake, d_real = scores[:n], scores[n : 2 * n]
        if self.kind == "wgan-gp":
            loss = d_fake.mean() - d_real.mean()
        else:
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        if self.gp_weight > 0:
            loss = loss + self.gp_weight * self.gradient_penalty(scores[2 * n :], x_hat)
        return loss

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One optimiser step of the discriminator on ``real`` vs detached ``fake``; returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.discriminator_loss(real, fake)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Per-sample generator loss ``(N,)``; gradients reach ``fake`` but not the discriminator."""
        d = getattr(self.discriminator, "module", self.discriminator)  # bypass a DDP wrapper
        flags = [p.requires_grad for p in d.parameters()]
        d.requires_grad_(False)
        try:
            scores = d(fake)
        finally:
            for p, f in zip(d.parameters(), flags):
                p.requires_grad_(f)
        if self.kind == "wgan-gp":
            return _per_sample_mean(-scores)
        return _per_sample_mean(F.softplus(-scores))
