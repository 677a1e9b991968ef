"""Small building blocks shared by the UNet, the text transformer and the condition encoder.

Numerics follow GLIDE: normalisations run in fp32 whatever the activation dtype, attention
scales q and k by ``ch**-0.25`` each (i.e. the usual ``1/sqrt(ch)``), timestep features are
``[cos, sin]``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from piti.precision import cpu_has_native_bf16

# Below this many pixels PyTorch's channels-last bf16 GroupNorm kernel is slower than the fp32 round trip.
MIXED_NORM_MIN_PIXELS = 1024


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in fp32, optionally followed by SiLU (GLIDE's ``swish=1``).

    A bf16 input on a CPU with native bf16 goes to PyTorch's mixed-precision kernel (statistics in fp32, fp32
    parameters, bf16 output): the same numbers without the two casts of a full fp32 copy; small channels-last
    maps, where that kernel is slower, and every other input take the copy. ``upcast`` True or False forces
    one path for bf16 CPU inputs (:func:`set_norm_upcast`); None (default) decides as above.
    """

    upcast = None

    def __init__(self, channels: int, swish: bool = False, eps: float = 1e-5):
        super().__init__(num_groups=32, num_channels=channels, eps=eps)
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._mixed(x):
            y = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
            return F.silu(y) if self.swish else y
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(y, inplace=True) if self.swish else y

    def _mixed(self, x: torch.Tensor) -> bool:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu":
            return False
        if self.upcast is not None:
            return not self.upcast
        small = x.dim() == 4 and x.shape[2] * x.shape[3] < MIXED_NORM_MIN_PIXELS
        return cpu_has_native_bf16() and not (small and x.is_contiguous(memory_format=torch.channels_last))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask takes 16 random bits per element from 64-bit draws.

    PyTorch's CPU dropout draws one random number per element (``bernoulli_``), about 9% of a toy training
    step in fp32 and bf16 alike; four elements per 64-bit draw make the mask about 5x faster
    (``benchmarks/toy_train_speed.py``). ``p`` acts in steps of 2^-16 (0.1 drops 0.100006). Same global
    generator, so ``torch.manual_seed`` and activation checkpointing's replay work as before; CUDA as PyTorch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        lanes = -(-x.numel() // 4)  # 64-bit draws, four 16-bit lanes each
        bits = torch.empty(lanes, dtype=torch.int64).random_(-(2**63), 2**63 - 1).view(torch.int16)
        keep = bits[: x.numel()].view(x.shape) >= round(self.p * 65536) - 32768
        return torch.where(keep, x * (1 / (1 - self.p)), 0.0)


def set_norm_upcast(model: nn.Module, upcast: bool | None) -> None:
    """Force the GroupNorms of ``model`` on bf16 CPU inputs through an fp32 copy (True, as before the mixed
    kernel was used) or PyTorch's mixed-precision kernel (False); None: the default rule of
    :class:`GroupNorm32` (mixed on a CPU with native bf16, except on small channels-last maps)."""
    for module in model.modules():
        if isinstance(module, GroupNorm32):
            module.upcast = upcast


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the timestep values ``t`` (B,), laid out as ``[cos, sin]``.

    Frequencies are ``exp(-ln(max_period) * i / half)`` for ``i < half`` (Transformer positional
    encoding, as used by DDPM/ADM/GLIDE); an odd ``dim`` gets one zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (GLIDE's zero-initialised output layers) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(ch) + bias) v`` over (B, heads, T, ch) tensors; ``bias`` (T_q, T_k) or None.

    The fused ``scaled_dot_product_attention`` computes what GLIDE's einsum form does (q and k
    each scaled by ``ch**-0.25``) and lets GPUs use flash / memory-efficient kernels. The legacy
    (head, {q,k,v}, ch) split leaves the tensors strided; the CPU flash kernel needs them contiguous
    and otherwise falls back to the slow math path.
    """
    return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=bias)


def maybe_checkpoint(fn, *args, enabled: bool):
    """Run ``fn(*args)``, recomputing its activations in the backward pass when ``enabled`` and grads are on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
