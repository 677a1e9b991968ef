"""Exponential moving average of the trained parameters.

As in the official code, only the parameters being optimised are averaged (in stage 1 the frozen
decoder has no EMA copy: it never changes, so the model's own tensors serve). The averaged weights
are what the final model files hold by default.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``shadow = rate * shadow + (1 - rate) * param`` after each optimiser step, for ``requires_grad`` params.

    The shadow copies live in float32 on the parameters' device. :meth:`state_dict` gives the full
    model state with averaged tensors in place of the trained ones.
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.model = model
        self.rate = rate
        self.warmup = warmup
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def rate_at(self, step: int | None) -> float:
        """The decay used after optimiser step ``step`` (0-based).

        With ``warmup`` it is ``min(rate, (1 + step) / (10 + step))`` (the TensorFlow
        ExponentialMovingAverage ``num_updates`` rule): a short run's average then forgets the initial
        weights instead of keeping e.g. 37% of them after 1000 steps at 0.999. The official code has no
        warm-up (its runs are long), hence off by default.
        """
        if not self.warmup or step is None:
            return self.rate
        return min(self.rate, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """One EMA step towards the model's current parameters (``step``: see :meth:`rate_at`)."""
        params = dict(self.model.named_parameters())
        shadows = list(self.shadow.values())
        current = [params[name].detach().float() for name in self.shadow]
        torch._foreach_lerp_(shadows, current, 1.0 - self.rate_at(step))  # one fused call for all tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged tensors (cast to each tensor's dtype) swapped in."""
        out = {}
        for k, v in self.model.state_dict().items():
            out[k] = self.shadow[k].to(v.dtype) if k in self.shadow else v
        return out

    def shadow_state(self) -> dict[str, torch.Tensor]:
        """The averaged tensors alone (what a training checkpoint stores)."""
        return dict(self.shadow)

    def load_shadow_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`shadow_state`; the names must be exactly those averaged here."""
        if set(state) != set(self.shadow):
            missing, extra = set(self.shadow) - set(state), set(state) - set(self.shadow)
            raise KeyError(
                f"EMA state does not match the trained parameters: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(extra)[:3]}"
            )
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextmanager
    def swapped(self):
        """Temporarily load the averaged weights into the model (e.g. to draw samples), then restore."""
        params = dict(self.model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, s in self.shadow.items():
                params[n].copy_(s)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for n, b in backup.items():
                    params[n].copy_(b)
