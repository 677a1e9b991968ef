"""Training recipes: YAML files under ``configs/``, one section per stage, plus ``key=value`` overrides.

A recipe file looks like::

    defaults:              # shared by every section
      task: mask
      lr: 1.0e-4
    stages:
      pretrain:            # a section; its stage is its name unless it says `stage:`
        model: toy-glide-base
      pretrain-upsampler:
        stage: pretrain
        model: toy-glide-upsample
      encoder:
        model: toy-piti-base-{task}
        init: runs/toy/pretrain/model.safetensors

``{task}`` and ``{name}`` (the section name) are replaced in ``model``, ``init``, ``out_dir`` and ``reward_model``.
Overrides are ``key=value`` with YAML values (``lr=2e-5``, ``data.num=64``,
``model_overrides.num_channels=32``). The resolved :class:`TrainConfig` is saved beside each run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from piti.diffusion.resample import TIMESTEP_SAMPLERS as SCHEDULE_SAMPLERS
from piti.diffusion.samplers import SAMPLERS
from piti.errors import ConfigError
from piti.precision import DTYPES

STAGES = ("pretrain", "encoder", "encoder-dropout", "joint", "upsampler")
PRECISIONS = (*DTYPES, "auto")  # fp32, bf16, fp16, or auto: resolved when a run starts (piti.train.loop)


@dataclass
class TrainConfig:
    """Every setting of one training run. Defaults are the official PITI values where one exists."""

    # --- what is trained ---
    name: str = ""  # the recipe section this came from (e.g. "encoder")
    stage: str = ""  # one of STAGES
    task: str = "mask"  # PITI condition: mask, sketch or depth (ignored by pretrain)
    model: str = ""  # model preset, e.g. "toy-piti-base-{task}"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig options on top of the preset
    init: str | None = None  # GLIDE / PITI / project checkpoint to start from
    from_scratch: bool = False  # train without pretrained weights (the paper's "from scratch" row)
    out_dir: str = "runs/{name}"  # run folder: config, log, samples, checkpoints, model file
    # --- data ---
    data: dict = field(default_factory=lambda: {"kind": "synth"})  # dataset description (piti.train.stages)
    hflip: bool = True  # random horizontal flip of image and condition (official, p=0.5)
    low_res_size: int = 64  # side of the upsampler's low-resolution input
    degradation: dict = field(default_factory=dict)  # DegradationConfig overrides (upsampler low-res)
    degrade_low_res: bool = True  # upsamplers: degraded low-res (official) or a plain area resize
    tokenizer: str = "word"  # pretrain: "word" (built from captions), "gpt2-bpe" or a folder of GLIDE's BPE files
    tokenizer_scan: int = 256  # synthetic world: scenes whose captions make the word vocabulary
    num_workers: int = 0  # data-loader worker processes per rank
    # --- optimisation ---
    lr: float = 1e-4  # AdamW learning rate after warm-up (official: constant, no schedule)
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    lr_decay_steps: int = 0  # linear decay to 0 over the last this-many of `iterations` (not official; 0 = none)
    weight_decay: float = 0.0  # official: 0
    adam_betas: tuple = (0.9, 0.999)
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping (official)
    batch_size: int = 128  # global batch per step, split over ranks
    microbatch: int = 0  # per-rank chunk for gradient accumulation; 0 = the whole rank batch
    iterations: int = 0  # steps to run in total; 0 = until stopped (official stage 2)
    time_limit: float = 0.0  # minutes this process may train, then it saves and stops (resume goes
    # on); 0 = no limit. For machines lent for a fixed time, e.g. a GPU.
    ema_rate: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_rate, (1+step)/(10+step)): for short runs (not official)
    uncond_p: float = 0.0  # probability of replacing the condition by the null condition
    schedule_sampler: str = "uniform"  # timestep sampler: uniform or loss-second-moment
    precision: str = "fp32"  # fp32, bf16 (autocast, CPU or CUDA), fp16 (autocast + GradScaler, CUDA) or auto
    activation_checkpointing: bool = False  # recompute activations in backward (full-size models)
    device: str = "auto"  # auto (CUDA if present), cpu, cuda
    seed: int = 0
    # --- an extra term for short runs (not official): x0_weight * E[min(1/SNR_t, x0_snr_cap) |eps - eps_hat|^2],
    #     i.e. the x0 error where the image is not drowned in noise, capped where it is; epsilon-MSE alone
    #     hardly rewards using the condition at large t (docs/training.md) ---
    x0_weight: float = 0.0
    x0_snr_cap: float = 100.0
    # --- consistency feedback (not official; ControlNet++, Li et al. 2024): a frozen reward model scores the
    #     one-step x0_pred of samples with t < reward_max_t against the input condition (piti/train/rewards.py) ---
    reward_model: str = ""  # a reward model file of the run's task (eval/train_reward_models.py); "" = off
    reward_weight: float = 0.0  # weight of the term beside the diffusion loss
    reward_max_t: int = 200  # only samples with t below this get the term (the one-step x0 is meaningful there)
    # --- class feedback (not official), for depth and sketch on the synthetic scenes, whose conditions do not name
    #     the classes: a frozen mask reward model scores x0_pred against the scene's label map ---
    class_reward_model: str = ""  # a mask reward model file; "" = off
    class_reward_weight: float = 0.0  # weight of the term beside the diffusion loss
    class_reward_max_t: int = 1000  # only samples with t below this get the term
    # --- upsampler losses on x0_pred (official: both from step 100) ---
    perceptual_weight: float = 0.004  # 0 = off
    perceptual_kind: str = "vgg"  # vgg (official, VGG19 conv2_2) or lpips
    perceptual_start: int = 100
    perceptual_weights: str | None = None  # explicit path of the VGG/LPIPS backbone weights
    allow_random_perceptual: bool = False  # smoke runs only: a random VGG stands in when weights are absent
    adv_weight: float = 0.01  # 0 = off
    adv_kind: str = "wgan-gp"  # wgan-gp (official code) or non-saturating (the paper)
    adv_start: int = 100
    disc_lr: float = 1e-5  # the discriminator's own Adam
    disc_ndf: int = 64
    disc_layers: int = 3
    # --- logging and checkpoints ---
    log_interval: int = 10  # steps between CSV rows
    save_interval: int = 1000  # steps between checkpoints
    keep_checkpoints: int = 3  # training checkpoints kept (oldest deleted)
    sample_interval: int = 1000  # steps between sample grids; 0 = never
    sample_count: int = 4  # images in the grid
    sample_steps: int = 10  # sampler steps for the grid (EMA weights)
    sample_sampler: str = "ddim"  # ddim, ddpm or dpmpp (ancestral ddpm for small, young models)
    sample_guidance: float = 1.0  # classifier-free guidance scale for the grid (1 = none)
    export_ema: bool = True  # the model file holds the EMA weights (else the raw ones)

    # ---------------------------------------------------------------------------------------------
    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        # YAML 1.1 reads "3.5e-5" (no dot) as a string: accept it for the float options.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise ConfigError(f"training option {f.name} must be a number, got {value!r}") from None
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for impossible settings."""

        def bad(msg):
            raise ConfigError(f"training config {self.name or '(unnamed)'}: {msg}")

        if self.stage not in STAGES:
            bad(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sample_sampler not in SAMPLERS:
            bad(f"sample_sampler must be one of {', '.join(SAMPLERS)}, got {self.sample_sampler!r}")
        if self.schedule_sampler not in SCHEDULE_SAMPLERS:
            bad(f"schedule_sampler must be one of {SCHEDULE_SAMPLERS}, got {self.schedule_sampler!r}")
        if not self.model:
            bad("no model preset given (key `model`)")
        if self.batch_size < 1 or self.microbatch < 0:
            bad(f"batch_size must be >= 1 and microbatch >= 0, got {self.batch_size}, {self.microbatch}")
        if not 0.0 <= self.uncond_p <= 1.0:
            bad(f"uncond_p must be in [0, 1], got {self.uncond_p}")
        if not 0.0 <= self.ema_rate < 1.0:
            bad(f"ema_rate must be in [0, 1), got {self.ema_rate}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.iterations < 0 or self.grad_clip < 0 or self.time_limit < 0:
            bad("lr must be > 0; warmup_steps, iterations, grad_clip and time_limit must be >= 0")
        if not 0 <= self.lr_decay_steps <= self.iterations:
            bad(f"lr_decay_steps must be 0 or in [1, iterations={self.iterations}], got {self.lr_decay_steps}")
        for k in ("log_interval", "save_interval", "keep_checkpoints"):
            if getattr(self, k) < 1:
                bad(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.stage in ("encoder", "encoder-dropout") and self.from_scratch:
            bad(
                f"stage {self.stage} trains the encoder against a frozen pretrained decoder; "
                "from_scratch only makes sense for the joint and upsampler stages"
            )
        for term in ("reward", "class_reward"):
            path, weight, max_t = (getattr(self, f"{term}_{k}") for k in ("model", "weight", "max_t"))
            if bool(path) != (weight > 0):
                bad(f"give {term}_model and {term}_weight > 0 together, got {path!r} and {weight}")
            if path and self.stage not in ("encoder", "encoder-dropout", "joint"):
                bad(f"the {term} term is for the base PITI stages (joint, encoder), not {self.stage}")
            if max_t < 1:
                bad(f"{term}_max_t must be >= 1, got {max_t}")
        if self.class_reward_model and self.data.get("kind", "synth") != "synth":
            bad(f"the class reward term needs the synthetic scenes' label maps, not {self.data['kind']}")
        if self.init and self.from_scratch:
            bad("give either init (a checkpoint) or from_scratch, not both")

    def to_dict(self) -> dict:
        """Plain YAML-ready dict."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML, atomically."""
        from piti.fileio import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid options: {', '.join(field_names())}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a resolved config written by :meth:`save` (e.g. ``<run>/config.yaml``)."""
        return cls.from_dict(_read_yaml(Path(path)))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    return d


def list_sections(path: str | Path) -> list[str]:
    """Names of the sections (runnable stages) of a recipe file."""
    return list((_read_yaml(Path(path)).get("stages") or {}).keys())


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=2e-5", "data.num=64"]`` -> ``{"lr": 2e-5, "data.num": 64}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    return out


def apply_overrides(d: dict, overrides: dict[str, Any]) -> dict:
    """Set each dotted ``key`` of ``overrides`` in the nested dict ``d`` (a copy)."""
    import copy

    d = copy.deepcopy(d)
    valid = set(field_names())
    for key, value in overrides.items():
        head, *rest = key.split(".")
        if head not in valid:
            raise ConfigError(
                f"unknown training option {head!r} in override {key}=...; valid options: {', '.join(sorted(valid))}"
            )
        if not rest:
            d[head] = value
            continue
        node = d.setdefault(head, {})
        for part in rest[:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {head} is not a mapping")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {head} is not a mapping")
        node[rest[-1]] = value
    return d


def _substitute(d: dict) -> dict:
    """Replace ``{task}`` and ``{name}`` in the string fields that name things."""
    for k in ("model", "init", "out_dir", "reward_model", "class_reward_model"):
        if isinstance(d.get(k), str):
            d[k] = d[k].replace("{task}", str(d.get("task", ""))).replace("{name}", str(d.get("name", "")))
    return d


def load_recipe(path: str | Path, section: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of ``section`` in the recipe file ``path``, with ``overrides`` on top."""
    path = Path(path)
    recipe = _read_yaml(path)
    unknown = sorted(set(recipe) - {"defaults", "stages"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected 'defaults' and 'stages'")
    sections = recipe.get("stages") or {}
    if section not in sections:
        raise ConfigError(f"{path} has no section {section!r}; sections: {', '.join(sections) or '(none)'}")
    d = dict(recipe.get("defaults") or {})
    d.update(sections[section] or {})
    d.setdefault("name", section)
    d.setdefault("stage", section)
    unknown = sorted(set(d) - set(field_names()))
    if unknown:
        raise ConfigError(f"{path}, section {section}: unknown option(s) {unknown}; valid: {', '.join(field_names())}")
    d = apply_overrides(d, overrides or {})
    return TrainConfig.from_dict(_substitute(d))
