"""Timestep samplers for training (Nichol & Dhariwal 2021, Sec. 3.3): uniform, and importance sampling
by the loss's second moment (the official base stages). Each returns timesteps and the importance weights
that keep the loss unbiased."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from piti.errors import ConfigError

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


class UniformSampler:
    """t ~ U{0..N-1}; all importance weights 1."""

    def __init__(self, num_timesteps: int, world_size: int = 1):
        self.num_timesteps = num_timesteps
        self.world_size = world_size

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` timesteps and their importance weights ``1 / (N p_t)`` (the loss stays unbiased)."""
        p = torch.from_numpy(self.probabilities())
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights.float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses (only the loss-aware sampler uses them)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentSampler(UniformSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history`` losses at each t (official base stages).

    Uniform until every t has ``history`` losses; ``uniform_prob`` of the mass stays uniform. In DDP
    the losses of all ranks are gathered, so every rank holds the same history.
    """

    def __init__(self, num_timesteps: int, world_size: int = 1, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps, world_size)
        self.uniform_prob = uniform_prob
        self.losses = np.zeros((num_timesteps, history), dtype=np.float64)
        self.counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.losses.shape[1]).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        w = np.sqrt(np.mean(self.losses**2, axis=-1))
        w = w / w.sum() * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        return w / w.sum()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pairs = torch.stack([t.double(), losses.double()], dim=1)
        if self.world_size > 1:
            gathered = [torch.zeros_like(pairs) for _ in range(self.world_size)]
            dist.all_gather(gathered, pairs)
            pairs = torch.cat(gathered)
        n = self.losses.shape[1]
        for ti, loss in pairs.cpu().tolist():
            ti = int(ti)
            if self.counts[ti] == n:  # full: drop the oldest
                self.losses[ti, :-1] = self.losses[ti, 1:]
                self.losses[ti, -1] = loss
            else:
                self.losses[ti, self.counts[ti]] = loss
                self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"losses": torch.from_numpy(self.losses.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.losses = state["losses"].numpy().copy()
        self.counts = state["counts"].numpy().copy()


def make_timestep_sampler(name: str, num_timesteps: int, world_size: int = 1) -> UniformSampler:
    if name == "uniform":
        return UniformSampler(num_timesteps, world_size)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(num_timesteps, world_size)
    raise ConfigError(f"unknown timestep sampler {name!r}; expected uniform or loss-second-moment")
