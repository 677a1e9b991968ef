"""The sampling pipeline: a condition picture in, photos out (base model, then upsampler).

    pipe = PITIPipeline.from_checkpoints(task="mask")           # the embedded toy models
    out = pipe(Image.open("labels.png"), num_samples=4, seed=0)
    out.images[0].save("photo.png")                               # 256 px (128 px for the toy models)

What one call does:

1. the condition picture becomes the model's tensor through :func:`piti.data.conditions.condition_tensor`
   (the one place that knows each task's encoding), with a note for every conversion it made;
2. the condition encoder runs ONCE per image (and once for the null condition), and its outputs
   ``dict(xf_proj, xf_out)`` are reused at every step (the official code re-runs it every step;
   ``encode_once=False`` does that, for comparison);
3. the base model samples 64-px images with classifier-free guidance (:func:`piti.diffusion.guided_denoiser`,
   conditional and null predictions in one doubled batch);
4. as the official code: the base output is clamped and quantised to 8 bits (truncation) before it is
   given to the upsampler, whose initial noise is scaled by 0.997 and which runs without guidance (its
   null condition was never trained: the official upsampler is trained with ``uncond_p = 0``).

Two sets of defaults (``profile``): ``"official"`` = ancestral DDPM, 250 base steps and ``fast27`` for the
upsampler (the official scripts; the default for official checkpoints), and ``"fast"`` = DPM-Solver++(2M)
with 20 base and 10 upsampler steps (the default for the project's checkpoints). Guidance defaults to the
official strength 1.3 in the official convention, which is w = 0.3 in the paper's (see docs/sampling.md).
A project checkpoint may carry recommended settings in its header (``"sampling": {...}``, e.g. ``guidance``,
``guidance_mode``, ``palette``); they override the profile. Arguments of the call override both.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from piti.diffusion import SAMPLERS, create_diffusion, guided_denoiser, sample
from piti.errors import CheckpointError, ConditionError, ConfigError, MissingWeightsError
from piti.precision import Policy, make_policy

# Where the embedded default models live (trained by `make toy-models`).
TOY_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "toy"
TOY_BUDGET_MB = 60  # every shipped file of checkpoints/toy together (issue 6)
TASKS = ("mask", "sketch", "depth")
PROFILES = {
    "official": dict(sampler="ddpm", steps="250", upsample_sampler="ddpm", upsample_steps="fast27"),
    "fast": dict(sampler="dpmpp", steps="20", upsample_sampler="dpmpp", upsample_steps="10"),
}
# Defaults shared by both profiles: the official guidance strength and low-res handling.
COMMON_DEFAULTS = dict(
    guidance=0.3, guidance_mode="plain", guidance_convention="paper", guidance_stats="sample", eta=0.0,
    noise_scale=1.0, upsample_noise_scale=1.0,
    quantize_low_res=True, upsample_temperature=0.997, upsample_start=1.0, palette="coco-stuff",
)
SETTING_NAMES = tuple(COMMON_DEFAULTS) + tuple(PROFILES["fast"])
# A condition bigger than this many times the model's condition size is first reduced (nearest) for speed.
LARGE_FACTOR = 4


def toy_checkpoint_paths(task: str) -> tuple[Path, Path]:
    """Paths of the embedded default base and upsampler checkpoints of ``task``."""
    return (TOY_CHECKPOINT_DIR / f"piti-toy-{task}-base.safetensors",
            TOY_CHECKPOINT_DIR / f"piti-toy-{task}-upsample.safetensors")


@dataclass
class PipelineOutput:
    """What a pipeline call returns.

    ``images``: the final pictures (upsampled, or the base ones when upsampling is off);
    ``base_images``: the 64-px base samples (exactly the 8-bit images the upsampler was given);
    ``upsampled_images``: the upsampler's pictures, empty when upsampling is off;
    ``settings``: every setting used (seed included), JSON-ready; ``notes``: conversions made to the condition;
    ``condition``: the model's condition tensor (1, C, S, S) in [-1, 1] at the base model's size.
    """

    images: list
    base_images: list
    upsampled_images: list
    settings: dict
    notes: list = field(default_factory=list)
    condition: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Images


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 values, clamped and truncated as the official code does."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def to_pil(x: torch.Tensor) -> list:
    """(B, 3, H, W) images in [-1, 1] as a list of RGB PIL images."""
    arr = to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def _describe(image) -> str:
    if isinstance(image, Image.Image):
        return f"{image.width}x{image.height} {image.mode} image"
    return f"array of shape {tuple(np.shape(image))}"


def _has_transparency(image) -> bool:
    """True for a PIL picture with an alpha channel (or transparent palette entry) that is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA", "P"):
        return False
    if image.mode == "P" and "transparency" not in image.info:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def _looks_like_photo(image) -> float:
    """Fraction of mid-grey pixels (48..207): a sketch is nearly binary, a photo is not."""
    if isinstance(image, Image.Image):
        if _has_transparency(image):
            return 0.0  # a transparent drawing layer: the strokes are the alpha channel
        gray = np.asarray(image.convert("L"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 4 and arr[..., 3].min() < 255:
            return 0.0
        if arr.dtype != np.uint8:
            return 0.0  # float or bool sketches are judged by condition_tensor
        gray = arr[..., :3].mean(-1) if arr.ndim == 3 else arr
    return float(((gray >= 48) & (gray <= 207)).mean())


def open_condition(path):
    """Read a condition file: an image in its own mode (PIL), or a ``.npy`` array (e.g. depth in metres)."""
    from piti.data.imageio import read_array, read_image
    from piti.errors import DatasetError

    try:
        if str(path).lower().endswith(".npy"):
            return read_array(path)
        return read_image(path, mode=None)
    except DatasetError as e:
        raise ConditionError(str(e)) from None


def prepare_condition(task: str, image, size: int, *, palette="coco-stuff", sketch_from_photo=False,
                      snap=False, source=None) -> tuple[torch.Tensor, list]:
    """A user's condition (PIL image, array, tensor (C, S, S) in [-1, 1], or path) as the model's tensor.

    Returns ``(tensor (1, C, size, size), notes)``; the notes say what was converted (resizing, alpha,
    palette mode, inverted sketches). Raises ConditionError for pictures that do not fit the task.
    """
    from piti.data.conditions import TASK_CHANNELS, condition_tensor

    if sketch_from_photo and task != "sketch":
        raise ConfigError(f"sketch_from_photo applies to the sketch task only, not to {task!r}")
    if torch.is_tensor(image):  # already the model's encoding
        c = TASK_CHANNELS[task]
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] != c:
            raise ConditionError(f"a condition tensor for {task!r} must be ({c}, H, W) in [-1, 1], got {tuple(image.shape)}")
        notes = []
        if tuple(image.shape[1:]) != (size, size):
            notes.append(f"condition tensor resized (nearest) from {tuple(image.shape[1:])} to {size}x{size}")
            image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="nearest")[0]
        return image.float()[None], notes

    if isinstance(image, (str, Path)):
        image, source = open_condition(image), str(image)
    notes = []
    name = source or "the condition"
    if isinstance(image, Image.Image):
        w, h = image.size
        if image.mode == "P":
            notes.append(f"{name}: palette-mode (P) image converted to its RGB colours")
        transparent = _has_transparency(image)
        if transparent and task == "mask":
            notes.append(f"{name}: alpha channel used: transparent pixels are unlabelled (black)")
        elif transparent and task == "sketch" and not sketch_from_photo:
            notes.append(f"{name}: alpha channel used: the opaque pixels are the strokes")
        elif image.mode in ("RGBA", "LA", "PA"):
            notes.append(f"{name}: alpha channel ignored (fully opaque)")
        # very large pictures are first reduced by nearest sampling (what the final resize does anyway)
        if task in ("mask", "depth") and max(w, h) > LARGE_FACTOR * size:
            notes.append(f"{name}: large image ({w}x{h}) reduced before conversion")
            image = image.resize((LARGE_FACTOR * size, LARGE_FACTOR * size), Image.NEAREST)
    else:
        transparent = False
        shape = np.shape(image) if not isinstance(image, (tuple, list)) else ()
        h, w = shape[:2] if len(shape) >= 2 else (size, size)  # a (normal, depth) pair: checked later
    if (w, h) != (size, size):
        aspect = " (aspect ratio not kept, as in the official code)" if w != h else ""
        notes.append(f"{name}: resized from {w}x{h} to {size}x{size}{aspect}")
    if task == "sketch" and not sketch_from_photo:
        mid = _looks_like_photo(image)
        if mid > 0.2:
            raise ConditionError(
                f"{name} ({_describe(image)}) looks like a photo, not a sketch ({mid:.0%} of its pixels are mid-grey); "
                "a sketch is white lines on black (or dark lines on white). Use sketch_from_photo=True "
                "(CLI: --sketch-from-photo) to extract its edges first"
            )
        gray = np.asarray(image.convert("L")) if isinstance(image, Image.Image) and not transparent else None
        if gray is not None and (gray >= 128).mean() > 0.5:
            notes.append(f"{name}: dark lines on a light background, inverted to white lines on black")
    if sketch_from_photo:
        notes.append(f"{name}: sketch extracted from the photo (Canny edges at {size}x{size})")
    cond = condition_tensor(task, image, size, palette=palette, snap=snap, from_photo=sketch_from_photo, source=source)
    return cond[None], notes


# --------------------------------------------------------------------------------------------------
# Loading


def _load_piti(path, role: str, task: str | None):
    """Load a PITI checkpoint and check it is the right kind of model."""
    from piti.checkpoints import load_model

    model = load_model(path, device="cpu")
    cfg = model.config
    if cfg.kind != "piti":
        raise CheckpointError(f"{path} is a GLIDE text-to-image checkpoint; the {role} must be a PITI model "
                              "(keys encoder.* and decoder.*)")
    if cfg.super_res != (role == "upsampler"):
        what = "an upsampler" if cfg.super_res else "a base model"
        raise CheckpointError(f"{path} holds {what}, but it was given as the {role}")
    if task is not None and cfg.task != task:
        raise ConfigError(f"{path} is a {cfg.task}-to-image model, but the task is {task!r}")
    return model


class PITIPipeline:
    """A PITI base model, an optional upsampler and the task, ready to sample.

    Args:
        base: a PITI base model (``PITIModel`` with ``super_res=False``).
        upsampler: a PITI upsampler, or None for 64-px samples only.
        device, precision, channels_last, compile: the run policy (:func:`piti.precision.make_policy`).
        profile: ``"fast"`` or ``"official"`` default sampling settings (see the module docstring).
        defaults: settings that override the profile (e.g. from a checkpoint's header).
    """

    def __init__(self, base, upsampler=None, *, device="cpu", precision="auto", channels_last=None,
                 compile=False, profile="fast", defaults: dict | None = None):
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        cfg = base.config
        if cfg.kind != "piti" or cfg.super_res:
            raise ConfigError("the base model must be a PITI base model (kind 'piti', super_res False)")
        if upsampler is not None:
            ucfg = upsampler.config
            if ucfg.kind != "piti" or not ucfg.super_res:
                raise ConfigError("the upsampler must be a PITI super-resolution model (kind 'piti', super_res True)")
            if ucfg.task != cfg.task:
                raise ConfigError(f"the base model is for {cfg.task!r} but the upsampler for {ucfg.task!r}")
        self.task = cfg.task
        self.policy: Policy = make_policy(device, precision, channels_last, compile)
        self.base_model = base
        self.upsampler_model = upsampler
        # the callables (compiled wrappers when compile=True) and the plain modules for encode()
        self._base = self.policy.prepare(base)
        self._upsampler = self.policy.prepare(upsampler) if upsampler is not None else None
        self.profile = profile
        unknown = sorted(set(defaults or {}) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"unknown sampling default(s) {unknown}; known: {', '.join(SETTING_NAMES)}")
        self.defaults = {**COMMON_DEFAULTS, **PROFILES[profile], **(defaults or {})}
        self.sources = {"base": getattr(base, "checkpoint_path", None),
                        "upsampler": getattr(upsampler, "checkpoint_path", None)}
        self._diffusions: dict = {}

    @classmethod
    def from_checkpoints(cls, base=None, upsampler=None, task: str | None = None, *, device="cpu",
                         precision="auto", channels_last=None, compile=False, profile: str | None = None,
                         **defaults) -> "PITIPipeline":
        """Load official or project checkpoints (format detected from the file).

        With no paths, the embedded default models of ``task`` (``checkpoints/toy/``); with ``base`` only,
        a base-only pipeline. ``profile=None`` picks ``"official"`` for official checkpoints and ``"fast"``
        for the project's; ``**defaults`` override sampling defaults (see ``SETTING_NAMES``).
        """
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        make_policy(device, precision, channels_last, compile)  # a bad device or precision fails before loading
        if base is None:
            if upsampler is not None:
                raise ConfigError("an upsampler checkpoint was given without a base checkpoint")
            task = task or "mask"
            base, upsampler = toy_checkpoint_paths(task)
            missing = [p for p in (base, upsampler) if not p.is_file()]
            if missing:
                raise MissingWeightsError(
                    f"the embedded default {task} model is missing ({', '.join(str(p) for p in missing)}); "
                    "`make toy-models` trains it, or give your own checkpoints (--base/--upsampler)"
                )
        base_model = _load_piti(base, "base model", task)
        up_model = _load_piti(upsampler, "upsampler", base_model.config.task) if upsampler is not None else None
        for model, path in ((base_model, base), (up_model, upsampler)):
            if model is not None:
                model.checkpoint_path = str(path)
        header = base_model.checkpoint_metadata
        official = not header  # official files carry no project header
        recommended = dict(header.get("sampling", {})) if isinstance(header.get("sampling"), dict) else {}
        recommended = {k: v for k, v in recommended.items() if k in SETTING_NAMES}
        return cls(base_model, up_model, device=device, precision=precision, channels_last=channels_last,
                   compile=compile, profile=profile or ("official" if official else "fast"),
                   defaults={**recommended, **defaults})

    # ----------------------------------------------------------------------------------------------
    def diffusion(self, model, steps, start: float = 1.0):
        """The respaced diffusion of ``model`` for ``steps`` (an int or a respacing such as ``"fast27"``),
        over the whole schedule or, with ``start`` < 1, over its first ``start`` fraction (see ``upsample_start``)."""
        cfg = model.config
        spec = str(steps).strip()
        last_step = None if float(start) >= 1.0 else max(1, round(float(start) * (cfg.diffusion_steps - 1)))
        # One step is refused: the official respacing of "1" keeps only timestep 0 (a one-section
        # stride rule), so the sampler would start from pure noise labelled t=0 and return that noise.
        if spec.isdigit() and not 2 <= int(spec) <= cfg.diffusion_steps:
            raise ConfigError(f"steps must be between 2 and {cfg.diffusion_steps}, got {spec}"
                              + (" (one respaced step is timestep 0 alone: nothing would be denoised)"
                                 if spec == "1" else ""))
        key = (cfg.noise_schedule, cfg.diffusion_steps, spec, last_step)
        if key not in self._diffusions:
            self._diffusions[key] = create_diffusion(cfg.noise_schedule, cfg.diffusion_steps, spec, last_step=last_step)
        return self._diffusions[key]

    def resolve_settings(self, **overrides) -> dict:
        """The pipeline defaults with ``overrides`` (None = keep the default), checked."""
        unknown = sorted(set(overrides) - set(SETTING_NAMES))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {', '.join(SETTING_NAMES)}")
        s = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("sampler", "upsample_sampler"):
            if s[key] not in SAMPLERS:
                raise ConfigError(f"unknown {key} {s[key]!r}; expected one of {', '.join(SAMPLERS)}")
        if not math.isfinite(float(s["guidance"])):
            raise ConfigError(f"guidance must be a finite number, got {s['guidance']}")
        if not 0 < float(s["upsample_temperature"]) <= 1.5:
            raise ConfigError(f"upsample_temperature must be in (0, 1.5], got {s['upsample_temperature']}")
        if not 0 < float(s["upsample_start"]) <= 1:
            raise ConfigError(f"upsample_start must be in (0, 1], got {s['upsample_start']}")
        if float(s["eta"]) < 0:
            raise ConfigError(f"eta must be >= 0, got {s['eta']}")
        for key in ("noise_scale", "upsample_noise_scale"):
            if not 0 <= float(s[key]) <= 1.5:
                raise ConfigError(f"{key} must be in [0, 1.5], got {s[key]}")
        s["steps"], s["upsample_steps"] = str(s["steps"]), str(s["upsample_steps"])
        return s

    def encode(self, model, ref: torch.Tensor) -> dict:
        """Run ``model``'s condition encoder once, under the run policy."""
        with self.policy.autocast():
            return model.encode(ref.to(self.policy.device))

    def base_denoiser(self, ref: torch.Tensor, batch: int, settings: dict, encode_once: bool = True):
        """The guided ``denoise(x_t, t_model)`` of the base model for ``batch`` copies of condition ``ref``.

        ``encode_once=True`` encodes ``ref`` and the null condition once here; ``False`` passes the raw
        condition images to the network, which re-encodes the doubled batch at every step (official code).
        """
        from piti.data.conditions import null_condition

        model, policy = self._base, self.policy
        ref = ref.to(policy.device)
        null_ref = null_condition(ref[:1])
        if encode_once:
            cond = {k: v.expand(batch, *v.shape[1:]) for k, v in self.encode(self.base_model, ref[:1]).items()}
            null = self.encode(self.base_model, null_ref)

            def model_fn(x, t, c):
                with policy.autocast():
                    return model(policy.input(x), t, cond_emb=c)
        else:
            cond = ref[:1].expand(batch, *ref.shape[1:])
            null = null_ref

            def model_fn(x, t, c):
                with policy.autocast():
                    return model(policy.input(x), t, ref=c)

        return guided_denoiser(model_fn, cond, null, settings["guidance"], mode=settings["guidance_mode"],
                               convention=settings["guidance_convention"], stats=settings["guidance_stats"])

    def upsampler_denoiser(self, ref: torch.Tensor, low_res: torch.Tensor, encode_once: bool = True):
        """The unguided ``denoise(x_t, t_model)`` of the upsampler for the 64-px images ``low_res``."""
        model, policy = self._upsampler, self.policy
        batch = low_res.shape[0]
        ref, low_res = ref.to(policy.device), low_res.to(policy.device)
        if encode_once:
            emb = {k: v.expand(batch, *v.shape[1:]) for k, v in self.encode(self.upsampler_model, ref[:1]).items()}

            def denoise(x, t):
                with policy.autocast():
                    return model(policy.input(x), t, cond_emb=emb, low_res=low_res)
        else:
            refs = ref[:1].expand(batch, *ref.shape[1:])

            def denoise(x, t):
                with policy.autocast():
                    return model(policy.input(x), t, ref=refs, low_res=low_res)

        return denoise

    def _sampler_kwargs(self, name, settings, generator, progress, noise_scale_key="noise_scale"):
        kwargs = dict(generator=generator, progress=progress)
        if name == "ddim":
            kwargs["eta"] = float(settings["eta"])
        if name == "ddpm":  # the other samplers add no noise of their own (DDIM's eta is its counterpart)
            kwargs["noise_scale"] = float(settings[noise_scale_key])
        return kwargs

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, condition, *, num_samples: int = 1, seed: int | None = 0, upsample: bool | None = None,
                 sketch_from_photo: bool = False, snap: bool = False, progress: bool = True,
                 encode_once: bool = True, source: str | None = None, **settings) -> PipelineOutput:
        """Translate ``condition`` into ``num_samples`` pictures.

        Args:
            condition: PIL image (any mode), NumPy array, file path, or a ready (C, S, S) tensor in [-1, 1].
            num_samples: pictures per call (one batch).
            seed: same seed, same pixels (on the same device and precision); None draws one (recorded).
            upsample: run the upsampler (default: when one is loaded).
            sketch_from_photo: (sketch task) extract the sketch from a photo first.
            snap: (mask task) map colours outside the palette to the nearest class colour.
            progress: tqdm bars over the steps.
            encode_once: reuse the encoder outputs across steps (False: re-encode every step, as officially).
            source: how to name the condition in notes and errors (e.g. its file name).
            **settings: ``guidance`` (its meaning set by ``guidance_convention``: "paper" w, or "official" s =
                1 + w), ``guidance_mode`` ("plain" | "normalized"), ``guidance_stats`` ("sample" | "channel"),
                ``sampler``/``upsample_sampler`` ("ddpm" | "ddim" | "dpmpp"), ``steps``/``upsample_steps``
                (a number or a respacing such as "fast27"), ``eta`` (DDIM), ``noise_scale`` /
                ``upsample_noise_scale`` (DDPM: the factor of the noise added at each step; 1 = official,
                below 1 = cleaner, less varied pictures from small models), ``quantize_low_res``,
                ``upsample_temperature``, ``upsample_start`` (1 = official: the upsampler starts from noise;
                s < 1: from the bicubic enlargement of the base image noised to step s x T, SDEdit-style,
                for upsamplers whose high-noise steps are not trained well enough), ``palette`` (mask colours).
        """
        s = self.resolve_settings(**settings)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
        if upsample is None:
            upsample = self._upsampler is not None
        if upsample and self._upsampler is None:
            raise ConfigError("upsampling was asked for, but this pipeline has no upsampler (give an upsampler checkpoint)")
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        policy, dev = self.policy, self.policy.device
        generator = torch.Generator(device=dev).manual_seed(seed)
        timings = {}

        # 1. the condition, at the size each model's encoder takes
        refs, notes = {}, list(policy.notes)
        for model in filter(None, (self.base_model, self.upsampler_model if upsample else None)):
            size = model.config.cond_size
            if size not in refs:
                refs[size], new_notes = prepare_condition(self.task, condition, size, palette=s["palette"],
                                                          sketch_from_photo=sketch_from_photo, snap=snap,
                                                          source=source)
                notes += [n for n in new_notes if n not in notes]
        base_ref = refs[self.base_model.config.cond_size]

        # 2. the base model, guided
        start = time.perf_counter()
        cfg = self.base_model.config
        diffusion = self.diffusion(self.base_model, s["steps"])
        x_T = torch.randn((num_samples, 3, cfg.image_size, cfg.image_size), generator=generator, device=dev)
        denoise = self.base_denoiser(base_ref, num_samples, s, encode_once=encode_once)
        x0 = sample(s["sampler"], denoise, x_T, diffusion, **self._sampler_kwargs(s["sampler"], s, generator, progress))
        x0 = x0.float().clamp(-1, 1)
        # Official: the base output is quantised to 8 bits (truncation) before the upsampler sees it.
        low_res = to_uint8(x0).float() / 127.5 - 1 if s["quantize_low_res"] else x0
        timings["base_s"] = time.perf_counter() - start
        base_images = to_pil(x0)  # the same 8 bits as low_res (re-quantising low_res could lose one)

        # 3. the upsampler, unguided, from noise scaled by the temperature (official 0.997); with
        #    upsample_start < 1, from the bicubic enlargement of low_res noised to that point (SDEdit)
        upsampled = []
        if upsample:
            start = time.perf_counter()
            ucfg = self.upsampler_model.config
            up_diffusion = self.diffusion(self.upsampler_model, s["upsample_steps"], s["upsample_start"])
            shape = (num_samples, 3, ucfg.image_size, ucfg.image_size)
            x_T = torch.randn(shape, generator=generator, device=dev) * float(s["upsample_temperature"])
            if float(s["upsample_start"]) < 1:
                enlarged = F.interpolate(low_res, size=shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
                last = torch.full((num_samples,), up_diffusion.num_timesteps - 1, device=dev, dtype=torch.long)
                x_T = up_diffusion.q_sample(enlarged, last, x_T)
            denoise = self.upsampler_denoiser(refs[ucfg.cond_size], low_res, encode_once=encode_once)
            kwargs = self._sampler_kwargs(s["upsample_sampler"], s, generator, progress, "upsample_noise_scale")
            upsampled = to_pil(sample(s["upsample_sampler"], denoise, x_T, up_diffusion, **kwargs))
            timings["upsample_s"] = time.perf_counter() - start

        s = dict(s, task=self.task, num_samples=num_samples, seed=seed, upsample=bool(upsample),
                 sketch_from_photo=sketch_from_photo, snap=snap, encode_once=encode_once, profile=self.profile,
                 guidance_w=_paper_w(s), guidance_s=_paper_w(s) + 1.0, **policy.to_dict(),
                 base_model=self.base_model.config.name or "custom", base_checkpoint=self.sources["base"],
                 base_size=cfg.image_size, timings=timings)
        if upsample:
            s.update(upsampler_model=self.upsampler_model.config.name or "custom",
                     upsampler_checkpoint=self.sources["upsampler"], upsample_size=self.upsampler_model.config.image_size)
        return PipelineOutput(images=upsampled or base_images, base_images=base_images, upsampled_images=upsampled,
                              settings=s, notes=notes, condition=base_ref)


def _paper_w(settings: dict) -> float:
    """The guidance strength in the paper's convention (w), whatever convention it was given in."""
    g = float(settings["guidance"])
    return g - 1.0 if settings["guidance_convention"] == "official" else g
