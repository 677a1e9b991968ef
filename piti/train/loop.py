"""The training loop shared by every stage: optimisation, EMA, precision, DDP, checkpoints, logs.

One step = one global batch of ``batch_size`` pairs, split over the ranks and, within a rank, into
microbatches whose gradients accumulate. Then: gradient clipping (optional), AdamW with a constant
learning rate after an optional linear warm-up (the official code has no schedule), the EMA update,
and the stage's own after-step work (the upsampler's discriminator).

Exact resumption by construction: every random draw of step ``s`` on rank ``r`` (data order,
crops/flips, timesteps, noise, condition dropout, degradations, the network's dropout) comes from
seeds that are a pure function of ``(seed, rank, s)``. A checkpoint then only needs the state that
depends on the past: model, EMA, optimizer, grad scaler, the loss-aware timestep sampler's history,
the discriminator, and the step (which fixes the data position). RNG states are saved too.

Run folder (``out_dir``)::

    config.yaml              the resolved config
    log.csv                  step, losses, lr, grad norm, seconds per step (rank 0)
    samples/step_XXXXXXXX.png  sample grids (EMA weights, a few DDIM steps)
    checkpoints/state_XXXXXXXX.pt  training state, the last ``keep_checkpoints`` kept
    model.safetensors        the model file (EMA weights by default) later stages and the pipeline read
    tokenizer.json           pretraining runs

Launch several processes with ``torchrun`` (gloo on CPU, NCCL on GPU); rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from piti.checkpoints import save_checkpoint
from piti.diffusion.resample import make_timestep_sampler
from piti.errors import CheckpointError, ConfigError, PitiError
from piti.fileio import atomic_write
from piti.precision import auto_precision, autocast, check_precision, resolve_device, tune_malloc
from piti.train.config import TrainConfig
from piti.train.ema import EMA
from piti.train.stages import NamedItems, Stage, collate

log = logging.getLogger(__name__)

STATE_PREFIX = "state_"
MODEL_FILE = "model.safetensors"


class NonFiniteLossError(PitiError, FloatingPointError):
    """The loss became NaN or infinite: the run stopped and wrote nothing after its last good checkpoint."""


def learning_rate(cfg, step: int) -> float:
    """The lr of 0-based ``step``: linear warm-up over ``warmup_steps``, constant, then (``lr_decay_steps``) a
    linear decay that reaches 0 after the last of ``iterations`` steps."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if cfg.lr_decay_steps:
        lr *= min(1.0, max(0.0, (cfg.iterations - step) / cfg.lr_decay_steps))
    return lr


def step_seed(seed: int, rank: int, step: int, part: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, rank, step, part) (numpy's SeedSequence mixing).

    ``part`` is 0 for a step's draws, 1 + i for microbatch i's dropout, or one of the data streams below.
    """
    return int(np.random.SeedSequence([seed, rank, step, part]).generate_state(1)[0])


# ``part`` values of the data streams (far above any microbatch index).
_DATA_ORDER, _ITEM_AUGMENT = 1_000_000, 1_000_001


# --------------------------------------------------------------------------------------------------
# Distributed set-up


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(0, 1, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def _all_reduce_mean(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
        values = values / world
    return values


# --------------------------------------------------------------------------------------------------
# Data order


class StepBatches(Sampler):
    """For steps ``start, start+1, ...``: this rank's share of each global batch, as ``(index, seed)`` keys.

    The global sample at position ``p = step * batch + j`` is ``perm_e[p % n]`` with ``perm_e`` a
    permutation seeded by (seed, epoch ``e = p // n``); rank ``r`` takes ``j = r, r + world, ...``.
    The item seed (crops, flips) is a function of (seed, p). Nothing depends on the past.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int, start_step: int):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.start_step = seed, start_step
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(step_seed(self.seed, 0, epoch, _DATA_ORDER))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def keys(self, step: int) -> list[tuple[int, int]]:
        out = []
        for j in range(self.rank, self.batch_size, self.world):
            p = step * self.batch_size + j
            out.append((int(self._perm(p // self.n)[p % self.n]), step_seed(self.seed, 0, p, _ITEM_AUGMENT)))
        return out

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1


def _slice(tree, start: int, end: int):
    """``tree[start:end]`` for every tensor of a nested dict."""
    if isinstance(tree, dict):
        return {k: _slice(v, start, end) for k, v in tree.items()}
    return tree[start:end]


# --------------------------------------------------------------------------------------------------
# Run folder helpers


def list_states(run_dir: Path) -> list[Path]:
    """Training checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob(f"{STATE_PREFIX}*.pt")) if folder.is_dir() else []


def find_state(path: str | os.PathLike) -> Path:
    """The checkpoint to resume from: ``path`` itself, or the newest one of the run folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        states = list_states(path)
        if states:
            return states[-1]
        raise CheckpointError(f"{path} holds no training checkpoint (expected {path}/checkpoints/{STATE_PREFIX}*.pt)")
    raise CheckpointError(f"cannot resume: {path} does not exist")


def run_dir_of_state(state_path: Path) -> Path:
    """``<run>/checkpoints/state_X.pt`` -> ``<run>``."""
    return state_path.parent.parent


# --------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Builds a stage and trains it. ``Trainer(config, resume=None).train()`` returns the model file."""

    def __init__(self, config: TrainConfig, resume: str | os.PathLike | None = None):
        self.config = cfg = config
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        world = self.dist.world_size
        if cfg.precision == "auto":  # bf16 where the device computes it, else fp32 (CPU) or fp16 (old GPUs)
            cfg.precision = auto_precision(self.device)  # the run's config.yaml keeps what it resolved to
            log.info("precision auto: %s on %s", cfg.precision, self.device)
        check_precision(cfg.precision, self.device)
        if self.device.type == "cpu":
            tune_malloc()  # keep freed activations for the next step (piti.precision)
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
        self.rank_batch = cfg.batch_size // world
        self.microbatch = cfg.microbatch or self.rank_batch
        self.run_dir = Path(cfg.out_dir)

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and on every resume
        self.stage = Stage(cfg, self.device, world, self.run_dir if resume else None)
        self.model = self.stage.model
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        self.ema = EMA(self.model, cfg.ema_rate, warmup=cfg.ema_warmup)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.timestep_sampler = make_timestep_sampler(cfg.schedule_sampler, self.stage.diffusion.num_timesteps, world)
        self.ddp = self.model
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.step = 0
        self.last_state: Path | None = None
        if resume:
            self.load_state(find_state(resume))

    # -- precision ---------------------------------------------------------------------------------
    def autocast(self):
        return autocast(self.config.precision, self.device)

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "data_position": self.step * self.config.batch_size,  # samples consumed (see StepBatches)
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.shadow_state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "timestep_sampler": self.timestep_sampler.state_dict(),
            "stage": self.stage.state_dict(),
            "rng": rng,
        }

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated or foreign files
            raise CheckpointError(f"{path} is not a readable training checkpoint: {type(e).__name__}: {e}") from None
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(f"{path} is not a training checkpoint of this project (no model/step entries)")
        if state["config"]["stage"] != self.config.stage or state["config"]["model"] != self.config.model:
            raise CheckpointError(
                f"{path} was written by stage {state['config']['stage']} / model "
                f"{state['config']['model']}, not {self.config.stage} / {self.config.model}"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_shadow_state(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.timestep_sampler.load_state_dict(state["timestep_sampler"])
        self.stage.load_state_dict(state["stage"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.last_state = path
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        """Write the training checkpoint and the model file (rank 0), atomically; prune old checkpoints."""
        if not self.dist.is_main:
            return
        path = self.run_dir / "checkpoints" / f"{STATE_PREFIX}{self.step:08d}.pt"
        state = self.state()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        self.export(self.run_dir / MODEL_FILE)
        self.last_state = path
        for old in list_states(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink()

    def export(self, path: Path) -> None:
        """The model file (EMA or raw weights) with its config and provenance, via ``save_checkpoint``."""
        weights = self.ema.state_dict() if self.config.export_ema else self.model.state_dict()
        meta = dict(
            self.stage.metadata(),
            weights="ema" if self.config.export_ema else "raw",
            ema_rate=self.config.ema_rate,
            recipe=self.config.name,
        )
        save_checkpoint(path, weights, config=self.model.config, step=self.step, metadata=meta)

    # -- logging -----------------------------------------------------------------------------------
    def _open_csv(self):
        """The CSV log, with rows after the resumed step dropped (they will be written again)."""
        path = self.run_dir / "log.csv"
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.CSV_FIELDS)
                w.writeheader()
                w.writerows(rows)
        else:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.CSV_FIELDS).writeheader()
        return open(path, "a", newline="")

    CSV_FIELDS = [
        "step", "loss", "mse", "vb", "reward", "class_reward", "perceptual", "adv", "disc", "lr", "grad_norm",
        "sec_per_step",
    ]  # fmt: skip

    def write_samples(self) -> Path:
        """A sample grid with the EMA weights (rank 0)."""
        cfg = self.config
        from torchvision.utils import make_grid

        self.model.eval()
        try:
            with self.ema.swapped():
                rows = self.stage.sample_grid(
                    self.model,
                    cfg.sample_count,
                    cfg.sample_steps,
                    cfg.sample_guidance,
                    cfg.seed,
                    self.autocast,
                    sampler=cfg.sample_sampler,
                )
        finally:
            self.model.train()
        per_row = min(cfg.sample_count, len(self.stage.dataset))  # sample_grid stacks rows of this many
        grid = make_grid((rows + 1) / 2, nrow=per_row, padding=2).clamp(0, 1)
        pixels = (grid * 255).round().byte().permute(1, 2, 0).numpy()
        from PIL import Image

        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
        return path

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        """One optimisation step on this rank's share of a global batch; returns averaged metrics."""
        cfg, step = self.config, self.step
        lr = learning_rate(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = batch["image"].shape[0]
        seed = step_seed(cfg.seed, self.dist.rank, step)
        drawn = self.stage.draw(
            batch, torch.Generator().manual_seed(seed), np.random.default_rng(seed), self.timestep_sampler
        )
        starts = list(range(0, n, self.microbatch))
        sums: dict[str, float] = defaultdict(float)
        for i, start in enumerate(starts):
            micro = _slice(drawn, start, start + self.microbatch)
            size = micro["t"].shape[0]
            torch.manual_seed(step_seed(cfg.seed, self.dist.rank, step, i + 1))  # the network's dropout
            sync = i == len(starts) - 1 or self.dist.world_size == 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                out = self.stage.loss(self.ddp, micro, step, self.autocast, share=size / n)
                self.scaler.scale(out.loss * (size / n)).backward()
            self.timestep_sampler.update(out.t, out.diffusion_loss)
            for k, v in out.metrics.items():
                sums[k] += v * size / n

        # Every rank sees the same averaged metrics, so a NaN stops all of them together.
        keys = sorted(sums)
        values = _all_reduce_mean(
            torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device), self.dist.world_size
        )
        metrics = dict(zip(keys, values.tolist()))
        if not math.isfinite(metrics["loss"]):
            where = (
                f"the last good checkpoint is {self.last_state}" if self.last_state else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"loss is {metrics['loss']} at step {step} ({', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}); "
                f"training stopped and wrote nothing; {where}. Try a lower lr, grad_clip, or precision fp32."
            )

        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(step)
        self.stage.after_step(step)
        metrics.update(lr=lr, grad_norm=float(grad_norm))
        return metrics

    # -- the loop ----------------------------------------------------------------------------------
    def data_iterator(self):
        stage, cfg = self.stage, self.config
        sampler = StepBatches(
            len(stage.dataset), cfg.batch_size, self.dist.rank, self.dist.world_size, cfg.seed, self.step
        )
        loader = DataLoader(
            NamedItems(stage.dataset),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        return iter(loader)

    def _out_of_time(self, start: float) -> bool:
        """Whether ``time_limit`` minutes have passed since ``start``; every rank gets rank 0's answer."""
        if not self.config.time_limit:
            return False
        over = time.perf_counter() - start > 60 * self.config.time_limit
        if self.dist.world_size > 1:
            flag = torch.tensor([float(over)], device=self.device)
            dist.broadcast(flag, src=0)
            over = bool(flag.item())
        if over and self.dist.is_main:
            log.info(
                "time limit of %g min reached at step %d: saving and stopping (--resume goes on)",
                self.config.time_limit,
                self.step,
            )
        return over

    def train(self) -> Path:
        """Run until ``iterations`` (forever if 0) or ``time_limit``; returns the path of the model file."""
        cfg, main = self.config, self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.yaml")
            self.stage.save_side_files(self.run_dir)
            log_file = self._open_csv()
            writer = csv.DictWriter(log_file, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
        data = self.data_iterator()
        bar = tqdm(total=cfg.iterations or None, initial=self.step, disable=not main, desc=cfg.name, dynamic_ncols=True)
        window: dict[str, list[float]] = defaultdict(list)
        saved_step = self.step
        tick = start = time.perf_counter()
        try:
            while (not cfg.iterations or self.step < cfg.iterations) and not self._out_of_time(start):
                metrics = self.train_step(next(data))
                self.step += 1
                now = time.perf_counter()
                metrics["sec_per_step"], tick = now - tick, now
                for k, v in metrics.items():
                    window[k].append(v)
                if main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
                    if self.step % cfg.log_interval == 0:
                        writer.writerow({"step": self.step, **{k: f"{np.mean(v):.6g}" for k, v in window.items()}})
                        log_file.flush()
                        window.clear()
                    if cfg.sample_interval and self.step % cfg.sample_interval == 0:
                        self.write_samples()
                if self.step % cfg.save_interval == 0:
                    self.save()
                    saved_step = self.step
        except KeyboardInterrupt:
            if self.dist.world_size == 1 and self.step > saved_step:
                self.save()  # Ctrl-C keeps the work done so far
            raise
        finally:
            bar.close()
            if main:
                log_file.close()
        if self.step > saved_step or not (self.run_dir / MODEL_FILE).exists():
            self.save()
        if self.dist.world_size > 1:
            dist.barrier()
        return self.run_dir / MODEL_FILE


def train(config: TrainConfig, resume: str | os.PathLike | None = None) -> Path:
    """Train ``config`` (resuming from a run folder or checkpoint if given); returns the model file."""
    try:
        return Trainer(config, resume).train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
