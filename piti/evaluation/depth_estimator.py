"""A small depth estimator of the synthetic world: the judge of the depth task's controllability.

The same tiny UNet as the toy segmenter (:mod:`piti.evaluation.segmenter`), with one output channel: the
natural log of the depth in metres. It is trained like the segmenter, on scenes drawn on the fly
(``(TRAIN_STREAM, seed, i)``, both scales: whole 64-px images and 64-px windows of 128-px images, reduced as
the datasets reduce them, depth nearest), with the same flips, colour jitter, blur and noise, and an L1 loss
on log depth over the pixels that have a depth (the sky has none: depth 0). It is scored on held-out scenes
``(HELDOUT_STREAM, i)`` by RMSE (metres) and AbsRel over those pixels (:func:`evaluate_depth_estimator`).

:meth:`DepthEstimator.predict` takes uint8 images (or [-1, 1] tensors) of 32 to 128 px as they are (larger
ones are reduced to 128 and the prediction brought back) and returns metres (N, H, W) float32.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from piti.errors import CheckpointError, ConfigError
from piti.evaluation.metrics import depth_errors
from piti.evaluation.scenes import HELDOUT_STREAM, TRAIN_STREAM
from piti.evaluation.segmenter import CROP, Segmenter, _augment, warmup_cosine

DEPTH_STREAM = 2  # second seed element: the depth estimator's training scenes differ from the segmenter's
MIN_DEPTH = 0.5  # metres: predictions are clamped to [MIN_DEPTH, MAX_DEPTH]
MAX_DEPTH = 250.0  # the synthetic world's far ground and mountains stop here


@dataclass
class DepthEstimatorConfig:
    """Sizes of the depth estimator; stored in the checkpoint header."""

    widths: tuple[int, ...] = (12, 24, 40, 64)  # channels per resolution, full to 1/8
    feature_dim: int = 32  # width of the penultimate features

    def to_dict(self) -> dict:
        return {"kind": "depth-estimator", "widths": list(self.widths), "feature_dim": self.feature_dim}

    @classmethod
    def from_dict(cls, d: dict) -> DepthEstimatorConfig:
        if d.get("kind") != "depth-estimator":
            raise CheckpointError(f"not a depth estimator config (kind {d.get('kind')!r}, expected 'depth-estimator')")
        try:
            return cls(widths=tuple(int(w) for w in d["widths"]), feature_dim=int(d["feature_dim"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"depth estimator config is incomplete or malformed ({e!r}): {d}") from None


class DepthEstimator(Segmenter):
    """The segmenter's UNet with one output: log depth (metres). Images in [-1, 1] (N, 3, H, W) -> (N, 1, H, W)."""

    def __init__(self, config: DepthEstimatorConfig | None = None):
        torch.nn.Module.__init__(self)
        self.config = config = config or DepthEstimatorConfig()
        self._build(config.widths, config.feature_dim, 1)

    def predict(self, images, batch_size: int = 32) -> np.ndarray:
        """Depth in metres (N, H, W) float32 of ``images`` (any form :func:`images_to_tensor` accepts)."""
        log_depth = self._run(images, batch_size)[0][:, 0]
        return log_depth.exp().clamp(MIN_DEPTH, MAX_DEPTH).numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------- data


def _reduce_depth(depth: np.ndarray, size: int) -> np.ndarray:
    from piti.data.conditions import resize_nearest

    return depth if depth.shape[0] == size else resize_nearest(depth, (size, size))


def _training_batch(rng: np.random.Generator, counter: int, batch_size: int, seed: int):
    """``2 batch_size`` examples of 64 px (a whole image and a window of the 128-px image per scene), as the
    segmenter's batches, with the scenes' depth (metres, 0 = none) as targets."""
    from piti.data.synth import generate_scene
    from piti.evaluation.scenes import reduce_scene

    images, depths = [], []
    for i in range(batch_size):
        scene = generate_scene((TRAIN_STREAM, DEPTH_STREAM, seed, counter + i), int(rng.choice([128, 256])))
        image, _ = reduce_scene(scene.image, scene.labels, 128)
        depth = _reduce_depth(scene.depth, 128)
        y0, x0 = rng.integers(0, 128 - CROP + 1, size=2)
        images.append(image[y0 : y0 + CROP, x0 : x0 + CROP])
        depths.append(depth[y0 : y0 + CROP, x0 : x0 + CROP])
        image, _ = reduce_scene(scene.image, scene.labels, 64)
        images.append(image)
        depths.append(_reduce_depth(scene.depth, 64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(np.stack(depths)).float()


def train_depth_estimator(
    model: DepthEstimator,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    log_every: int = 0,
    max_cpu_seconds: float | None = None,
) -> list[float]:
    """Train ``model`` in place on fresh scenes; returns the loss of every step.

    Each step: ``batch_size`` new scenes, two 64-px examples each, the segmenter's augmentations, one AdamW
    step on the L1 error of log depth over the pixels with a depth; 5% warm-up, cosine decay to zero. With
    ``max_cpu_seconds``, training stops after that much CPU time of this process (the schedule is not
    stretched)."""
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"train_depth_estimator needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    device = next(model.parameters()).device
    rng = np.random.default_rng([TRAIN_STREAM, DEPTH_STREAM, seed])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    model.train()
    losses, counter, start, cpu0 = [], 0, time.perf_counter(), time.process_time()
    for step in range(steps):
        x, depth = _training_batch(rng, counter, batch_size, seed)
        counter += batch_size
        x, depth = _augment(x, depth, g)
        x, depth = x.to(device), depth.to(device)
        valid = depth > 0
        pred = model(x)[:, 0]
        loss = (pred[valid] - depth[valid].log()).abs().mean()  # L1 on log depth
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  {time.perf_counter() - start:.0f}s",
                flush=True,
            )
        if max_cpu_seconds is not None and time.process_time() - cpu0 > max_cpu_seconds:
            print(f"stopping at step {step + 1}: {max_cpu_seconds:.0f} s of CPU time reached", flush=True)
            break
    model.eval()
    return losses


def heldout_depth(num: int, size: int, render_size: int | None = None, start: int = 0):
    """``num`` held-out scenes: (images (N, S, S, 3) uint8, depth (N, S, S) float32 metres), reduced as the datasets."""
    from piti.data.synth import generate_scene
    from piti.evaluation.scenes import reduce_scene

    images, depths = [], []
    for i in range(num):
        scene = generate_scene((HELDOUT_STREAM, start + i), render_size or size)
        images.append(reduce_scene(scene.image, scene.labels, size)[0])
        depths.append(_reduce_depth(scene.depth, size))
    return np.stack(images), np.stack(depths).astype(np.float32)


def evaluate_depth_estimator(
    model: DepthEstimator, num: int, size: int, render_size: int | None = None, start: int = 0
) -> dict:
    """RMSE (metres) and AbsRel of ``model`` on ``num`` held-out scenes of ``size`` px over the pixels with a depth."""
    images, depth = heldout_depth(num, size, render_size, start)
    return {**depth_errors(model.predict(images), depth), "num": num, "size": size, "render_size": render_size or size}


# ---------------------------------------------------------------------------------------------- files


def default_depth_estimator_path() -> Path:
    """``checkpoints/toy/depth_estimator.safetensors``, beside the embedded default models."""
    from piti.pipeline import TOY_CHECKPOINT_DIR

    return TOY_CHECKPOINT_DIR / "depth_estimator.safetensors"


def save_depth_estimator(path: str | os.PathLike, model: DepthEstimator, metadata: dict | None = None) -> None:
    from piti.checkpoints import save_checkpoint

    save_checkpoint(path, model, config=model.config, metadata=metadata)


def load_depth_estimator(path: str | os.PathLike | None = None, device="cpu") -> DepthEstimator:
    """Load a depth estimator saved by :func:`save_depth_estimator` (default: the shipped one), in eval mode."""
    from piti.checkpoints import load_checkpoint, load_state_dict_strict
    from piti.errors import MissingWeightsError

    path = Path(path) if path is not None else default_depth_estimator_path()
    if not path.is_file():
        raise MissingWeightsError(
            f"the toy depth estimator is missing ({path}); `python eval/train_depth_estimator.py` trains it"
        )
    ckpt = load_checkpoint(path)
    if not ckpt.config or ckpt.config.get("kind") != "depth-estimator":
        raise CheckpointError(f"{path} is not a depth estimator checkpoint (its header has no depth-estimator config)")
    model = DepthEstimator(DepthEstimatorConfig.from_dict(ckpt.config))
    load_state_dict_strict(model, ckpt.state_dict, source=str(path))
    model.checkpoint_metadata = ckpt.metadata
    return model.to(device).eval()


__all__ = [
    "DepthEstimator",
    "DepthEstimatorConfig",
    "default_depth_estimator_path",
    "evaluate_depth_estimator",
    "heldout_depth",
    "load_depth_estimator",
    "save_depth_estimator",
    "train_depth_estimator",
]
