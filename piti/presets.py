"""Named model configurations and ``create_model``.

A :class:`ModelConfig` uses the official option names of ``glide-text2im`` / PITI
(``num_channels``, ``attention_resolutions``, ``xf_width``, ...), so the official full-size
presets reproduce the released checkpoints key for key, and the ``toy-*`` presets are the same
networks small enough for a CPU. Configs are plain data: ``to_dict()`` / ``from_dict()`` round-trip
them through the JSON header of the project's checkpoints.
"""

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from piti.errors import ConfigError
from piti.tasks import TASK_CHANNELS

NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear")
# Official rule for an empty channel_mult (guided-diffusion / GLIDE `create_model`).
AUTO_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def _int_tuple(value, option: str) -> tuple:
    """'32,16,8', [32, 16, 8] or (32, 16, 8) -> (32, 16, 8); '' -> ()."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} must be a list of integers or a string like '1,2,3', got {value!r}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Every option of a GLIDE or PITI network. Defaults are the official GLIDE base model.

    GLIDE models use the UNet and text options; PITI models use the UNet options, ``xf_width`` (the
    width of the condition tokens) and the encoder options (the text options are ignored, as in the
    official code). ``kind`` picks the class and ``task`` names the condition in error messages;
    ``noise_schedule`` and ``diffusion_steps`` are metadata for the diffusion code, which the
    network never reads.
    """

    name: str = ""  # preset name, "" for a custom configuration
    kind: str = "glide"  # "glide" (text-to-image) or "piti" (condition-to-image)
    task: str = "text"  # "text" for GLIDE; "mask", "sketch" or "depth" for PITI
    # --- UNet (official option names) ---
    image_size: int = 64  # side of x_t
    num_channels: int = 192  # base width of the UNet
    num_res_blocks: int = 3  # ResBlocks per level (the decoder side has one more)
    channel_mult: tuple = ()  # width multiplier per level; () = official rule for 64/128/256
    attention_resolutions: tuple = (32, 16, 8)  # resolutions (in pixels) with attention; "32,16,8" accepted
    num_heads: int = 1  # heads per attention block, used only if num_head_channels == -1
    num_head_channels: int = 64  # channels per head (overrides num_heads)
    dropout: float = 0.1
    use_scale_shift_norm: bool = True  # AdaGN: GN(h) * (1 + scale) + shift
    resblock_updown: bool = True  # resample with ResBlocks (else strided conv / nearest + conv)
    super_res: bool = False  # upsampler: takes low_res, concatenated after x_t
    use_checkpoint: bool = False  # activation checkpointing (saves memory when training)
    # --- GLIDE text stack; xf_width is also the width of PITI's condition tokens ---
    xf_width: int = 512
    xf_layers: int = 16
    xf_heads: int = 8
    text_ctx: int = 128  # tokens per caption
    n_vocab: int = 50257  # GPT-2 BPE vocabulary
    xf_padding: bool = True  # learned per-position embedding for padding slots
    xf_final_ln: bool = True
    # --- PITI condition encoder ---
    cond_channels: int = 3  # 3 mask, 1 sketch, 6 depth
    cond_size: int = 256  # side of the condition image (256 for base and upsampler)
    encoder_layers: int = 8
    encoder_heads: int = 8
    encoder_cnn_channels: tuple = (32, 64, 128, 256, 512)  # last = xf_width; grid = cond_size / 2**(len-1)
    # Project option, not in the official code (0 = official): a fixed prior in the decoder's attention
    # that makes each pixel prefer the grid tokens covering it (piti.nn.unet.grid_locality_bias).
    cond_locality: float = 0.0
    # Project option (False = official): the condition image itself, resized to the decoder's side, is added to the
    # first block's output through a small zero-initialised conv (piti.nn.unet.ConditionHint).
    cond_hint: bool = False
    # --- metadata for the diffusion process ---
    noise_schedule: str = "squaredcos_cap_v2"  # official: base cosine, upsamplers linear
    diffusion_steps: int = 1000

    def __post_init__(self):
        # Normalise the accepted spellings ("32,16,8", lists from JSON, official super_res=64).
        for option in ("channel_mult", "attention_resolutions", "encoder_cnn_channels"):
            object.__setattr__(self, option, _int_tuple(getattr(self, option), option))
        object.__setattr__(self, "super_res", bool(self.super_res))
        object.__setattr__(self, "cond_hint", bool(self.cond_hint))
        self._validate()

    # --- derived values ---
    def resolved_channel_mult(self) -> tuple:
        """``channel_mult``, or the official rule for ``image_size`` when it is empty."""
        if self.channel_mult:
            return self.channel_mult
        if self.image_size not in AUTO_CHANNEL_MULT:
            raise ConfigError(
                f"channel_mult is empty and image_size {self.image_size} has no official default "
                f"(only {sorted(AUTO_CHANNEL_MULT)}); give channel_mult explicitly"
            )
        return AUTO_CHANNEL_MULT[self.image_size]

    def attention_ds(self) -> tuple:
        """Downsampling factors with attention, ``image_size // resolution`` (official ``attention_ds``)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def num_cond_tokens(self) -> int:
        """Number of grid tokens the PITI encoder makes, ``(cond_size / 2**(len(cnn)-1))**2``."""
        return (self.cond_size // 2 ** (len(self.encoder_cnn_channels) - 1)) ** 2

    def _validate(self):
        def bad(msg):
            raise ConfigError(f"model config {self.name or '(custom)'}: {msg}")

        if self.kind not in ("glide", "piti"):
            bad(f"kind must be 'glide' or 'piti', got {self.kind!r}")
        if self.kind == "glide" and self.task != "text":
            bad(f"a GLIDE model has task 'text', got {self.task!r}")
        if self.kind == "piti" and self.task == "text":
            bad(f"a PITI model needs a condition task such as {sorted(TASK_CHANNELS)}, got 'text'")
        if self.task in TASK_CHANNELS and self.cond_channels != TASK_CHANNELS[self.task]:
            bad(
                f"task {self.task!r} has {TASK_CHANNELS[self.task]}-channel conditions, "
                f"got cond_channels={self.cond_channels}"
            )
        if self.noise_schedule not in NOISE_SCHEDULES:
            bad(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        if not 0 <= self.dropout < 1:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        mult = self.resolved_channel_mult()
        levels = len(mult)
        if self.image_size % 2 ** (levels - 1):
            bad(f"image_size {self.image_size} cannot be halved {levels - 1} times (channel_mult {mult})")
        widths = [int(m * self.num_channels) for m in mult]
        if any(w % 32 for w in widths):
            bad(f"every level width must be a multiple of 32 (GroupNorm32), got {widths}")
        reached = [self.image_size // 2**i for i in range(levels)]
        for r in self.attention_resolutions:
            if r not in reached:
                bad(f"attention resolution {r} is not one of the UNet's resolutions {reached}")
        for r in self.attention_resolutions:
            w = widths[reached.index(r)]
            heads_ok = w % self.num_head_channels == 0 if self.num_head_channels != -1 else w % self.num_heads == 0
            if not heads_ok:
                bad(
                    f"attention width {w} at resolution {r} is not divisible into heads "
                    f"(num_head_channels={self.num_head_channels}, num_heads={self.num_heads})"
                )
        if self.kind == "glide" and self.xf_width % self.xf_heads:
            bad(f"xf_width {self.xf_width} is not divisible by xf_heads {self.xf_heads}")
        if self.kind == "piti":
            cnn = self.encoder_cnn_channels
            if not cnn or cnn[-1] != self.xf_width:
                bad(f"the last encoder_cnn_channels width must equal xf_width {self.xf_width}, got {cnn}")
            if self.cond_size % 2 ** (len(cnn) - 1):
                bad(f"cond_size {self.cond_size} cannot be halved {len(cnn) - 1} times (encoder_cnn_channels {cnn})")
            if self.xf_width % self.encoder_heads:
                bad(f"xf_width {self.xf_width} is not divisible by encoder_heads {self.encoder_heads}")
        if self.cond_locality < 0:
            bad(f"cond_locality must be >= 0, got {self.cond_locality}")
        if self.cond_locality and self.kind != "piti":
            bad(
                "cond_locality applies to PITI's grid of condition tokens; a GLIDE model's text tokens have no position"
            )
        if self.cond_hint and (self.kind != "piti" or self.super_res):
            bad("cond_hint applies to a PITI base model (a condition image, no low-res input)")

    # --- plain-data round trip ---
    def to_dict(self) -> dict:
        """JSON-ready dict of every option (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown options raise ConfigError."""
        unknown = sorted(set(data) - set(option_names()))
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; valid options: {option_names()}")
        return cls(**data)

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with ``overrides`` applied (official option names; unknown ones raise ConfigError)."""
        unknown = sorted(set(overrides) - set(option_names()))
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; valid options: {option_names()}")
        return dataclasses.replace(self, **overrides)


def option_names() -> list:
    """Names of every ModelConfig option."""
    return [f.name for f in dataclasses.fields(ModelConfig)]


# Official full-size networks (differences from the GLIDE base defaults above).
_GLIDE_UPSAMPLE = dict(image_size=256, num_res_blocks=2, super_res=True, noise_schedule="linear")
# Toy networks for CPU work: the same architecture, small. Base 64 px (5.2M parameters): official
# channel_mult rule (32/64/96/128 channels), attention at 16 and 8 px. Upsampler 64->128 px (2.3M):
# narrower (32/32/32/64/64) with attention at 8 px only, because its job (sharpening a given layout) is
# easier and its 128-px levels dominate the cost; six toy models must fit the 60 MB shipping budget.
_TOY_TEXT = dict(xf_width=128, xf_layers=2, xf_heads=4, text_ctx=32, n_vocab=1024)
_TOY_UNET = dict(num_channels=32, num_res_blocks=1, attention_resolutions=(16, 8), num_head_channels=32, **_TOY_TEXT)
_TOY_BASE = _TOY_UNET
_TOY_UPSAMPLE = dict(
    _TOY_UNET,
    image_size=128,
    super_res=True,
    noise_schedule="linear",
    channel_mult=(1, 1, 1, 2, 2),
    attention_resolutions=(8,),
)
_TOY_ENCODER = dict(
    cond_size=128, encoder_layers=2, encoder_heads=4, encoder_cnn_channels=(16, 32, 64, 128, 128)
)  # 128 px -> 8x8 tokens of width 128


def _piti(stage: dict, task: str) -> dict:
    return dict(stage, kind="piti", task=task, cond_channels=TASK_CHANNELS[task])


# Official presets first, then the toy ones; each is a set of differences from the defaults.
_PRESETS = {"glide-base": {}, "glide-upsample": _GLIDE_UPSAMPLE}
_PRESETS.update(
    {
        f"piti-{stage}-{task}": _piti(d, task)
        for stage, d in (("base", {}), ("upsample", _GLIDE_UPSAMPLE))
        for task in TASK_CHANNELS
    }
)
_PRESETS.update({"toy-glide-base": _TOY_BASE, "toy-glide-upsample": _TOY_UPSAMPLE})
# The toy PITI base decoders get the locality prior for their 8x8 grid tokens (cond_locality, not official):
# without it, the decoder learned to use its condition several times more slowly per sample (checkpoints/toy/README.md).
# The upsamplers see the layout in their low-res input and keep the official attention.
_TOY_PITI_BASE = dict(_TOY_BASE, cond_locality=1.0)
_PRESETS.update(
    {
        f"toy-piti-{stage}-{task}": _piti(dict(d, **_TOY_ENCODER), task)
        for stage, d in (("base", _TOY_PITI_BASE), ("upsample", _TOY_UPSAMPLE))
        for task in TASK_CHANNELS
    }
)


def list_presets() -> list:
    """Names of the built-in model presets."""
    return list(_PRESETS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset ``name`` with ``overrides`` applied."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(_PRESETS)}")
    return ModelConfig(name=name, **_PRESETS[name]).replace(**overrides)


def create_model(name_or_config, device=None, **overrides) -> torch.nn.Module:
    """Build a GLIDE or PITI network.

    Args:
        name_or_config: a preset name (see :func:`list_presets`), a :class:`ModelConfig`, or its dict form.
        device: where to build it; ``"meta"`` builds shapes only (no memory, no init cost).
        **overrides: official option names, e.g. ``num_channels=64, attention_resolutions="16,8"``.

    Returns:
        ``GLIDEModel`` (flat official GLIDE keys) or ``PITIModel`` (``encoder.*`` / ``decoder.*``),
        with the resolved configuration in ``model.config``.
    """
    from piti.nn.models import GLIDEModel, PITIModel

    if isinstance(name_or_config, str):
        config = get_config(name_or_config, **overrides)
    elif isinstance(name_or_config, ModelConfig):
        config = name_or_config.replace(**overrides)
    elif isinstance(name_or_config, dict):
        config = ModelConfig.from_dict(name_or_config).replace(**overrides)
    else:
        raise ConfigError(
            f"create_model takes a preset name, a ModelConfig or a dict, got {type(name_or_config).__name__}"
        )
    with torch.device(device) if device is not None else nullcontext():
        return (GLIDEModel if config.kind == "glide" else PITIModel)(config)
