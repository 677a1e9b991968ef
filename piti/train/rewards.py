"""Reward models and the consistency-feedback term (in the manner of ControlNet++, Li et al., ECCV 2024).

A reward model maps an image in [-1, 1] to the condition's quantity: depth -> log depth (metres), sketch ->
edge logits (the synthetic sketch is Canny, :func:`piti.data.conditions.extract_sketch`), mask -> class
logits. The feedback term noises a real image to ``x_t``, takes the one-step ``x0_pred`` of the model's
epsilon and scores the reward model's output on it against the input condition (:func:`consistency_loss`).

The reward models are not the judges (``checkpoints/toy/segmenter.safetensors``,
``depth_estimator.safetensors``, Canny edge F1): another network (:class:`RewardNet`: three levels, strided
convolutions, GroupNorm and SiLU, against the judges' four-level max-pool / BatchNorm / ReLU UNet), another
seed, other scenes (``(TRAIN_STREAM, REWARD_STREAM, seed, i)``), and :func:`load_reward_model` refuses any
file that is not a reward model, so the judges cannot be trained against by mistake.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from piti.errors import CheckpointError, ConfigError, MissingWeightsError

__all__ = [
    "REWARD_TASKS",
    "RewardConfig",
    "RewardNet",
    "condition_target",
    "consistency_by_t",
    "consistency_loss",
    "evaluate_reward_model",
    "load_reward_model",
    "reward_batch",
    "save_reward_model",
    "train_reward_model",
]

REWARD_STREAM = 3  # second seed element of the reward models' scenes (the judges use none and 2)
UNLABELLED = 255  # ignored label (pixels whose colour is no class of the palette)
SIZE = 64  # side of the training images: the base model's x0_pred
RENDER = 128  # scenes are drawn at the toy condition size and reduced, as SynthDataset does
LOG_DEPTH_RANGE = (math.log(0.5 + 1.01), math.log(300.0 + 1.01))  # log(d_max + 1.01) of the depth condition


def _num_classes() -> int:
    from piti.data.synth import CLASSES

    return len(CLASSES)


REWARD_TASKS = ("depth", "sketch", "mask")


@dataclass
class RewardConfig:
    """Sizes of a reward model; stored in its file's header."""

    task: str = "depth"  # depth (log metres), sketch (edge logit) or mask (class logits)
    widths: tuple[int, ...] = (16, 32, 48)  # channels per level, full to 1/4 resolution
    groups: int = 4  # GroupNorm groups

    def __post_init__(self):
        if self.task not in REWARD_TASKS:
            raise ConfigError(f"reward model task must be one of {REWARD_TASKS}, got {self.task!r}")
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) < 2 or any(w % self.groups for w in self.widths):
            raise ConfigError(f"reward widths {self.widths}: at least two, each a multiple of groups={self.groups}")

    @property
    def out_channels(self) -> int:
        return _num_classes() if self.task == "mask" else 1

    def to_dict(self) -> dict:
        return {"kind": "reward", "task": self.task, "widths": list(self.widths), "groups": self.groups}

    @classmethod
    def from_dict(cls, d: dict) -> RewardConfig:
        try:
            return cls(task=d["task"], widths=tuple(d["widths"]), groups=int(d["groups"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"reward model config is incomplete or malformed ({e!r}): {d}") from None


def _conv(c_in: int, c_out: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(groups, c_out), nn.SiLU())


class RewardNet(nn.Module):
    """A small UNet: images in [-1, 1] (N, 3, H, W) -> (N, out_channels, H, W); H, W multiples of 2^(levels-1)."""

    def __init__(self, config: RewardConfig | None = None):
        super().__init__()
        self.config = c = config or RewardConfig()
        w, g = c.widths, c.groups
        self.stem = nn.Sequential(_conv(3, w[0], g), _conv(w[0], w[0], g))
        self.down = nn.ModuleList(
            [nn.Sequential(_conv(w[i - 1], w[i], g, stride=2), _conv(w[i], w[i], g)) for i in range(1, len(w))]
        )
        self.up = nn.ModuleList([_conv(w[i + 1] + w[i], w[i], g) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], c.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2 ** (len(self.config.widths) - 1)
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % m or x.shape[3] % m:
            raise ConfigError(
                f"reward model input must be (N, 3, H, W) with H, W multiples of {m}, got {tuple(x.shape)}"
            )
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = skips.pop()
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips.pop()], 1))
        return self.head(h)


# ---------------------------------------------------------------------------------------------- losses


def _per_sample(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the pixels of ``mask`` (N, H, W), per sample; 0 where a sample has none."""
    mask = mask.float()
    return (x * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


def consistency_loss(task: str, output: torch.Tensor, target: dict) -> torch.Tensor:
    """Per-sample (N,) disagreement of a reward model's ``output`` with ``target`` (:func:`condition_target`
    for the feedback term, :func:`reward_batch` for training the reward model).

    depth: L1 of log depth over the pixels with a depth; when the target is the depth condition (``norm``:
    log depth / log(d_max + 1.01), d_max a per-image unknown), the scale is the per-image least-squares fit.
    sketch: binary cross-entropy against the edges. mask: cross-entropy against the labels (255 ignored).
    """
    if task == "depth":
        pred, valid = output[:, 0], target["valid"]
        if "log_depth" in target:
            return _per_sample((pred - target["log_depth"]).abs(), valid)
        norm = target["norm"]
        scale = _per_sample(pred * norm, valid) / _per_sample(norm * norm, valid).clamp(min=1e-6)
        scale = scale.clamp(*LOG_DEPTH_RANGE).view(-1, 1, 1)
        return _per_sample((pred - scale * norm).abs(), valid)
    if task == "sketch":
        bce = F.binary_cross_entropy_with_logits(output[:, 0], target["edges"].float(), reduction="none")
        return bce.flatten(1).mean(1)
    if task == "mask":
        labels = target["labels"]
        ce = F.cross_entropy(output, labels.clamp(max=output.shape[1] - 1), reduction="none")
        return _per_sample(ce, labels != UNLABELLED)
    raise ConfigError(f"unknown reward task {task!r}; expected one of {REWARD_TASKS}")


# ---------------------------------------------------------------------------------------------- conditions


def _nearest_index(n_in: int, n_out: int, device) -> torch.Tensor:
    """Source rows of a nearest resize at pixel centres (as :func:`piti.data.conditions.resize_nearest`)."""
    return ((torch.arange(n_out, device=device) + 0.5) * (n_in / n_out)).long().clamp(max=n_in - 1)


def _nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    r, c = _nearest_index(x.shape[-2], size, x.device), _nearest_index(x.shape[-1], size, x.device)
    return x[..., r[:, None], c[None, :]]


def _to_uint8(cond: torch.Tensor) -> torch.Tensor:
    return ((cond.float() + 1) * 127.5).round().clamp(0, 255)


@torch.no_grad()
def condition_target(task: str, cond: torch.Tensor, size: int, palette=None, mask_encoding: str = "color") -> dict:
    """The reward target at ``size`` px read back from a batch of model conditions (N, C, S, S) in [-1, 1].

    depth: the 6-channel condition's jet half decoded to ``norm`` (log depth / log(d_max + 1.01)) and
    ``valid`` (not black), nearest. sketch: the distance encoding's lines (-1) as ``edges``, shrunk as
    :func:`~piti.data.conditions.resize_sketch` (area, an edge where >= 64/255 of it was). mask: colours (or
    one-hot) to ``labels``, nearest, 255 where no class matches.
    """
    if task == "sketch":
        edges = (cond[:, :1].float() < -1 + 1 / 255).float()
        if edges.shape[-1] > size:
            edges = ((F.interpolate(edges, size=(size, size), mode="area") * 255).round() >= 64).float()
        else:
            edges = _nearest(edges, size)
        return {"edges": edges[:, 0]}
    cond = _nearest(cond, size)  # per-pixel decoding commutes with a nearest resize: decode fewer pixels
    if task == "depth":
        from piti.data.conditions import JET_LUT

        rgb = _to_uint8(cond[:, 3:6]).permute(0, 2, 3, 1)  # (N, size, size, 3)
        lut = torch.as_tensor(JET_LUT, dtype=torch.float32, device=cond.device)
        idx = torch.cdist(rgb.reshape(-1, 3), lut).argmin(1).view(rgb.shape[:3])
        # the centre of the colour's bins (matplotlib index floor(x * 256); jet repeats a colour at 29..32)
        same = (lut[:, None] == lut[None]).all(-1).float()
        centre = same @ ((torch.arange(256, device=cond.device) + 0.5) / 256) / same.sum(1)
        return {"norm": centre[idx], "valid": rgb.sum(-1) > 0}  # no depth: black
    if task == "mask":
        if mask_encoding == "onehot":
            return {"labels": cond.argmax(1)}
        from piti.data.palettes import SYNTH_PALETTE, get_palette

        pal = torch.as_tensor(get_palette(SYNTH_PALETTE if palette is None else palette), dtype=torch.float32)
        rgb = _to_uint8(cond[:, :3]).permute(0, 2, 3, 1)
        match = (rgb[..., None, :] == pal.to(cond.device)).all(-1)  # (N, size, size, K)
        unlabelled = torch.full_like(match[..., 0], UNLABELLED, dtype=torch.long)
        return {"labels": torch.where(match.any(-1), match.float().argmax(-1), unlabelled)}
    raise ConfigError(f"unknown reward task {task!r}; expected one of {REWARD_TASKS}")


# ---------------------------------------------------------------------------------------------- training


def reward_batch(task: str, scenes: list, g: torch.Generator, augment: bool = True, size: int = SIZE):
    """``(x (N, 3, size, size) in [-1, 1], target)`` from the scene seeds ``scenes``: drawn at 128 px, reduced to
    ``size`` as :class:`~piti.data.datasets.SynthDataset` does; with ``augment``, the judges' flips, colour jitter, blur
    and noise (the look of one-step predictions). The sketch target is Canny of the augmented image."""
    from piti.data.conditions import extract_sketch, resize_nearest
    from piti.data.synth import generate_scene
    from piti.evaluation.scenes import reduce_scene
    from piti.evaluation.segmenter import _augment

    images, truth = [], []
    for key in scenes:
        scene = generate_scene(key, RENDER)
        image, labels = reduce_scene(scene.image, scene.labels, size)
        images.append(image)
        truth.append(resize_nearest(scene.depth, (size, size)) if task == "depth" else labels.astype(np.int64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.from_numpy(np.stack(truth))
    if augment:
        x, y = _augment(x, y, g)
    if task == "depth":
        return x, {"log_depth": y.clamp(min=1e-3).log(), "valid": y > 0}
    if task == "sketch":
        pixels = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # the image Canny sees
        return x, {"edges": torch.from_numpy(np.stack([extract_sketch(p) > 0 for p in pixels]))}
    return x, {"labels": y}


def train_reward_model(
    model: RewardNet,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 1,
    log_every: int = 0,
    sizes: tuple = (SIZE,),
) -> list[float]:
    """Train ``model`` in place on fresh scenes ``(TRAIN_STREAM, REWARD_STREAM, seed, i)``; returns each step's loss.

    AdamW on :func:`consistency_loss`, 5% warm-up, cosine decay to zero; step k draws its images at
    ``sizes[k % len(sizes)]`` px (64 reads the base model's images, 128 the upsampler's).
    """
    from piti.evaluation.scenes import TRAIN_STREAM

    if steps < 1 or batch_size < 1:
        raise ConfigError(f"train_reward_model needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    task, device = model.config.task, next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            (k + 1) / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (steps - warmup + 1)))
        ),
    )
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        keys = [(TRAIN_STREAM, REWARD_STREAM, seed, step * batch_size + i) for i in range(batch_size)]
        x, target = reward_batch(task, keys, g, size=sizes[step % len(sizes)])
        loss = consistency_loss(task, model(x.to(device)), {k: v.to(device) for k, v in target.items()}).mean()
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


@torch.no_grad()
def evaluate_reward_model(model: RewardNet, num: int = 100, batch_size: int = 50, size: int = SIZE) -> dict:
    """Held-out accuracy on real scenes ``(HELDOUT_STREAM, i)`` at ``size`` px (drawn at 128, no augmentation).

    depth: RMSE (metres) and AbsRel over the pixels with a depth; sketch: pixel accuracy, and precision,
    recall and F1 of the edges at probability 0.5 (exact pixels, no tolerance); mask: mIoU.
    """
    from piti.evaluation.metrics import confusion_matrix, depth_errors, iou_from_confusion
    from piti.evaluation.scenes import HELDOUT_STREAM

    task = model.config.task
    model.eval()
    device = next(model.parameters()).device
    outs, targets = [], []
    for s in range(0, num, batch_size):
        keys = [(HELDOUT_STREAM, i) for i in range(s, min(num, s + batch_size))]
        x, target = reward_batch(task, keys, torch.Generator(), augment=False, size=size)
        outs.append(model(x.to(device)).cpu())
        targets.append(target)
    out = torch.cat(outs)
    target = {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
    result = {"task": task, "num": num, "size": size, "loss": consistency_loss(task, out, target).mean().item()}
    if task == "depth":
        truth = torch.where(target["valid"], target["log_depth"].exp(), torch.zeros(()))
        result.update(depth_errors(out[:, 0].exp().clamp(0.5, 250.0).numpy(), truth.numpy()))
    elif task == "sketch":
        pred, edges = out[:, 0] > 0, target["edges"]
        tp = (pred & edges).sum().item()
        precision, recall = tp / max(1, pred.sum().item()), tp / max(1, edges.sum().item())
        result.update(
            accuracy=(pred == edges).float().mean().item(),
            precision=precision,
            recall=recall,
            f1=2 * precision * recall / max(1e-9, precision + recall),
            edge_fraction=edges.float().mean().item(),
        )
    else:
        conf = confusion_matrix(out.argmax(1).numpy(), target["labels"].numpy(), model.config.out_channels)
        result["miou"] = iou_from_confusion(conf)[0]
    return result


@torch.no_grad()
def consistency_by_t(model, reward: RewardNet, dataset, timesteps, num: int = 24, seed: int = 0) -> dict:
    """Where the feedback term has something to correct: the reward model's mean disagreement
    (:func:`consistency_loss`) with the input condition of ``num`` items of ``dataset``, for the real images
    (``real``), the real images against another item's condition (``shuffled``), and a PITI base ``model``'s
    one-step ``x0_pred`` from ``x_t`` at each of ``timesteps`` (``by_t``)."""
    from piti.diffusion import create_diffusion

    task, mc = reward.config.task, model.config
    diffusion = create_diffusion(mc.noise_schedule, mc.diffusion_steps)
    items = [dataset[i] for i in range(num)]
    x_start, cond = torch.stack([it["image"] for it in items]), torch.stack([it["cond"] for it in items])
    target = condition_target(task, cond, x_start.shape[-1], dataset.palette, dataset.mask_encoding)

    def score(x, tgt=target):
        return consistency_loss(task, reward(x), tgt).mean().item()

    out = {"task": task, "num": num, "real": score(x_start)}
    out["shuffled"] = score(x_start, {k: v.roll(1, 0) for k, v in target.items()})
    g, out["by_t"] = torch.Generator().manual_seed(seed), {}
    for t in timesteps:
        t_batch = torch.full((num,), int(t))
        x_t = diffusion.q_sample(x_start, t_batch, torch.randn(x_start.shape, generator=g))
        eps = model(x_t, diffusion.model_timesteps(t_batch), ref=cond)[:, :3]
        out["by_t"][int(t)] = score(diffusion.predict_x0_from_eps(x_t, t_batch, eps).clamp(-1, 1))
    return out


# ---------------------------------------------------------------------------------------------- files


def save_reward_model(path: str | os.PathLike, model: RewardNet, metadata: dict | None = None) -> None:
    from piti.checkpoints import save_checkpoint

    save_checkpoint(path, model, config=model.config, metadata=metadata)


def load_reward_model(path: str | os.PathLike, task: str | None = None, device="cpu") -> RewardNet:
    """A frozen reward model (eval mode, no gradients to its weights) from ``path``; with ``task``, it must be
    that task's. Anything else (a judge, a diffusion model, a missing file) is a clear error."""
    from piti.checkpoints import load_checkpoint, load_state_dict_strict

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"reward model not found: {path}; `python eval/train_reward_models.py --task {task or 'TASK'}` trains one"
        )
    ckpt = load_checkpoint(path)
    kind = (ckpt.config or {}).get("kind")
    if kind != "reward":
        judge = (
            " (a judge: the evaluation's networks are never a training signal)"
            if kind in ("segmenter", "depth-estimator")
            else ""
        )
        raise CheckpointError(f"{path} is not a reward model: its header says kind {kind!r}, expected 'reward'{judge}")
    config = RewardConfig.from_dict(ckpt.config)
    if task is not None and config.task != task:
        raise ConfigError(f"{path} is a {config.task} reward model; this run's task is {task}")
    model = RewardNet(config)
    load_state_dict_strict(model, ckpt.state_dict, source=str(path))
    model.checkpoint_metadata = ckpt.metadata
    return model.to(device).eval().requires_grad_(False)
