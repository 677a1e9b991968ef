"""A small segmenter of the synthetic world: the judge of the toy-scale alignment check.

The paper measures how well generated images follow their label map by running a
segmentation network on them and comparing its prediction with the input map
(mIoU). At toy scale the judge is this network: a tiny fully-convolutional UNet
(170K parameters) trained in about five CPU minutes on scenes of
:func:`piti.data.synth.generate_scene`, drawn on the fly.

* Training scenes use the seeds ``(TRAIN_STREAM, seed, i)``, held-out scenes
  ``(HELDOUT_STREAM, i)``; both first elements are far from the small integer
  seeds of the datasets (``(seed, i)`` in :class:`~piti.data.datasets.SynthDataset`),
  so neither overlaps the conditions the diffusion models train or are judged on.
* It learns both scales of the toy models: whole 64-px images, and 64-px windows
  of 128-px images. Scenes are rendered at 64, 128 or 256 px and reduced as the
  datasets do (image PIL bicubic, labels nearest), so it knows both the native
  texture grain and the smoother reduced look. Light flips, colour jitter, blur
  and noise make it robust to the look of generated images.
* :meth:`Segmenter.predict` takes images of 32 to 128 pixels as they are; larger
  images (256) are first reduced to 128 (area), and the logits brought back.
* :meth:`Segmenter.embed` gives the penultimate features (the input of the 1x1
  classifier), averaged over the image: the feature space of FID-T
  (:func:`piti.evaluation.metrics.fid_t`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from piti.errors import CheckpointError, ConfigError
from piti.evaluation.images import images_to_tensor
from piti.evaluation.metrics import confusion_matrix, iou_from_confusion
from piti.evaluation.scenes import HELDOUT_STREAM, TRAIN_STREAM, heldout_set, reduce_scene, render_example

__all__ = [
    "HELDOUT_STREAM",
    "TRAIN_STREAM",
    "Segmenter",
    "SegmenterConfig",
    "evaluate_segmenter",
    "heldout_set",
    "images_to_tensor",
    "load_segmenter",
    "render_example",
    "save_segmenter",
    "train_segmenter",
]

WORK_SIZE = 128  # images larger than this are reduced to it before segmentation


@dataclass
class SegmenterConfig:
    """Sizes of the segmenter; stored in the checkpoint header."""

    num_classes: int = 10  # len(piti.data.synth.CLASSES)
    widths: tuple[int, ...] = (12, 24, 40, 64)  # channels per resolution, full to 1/8
    feature_dim: int = 32  # width of the penultimate (FID-T) features

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return {"kind": "segmenter", **d}

    @classmethod
    def from_dict(cls, d: dict) -> SegmenterConfig:
        if d.get("kind") != "segmenter":
            raise CheckpointError(f"not a segmenter config (kind {d.get('kind')!r}, expected 'segmenter')")
        try:
            return cls(
                num_classes=int(d["num_classes"]),
                widths=tuple(int(w) for w in d["widths"]),
                feature_dim=int(d["feature_dim"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"segmenter config is incomplete or malformed ({e!r}): {d}") from None


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Segmenter(nn.Module):
    """A tiny UNet: images in [-1, 1] (N, 3, H, W) -> class logits (N, K, H, W); H, W multiples of 2^(levels-1)."""

    def __init__(self, config: SegmenterConfig | None = None):
        super().__init__()
        self.config = config = config or SegmenterConfig()
        if config.num_classes < 2:
            raise ConfigError(f"bad segmenter config {config}: at least two classes")
        self._build(config.widths, config.feature_dim, config.num_classes)

    def _build(self, w, feature_dim: int, out_channels: int) -> None:
        """The UNet's layers (shared with the toy depth estimator, which has one output channel)."""
        if len(w) < 2 or min(w) < 1 or feature_dim < 1:
            raise ConfigError(
                f"bad UNet widths {w} / feature_dim {feature_dim}: at least two widths >= 1, feature_dim >= 1"
            )
        self.down = nn.ModuleList([_block(3, w[0])] + [_block(w[i - 1], w[i]) for i in range(1, len(w))])
        self.up = nn.ModuleList([_block(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))])
        self.feature = nn.Sequential(nn.Conv2d(w[0], feature_dim, 1), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(feature_dim, out_channels, 1)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this."""
        return 2 ** (len(self.config.widths) - 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, K, H, W), penultimate features (N, feature_dim, H, W))."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ConfigError(
                f"segmenter input must be (N, 3, H, W) with H, W multiples of {self.multiple}, got {tuple(x.shape)}"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), skip], 1))
        h = self.feature(x)
        return self.classifier(h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of every down block, up block and the penultimate layer, finest first within each
        path: the layers of the toy perceptual distance (:func:`piti.evaluation.diversity.feature_distance`)."""
        maps = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            maps.append(x)
        skips = maps[:-1]
        for block, skip in zip(self.up, reversed(skips)):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), skip], 1))
            maps.append(x)
        return maps + [self.feature(x)]

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def _run(self, images, batch_size: int):
        """Logits at the input size and pooled features, batch by batch, in eval mode (training mode restored)."""
        x = images_to_tensor(images)
        size = x.shape[-2:]
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        logits, pooled = [], []
        try:
            for chunk in x.split(batch_size):
                chunk = chunk.to(device, torch.float32)
                if max(size) > WORK_SIZE:  # Reduce to the working size, segment, bring the logits back.
                    factor = max(size) / WORK_SIZE
                    small = (round(size[0] / factor), round(size[1] / factor))
                    chunk = F.interpolate(chunk, size=small, mode="area")
                out, h = self.forward_features(chunk)
                if out.shape[-2:] != size:
                    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                logits.append(out.cpu())
                pooled.append(h.mean(dim=(2, 3)).cpu())
        finally:
            self.train(was_training)
        return torch.cat(logits), torch.cat(pooled)

    def predict(self, images, batch_size: int = 32) -> np.ndarray:
        """Class indices (N, H, W) uint8 of ``images`` (see :func:`images_to_tensor` for the accepted forms)."""
        return self._run(images, batch_size)[0].argmax(1).to(torch.uint8).numpy()

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        """Penultimate features averaged over each image: (N, feature_dim) float64, the FID-T space."""
        return self._run(images, batch_size)[1].double().numpy()


# ---------------------------------------------------------------------------------------------- data


CROP = 64  # side of every training example


def _training_batch(rng: np.random.Generator, counter: int, batch_size: int, seed: int):
    """``2 batch_size`` examples of 64 px from ``batch_size`` fresh scenes, as one batch.

    Each scene, rendered at 128 or 256 px, gives a whole 64-px image (the base
    model's scale) and a random 64-px window of its 128-px image (the upsampler's
    scale, at a quarter of the cost of the whole). One time in three the 64-px
    image is rendered natively at 64 instead (finer grain, as datasets drawn at 64).
    """
    from piti.data.synth import generate_scene

    images, labels = [], []
    for i in range(batch_size):
        key = (TRAIN_STREAM, seed, counter + i)
        scene = generate_scene(key, int(rng.choice([128, 256])))
        image, lab = reduce_scene(scene.image, scene.labels, 128)
        y0, x0 = rng.integers(0, 128 - CROP + 1, size=2)
        images.append(image[y0 : y0 + CROP, x0 : x0 + CROP])
        labels.append(lab[y0 : y0 + CROP, x0 : x0 + CROP])
        image, lab = render_example(key, 64) if rng.random() < 1 / 3 else reduce_scene(scene.image, scene.labels, 64)
        images.append(image)
        labels.append(lab)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(np.stack(labels)).long()


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flips, colour jitter, and sometimes blur or noise: the looks of generated images."""
    n = x.shape[0]

    def u(lo, hi, *shape):  # uniform draws from the training generator
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None], y.flip(-1), y)
    # brightness, contrast and saturation, each by up to 10%
    x = x * u(0.9, 1.1, n, 1, 1, 1) + u(-0.1, 0.1, n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(0.9, 1.1, n, 1, 1, 1)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * u(0.85, 1.15, n, 1, 1, 1)
    # a 3x3 Gaussian blur (sigma 0.4 to 1) on 30% of the images
    blur = torch.rand(n, generator=g) < 0.3
    if blur.any():
        sigma = u(0.4, 1.0, int(blur.sum()))
        k1 = torch.exp(-torch.tensor([1.0, 0.0, 1.0])[None] / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0)[:, None]  # (3 m, 1, 3, 3)
        xb = x[blur].reshape(1, -1, *x.shape[-2:])
        x = x.clone()
        x[blur] = F.conv2d(F.pad(xb, (1, 1, 1, 1), mode="replicate"), k2, groups=k2.shape[0]).reshape(
            -1, 3, *x.shape[-2:]
        )
    # Gaussian noise of std up to 0.05 on 30% of the images
    noisy = (torch.rand(n, 1, 1, 1, generator=g) < 0.3).float()
    x = x + noisy * u(0.0, 0.05, n, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1), y


def class_weights(num_classes: int, num: int = 48, seed: int = 0) -> torch.Tensor:
    """Cross-entropy weights ``1 / sqrt(frequency)`` from a sample of training scenes, normalised so
    that the average weight per pixel is 1, and clipped at 10 (the rarest classes cover < 0.5%)."""
    counts = np.zeros(num_classes)
    for i in range(num):
        _, lab = render_example((TRAIN_STREAM, seed, 10**9 + i), 64)
        counts += np.bincount(lab.ravel(), minlength=num_classes)[:num_classes]
    freq = np.maximum(counts / counts.sum(), 1e-4)
    w = 1.0 / np.sqrt(freq)
    w = np.minimum(w / (freq * w).sum(), 10.0)
    return torch.tensor(w, dtype=torch.float32)


def warmup_cosine(opt, steps: int):
    """The judges' learning-rate schedule: linear warm-up over 5% of ``steps``, then cosine decay to zero."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            (k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(1, steps - warmup)))
        ),
    )


def train_segmenter(
    model: Segmenter,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    bf16: bool = False,
    log_every: int = 0,
) -> list[float]:
    """Train ``model`` in place on fresh scenes; returns the loss of every step.

    Each step draws ``batch_size`` new scenes (seeds ``(TRAIN_STREAM, seed, i)``, never
    repeated), makes ``2 batch_size`` examples of them (:func:`_training_batch`), augments them, and takes
    one AdamW step on class-weighted cross-entropy; the learning rate warms up
    over 5% of the steps and then follows a cosine to zero. ``bf16`` runs the
    forward under CPU/CUDA bf16 autocast.
    """
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"train_segmenter needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    device = next(model.parameters()).device
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    g = torch.Generator().manual_seed(seed)
    weights = class_weights(model.config.num_classes, seed=seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    model.train()
    losses, counter, start = [], 0, time.perf_counter()
    for step in range(steps):
        x, y = _training_batch(rng, counter, batch_size, seed)
        counter += batch_size
        x, y = _augment(x, y, g)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = np.mean(losses[-log_every:])
            print(f"step {step + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return losses


def evaluate_segmenter(model: Segmenter, num: int, size: int, render_size: int | None = None) -> dict:
    """mIoU of ``model`` on ``num`` held-out scenes of ``size`` px (rendered at ``render_size``).

    Returns ``{"miou", "per_class" (IoU or None for absent classes), "num", "size", "render_size"}``.
    """
    from piti.data.synth import CLASSES

    images, labels = heldout_set(num, size, render_size)
    conf = confusion_matrix(model.predict(images), labels, model.config.num_classes)
    mean_iou, iou = iou_from_confusion(conf)
    names = CLASSES if len(CLASSES) == len(iou) else [str(i) for i in range(len(iou))]
    return {
        "miou": mean_iou,
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "num": num,
        "size": size,
        "render_size": render_size or size,
    }


# ---------------------------------------------------------------------------------------------- files


def default_segmenter_path() -> Path:
    """``checkpoints/toy/segmenter.safetensors``, beside the embedded default models."""
    from piti.weights import TOY_CHECKPOINT_DIR

    return TOY_CHECKPOINT_DIR / "segmenter.safetensors"


def save_segmenter(path: str | os.PathLike, model: Segmenter, metadata: dict | None = None) -> None:
    """Write the segmenter as safetensors with its config (and ``metadata``) in the header."""
    from piti.checkpoints import save_checkpoint

    save_checkpoint(path, model, config=model.config, metadata=metadata)


def load_segmenter(path: str | os.PathLike | None = None, device="cpu") -> Segmenter:
    """Load a segmenter saved by :func:`save_segmenter` (default: :func:`default_segmenter_path`), in eval mode."""
    from piti.checkpoints import load_checkpoint, load_state_dict_strict

    path = Path(path) if path is not None else default_segmenter_path()
    if not path.is_file() and path == default_segmenter_path():
        from piti.errors import MissingWeightsError

        raise MissingWeightsError(f"the toy segmenter is missing ({path}); `python eval/train_segmenter.py` trains it")
    ckpt = load_checkpoint(path)
    if not ckpt.config or ckpt.config.get("kind") != "segmenter":
        raise CheckpointError(f"{path} is not a segmenter checkpoint (its header has no segmenter config)")
    model = Segmenter(SegmenterConfig.from_dict(ckpt.config))
    load_state_dict_strict(model, ckpt.state_dict, source=str(path))
    model.checkpoint_metadata = ckpt.metadata
    return model.to(device).eval()
