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

    def __init__(self, model: nn.Module, rate: float = 0.9999):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.model = model
        self.rate = rate
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the model's current parameters."""
        params = dict(self.model.named_parameters())
        shadows = list(self.shadow.values())
        current = [params[name].detach().float() for name in self.shadow]
        torch._foreach_lerp_(shadows, current, 1.0 - self.rate)  # one fused call for all tensors

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
            raise KeyError(f"EMA state does not match the trained parameters: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(extra)[:3]}")
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
