"""The device and precision policy: the one place that decides how a network runs for inference.

Precisions (``--precision``):

``fp32``  weights and activations in float32, as the official code runs.
``bf16``  weights stored in bfloat16 and every forward under ``torch.autocast(bfloat16)``; CPU and CUDA.
          Fast only where the hardware computes in bf16: CUDA GPUs from Ampere on, and CPUs with
          AVX512-BF16 or AMX (about 1.8x faster than fp32 per forward there). On a CPU without them
          (e.g. AVX2 only) PyTorch falls back to a slow reference convolution: measured 68x SLOWER
          than fp32 for a 192-channel 3x3 convolution on such a machine, so ``auto`` never picks it there.
``fp16``  the same with float16; CUDA only (CPU half-precision convolutions are slow or missing).
``auto``  bf16 on CUDA (fp16 where bf16 is unsupported) and on CPUs with native bf16; fp32 otherwise.

In the reduced precisions the normalisation layers (GroupNorm, LayerNorm, InstanceNorm) keep fp32
parameters: the networks compute them in fp32 anyway (GLIDE's ``GroupNorm32``), and their weights are a
rounding error of the model size. The diffusion maths stay in fp32: the samplers cast every network
output back to the dtype of ``x_t``, which is float32.

On a CPU, two things bound the small networks besides arithmetic: the GroupNorms' fp32 round trip (in bf16 on
a CPU with native bf16 the norms now take bf16 in and out through PyTorch's mixed-precision kernel, statistics
and parameters still fp32: ``piti.nn.layers.GroupNorm32``, for inference and training alike), and glibc
returning the memory of every freed activation to the system and faulting fresh zeroed pages in at the next
step (:func:`tune_malloc`, called by :meth:`Policy.prepare`; a trainer can call it too).
Measurements: benchmarks/toy_speed.py and docs/sampling.md.

Two optional speed-ups: ``channels_last`` memory format for the convolutions (default: on, see
docs/sampling.md for the measurements), and ``compile`` (``torch.compile``; needs a C++ compiler on CPU,
and the first call is slow).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from piti.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # blocks below 32 MiB come from the heap, not from fresh (zeroed, faulted-in) pages
TRIM_THRESHOLD = 256 << 20  # free memory the heap keeps for the next step instead of returning it at once
# Layers whose parameters stay in fp32 whatever the precision.
_FP32_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.BatchNorm2d)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), so bf16 is faster than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def tune_malloc() -> bool:
    """Make glibc keep freed blocks under 32 MiB for reuse (at most 256 MiB of them) instead of unmapping them.

    Each network call allocates and frees the same activations; by default glibc hands the larger ones back
    to the system and the next call pays page faults and zeroing for them again. Process-wide and idempotent;
    does nothing (returns False) off Linux/glibc or where ``GLIBC_TUNABLES`` already sets the allocator.
    """
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (CUDA when present) as a torch.device.

    Raises ConfigError for an unknown name or a CUDA device this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for, but this machine has no usable CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return dev


@dataclass(frozen=True)
class Policy:
    """How networks run: device, precision, memory format, compilation. Build it with :func:`make_policy`."""

    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    channels_last: bool
    compile: bool
    notes: tuple = ()  # remarks on the choice, for the user (e.g. a slow precision)
    tuned_malloc: bool = False  # call tune_malloc() in prepare (make_policy: on for the CPU)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and of the autocast region."""
        return DTYPES[self.precision]

    def autocast(self):
        """Context manager for network forwards: autocast to bf16/fp16, or nothing for fp32."""
        return autocast(self.precision, self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in inference form under this policy, in place; returns the module to call.

        Eval mode, no gradients, moved to the device, weights cast to the precision's dtype (norm layers
        kept in fp32), channels-last if
        asked; the CPU allocator tuned (:func:`tune_malloc`); ``torch.compile`` wraps the result if asked (the
        returned module is then the compiled wrapper; ``model`` itself stays usable).
        """
        model.eval().requires_grad_(False)
        model.to(device=self.device, dtype=self.dtype)
        if self.precision != "fp32":
            for module in model.modules():
                if isinstance(module, _FP32_LAYERS):
                    module.float()
        if self.tuned_malloc:
            tune_malloc()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            return torch.compile(model)
        return model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """Move an input image batch to the device (channels-last when the policy uses it)."""
        x = x.to(self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def to_dict(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
        }


def autocast(precision: str, device: torch.device):
    """Context manager for forwards in ``precision`` (fp32, bf16, fp16) on ``device``: autocast, or nothing (fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError when ``precision`` (fp32, bf16, fp16) cannot run on ``device``: fp16 needs CUDA, and bf16 on
    CUDA a GPU that supports it."""
    if precision not in DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(DTYPES)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"this GPU ({torch.cuda.get_device_name(device)}) does not support bf16; use fp16 or fp32")


def auto_precision(device: torch.device) -> str:
    """The fastest precision that keeps quality on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def make_policy(
    device="cpu", precision: str = "auto", channels_last: bool | None = None, compile: bool = False
) -> Policy:
    """Check and build a :class:`Policy`.

    ``precision="auto"`` picks the fastest good precision for the device; ``channels_last=None`` the measured
    default (on). Raises ConfigError for an unknown precision, fp16 on CPU, or a missing CUDA device.
    """
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        check_precision(precision, dev)
    notes = []
    if precision == "auto":
        precision = auto_precision(dev)
    elif precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        notes.append(
            "bf16 on this CPU (no AVX512-BF16 or AMX) runs emulated and is much slower than fp32; "
            "use --precision auto or fp32"
        )
    if channels_last is None:
        channels_last = True
    return Policy(
        device=dev,
        precision=precision,
        channels_last=bool(channels_last),
        compile=bool(compile),
        notes=tuple(notes),
        tuned_malloc=dev.type == "cpu",
    )
