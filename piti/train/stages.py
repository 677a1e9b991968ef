"""The five training stages: what is trained, on which inputs, with which losses.

| stage             | model                   | trained                 | condition dropout        | extra            |
|-------------------|-------------------------|-------------------------|--------------------------|------------------|
| `pretrain`        | GLIDE base or upsampler | everything              | caption -> "" (uncond_p) | word tokenizer   |
| `encoder`         | PITI base               | encoder; decoder frozen | none (official 0)        |                  |
| `encoder-dropout` | PITI base               | encoder; decoder frozen | null condition, 0.2      |                  |
| `joint`           | PITI base               | encoder and decoder     | null condition, 0.2      |                  |
| `upsampler`       | PITI upsampler          | encoder and decoder     | none (official 0)        | degraded low-res |

The upsampler stage adds the perceptual and adversarial losses on x0_pred; the base PITI stages can add the
consistency-feedback term (``reward_model``: a frozen reward model on x0_pred, :mod:`piti.train.rewards`);
pretraining uses a word tokenizer or GLIDE's BPE.

"Frozen" means ``requires_grad=False``: the decoder gets no gradients, has no optimizer state and no EMA
copy, and its weights stay bit-identical (the official code only leaves it out of the optimizer and
still computes its gradients; ``benchmarks/train_frozen.py`` measures the difference).

Each step of a stage draws everything random from the generators it is given (:meth:`Stage.draw`:
condition dropout, degradations, timesteps, noise) for the whole batch before any microbatch runs,
so a step is a pure function of (seed, rank, step) and gradient accumulation computes the same
update as one big batch. Upsamplers (GLIDE or PITI) get their low-res input from the target
image: degraded (:func:`piti.data.degrade.degrade_batch`, official) or area-downsampled.

The upsampler's discriminator accumulates its gradients over a step's microbatches and takes its
Adam step after the model's step (the official code steps it just before the generator term, inside
the loss; the generator term then sees a discriminator one update fresher).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from piti.checkpoints import load_checkpoint, load_weights
from piti.data.conditions import null_condition
from piti.data.datasets import PairDataset, make_dataset
from piti.data.tokenizer import GPT2BPETokenizer, WordTokenizer, load_tokenizer, tokenizer_from_dict
from piti.diffusion import create_diffusion, guided_denoiser, sample
from piti.errors import ConfigError, DatasetError
from piti.presets import create_model, get_config
from piti.settings import official_to_w
from piti.train.config import TrainConfig

log = logging.getLogger(__name__)

FROZEN_DECODER = ("encoder", "encoder-dropout")


# --------------------------------------------------------------------------------------------------
# Data


class NamedItems(Dataset):
    """Wraps a dataset: item ``(index, seed)`` seeds torch's RNG (crops, flips) then loads ``index``.

    Any failure becomes a :class:`DatasetError` naming the offending file.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        items = getattr(self.dataset, "items", None)
        if items and 0 <= index < len(items):
            item = items[index]
            files = [str(item.image)] + [str(p) for p in item.cond.values()]
            return ", ".join(files)
        return f"item {index} of {type(self.dataset).__name__}"

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        except DatasetError:
            raise  # already names its file
        except Exception as e:  # noqa: BLE001 - any reader failure is reported with the file
            raise DatasetError(
                f"could not load training item {index} ({self.describe(index)}): {type(e).__name__}: {e}"
            ) from e


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep everything else (paths, captions) as lists."""
    return {
        k: torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items]
        for k in items[0]
    }


def _scored(drawn: dict, max_t: int) -> torch.Tensor:
    """The samples of a :meth:`Stage.draw` batch that a feedback term scores: t < ``max_t`` and the condition kept."""
    return (drawn["t"] < max_t) & ~(drawn["kwargs"]["ref"] == 1).flatten(1).all(1)  # all ones: the null condition


def build_dataset(config: TrainConfig, model_config) -> PairDataset:
    """The dataset of ``config.data`` (``kind`` + ``make_dataset`` options) at the model's sizes."""
    spec = dict(config.data)
    kind = spec.pop("kind", "synth")
    root = spec.pop("root", None)
    glide = model_config.kind == "glide"
    # GLIDE ignores the condition: draw it at the image size, the cheapest.
    cond_size = model_config.image_size if glide else model_config.cond_size
    task = spec.pop("task", "mask" if glide else config.task)
    if config.class_reward_model:
        spec["labels"] = True  # the class-feedback term's target
    ds = make_dataset(
        kind, root, task=task, image_size=model_config.image_size, cond_size=cond_size, flip=config.hflip, **spec
    )
    if glide and not ds.has_captions:
        raise DatasetError(
            f"pretraining needs captions, and the {kind} dataset at {root} has none "
            "(a captions.jsonl file or COCO's caption annotations)"
        )
    if not glide and ds.cond_channels != model_config.cond_channels:
        raise ConfigError(
            f"the dataset gives {ds.cond_channels}-channel conditions for task {task!r}, "
            f"the model takes {model_config.cond_channels}"
        )
    return ds


def vocabulary_captions(dataset: PairDataset, scan: int) -> list[str]:
    """Captions to build a word vocabulary from: all of a dataset's, or the first ``scan`` synthetic scenes
    (drawn small: the caption does not depend on the size)."""
    from piti.data.datasets import SynthDataset

    if isinstance(dataset, SynthDataset):
        from piti.data.synth import generate_scene

        return [generate_scene((dataset.seed, i), 32).caption for i in range(min(len(dataset), scan))]
    return [item.caption or "" for item in dataset.items]


def build_tokenizer(config: TrainConfig, dataset: PairDataset, init_metadata: dict | None):
    """The tokenizer of a pretraining run: the init checkpoint's, GLIDE's BPE, or words of the captions."""
    if init_metadata and init_metadata.get("tokenizer"):
        return tokenizer_from_dict(init_metadata["tokenizer"])
    if config.tokenizer == "word":
        return WordTokenizer.from_captions(vocabulary_captions(dataset, config.tokenizer_scan))
    if config.tokenizer == "gpt2-bpe":
        return GPT2BPETokenizer.from_files()
    return GPT2BPETokenizer.from_files(config.tokenizer)


# --------------------------------------------------------------------------------------------------
# The upsampler's extra losses


class UpsamplerLosses:
    """Perceptual and adversarial terms on the clamped ``x0_pred`` (official weights 0.004 / 0.01 from step 100)."""

    def __init__(self, config: TrainConfig, device: torch.device, world_size: int):
        from piti.train.losses import AdversarialLoss, PatchDiscriminator, PerceptualLoss

        self.world_size = world_size
        self.perceptual = self.adversarial = None
        if config.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(
                config.perceptual_kind,
                weights_path=config.perceptual_weights,
                allow_random=config.allow_random_perceptual,
                weight=config.perceptual_weight,
                start_step=config.perceptual_start,
            ).to(device)
        if config.adv_weight > 0:
            disc = PatchDiscriminator(3, config.disc_ndf, config.disc_layers).to(device)
            self.adversarial = AdversarialLoss(
                disc, config.adv_kind, lr=config.disc_lr, weight=config.adv_weight, start_step=config.adv_start
            )

    @property
    def random_perceptual_weights(self) -> bool:
        return bool(self.perceptual is not None and self.perceptual.random_weights)

    def model_terms(self, x0_pred, x_start, step, share: float, metrics: dict, autocast) -> torch.Tensor:
        """Weighted perceptual + generator terms for the model's loss; also backpropagates the
        discriminator's loss (scaled by ``share``, the microbatch's part of the step)."""
        total = x0_pred.new_zeros(())
        if self.perceptual is not None and self.perceptual.active(step):
            with autocast():
                p = self.perceptual(x0_pred, x_start).float().mean()
            metrics["perceptual"] = p.item()
            total = total + self.perceptual.weight * p
        adv = self.adversarial
        if adv is not None and adv.active(step):
            adv.discriminator.train()
            d_loss = adv.discriminator_loss(x_start, x0_pred)
            (d_loss * share).backward()
            g = adv.generator_loss(x0_pred).mean()
            metrics["disc"], metrics["adv"] = d_loss.item(), g.item()
            total = total + adv.weight * g
        return total

    def after_step(self, step: int) -> None:
        """The discriminator's Adam step on its accumulated (and rank-averaged) gradients."""
        adv = self.adversarial
        if adv is None or not adv.active(step):
            return
        if self.world_size > 1:
            for p in adv.discriminator.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world_size)
        adv.optimizer.step()
        adv.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        if self.adversarial is None:
            return {}
        return {
            "discriminator": self.adversarial.discriminator.state_dict(),
            "disc_optimizer": self.adversarial.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if self.adversarial is not None:
            self.adversarial.discriminator.load_state_dict(state["discriminator"])
            self.adversarial.optimizer.load_state_dict(state["disc_optimizer"])


# --------------------------------------------------------------------------------------------------
# A stage


@dataclass
class StepOutput:
    """What one microbatch gives the loop."""

    loss: torch.Tensor  # scalar to backpropagate (timestep-weighted, extra terms added)
    t: torch.Tensor  # the sampled timesteps (for the loss-aware timestep sampler)
    diffusion_loss: torch.Tensor  # per-sample diffusion loss, detached (same)
    metrics: dict  # floats for the log


def _check_model_fits_stage(config: TrainConfig, mc) -> None:
    want_kind = "glide" if config.stage == "pretrain" else "piti"
    if mc.kind != want_kind:
        raise ConfigError(
            f"stage {config.stage} trains a {want_kind.upper()} model; preset {config.model!r} is {mc.kind}"
        )
    if config.stage == "upsampler" and not mc.super_res:
        raise ConfigError(f"stage upsampler needs an upsampler preset (super_res), got {config.model!r}")
    if config.stage in ("encoder", "encoder-dropout", "joint") and mc.super_res:
        raise ConfigError(
            f"stage {config.stage} trains a base model; {config.model!r} is an upsampler (use stage upsampler)"
        )
    if mc.super_res and mc.image_size % config.low_res_size:
        raise ConfigError(f"image_size {mc.image_size} is not a multiple of low_res_size {config.low_res_size}")


class Stage:
    """Model, data and loss of one training stage (see the module docstring)."""

    def __init__(self, config: TrainConfig, device: torch.device, world_size: int = 1, run_dir: Path | None = None):
        self.config = config
        self.device = device
        overrides = dict(config.model_overrides)
        if config.activation_checkpointing:
            overrides["use_checkpoint"] = True
        mc = get_config(config.model, **overrides)
        _check_model_fits_stage(config, mc)
        self.is_glide = mc.kind == "glide"
        # Files first (init checkpoint, dataset), so that a typo fails before a large model is built.
        ckpt = load_checkpoint(config.init) if config.init else None
        if ckpt is None and config.stage != "pretrain" and not config.from_scratch:
            raise ConfigError(
                f"stage {config.stage} starts from pretrained weights: give init=PATH (an official "
                "GLIDE or PITI checkpoint, or one of this project's) or from_scratch=true"
            )
        self.dataset = build_dataset(config, mc)
        from piti.train.rewards import load_reward_model

        self.reward = None  # frozen, outside the model: no optimizer state, no EMA, not in the checkpoint
        if config.reward_model:
            self.reward = load_reward_model(config.reward_model, task=mc.task, device=device)
        self.class_reward = None  # frozen too: a mask reward model against the scene's label map
        if config.class_reward_model:
            self.class_reward = load_reward_model(config.class_reward_model, device=device)
            if self.class_reward.config.task != "mask":
                raise ConfigError(
                    f"class_reward_model {config.class_reward_model} is a {self.class_reward.config.task} reward "
                    "model; the class term reads classes: give a mask reward model"
                )

        model = create_model(mc)
        if ckpt is not None:
            load_weights(model, ckpt)
            log.info("initialised %s from %s (%s format)", config.model, config.init, ckpt.format)
        if config.stage in FROZEN_DECODER:
            model.decoder.requires_grad_(False)
        self.model = model.to(device)

        self.tokenizer = None
        if self.is_glide:
            saved = run_dir / "tokenizer.json" if run_dir is not None else None
            if saved is not None and saved.is_file():  # a resumed run keeps its vocabulary
                self.tokenizer = load_tokenizer(
                    saved, None if config.tokenizer in ("word", "gpt2-bpe") else config.tokenizer
                )
            else:
                self.tokenizer = build_tokenizer(config, self.dataset, ckpt.metadata if ckpt else None)
            if self.tokenizer.vocab_size > mc.n_vocab:
                raise ConfigError(
                    f"the tokenizer has {self.tokenizer.vocab_size} tokens, more than the model's "
                    f"n_vocab={mc.n_vocab}; raise model_overrides.n_vocab"
                )
        self.diffusion = create_diffusion(mc.noise_schedule, mc.diffusion_steps)
        self.extra = UpsamplerLosses(config, device, world_size) if config.stage == "upsampler" else None
        if mc.super_res and config.degrade_low_res:
            from piti.data.degrade import DegradationConfig

            self.degradation = DegradationConfig(**config.degradation)
        else:
            self.degradation = None

    # -- inputs ------------------------------------------------------------------------------------
    def low_res(self, x_start: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The upsampler's low-resolution input made from the target image."""
        size = self.config.low_res_size
        if self.degradation is None:
            return F.interpolate(x_start, size=(size, size), mode="area")
        from piti.data.degrade import degrade_batch

        return degrade_batch(x_start, x_start.shape[-1] // size, self.degradation, rng)

    def inputs(self, batch: dict, gen: torch.Generator, rng: np.random.Generator, uncond_p: float):
        """``(x_start, model_kwargs)`` on the device; the condition is dropped with probability ``uncond_p``."""
        x_start = batch["image"].to(self.device)
        n = x_start.shape[0]
        drop = torch.rand(n, generator=gen) < uncond_p
        if self.is_glide:
            captions = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
            tokens, mask = self.tokenizer.batch(captions, self.model.config.text_ctx)
            kwargs = {"tokens": tokens.to(self.device), "mask": mask.to(self.device)}
        else:
            cond = batch["cond"].to(self.device)
            # Condition dropout for classifier-free guidance: the one null condition (all ones).
            kwargs = {"ref": torch.where(drop.to(self.device).view(-1, 1, 1, 1), null_condition(cond), cond)}
        if self.model.config.super_res:
            kwargs["low_res"] = self.low_res(x_start, rng)
        return x_start, kwargs

    # -- one microbatch ----------------------------------------------------------------------------
    def draw(self, batch: dict, gen: torch.Generator, rng: np.random.Generator, timestep_sampler) -> dict:
        """Everything random about a step, for the whole batch: inputs (with condition dropout and
        low-res degradation), timesteps with their importance weights, and the noise."""
        x_start, kwargs = self.inputs(batch, gen, rng, self.config.uncond_p)
        t, weights = timestep_sampler.sample(x_start.shape[0], gen)
        noise = torch.randn(x_start.shape, generator=gen).to(self.device)
        drawn = {
            "x_start": x_start,
            "kwargs": kwargs,
            "t": t.to(self.device),
            "weights": weights.to(self.device),
            "noise": noise,
        }
        if "labels" in batch:
            drawn["labels"] = batch["labels"].to(self.device)
        return drawn

    def loss(self, model_fn: Callable, drawn: dict, step: int, autocast, share: float = 1.0) -> StepOutput:
        """Diffusion loss (and the upsampler's extra terms) of a (micro)batch of :meth:`draw`'s output.

        ``share`` is the microbatch's fraction of the batch (it scales the discriminator's gradients).
        """
        x_start, t, noise = drawn["x_start"], drawn["t"], drawn["noise"]
        x_t = self.diffusion.q_sample(x_start, t, noise)  # Eq. 4
        with autocast():
            model_output = model_fn(x_t, self.diffusion.model_timesteps(t), **drawn["kwargs"])
        terms = self.diffusion.training_losses(model_output.float(), x_start, x_t, t, noise)
        loss = (terms["loss"] * drawn["weights"]).mean()  # importance weights 1 / (N p_t) (uniform: 1)
        metrics = {"mse": terms["mse"].mean().item(), "vb": terms["vb"].mean().item()}
        if self.config.x0_weight > 0:
            # |x0 - x0_hat|^2 = |eps - eps_hat|^2 (1 - alpha_bar) / alpha_bar = eps error / SNR_t (capped)
            alpha_bar = self.diffusion._extract(self.diffusion.alphas_cumprod, t, x_start).view(-1)
            inv_snr = ((1 - alpha_bar) / alpha_bar).clamp(max=self.config.x0_snr_cap)
            eps_err = (model_output[:, :3].float() - noise).pow(2).mean(dim=(1, 2, 3))
            loss = loss + self.config.x0_weight * (inv_snr * eps_err * drawn["weights"]).mean()
        if self.reward is not None:
            loss = loss + self.config.reward_weight * self.reward_term(terms["x0_pred"], drawn, metrics)
        if self.class_reward is not None:
            loss = loss + self.config.class_reward_weight * self.class_term(terms["x0_pred"], drawn, metrics)
        if self.extra is not None:
            loss = loss + self.extra.model_terms(terms["x0_pred"], x_start, step, share, metrics, autocast)
        metrics["loss"] = loss.item()
        return StepOutput(loss, t, terms["loss"].detach(), metrics)

    def reward_term(self, x0_pred: torch.Tensor, drawn: dict, metrics: dict) -> torch.Tensor:
        """Consistency feedback (ControlNet++): the frozen reward model on the one-step ``x0_pred`` against the
        input condition, for the samples with t < reward_max_t that kept their condition; summed and divided by
        the microbatch size, so that accumulated microbatches equal one big batch. Logged as ``reward``."""
        from piti.train.rewards import condition_target, consistency_loss

        ref = drawn["kwargs"]["ref"]
        on = _scored(drawn, self.config.reward_max_t)
        term = x0_pred.new_zeros(())
        if on.any():
            task = self.model.config.task
            target = condition_target(
                task, ref[on], x0_pred.shape[-1], self.dataset.palette, getattr(self.dataset, "mask_encoding", "color")
            )
            term = consistency_loss(task, self.reward(x0_pred[on]), target).sum() / x0_pred.shape[0]
        metrics["reward"] = term.item()
        return term

    def class_term(self, x0_pred: torch.Tensor, drawn: dict, metrics: dict) -> torch.Tensor:
        """Class feedback: the frozen mask reward model's cross-entropy of the one-step ``x0_pred`` against the
        scene's label map, for the samples with t < class_reward_max_t that kept their condition; normalised as
        :meth:`reward_term`. Logged as ``class_reward``."""
        from piti.train.rewards import consistency_loss

        on = _scored(drawn, self.config.class_reward_max_t)
        term = x0_pred.new_zeros(())
        if on.any():
            output = self.class_reward(x0_pred[on])
            term = consistency_loss("mask", output, {"labels": drawn["labels"][on]}).sum() / x0_pred.shape[0]
        metrics["class_reward"] = term.item()
        return term

    def after_step(self, step: int) -> None:
        if self.extra is not None:
            self.extra.after_step(step)

    def state_dict(self) -> dict:
        return self.extra.state_dict() if self.extra is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.extra is not None:
            self.extra.load_state_dict(state)

    # -- what goes into the model file and beside the run -----------------------------------------
    def metadata(self) -> dict:
        meta = {
            "stage": self.config.stage,
            "task": self.model.config.task,
            "data": self.config.data,
            "init": self.config.init,
            "from_scratch": self.config.from_scratch,
        }
        if self.tokenizer is not None:
            meta["tokenizer"] = self.tokenizer.to_dict()
        if self.reward is not None:
            meta["reward"] = {"model": self.config.reward_model, "weight": self.config.reward_weight}
        if self.class_reward is not None:
            meta["class_reward"] = {"model": self.config.class_reward_model, "weight": self.config.class_reward_weight}
        if self.extra is not None:
            meta["perceptual_random_weights"] = self.extra.random_perceptual_weights
        return meta

    def save_side_files(self, run_dir: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save(run_dir / "tokenizer.json")

    # -- sample grid -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(
        self, model, count: int, steps: int, guidance: float, seed: int, autocast, sampler: str = "ddim"
    ) -> torch.Tensor:
        """Rows of ``count`` images in [-1, 1]: [condition,] [low-res,] target, sample (``sampler``, ``steps`` steps).

        ``guidance`` is the official scale s (1 = none; base models only).
        """
        items = NamedItems(self.dataset)
        batch = collate([items[(i, seed)] for i in range(min(count, len(self.dataset)))])
        gen = torch.Generator().manual_seed(seed)
        x_start, kwargs = self.inputs(batch, gen, np.random.default_rng(seed), uncond_p=0.0)
        diffusion = create_diffusion(
            self.model.config.noise_schedule,
            self.model.config.diffusion_steps,
            timestep_respacing=f"ddim{steps}" if sampler == "ddim" else str(steps),
        )
        low_res = kwargs.pop("low_res", None)
        if self.is_glide:
            cond = model.encode(kwargs["tokens"], kwargs["mask"])
            empty_tokens, empty_mask = self.tokenizer.batch([""], self.model.config.text_ctx)
            null = model.encode(empty_tokens.to(self.device), empty_mask.to(self.device))
        else:
            cond = model.encode(kwargs["ref"])
            null = model.encode(null_condition(kwargs["ref"][:1]))

        def model_fn(x, t, c):
            with autocast():
                return model(x, t, cond_emb=c, low_res=low_res).float()

        if guidance != 1.0 and low_res is None:
            denoise = guided_denoiser(model_fn, cond, null, official_to_w(guidance), mode="plain")
        else:
            denoise = lambda x, t: model_fn(x, t, cond)  # noqa: E731
        x_T = torch.randn(x_start.shape, generator=gen).to(self.device)
        samples = sample(sampler, denoise, x_T, diffusion, generator=gen)

        size = x_start.shape[-2:]
        rows = []
        if not self.is_glide:
            ref = kwargs["ref"]
            ref = ref.repeat(1, 3, 1, 1) if ref.shape[1] == 1 else ref[:, :3]
            rows.append(F.interpolate(ref, size=size, mode="nearest"))
        if low_res is not None:
            rows.append(F.interpolate(low_res, size=size, mode="nearest"))
        rows += [x_start, samples.clamp(-1, 1)]
        return torch.cat([r.float().cpu() for r in rows])
