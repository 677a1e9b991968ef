# ruff: noqa: E402, E703  (notebook source: imports where they are used, ";" hides a figure's repr)
# %% [markdown]
# # 03 · The upsampler and its degradations
#
# The base model's 64-px samples are not clean photos, so PITI finetunes GLIDE's upsampler on degraded
# low-resolution inputs (following BSRGAN, Zhang et al. 2021; the paper's Table 3 (b) ablates each piece):
# the 64-px input is made from the real image by a random chain of blurs, resizing, noise, JPEG
# compression and L0 smoothing. The upsampler is also trained with perceptual and adversarial losses on its x0
# predictions. This notebook shows each piece (`piti.data.degrade`, `piti.train.losses`) and the toy
# upsampler (64 to 128 px) against bicubic interpolation.

# %%
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from piti import PITIPipeline, plotting
from piti.data import degrade as D
from piti.data.datasets import SynthDataset
from piti.data.synth import generate_scene
from piti.diffusion import create_diffusion
from piti.train.losses import AdversarialLoss, PatchDiscriminator, PerceptualLoss

plotting.setup()
FAST = plotting.fast_mode()
torch.manual_seed(0)
image = generate_scene((7, 2), 256).image
x = D.to_float(image)
print(image.shape)

# %% [markdown]
# **Each degradation on one image** (256 px, the official scale factor 4). The parameters are drawn as
# the official `degradation_bsrgan_variant` draws them (`DegradationConfig` holds the ranges); the noise
# and JPEG panels also show a stronger setting than the official one, whose effect is hard to see.

# %%
rng = np.random.default_rng(0)
sf = 4
panels = {
    "original": x,
    "isotropic blur": D.isotropic_blur(x, rng, sf),
    "anisotropic blur": D.anisotropic_blur(x, rng, sf),
    "random downsample": D.random_downsample(x, rng, sf),
    "final resize (1/4, cubic)": D.resize(x, 64, 64, "cubic"),
    "Gaussian noise (official)": D.random_gaussian_noise(x, rng),
    "Gaussian noise, sigma 0.1": D.color_gaussian_noise(x, rng, 0.1),
    "JPEG q=80 (official 80-95)": D.jpeg_compress(x, 80),
    "JPEG q=10": D.jpeg_compress(x, 10),
    "L0 smoothing, lambda 4e-3": D.l0_smooth(x, 4e-3),
}
# a close-up of every panel at the original scale (smaller outputs enlarged by nearest neighbours)
pictures = [D.resize(p, 256, 256, "nearest")[96:224, 64:192] for p in panels.values()]
plotting.image_grid([pictures[:5], pictures[5:]], [list(panels)[:5], list(panels)[5:]], size=2.0);

# %% [markdown]
# **The random pipeline**, sampled many times: the order of the operations is shuffled and each one is
# drawn with its own probability (blur 0.8, JPEG 0.5, L0 0.2, a first x2 step 0.25), so the 64-px inputs
# range from nearly clean to strongly blurred or blocky. The first tile is a plain area downsample.

# %%
rng = np.random.default_rng(1)
n = plotting.pick(11, 5)
lows = [D.resize(x, 64, 64, "area")] + [D.degrade(image, 4, rng=rng) for _ in range(n)]
plotting.image_grid([lows[:6], lows[6:]] if len(lows) > 6 else lows, ["area"] + [f"draw {i + 1}" for i in range(5)],
                    size=1.5);

# %% [markdown]
# **x0 predictions and the extra losses.** In training, the upsampler's epsilon prediction at the sampled
# step t is turned into an estimate of the clean image, `x0_pred` (Ho et al. 2020, Eq. 4 solved for x0), and from
# step 100 on the loss adds 0.004 × a perceptual distance (VGG19 conv2_2 features) and 0.01 × an
# adversarial term (a PatchGAN discriminator) on it. Here: the shipped toy mask upsampler's x0 predictions
# for one held-out image noised to several t, with the pixel error and the perceptual distance of each.

# %%
pipe = PITIPipeline.from_checkpoints(task="mask", precision="fp32")
up = pipe.upsampler_model
item = SynthDataset(length=1, task="mask", seed=7, image_size=128, cond_size=128)[0]
x0 = item["image"][None]
low = F.interpolate(x0, size=(64, 64), mode="area")
diffusion = create_diffusion(up.config.noise_schedule, up.config.diffusion_steps)
ts = torch.tensor([50, 200, 400, 600, 800, 950])
noise = torch.randn((len(ts), *x0.shape[1:]), generator=torch.Generator().manual_seed(0))
x_t = diffusion.q_sample(x0.expand(len(ts), -1, -1, -1), ts, noise)
with torch.no_grad():
    out = up(x_t, diffusion.model_timesteps(ts), ref=item["cond"][None].expand(len(ts), -1, -1, -1),
             low_res=low.expand(len(ts), -1, -1, -1))
x0_pred = diffusion.training_losses(out, x0.expand(len(ts), -1, -1, -1), x_t, ts, noise)["x0_pred"]
plotting.image_grid([[x0[0]] + list(x_t), [low[0]] + list(x0_pred)],
                    [["real 128 px"] + [f"x_t, t={t}" for t in ts.tolist()], ["low-res 64 px"] + [None] * len(ts)],
                    row_labels=["input", "x0_pred"], size=1.3);

# %% [markdown]
# The perceptual term needs ImageNet VGG19 weights (`vgg19-dcbb9e9d.pth`; `piti info` lists where they
# are looked for). Without them a randomly initialised VGG19 stands in, and the table says so: its
# distances still grow with the error, but they are not the official loss's values.

# %%
perceptual = PerceptualLoss("vgg", allow_random=True)
with torch.no_grad():
    mse = ((x0_pred - x0) ** 2).flatten(1).mean(1)
    dist = perceptual(x0_pred, x0.expand_as(x0_pred))
vgg = "random VGG19 stand-in" if perceptual.random_weights else "VGG19 (ImageNet)"
rows = [[t, float(m), float(p)] for t, m, p in zip(ts.tolist(), mse, dist)]
display(Markdown(plotting.markdown_table(rows, ["t", "MSE(x0_pred, x0)", f"perceptual ({vgg})"])))

# %% [markdown]
# **The adversarial term.** A small PatchGAN discriminator (the official one has 64 base channels; the toy
# recipe uses 32) scores each patch as real or generated. A few Adam steps of its WGAN-GP loss (the
# official code's form) on real images against x0 predictions from t = 600. The loss first falls through
# its gradient-penalty part (the critic's gradient norm is pulled to 1); telling the two apart takes many
# more steps than this, which the two generator terms below show (the upsampler's loss adds the one on
# x0_pred: lower means "more real" to the critic).

# %%
adversarial = AdversarialLoss(PatchDiscriminator(3, ndf=32, n_layers=3), "wgan-gp", lr=1e-4)
reals = torch.stack([SynthDataset(length=8, task="mask", seed=7, image_size=128, cond_size=128)[i]["image"]
                     for i in range(4)])
fake = x0_pred[3:4].expand(4, -1, -1, -1).detach()
torch.manual_seed(0)
d_losses = [adversarial.discriminator_step(reals, fake) for _ in range(plotting.pick(25, 5))]
plotting.plot_curves({"discriminator (WGAN-GP)": (np.arange(1, len(d_losses) + 1), d_losses)},
                     xlabel="discriminator step", ylabel="loss", logy=True)
with torch.no_grad():
    print("generator term on x0_pred at t = 600:", float(adversarial.generator_loss(fake[:1]).mean()),
          "| on a real image:", float(adversarial.generator_loss(reals[:1]).mean()))

# %% [markdown]
# **The toy upsampler against bicubic.** Held-out 128-px images are reduced to 64 px (area), then enlarged
# back by bicubic interpolation and by the toy upsampler, once as the pipeline runs it (its header's 5 DDPM
# steps from the enlarged input noised to t = 0.1 T, `upsample_start`) and once from pure noise as the official
# sampler does (27 steps). PSNR against the real image (higher is better). As the model card says, the
# toy upsampler is not better than bicubic; from pure noise it also drifts in colour.

# %%
n = plotting.pick(6, 2)
data = SynthDataset(length=n, task="mask", seed=7, image_size=128, cond_size=128)
reals = torch.stack([data[i]["image"] for i in range(n)])
lows = F.interpolate(reals, size=(64, 64), mode="area")
bicubic = F.interpolate(lows, size=(128, 128), mode="bicubic", align_corners=False).clamp(-1, 1)
near = torch.cat([plotting.upsample_images(pipe, data[i]["cond"], lows[i:i + 1], seed=i) for i in range(n)])
steps = plotting.pick("27", "5")
from_noise = torch.cat([plotting.upsample_images(pipe, data[i]["cond"], lows[i:i + 1], start=1.0, steps=steps, seed=i)
                        for i in range(n)])


def psnr(a, b):
    return (10 * torch.log10(4.0 / ((a - b) ** 2).flatten(1).mean(1))).tolist()


results = {"bicubic": bicubic, "toy upsampler (pipeline: from 0.1 T)": near,
           f"toy upsampler from noise ({steps} steps)": from_noise}
rows = [[name, float(np.mean(psnr(images, reals)))] for name, images in results.items()]
display(Markdown(plotting.markdown_table(rows, ["128 px from 64 px", f"PSNR dB (mean of {n})"])))
plotting.image_grid([[reals[i], lows[i], bicubic[i], near[i], from_noise[i]] for i in range(min(n, 3))],
                    ["real", "64 px input", "bicubic", "upsampler", "upsampler from noise"], size=1.7);
