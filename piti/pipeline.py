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

The settings are the fields of :class:`piti.settings.SamplingSettings`, in two sets of defaults
(``profile``): ``"official"`` = ancestral DDPM, 250 base steps and ``fast27`` for the upsampler, plain
guidance w = 0.3 (the official scripts' s = 1.3), computed in fp32 (the default for official checkpoints);
``"fast"`` = DPM-Solver++(2M) with 20 base and 10 upsampler steps, in the fastest good precision of the
machine (the default for the project's checkpoints). A project checkpoint carries recommended settings in
its header (``"sampling": {...}``); they override the profile. Arguments of the call override both.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from piti.data.conditions import condition_tensor, null_condition, open_condition
from piti.diffusion import (
    antithetic_draws,
    condition_annealer,
    create_diffusion,
    guided_denoiser,
    repulsion,
    reward_guided,
    sample,
    sampler_options,
)
from piti.errors import CheckpointError, ConfigError, MissingWeightsError
from piti.nn.unet import FeatureCache
from piti.precision import Policy, make_policy
from piti.settings import EARLY_MARGIN, PROFILES, REDRAW_TRIES, SamplingSettings, check_names, settings_from_header
from piti.tasks import TASKS
from piti.train.colour_prior import load_colour_prior
from piti.weights import TOY_CHECKPOINT_DIR  # where the embedded default models live

__all__ = ["PITIPipeline", "PipelineOutput", "open_condition", "to_pil", "to_uint8", "toy_checkpoint_paths"]

TOY_BUDGET_MB = 60  # every shipped file of checkpoints/toy together
# the settings that use the reward model
REWARD_SCALES = ("reward_guidance", "upsample_reward_guidance", "redraw_threshold")


def toy_checkpoint_paths(task: str) -> tuple[Path, Path]:
    """Paths of the embedded default base and upsampler checkpoints of ``task``."""
    return (
        TOY_CHECKPOINT_DIR / f"piti-toy-{task}-base.safetensors",
        TOY_CHECKPOINT_DIR / f"piti-toy-{task}-upsample.safetensors",
    )


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


def particle_features(x0: torch.Tensor, class_model=None) -> torch.Tensor:
    """What particle guidance pushes apart, (B, D): each predicted x0's colours (``class_model`` None) or the class
    model's class probabilities, averaged over an 8 x 8 grid."""
    if class_model is not None:
        x0 = class_model(x0).softmax(1)
    return F.adaptive_avg_pool2d(x0, 8).flatten(1)


# --------------------------------------------------------------------------------------------------
# Loading


def _load_reward(path, base_path, header: dict, task: str, needed: bool, key="reward_model", use="reward_guidance"):
    """The reward model given, else the one the base header names under ``key`` (relative to the base file), else
    None. A named file that is missing is an error only where its use (the setting ``use``) is ``needed``."""
    from piti.train.rewards import load_reward_model

    return _load_named(
        path,
        base_path,
        header,
        needed,
        key,
        use,
        lambda f: load_reward_model(f, task=task),
        "eval/train_reward_models.py",
    )


def _load_named(path, base_path, header: dict, needed: bool, key: str, use: str, load, maker: str):
    """``load(path)``, else ``load`` of the file the base header names under ``key`` (relative to the base file),
    else None; a named file that is missing is an error (naming ``maker``, the script that makes one) only where
    its use, the setting ``use``, is ``needed``."""
    named = header.get(key) if path is None else None
    if path is None and not named:
        return None
    if path is None:
        path = (Path(base_path).resolve().parent / named).resolve()
        if not path.is_file():
            if not needed:
                return None
            raise MissingWeightsError(
                f"the base model's header names the {key.replace('_', ' ')} {named!r} for its recommended {use}, "
                f"but {path} is missing; give {key}=PATH ({maker} makes one), or {use}=0"
            )
    model = load(path)
    model.checkpoint_path = str(path)
    return model


def _load_piti(path, role: str, task: str | None):
    """Load a PITI checkpoint and check it is the right kind of model."""
    from piti.checkpoints import load_model

    model = load_model(path, device="cpu")
    cfg = model.config
    if cfg.kind != "piti":
        raise CheckpointError(
            f"{path} is a GLIDE text-to-image checkpoint; the {role} must be a PITI model "
            "(keys encoder.* and decoder.*)"
        )
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
        device, channels_last, compile: the run policy (:func:`piti.precision.make_policy`).
        precision: ``None`` = the profile's (``fp32`` for ``official``, ``auto`` for ``fast``), or one of
            :data:`piti.precision.PRECISIONS`.
        profile: ``"fast"`` or ``"official"`` default sampling settings (see the module docstring).
        defaults: settings that override the profile (e.g. from a checkpoint's header).
        reward_model: a reward model of the task (:class:`piti.train.rewards.RewardNet`) for reward guidance
            (the ``reward_guidance`` setting), or None.
        class_model: a reward model of the mask task, whose class probabilities particle guidance pushes apart
            (``particle_features="classes"``) and whose classes the colour prior reads, or None.
        colour_prior: a :class:`piti.train.colour_prior.ColourPrior` of the depth task for the colour redraw
            (``redraw_colour_threshold``), or None.
        notes: notes from loading, added to every call's notes.
    """

    def __init__(
        self,
        base,
        upsampler=None,
        *,
        device="cpu",
        precision=None,
        channels_last=None,
        compile=False,
        profile="fast",
        defaults: dict | None = None,
        reward_model=None,
        class_model=None,
        colour_prior=None,
        notes: list | None = None,
    ):
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
        if reward_model is not None and reward_model.config.task != cfg.task:
            raise ConfigError(
                f"the base model is for {cfg.task!r} but the reward model for {reward_model.config.task!r}"
            )
        if class_model is not None and class_model.config.task != "mask":
            raise ConfigError(f"the class model must read classes (a mask reward model), not {class_model.config.task}")
        self.task = cfg.task
        self.profile = profile
        self.defaults: SamplingSettings = PROFILES[profile].replace(**(defaults or {}))
        self.policy: Policy = make_policy(device, profile_precision(profile, precision), channels_last, compile)
        self.base_model = base
        self.upsampler_model = upsampler
        # the callables (compiled wrappers when compile=True) and the plain modules for encode()
        self._base = self.policy.prepare(base)
        self._upsampler = self.policy.prepare(upsampler) if upsampler is not None else None
        self.reward_model = reward_model.eval().to(self.policy.device) if reward_model is not None else None
        self.class_model = class_model.eval().to(self.policy.device) if class_model is not None else None
        self.colour_prior = colour_prior.eval().to(self.policy.device) if colour_prior is not None else None
        self.sources = {
            "base": getattr(base, "checkpoint_path", None),
            "upsampler": getattr(upsampler, "checkpoint_path", None),
            "reward": getattr(reward_model, "checkpoint_path", None),
            "class": getattr(class_model, "checkpoint_path", None),
            "colour": getattr(colour_prior, "checkpoint_path", None),
        }
        self._diffusions: dict = {}
        self.load_notes = list(notes or [])

    @classmethod
    def from_checkpoints(
        cls,
        base=None,
        upsampler=None,
        task: str | None = None,
        *,
        device="cpu",
        precision=None,
        channels_last=None,
        compile=False,
        profile: str | None = None,
        reward_model=None,
        class_model=None,
        colour_prior=None,
        **defaults,
    ) -> PITIPipeline:
        """Load official or project checkpoints (format detected from the file).

        With no paths, the embedded default models of ``task`` (``checkpoints/toy/``); with ``base`` only,
        a base-only pipeline. ``profile=None`` picks ``"official"`` for official checkpoints and ``"fast"``
        for the project's; ``**defaults`` override the sampling defaults (:class:`~piti.settings.SamplingSettings`).
        ``reward_model``: a reward model file for reward guidance; default the one the base file's header names
        (``"reward_model"``, a path relative to the base file's folder), if any. ``class_model``: the same for the
        class model of particle guidance and of the colour redraw (header ``"class_model"``), and ``colour_prior`` for
        the colour prior of the colour redraw (header ``"colour_prior"``).
        """
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        check_names(defaults)
        make_policy(device, precision or "auto", channels_last, compile)  # a bad device or precision fails first
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
        sampling = header.get("sampling")
        recommended = settings_from_header(sampling) if isinstance(sampling, dict) else {}
        asked = {k: defaults.get(k) for k in REWARD_SCALES}  # None: the header's recommendation
        needed = any(v is not None and float(v) > 0 for v in asked.values())
        reward = _load_reward(reward_model, base, header, base_model.config.task, needed)
        notes = []
        dropped = [k for k in REWARD_SCALES if asked[k] is None and float(recommended.get(k) or 0) > 0]
        if reward is None and dropped:
            # a file copied without its reward model still samples, without the guidance, and says so
            recommended = {**recommended, **dict.fromkeys(dropped, 0.0)}
            notes.append(
                f"the header's reward model {header.get('reward_model')!r} is missing beside {base}: "
                f"sampling without {' or '.join(dropped)}"
            )
        features = defaults.get("particle_features", recommended.get("particle_features"))
        asked = defaults.get("particle_guidance")  # None: the header's recommendation
        needed = features == "classes" and asked is not None and float(asked) > 0
        colour_asked = defaults.get("redraw_colour_threshold")
        colour_needed = colour_asked is not None and float(colour_asked) > 0
        use = "particle_guidance" if needed or not colour_needed else "redraw_colour_threshold"
        classes = _load_reward(class_model, base, header, None, needed or colour_needed, key="class_model", use=use)
        colours = _load_named(
            colour_prior,
            base,
            header,
            colour_needed,
            "colour_prior",
            "redraw_colour_threshold",
            load_colour_prior,
            "eval/fit_colour_prior.py",
        )
        if (classes is None or colours is None) and colour_asked is None and recommended.get("redraw_colour_threshold"):
            missing = header.get("class_model") if classes is None else header.get("colour_prior")
            missing = repr(missing) if missing else "class model" if classes is None else "colour prior"
            recommended = {**recommended, "redraw_colour_threshold": 0.0}
            notes.append(f"the header's {missing} is missing beside {base}: sampling without the colour redraw")
        if (
            classes is None
            and features == "classes"
            and asked is None
            and float(recommended.get("particle_guidance") or 0)
        ):
            recommended = {**recommended, "particle_guidance": 0.0}
            notes.append(
                f"the header's class model {header.get('class_model')!r} is missing beside {base}: "
                "sampling without its particle guidance"
            )
        return cls(
            base_model,
            up_model,
            device=device,
            precision=precision,
            channels_last=channels_last,
            compile=compile,
            profile=profile or ("official" if official else "fast"),
            defaults={**recommended, **defaults},
            reward_model=reward,
            class_model=classes,
            colour_prior=colours,
            notes=notes,
        )

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str = "tfwang/PITI",
        task: str = "mask",
        *,
        files: dict | None = None,
        revision: str | None = None,
        cache_dir=None,
        token=None,
        upsample: bool = True,
        **kwargs,
    ) -> PITIPipeline:
        """The official checkpoints of ``task`` from the Hugging Face Hub repo ``repo_id``, fetched (and cached)
        by :func:`piti.hub.checkpoint_paths`; ``upsample=False`` fetches the base model only. Other keywords go
        to :meth:`from_checkpoints` (``device``, ``precision``, ``profile``, settings such as ``palette``)."""
        from piti.hub import checkpoint_paths

        base, upsampler = checkpoint_paths(
            repo_id, task, files=files, revision=revision, cache_dir=cache_dir, token=token, upsample=upsample
        )
        return cls.from_checkpoints(base, upsampler, task=task, **kwargs)

    # ----------------------------------------------------------------------------------------------
    def diffusion(self, model, steps, start: float = 1.0, skip_terminal: bool = False):
        """The respaced diffusion of ``model`` for ``steps`` (an int or a respacing such as ``"fast27"``),
        over the whole schedule or, with ``start`` < 1, over its first ``start`` fraction (see ``upsample_start``);
        ``skip_terminal`` drops its step at t = T (the setting of that name)."""
        cfg = model.config
        spec = str(steps).strip()
        last_step = None if float(start) >= 1.0 else max(1, round(float(start) * (cfg.diffusion_steps - 1)))
        # One step is refused: the official respacing of "1" keeps only timestep 0 (a one-section
        # stride rule), so the sampler would start from pure noise labelled t=0 and return that noise.
        if spec.isdigit() and not 2 <= int(spec) <= cfg.diffusion_steps:
            raise ConfigError(
                f"steps must be between 2 and {cfg.diffusion_steps}, got {spec}"
                + (" (one respaced step is timestep 0 alone: nothing would be denoised)" if spec == "1" else "")
            )
        key = (cfg.noise_schedule, cfg.diffusion_steps, spec, last_step, skip_terminal)
        if key not in self._diffusions:
            self._diffusions[key] = create_diffusion(
                cfg.noise_schedule, cfg.diffusion_steps, spec, last_step=last_step, skip_terminal=skip_terminal
            )
        return self._diffusions[key]

    def resolve_settings(self, **overrides) -> SamplingSettings:
        """The pipeline defaults with ``overrides`` (None = keep the default), checked."""
        return self.defaults.replace(**overrides)

    def encode(self, model, ref: torch.Tensor) -> dict:
        """Run ``model``'s condition encoder once, under the run policy."""
        with self.policy.autocast():
            return model.encode(self.policy.input(ref))

    def base_denoiser(
        self,
        ref: torch.Tensor,
        batch: int,
        settings: SamplingSettings,
        encode_once: bool = True,
        generator=None,
        partners: torch.Tensor | None = None,
    ):
        """The guided ``denoise(x_t, t_model)`` of the base model for ``batch`` copies of condition ``ref``.

        ``encode_once=True`` encodes ``ref`` and the null condition once here; ``False`` passes the raw
        condition images to the network, which re-encodes the doubled batch at every step (official code).
        ``settings.cond_noise`` > 0 anneals the encoded condition (CADS), drawing its noise from ``generator``;
        ``settings.cache_interval`` > 1 reuses the UNet's deep features between calls (:class:`FeatureCache`, one per
        denoiser: build one denoiser per sampling run). ``partners``: finished samples (P, 3, S, S) that particle
        guidance pushes this batch away from (:meth:`particle_denoiser`).
        """
        model, policy = self._base, self.policy
        anneal = condition_annealer(
            settings.cond_noise,
            settings.cond_noise_tmin,
            settings.cond_noise_tmax,
            self.base_model.config.diffusion_steps,
            generator,
        )
        if anneal is not None and not encode_once:
            raise ConfigError("condition annealing (cond_noise > 0) needs the encoded condition: encode_once=True")
        ref = ref.to(policy.device)
        null_ref = null_condition(ref[:1])
        cache = None
        if settings.cache_interval > 1:
            steps = self.base_model.config.diffusion_steps
            cache = FeatureCache(settings.cache_interval, settings.cache_branch, settings.cache_tmax, steps)
        if encode_once:
            cond = {k: v.expand(batch, *v.shape[1:]) for k, v in self.encode(self.base_model, ref[:1]).items()}
            null = self.encode(self.base_model, null_ref)

            def model_fn(x, t, c):
                with policy.autocast():
                    return model(policy.input(x), t, cond_emb=c, cache=cache)
        else:
            cond = ref[:1].expand(batch, *ref.shape[1:])
            null = null_ref

            def model_fn(x, t, c):
                with policy.autocast():
                    return model(policy.input(x), t, ref=policy.input(c), cache=cache)

        denoise = guided_denoiser(
            model_fn,
            cond,
            null,
            settings.guidance,
            mode=settings.guidance_mode,
            stats=settings.guidance_stats,
            sigma=settings.guidance_sigma,
            anneal=anneal,
            tmin=settings.guidance_tmin,
            tmax=settings.guidance_tmax,
            num_timesteps=self.base_model.config.diffusion_steps,
        )
        if settings.reward_guidance > 0:
            scale, window = settings.reward_guidance, (settings.reward_guidance_tmin, settings.reward_guidance_tmax)
            denoise = self.reward_denoiser(denoise, self.base_model, ref[:1], settings, scale, window)
        if settings.particle_guidance > 0:
            denoise = self.particle_denoiser(denoise, batch, settings, partners)
        return denoise

    def particle_denoiser(self, denoise, batch: int, settings: SamplingSettings, partners=None):
        """``denoise`` with particle guidance between the ``batch`` samples of a call and the finished samples
        ``partners`` (P, 3, S, S) or None (:func:`piti.diffusion.repulsion` as the loss of
        :func:`piti.diffusion.reward_guided`); a batch of one with no partners is left alone."""
        classes = settings.particle_features == "classes"
        if classes and self.class_model is None:
            raise ConfigError(
                "particle_features='classes' needs a class model: PITIPipeline.from_checkpoints(..., class_model=PATH) "
                "(a mask reward model, eval/train_reward_models.py --task mask), or particle_features='pixels'"
            )
        partners = None if partners is None or len(partners) == 0 else partners
        if batch < 2 and partners is None:
            return denoise
        model = self.class_model if classes else None
        fixed = None  # the partners' features, read once
        if partners is not None:
            with torch.no_grad(), self.policy.autocast():
                fixed = particle_features(partners.to(self.policy.device), model).float()
        window = (settings.particle_guidance_tmin, settings.particle_guidance_tmax)
        push = settings.particle_guidance
        return self._loss_guided(
            denoise, self.base_model, lambda x0: repulsion(particle_features(x0, model), fixed), push, window
        )

    def reward_denoiser(
        self, denoise, model, ref: torch.Tensor, settings: SamplingSettings, scale: float, window=(0, 1)
    ):
        """``denoise`` of ``model`` (the base model or the upsampler) with reward guidance of strength ``scale`` in
        the t/T ``window`` (:func:`piti.diffusion.reward_guided`) by the pipeline's reward model, against the
        condition ``ref`` (1, C, S, S) read back as the reward's target at ``model``'s image size."""
        name = "reward_guidance" if model is self.base_model else "upsample_reward_guidance"
        loss = self.reward_loss(ref, model.config.image_size, settings.palette, name)
        return self._loss_guided(denoise, model, loss, scale, window)

    def reward_loss(self, ref: torch.Tensor, size: int, palette: str, use: str):
        """``loss(x0) -> (N,)``: the reward model's reading of images x0 at ``size`` px against the condition
        ``ref`` (1, C, S, S) (:func:`piti.train.rewards.consistency_loss`); ``use`` names the setting in the error
        when the pipeline has no reward model."""
        from piti.train.rewards import condition_target, consistency_loss

        if self.reward_model is None:
            raise ConfigError(
                f"{use} > 0 needs a reward model: PITIPipeline.from_checkpoints(..., reward_model=PATH) "
                f"(eval/train_reward_models.py trains one for the toy world), or {use}=0"
            )
        ref = ref.to(self.policy.device, torch.float32)  # prepare_conditions builds the conditions on the CPU
        target = condition_target(self.task, ref, size, palette=palette)

        def loss(x0):
            rows = {k: v.expand(len(x0), *v.shape[1:]) for k, v in target.items()}
            return consistency_loss(self.task, self.reward_model(x0), rows)

        return loss

    def _loss_guided(self, denoise, model, loss_fn, scale: float, window):
        """:func:`piti.diffusion.reward_guided` over ``denoise`` of ``model``, with its trained process's alphas; the
        loss (its reward or class model) runs under the policy's autocast, as the networks do."""
        full = self.diffusion(model, model.config.diffusion_steps)

        def policy_loss(x0):
            with self.policy.autocast():
                return loss_fn(x0).float()

        return reward_guided(denoise, policy_loss, full.alphas_cumprod, scale, *window, rescaled=full.rescale_timesteps)

    def upsampler_denoiser(self, ref: torch.Tensor, low_res: torch.Tensor, encode_once: bool = True):
        """The unguided ``denoise(x_t, t_model)`` of the upsampler for the 64-px images ``low_res``."""
        model, policy = self._upsampler, self.policy
        batch = low_res.shape[0]
        ref, low_res = ref.to(policy.device), policy.input(low_res)
        if encode_once:
            emb = {k: v.expand(batch, *v.shape[1:]) for k, v in self.encode(self.upsampler_model, ref[:1]).items()}

            def denoise(x, t):
                with policy.autocast():
                    return model(policy.input(x), t, cond_emb=emb, low_res=low_res)
        else:
            refs = policy.input(ref[:1].expand(batch, *ref.shape[1:]))

            def denoise(x, t):
                with policy.autocast():
                    return model(policy.input(x), t, ref=refs, low_res=low_res)

        return denoise

    # ----------------------------------------------------------------------------------------------
    # The steps of a call

    def check_inputs(self, num_samples, upsample) -> bool:
        """Check the call's arguments; returns whether to upsample."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
        if upsample is None:
            return self._upsampler is not None
        if upsample and self._upsampler is None:
            raise ConfigError(
                "upsampling was asked for, but this pipeline has no upsampler (give an upsampler checkpoint)"
            )
        return bool(upsample)

    def prepare_conditions(self, condition, upsample: bool, settings: SamplingSettings, **options) -> tuple[dict, list]:
        """The condition at the size each model's encoder takes: ``({size: (1, C, S, S)}, notes)``."""
        refs, notes = {}, []
        for model in filter(None, (self.base_model, self.upsampler_model if upsample else None)):
            size = model.config.cond_size
            if size not in refs:
                cond, new_notes = condition_tensor(self.task, condition, size, palette=settings.palette, **options)
                refs[size] = cond[None]
                notes += [n for n in new_notes if n not in notes]
        return refs, notes

    def sample_base(
        self, ref, num_samples, s: SamplingSettings, generator, progress, encode_once, partners=None, counts=None
    ) -> torch.Tensor:
        """Base samples (B, 3, S, S) in [-1, 1] (float32), guided; particle guidance also pushes them away from the
        finished samples ``partners`` (P, 3, S, S), if any. With ``s.redraw_early_t`` > 0 and a redraw check on, the
        steps at t/T >= redraw_early_t run first, the draws whose predicted x0 there the checks reject (by
        :data:`EARLY_MARGIN` times their thresholds) are drawn again from noise (:meth:`redraw`), then the remaining
        steps run; ``counts["early"]``, if given, adds up those redraws."""
        diffusion = self.diffusion(self.base_model, s.steps, skip_terminal=s.skip_terminal)
        options = dict(generator=generator, progress=progress, **sampler_options(s.sampler, s))
        denoise = self.base_denoiser(ref, num_samples, s, encode_once, generator, partners)
        split = self.early_split(diffusion, s)
        if split is None:
            x0 = sample(s.sampler, denoise, self.base_noise(num_samples, s, generator), diffusion, **options)
            return x0.float().clamp(-1, 1)
        span = (diffusion.num_timesteps - 1, split)

        def draw(n, kept=None):  # the steps above the check; new draws pushed away from the kept ones
            d = denoise
            if kept is not None:
                near = kept if partners is None else torch.cat([partners.to(kept), kept])
                d = self.base_denoiser(ref, n, s, encode_once, generator, near)
            preds, x_T = [], self.base_noise(n, s, generator)
            x = sample(
                s.sampler, d, x_T, diffusion, span=span, callback=lambda at: preds.append(at["x0_pred"]), **options
            )
            return x, preds[-1].float().clamp(-1, 1)

        x, pred = draw(num_samples)
        badness = self.redraw_badness(ref, pred.shape[-1], s)
        x, _, redraws = self.redraw(x, pred, lambda images: badness(images) / EARLY_MARGIN, draw)
        if redraws.any():  # the feature cache holds the replaced draws' features: a new denoiser for the rest
            denoise = self.base_denoiser(ref, num_samples, s, encode_once, generator, partners)
        if counts is not None:
            counts["early"] = counts.get("early", 0) + int(redraws.sum())
        x0 = sample(s.sampler, denoise, x, diffusion, span=(split - 1, 0), **options)
        return x0.float().clamp(-1, 1)

    def base_noise(self, num_samples: int, s: SamplingSettings, generator) -> torch.Tensor:
        """The base sampler's start x_T (B, 3, S, S), antithetic across the batch with ``s.antithetic_noise``."""
        size = self.base_model.config.image_size
        x_T = torch.randn((num_samples, 3, size, size), generator=generator, device=self.policy.device)
        return antithetic_draws(x_T) if s.antithetic_noise else x_T

    def early_split(self, diffusion, s: SamplingSettings) -> int | None:
        """The process index of the last step at t/T >= ``s.redraw_early_t``, where the early redraw check reads the
        draws; None when that check is off, no redraw check is on, or no step is left after it."""
        if s.redraw_early_t <= 0 or not (s.redraw_threshold > 0 or s.redraw_colour_threshold > 0):
            return None
        above = (diffusion.timestep_map.double() / diffusion.original_num_steps >= s.redraw_early_t).nonzero()
        split = int(above.min()) if len(above) else 0
        return split if split >= 1 else None

    def redraw_rejected(self, ref, x0, s: SamplingSettings, generator, progress, encode_once, counts=None) -> tuple:
        """The base samples ``x0`` with each one that a check rejects drawn again (:meth:`redraw`): the reward
        model's disagreement with the condition above ``s.redraw_threshold``, or the colour prior's distance above
        ``s.redraw_colour_threshold`` (0 = that check off). Returns the samples and each one's number of redraws."""
        badness = self.redraw_badness(ref, x0.shape[-1], s)

        def draw(n, kept):
            new = self.sample_base(ref, n, s, generator, progress, encode_once, partners=kept, counts=counts)
            return new, new

        x0, _, redraws = self.redraw(x0, x0, badness, draw)
        return x0, redraws.tolist()

    @staticmethod
    def redraw(x, images, badness, draw) -> tuple:
        """The rows of ``x`` whose ``images`` ``badness`` reads above 1 drawn again, the rejected ones together, by
        ``draw(n, kept) -> (x, images)`` (``kept``: the images of the rows not rejected, which particle guidance
        pushes the new draws away from), up to :data:`REDRAW_TRIES` times, the closest draw kept. A draw's badness
        is the largest of the checks' readings over their thresholds. Returns x, images and each row's redraws."""
        bad_of, redraws = badness(images), torch.zeros(len(x), dtype=torch.long)
        for _ in range(REDRAW_TRIES):
            bad = (bad_of > 1).nonzero().flatten().cpu()
            if len(bad) == 0:
                break
            new_x, new_images = draw(len(bad), images[(bad_of <= 1).cpu()])
            new_bad = badness(new_images)
            redraws[bad] += 1
            keep = (new_bad < bad_of[bad]).cpu()
            rows = bad[keep]
            x[rows], images[rows], bad_of[rows] = new_x[keep], new_images[keep], new_bad[keep]
        return x, images, redraws

    def redraw_badness(self, ref, size: int, s: SamplingSettings):
        """``badness(x0) -> (N,)``: the largest of the redraw checks' readings over their thresholds, each check's
        model under the policy's autocast, as the networks run."""
        checks = []
        if s.redraw_threshold > 0:
            checks.append((self.reward_loss(ref, size, s.palette, "redraw_threshold"), s.redraw_threshold))
        if s.redraw_colour_threshold > 0:
            checks.append((self.colour_distance(ref, size), s.redraw_colour_threshold))

        def badness(x):
            with self.policy.autocast():
                return torch.stack([read(x).float() / threshold for read, threshold in checks]).amax(0)

        return badness

    def colour_distance(self, ref: torch.Tensor, size: int):
        """``distance(x0) -> (N,)``: the colour prior's reading of images x0 at ``size`` px, their classes read by the
        class model, against the depth condition ``ref`` (1, C, S, S) (:class:`piti.train.colour_prior.ColourPrior`)."""
        from piti.train.rewards import condition_target

        if self.task != "depth":
            raise ConfigError(
                f"redraw_colour_threshold is for the depth task (its prior bins colours by depth), not {self.task}"
            )
        if self.colour_prior is None or self.class_model is None:
            raise ConfigError(
                "redraw_colour_threshold > 0 needs a colour prior and a class model: PITIPipeline.from_checkpoints("
                "..., colour_prior=PATH, class_model=PATH) (eval/fit_colour_prior.py fits one), or "
                "redraw_colour_threshold=0"
            )
        target = condition_target("depth", ref.to(self.policy.device, torch.float32), size)

        def distance(x0):
            return self.colour_prior(x0, self.class_model(x0).argmax(1), target)

        return distance

    def sample_upsampler(self, ref, low_res, s: SamplingSettings, generator, progress, encode_once) -> torch.Tensor:
        """Upsampled images from ``low_res``, unguided, from noise scaled by the temperature (official 0.997);
        with ``upsample_start`` < 1, from the bicubic enlargement of low_res noised to that point (SDEdit)."""
        ucfg, dev, batch = self.upsampler_model.config, self.policy.device, low_res.shape[0]
        diffusion = self.diffusion(self.upsampler_model, s.upsample_steps, s.upsample_start)
        shape = (batch, 3, ucfg.image_size, ucfg.image_size)
        x_T = torch.randn(shape, generator=generator, device=dev) * s.upsample_temperature
        if s.upsample_start < 1:
            enlarged = F.interpolate(low_res, size=shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
            last = torch.full((batch,), diffusion.num_timesteps - 1, device=dev, dtype=torch.long)
            x_T = diffusion.q_sample(enlarged.to(dev), last, x_T)
        denoise = self.upsampler_denoiser(ref, low_res, encode_once=encode_once)
        if s.upsample_reward_guidance > 0:
            scale = s.upsample_reward_guidance
            denoise = self.reward_denoiser(denoise, self.upsampler_model, ref[:1], s, scale)
        return sample(
            s.upsample_sampler,
            denoise,
            x_T,
            diffusion,
            generator=generator,
            progress=progress,
            **sampler_options(s.upsample_sampler, s, prefix="upsample_"),
        )

    def record(self, s: SamplingSettings, upsample: bool, **extra) -> dict:
        """Every setting of a call, JSON-ready: the sampling settings, the call's options, the run policy and models."""
        out = dict(
            s.to_dict(),
            task=self.task,
            profile=self.profile,
            **extra,
            upsample=upsample,
            guidance_scale_official=s.guidance + 1.0,
            **self.policy.to_dict(),
            base_model=self.base_model.config.name or "custom",
            base_checkpoint=self.sources["base"],
            base_size=self.base_model.config.image_size,
        )
        if s.reward_guidance > 0 or s.redraw_threshold > 0 or (upsample and s.upsample_reward_guidance > 0):
            out["reward_checkpoint"] = self.sources["reward"]
        if (s.particle_guidance > 0 and s.particle_features == "classes") or s.redraw_colour_threshold > 0:
            out["class_checkpoint"] = self.sources["class"]
        if s.redraw_colour_threshold > 0:
            out["colour_checkpoint"] = self.sources["colour"]
        if upsample:
            out.update(
                upsampler_model=self.upsampler_model.config.name or "custom",
                upsampler_checkpoint=self.sources["upsampler"],
                upsample_size=self.upsampler_model.config.image_size,
            )
        return out

    @torch.no_grad()
    def __call__(
        self,
        condition,
        *,
        num_samples: int = 1,
        seed: int | None = 0,
        upsample: bool | None = None,
        sketch_from_photo: bool = False,
        snap: bool = False,
        progress: bool = True,
        encode_once: bool = True,
        source: str | None = None,
        **settings,
    ) -> PipelineOutput:
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
            **settings: fields of :class:`~piti.settings.SamplingSettings` (``guidance`` is the paper's w,
                ``guidance_mode``, ``sampler``, ``steps``, ...); None keeps the pipeline's default.
        """
        # 1. check the settings and arguments
        s = self.resolve_settings(**settings)
        upsample = self.check_inputs(num_samples, upsample)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        generator = torch.Generator(device=self.policy.device).manual_seed(seed)
        timings = {}

        # 2. the condition, at each encoder's size
        refs, notes = self.prepare_conditions(
            condition, upsample, s, snap=snap, from_photo=sketch_from_photo, source=source
        )
        notes = list(self.policy.notes) + self.load_notes + notes
        base_ref = refs[self.base_model.config.cond_size]

        # 3. the base model, guided; the samples the reward model or the colour prior rejects drawn again
        start = time.perf_counter()
        counts = {"early": 0}
        x0 = self.sample_base(base_ref, num_samples, s, generator, progress, encode_once, counts=counts)
        redraws = [0] * num_samples
        if s.redraw_threshold > 0 or s.redraw_colour_threshold > 0:
            x0, redraws = self.redraw_rejected(base_ref, x0, s, generator, progress, encode_once, counts)
        # Official: the base output is quantised to 8 bits (truncation) before the upsampler sees it.
        low_res = to_uint8(x0).float() / 127.5 - 1 if s.quantize_low_res else x0
        timings["base_s"] = time.perf_counter() - start
        base_images = to_pil(x0)  # the same 8 bits as low_res (re-quantising low_res could lose one)

        # 4. the upsampler, unguided
        upsampled = []
        if upsample:
            start = time.perf_counter()
            ref = refs[self.upsampler_model.config.cond_size]
            upsampled = to_pil(self.sample_upsampler(ref, low_res, s, generator, progress, encode_once))
            timings["upsample_s"] = time.perf_counter() - start

        record = self.record(
            s,
            upsample,
            num_samples=num_samples,
            seed=seed,
            sketch_from_photo=sketch_from_photo,
            snap=snap,
            encode_once=encode_once,
            redraws=redraws,
            early_redraws=counts["early"],
            timings=timings,
        )
        return PipelineOutput(
            images=upsampled or base_images,
            base_images=base_images,
            upsampled_images=upsampled,
            settings=record,
            notes=notes,
            condition=base_ref,
        )


def profile_precision(profile: str, precision: str | None) -> str:
    """The precision a pipeline runs in: the one asked for, else fp32 for the official profile (as the official
    code computes) and ``auto`` (bf16 where the hardware computes it) for the fast one."""
    if precision is not None:
        return precision
    return "fp32" if profile == "official" else "auto"
