"""Noise schedules and timestep respacing.

Everything here is plain float64 NumPy, as in the official GLIDE / PITI code, so the
numbers agree with the released checkpoints' training and sampling to the last digit.

* ``get_betas(name, steps)``: the ``linear`` schedule (Ho et al. 2020, scaled to the
  number of steps) and ``squaredcos_cap_v2`` (the cosine schedule of Nichol & Dhariwal
  2021, Eq. 17, with betas capped at 0.999).
* ``space_timesteps(steps, spec)``: which of the original steps a respaced process keeps.
  ``"250"`` keeps 250 evenly spread steps; ``"10,10,3,2,2"`` splits the range into equal
  sections and keeps that many steps in each; ``"ddim50"`` keeps ``range(0, steps, stride)``
  with the stride that gives exactly 50 steps; ``"fast27"`` is GLIDE's upsampler list
  (``"10,10,3,2,2"`` with the last step ``steps - 1`` replaced by ``steps - 3``).
* ``respace_betas(betas, use_timesteps)``: the betas of the respaced process, chosen so
  that its cumulative products equal the original ones at the kept steps (Nichol &
  Dhariwal 2021, Sec. 4: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}).
"""

from __future__ import annotations

import math

import numpy as np

from piti.errors import ConfigError

SCHEDULES = ("linear", "squaredcos_cap_v2")


def get_betas(name: str, steps: int = 1000) -> np.ndarray:
    """Return the float64 betas of the named schedule with ``steps`` steps."""
    if steps < 1:
        raise ConfigError(f"diffusion steps must be >= 1, got {steps}")
    if name == "linear":
        # Ho et al. 2020: 1e-4 .. 0.02 at 1000 steps, rescaled for other step counts.
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2), s = 0.008.
        def alpha_bar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        return np.array(betas, dtype=np.float64)
    raise ConfigError(f"unknown noise schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


def _evenly_spaced_sections(steps: int, counts: list[int]) -> set[int]:
    """Keep ``counts[i]`` evenly spread steps in the i-th of ``len(counts)`` equal sections."""
    size_per, extra = divmod(steps, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)  # the first `extra` sections get one more step
        if not 1 <= count <= size:
            raise ConfigError(f"respacing section {i} has {size} steps; cannot keep {count} of them")
        stride = 1 if count == 1 else (size - 1) / (count - 1)
        # Python's round (half to even) is what the official code uses; it matters for ties.
        kept.update(start + round(j * stride) for j in range(count))
        start += size
    return kept


def space_timesteps(steps: int, spec: str) -> set[int]:
    """The set of original step indices that the respacing ``spec`` keeps.

    ``spec`` is ``""`` (all steps), ``"N"``, a comma list ``"a,b,c"``, ``"ddimN"`` or ``"fast27"``.
    """
    spec = str(spec).strip()
    if spec == "":
        return set(range(steps))
    if spec == "fast27":
        if steps < 5 * 10:
            raise ConfigError(f"respacing 'fast27' needs at least 50 diffusion steps, got {steps}")
        kept = _evenly_spaced_sections(steps, [10, 10, 3, 2, 2])
        # GLIDE: replace the noisiest step to reduce artifacts there.
        kept.remove(steps - 1)
        kept.add(steps - 3)
        return kept
    if spec.startswith("ddim"):
        try:
            count = int(spec[len("ddim") :])
        except ValueError:
            raise ConfigError(f"bad respacing {spec!r}; expected 'ddimN' with an integer N") from None
        # The smallest integer stride whose range has exactly `count` elements.
        for stride in range(1, steps):
            if len(range(0, steps, stride)) == count:
                return set(range(0, steps, stride))
        raise ConfigError(f"respacing {spec!r}: no integer stride gives exactly {count} of {steps} steps")
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(
            f"bad respacing {spec!r}; expected '', 'N', 'a,b,c' (steps per section), 'ddimN' or 'fast27'"
        ) from None
    return _evenly_spaced_sections(steps, counts)


def respace_betas(betas: np.ndarray, use_timesteps: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process that keeps only ``use_timesteps``, and the map to original steps.

    Returns ``(new_betas, timestep_map)`` with ``timestep_map[i]`` the original index of
    respaced step ``i``; the new process has the same alpha_bar at the kept steps.
    """
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    new_betas, timestep_map = [], []
    last_alpha_cumprod = 1.0
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in use_timesteps:
            new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
            last_alpha_cumprod = alpha_cumprod
            timestep_map.append(i)
    return np.array(new_betas, dtype=np.float64), np.array(timestep_map, dtype=np.int64)
