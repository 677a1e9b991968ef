"""Sampling settings, declared once.

Every setting of a pipeline call is one field of :class:`SamplingSettings`, with its default, its allowed
choices or range, and its help text. Everything else derives from that declaration: the pipeline's
validation (:meth:`SamplingSettings.replace`), the command-line flags of ``piti sample`` and of the
evaluation scripts (:func:`add_settings_arguments`, :func:`settings_from_args`, the pattern of
improved-diffusion's ``add_dict_to_argparser``), and the recommended settings stored in a checkpoint's
header (:func:`settings_from_header`).

    s = PROFILES["fast"].replace(guidance=5, guidance_mode="normalized")
    out = pipe(image, **s.to_dict())

``guidance`` is always the paper's w (eps_c + w (eps_c - eps_u), 0 = no guidance). The official code's
s = 1 + w is a command-line convenience (``--guidance-scale``), converted here at the edge.

Settings of a sampler's own knobs (DDPM's ``noise_scale``, DDIM's ``eta``) are named after the sampler's
keyword parameter, and ``upsample_`` + that name for the upsampler's sampler: the pipeline hands each
sampler the fields that match its signature (:func:`piti.diffusion.samplers.sampler_options`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from piti.data.palettes import PALETTES
from piti.diffusion.guidance import MODES, SIGMAS, STATS
from piti.diffusion.samplers import SAMPLERS
from piti.errors import ConfigError

REDRAW_TRIES = 3  # most redraws of one base sample (redraw_threshold)
EARLY_MARGIN = 1.2  # a draw's predicted x0 midway is blurrier than the finished sample and reads higher


def _setting(default, help: str, *, choices=None, low=None, high=None, low_open=False):
    """A field of :class:`SamplingSettings` with its spec in the metadata."""
    meta = dict(help=help, choices=tuple(choices) if choices else None, low=low, high=high, low_open=low_open)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SettingSpec:
    """What one setting allows: its type, default, choices or range, and help text."""

    name: str
    type: type
    default: object
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes ``low``

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The allowed values in words, e.g. ``one of plain, normalized`` or ``in (0, 1]``."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is None and self.high is None:
            return f"a {self.type.__name__}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{']' if self.high is not None else ')'}"

    def check(self, value):
        """``value`` converted to this setting's type; ConfigError when it is not allowed."""
        try:
            if self.type is bool:
                if isinstance(value, str):  # as written on a command line: --variant skip_terminal=true
                    value = {"true": True, "1": True, "false": False, "0": False}[value.strip().lower()]
                if not isinstance(value, (bool, int)) or value not in (0, 1):
                    raise ValueError
                value = bool(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif self.type is int:
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise ValueError
                value = int(float(value))
            else:
                value = str(value).strip()
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ConfigError(f"{self.name} must be {self.describe()}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"unknown {self.name} {value!r}; expected one of {', '.join(map(str, self.choices))}")
        if self.type in (float, int):
            below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            above = self.high is not None and value > self.high
            if not math.isfinite(value) or below or above:
                raise ConfigError(f"{self.name} must be {self.describe()}, got {value:g}")
        return value


@dataclass(frozen=True)
class SamplingSettings:
    """Every sampling setting of :class:`~piti.pipeline.PITIPipeline`; the defaults are the ``fast`` profile."""

    guidance: float = _setting(
        0.3,
        "classifier-free guidance strength w: eps_c + w (eps_c - eps_u), 0 = none "
        "(the official scripts' s = 1.3 is w = 0.3)",
        low=-1.0,
        high=100.0,
    )
    guidance_mode: str = _setting(
        "plain", "plain (official) or normalized (the paper's normalized guidance)", choices=MODES
    )
    guidance_stats: str = _setting(
        "sample", "normalized guidance statistics: per sample or per sample and channel", choices=STATS
    )
    guidance_sigma: str = _setting(
        "measured",
        "normalized guidance: the guided eps's std measured, or the paper's analytic sqrt((1+w)^2 s_c^2 + w^2 s_u^2)",
        choices=SIGMAS,
    )
    guidance_tmin: float = _setting(
        0.0,
        "guidance interval: guidance applies from this fraction of the process, t/T (0 = official)",
        low=0.0,
        high=1.0,
    )
    guidance_tmax: float = _setting(
        1.0,
        "guidance interval: guidance applies below this fraction t/T; the steps outside run the conditional "
        "prediction alone (1 = official)",
        low=0.0,
        high=1.0,
    )
    cond_noise: float = _setting(
        0.0,
        "condition annealing (CADS): noise mixed into the encoded condition at the early base steps, 0 = none",
        low=0.0,
        high=10.0,
    )
    cond_noise_tmin: float = _setting(
        0.5, "condition annealing: the condition is exact below this fraction of the process, t/T", low=0.0, high=1.0
    )
    cond_noise_tmax: float = _setting(
        0.9, "condition annealing: above this fraction t/T the encoded condition is noise only", low=0.0, high=1.0
    )
    reward_guidance: float = _setting(
        0.0,
        "reward guidance: step of a reward model's gradient on each base step's predicted x0, 0 = none "
        "(needs the pipeline's reward model)",
        low=0.0,
        high=10.0,
    )
    reward_guidance_tmin: float = _setting(
        0.0, "reward guidance: applies from this fraction of the process, t/T", low=0.0, high=1.0
    )
    reward_guidance_tmax: float = _setting(
        1.0, "reward guidance: applies below this fraction of the process, t/T", low=0.0, high=1.0
    )
    redraw_threshold: float = _setting(
        0.0,
        "a base sample whose reward-model reading disagrees with the condition by more than this (the reward's "
        f"consistency loss) is drawn again, up to {REDRAW_TRIES} times, the closest draw kept; 0 = never "
        "(needs the pipeline's reward model)",
        low=0.0,
        high=100.0,
    )
    redraw_colour_threshold: float = _setting(
        0.0,
        "depth task: a base sample whose colours, per class (the class model's reading) and depth, are farther from "
        "the training images' than this (the colour prior's mean squared Mahalanobis distance) is drawn again, as by "
        "redraw_threshold; 0 = never (needs the pipeline's class model and colour prior)",
        low=0.0,
        high=1000.0,
    )
    redraw_early_t: float = _setting(
        0.0,
        "the redraw checks also read each base draw's predicted x0 once the steps at t/T >= this are walked, and a "
        f"draw they reject there (by {EARLY_MARGIN:g} times their thresholds) starts again from noise, up to "
        f"{REDRAW_TRIES} times, before the remaining steps; 0 = never (no effect without a redraw check)",
        low=0.0,
        high=1.0,
    )
    particle_guidance: float = _setting(
        0.0,
        "particle guidance: step of a repulsion between the samples of one call on each base step's predicted x0, "
        "so they differ; 0 = none, no effect on a single sample",
        low=0.0,
        high=10.0,
    )
    particle_features: str = _setting(
        "pixels",
        "particle guidance: what it pushes apart, on an 8 x 8 grid: the colours, or the class probabilities of a "
        "class model (needs the pipeline's class model)",
        choices=("pixels", "classes"),
    )
    particle_guidance_tmin: float = _setting(
        0.5, "particle guidance: applies from this fraction of the process, t/T", low=0.0, high=1.0
    )
    particle_guidance_tmax: float = _setting(
        1.0, "particle guidance: applies below this fraction of the process, t/T", low=0.0, high=1.0
    )
    sampler: str = _setting("dpmpp", "base sampler", choices=tuple(SAMPLERS))
    steps: str = _setting("20", "base steps: a number, or a respacing such as ddim50 or fast27")
    skip_terminal: bool = _setting(
        False,
        "skip the base sampler's step at t = T, where the cosine schedule leaves sqrt(alpha_bar) = 5e-5 and the "
        "clamped x0 prediction is saturated noise; x_T is read as the next step's x_t (False = official)",
    )
    noise_scale: float = _setting(
        1.0, "DDPM: factor of the noise added at each base step (1 = official)", low=0.0, high=1.5
    )
    noise_scale_tmax: float = _setting(
        1.0, "DDPM: noise_scale applies below this fraction of the process, t/T (1 = every step)", low=0.0, high=1.0
    )
    antithetic_noise: bool = _setting(
        False,
        "the base sampler's noises (x_T and each ancestral step's) centred across the samples of one call, rescaled: "
        "each sample's stay N(0, I), any two correlate -1/(K-1) (two samples: z and -z); one sample drawn as without",
    )
    eta: float = _setting(0.0, "DDIM: eta of the base steps (0 = deterministic)", low=0.0, high=1.0)
    cache_interval: int = _setting(
        1,
        "feature caching (DeepCache): the base UNet runs whole on every N-th network call of a run and reuses its deep "
        "features on the calls between, running only its outer cache_branch blocks; 1 = every call whole (official)",
        low=1,
        high=100,
    )
    cache_branch: int = _setting(
        3,
        "feature caching: the first input blocks (and as many last output blocks) that a reusing call runs",
        low=1,
        high=100,
    )
    cache_tmax: float = _setting(
        1.0, "feature caching: the calls at or above this fraction of the process, t/T, run whole", low=0.0, high=1.0
    )
    upsample_sampler: str = _setting("dpmpp", "upsampler sampler", choices=tuple(SAMPLERS))
    upsample_steps: str = _setting("10", "upsampler steps: a number, or a respacing such as fast27")
    upsample_noise_scale: float = _setting(
        1.0, "DDPM: factor of the noise added at each upsampler step (1 = official)", low=0.0, high=1.5
    )
    upsample_eta: float = _setting(0.0, "DDIM: eta of the upsampler steps", low=0.0, high=1.0)
    upsample_temperature: float = _setting(
        0.997, "scale of the upsampler's initial noise (official 0.997)", low=0.0, high=1.5, low_open=True
    )
    upsample_start: float = _setting(
        1.0,
        "1 = the upsampler starts from noise (official); s < 1: from the enlarged "
        "base image noised to step s x T (SDEdit)",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    upsample_reward_guidance: float = _setting(
        0.0,
        "reward guidance of the upsampler: step of the reward model's gradient on each upsampler step's predicted "
        "x0, at the upsampler's size, 0 = none (needs the pipeline's reward model)",
        low=0.0,
        high=10.0,
    )
    quantize_low_res: bool = _setting(True, "quantise the base images to 8 bits before upsampling (official)")
    palette: str = _setting("coco-stuff", "mask task: the colour palette of the label maps", choices=tuple(PALETTES))

    def __post_init__(self):
        for spec in setting_specs().values():
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        for window in ("guidance", "cond_noise", "reward_guidance", "particle_guidance"):  # the t/T windows
            low, high = getattr(self, f"{window}_tmin"), getattr(self, f"{window}_tmax")
            if low >= high:
                raise ConfigError(f"{window}_tmin must be below {window}_tmax, got {low:g} >= {high:g}")

    def replace(self, **overrides) -> SamplingSettings:
        """A copy with ``overrides`` (None = keep), checked; ConfigError for an unknown name or a bad value."""
        check_names(overrides)
        return SamplingSettings(**{**asdict(self), **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)


def setting_specs() -> dict[str, SettingSpec]:
    """Name -> :class:`SettingSpec` of every sampling setting, in declaration order."""
    if not _SPECS:
        for f in fields(SamplingSettings):
            name = f.type if isinstance(f.type, str) else f.type.__name__
            kind = {"float": float, "int": int, "str": str, "bool": bool}[name]
            assert f.default is not MISSING
            _SPECS[f.name] = SettingSpec(name=f.name, type=kind, default=f.default, **f.metadata)
    return _SPECS


_SPECS: dict[str, SettingSpec] = {}


def check_names(settings: dict) -> None:
    """ConfigError naming every key of ``settings`` that is not a sampling setting."""
    unknown = sorted(set(settings) - set(setting_specs()))
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {unknown}; known: {', '.join(setting_specs())}")


# The two sets of defaults: "official" = the official scripts (ancestral DDPM, 250 base steps, fast27 for the
# upsampler); "fast" = DPM-Solver++(2M), 20 base and 10 upsampler steps.
PROFILES = {
    "fast": SamplingSettings(),
    "official": SamplingSettings(sampler="ddpm", steps="250", upsample_sampler="ddpm", upsample_steps="fast27"),
}


# The toy recipe's recommended sampling for its joint models, chosen on held-out selection scenes
# (docs/experiments.md): normalized guidance w=5, ancestral DDPM in 25 base steps with 0.7 of the official noise
# per step, and the upsampler's 10 DDPM steps (official noise) started from the base image noised to t=0.1.
# The shipped files, continued past the recipe, carry their own in their headers (w=3; the model card).
TOY_RECIPE = PROFILES["fast"].replace(
    guidance=5.0,
    guidance_mode="normalized",
    sampler="ddpm",
    steps="25",
    noise_scale=0.7,
    upsample_sampler="ddpm",
    upsample_steps="10",
    upsample_start=0.1,
    palette="synth",
)


def official_to_w(scale: float) -> float:
    """The paper's w from the official code's guidance scale s (eps_u + s (eps_c - eps_u)): w = s - 1."""
    return float(scale) - 1.0


def settings_from_header(sampling: dict) -> dict:
    """The recommended settings stored in a checkpoint header, as setting overrides (checked).

    Headers written with a ``guidance_convention`` key are read in that convention; keys that are not
    sampling settings are ConfigError.
    """
    sampling = dict(sampling)
    if sampling.pop("guidance_convention", "paper") == "official" and "guidance" in sampling:
        sampling["guidance"] = official_to_w(sampling["guidance"])
    check_names(sampling)
    PROFILES["fast"].replace(**sampling)  # checks the values
    return sampling


def add_settings_arguments(
    parser: argparse.ArgumentParser, defaults: SamplingSettings | None = None, title: str = "sampling settings"
) -> None:
    """Add one flag per sampling setting to ``parser``, plus ``--guidance-scale`` (the official s).

    With ``defaults=None`` every flag defaults to None, meaning "the checkpoint's recommendation, else the
    profile's"; otherwise the flags default to the values of ``defaults``.
    """
    group = parser.add_argument_group(title)
    guidance = group.add_mutually_exclusive_group()  # --guidance (w) or --guidance-scale (s)
    fast, official = PROFILES["fast"], PROFILES["official"]
    for spec in setting_specs().values():
        default = None if defaults is None else getattr(defaults, spec.name)
        if defaults is not None:
            shown = f"default {default}"
        elif getattr(fast, spec.name) != getattr(official, spec.name):
            shown = (
                f"default: the checkpoint's, else {getattr(fast, spec.name)} (fast) / "
                f"{getattr(official, spec.name)} (official)"
            )
        else:
            shown = f"default: the checkpoint's, else {spec.default}"
        kwargs = dict(default=default, help=f"{spec.help} ({shown})")
        if spec.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=spec.type, choices=spec.choices, metavar=None if spec.choices else spec.name.upper())
        (guidance if spec.name == "guidance" else group).add_argument(spec.flag, **kwargs)
    guidance.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        metavar="S",
        help="guidance in the official convention, eps_u + s (eps_c - eps_u): s = 1 + w (instead of --guidance)",
    )


def settings_from_args(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (flags left at None are not included)."""
    given = {name: getattr(args, name) for name in setting_specs() if getattr(args, name, None) is not None}
    scale = getattr(args, "guidance_scale", None)
    if scale is not None:
        given["guidance"] = official_to_w(scale)
    return given
