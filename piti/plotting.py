"""Pictures, plots and small helpers shared by the numbered notebooks (``notebooks/*.ipynb``).

Notebook cells call the package and plot; anything two notebooks need lives here, where the tests
reach it: image grids, condition pictures, palette legends, noise-schedule plots, training-log curves,
parameter counts by part, a forward pass traced with tensor shapes, text-to-image sampling from a toy
GLIDE, the toy upsampler on given low-resolution images, and classifier-free guidance statistics
recorded step by step over a sampling run.

``PITI_FAST=1`` in the environment (:func:`fast_mode`) asks the notebooks for fewer steps and samples;
the test suite runs them so.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

FAST_ENV = "PITI_FAST"
# The toy GLIDE pretraining that the embedded PITI models started from left the working tree to keep the
# shipped files inside their budget; it stays in git history (checkpoints/toy/README.md).
TOY_GLIDE_COMMIT = "acbe9aa"
TOY_GLIDE_FILES = {"base": "toy-glide-base-pretrain.safetensors", "upsample": "toy-glide-upsample-pretrain.safetensors"}


# --------------------------------------------------------------------------------------------------
# Notebook settings


def fast_mode() -> bool:
    """True when ``PITI_FAST`` is set to a true value (1, true, yes): notebooks shrink steps and counts."""
    return os.environ.get(FAST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def pick(full, fast):
    """``fast`` in fast mode (:func:`fast_mode`), ``full`` otherwise."""
    return fast if fast_mode() else full


def setup(dpi: int = 80) -> None:
    """Matplotlib settings for small PNG figures (committed notebooks stay small)."""
    import matplotlib

    matplotlib.rcParams.update(
        {"figure.dpi": dpi, "savefig.dpi": dpi, "font.size": 9, "axes.titlesize": 9, "figure.max_open_warning": 0}
    )


def markdown_table(rows, headers) -> str:
    """A Markdown table (for ``IPython.display.Markdown``); floats with 4 significant digits."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Pictures


def to_picture(x) -> np.ndarray:
    """Any image as an (H, W, 3) uint8 array.

    Accepts PIL images, uint8 arrays (H, W) or (H, W, 3|4), float arrays in [0, 1], and torch tensors
    (3, H, W) / (1, 3, H, W) / (1, H, W) in [-1, 1] (the models' range).
    """
    if torch.is_tensor(x):
        t = x.detach().float().cpu()
        if t.dim() == 4:
            t = t[0]
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        arr = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"cannot show an array of shape {arr.shape} as an image")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def condition_pictures(task: str, cond: torch.Tensor) -> dict:
    """A model condition tensor (C, S, S) in [-1, 1] as named pictures.

    mask: the colour map; sketch: the distance-transformed edge map the encoder reads; depth: its two
    halves, the normal visualisation (channels 0-2) and the depth visualisation (channels 3-5).
    """
    cond = cond[0] if cond.dim() == 4 else cond
    if task == "mask":
        return {"colour map": to_picture(cond)}
    if task == "sketch":
        return {"sketch (distance map)": to_picture(cond[:1])}
    if task == "depth":
        return {"normals (ch 0-2)": to_picture(cond[:3]), "depth (ch 3-5)": to_picture(cond[3:6])}
    raise ValueError(f"unknown task {task!r}")


def image_grid(rows, titles=None, row_labels=None, size: float = 1.6, suptitle: str | None = None):
    """A figure of images: ``rows`` is a list of rows (lists of images) or one flat list (one row).

    ``titles``: one per column (list) or one per image (list of lists); ``row_labels``: one per row.
    Images go through :func:`to_picture`; ``None`` leaves a cell empty.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("image_grid needs at least one image")
    if not isinstance(rows[0], (list, tuple)):
        rows = [rows]
        if titles is not None and titles and not isinstance(titles[0], (list, tuple)):
            titles = [titles]
    elif titles is not None and titles and not isinstance(titles[0], (list, tuple)):
        titles = [titles] + [[None] * len(titles)] * (len(rows) - 1)  # column titles on the first row
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(size * n_cols, size * n_rows + (0.3 if suptitle else 0)), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = row[j] if j < len(row) else None
            if image is None:
                ax.axis("off")
                continue
            ax.imshow(to_picture(image), interpolation="nearest")
            if titles is not None and i < len(titles) and j < len(titles[i]) and titles[i][j]:
                ax.set_title(titles[i][j], fontsize=8)
        if row_labels is not None and i < len(row_labels):
            axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def palette_legend(classes, palette, ax=None, ncol: int = 5):
    """A legend of class colours (``palette`` (K, 3) uint8, one row per class) on ``ax`` or a new figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = np.asarray(palette)
    handles = [Patch(facecolor=palette[i] / 255.0, edgecolor="black", label=name) for i, name in enumerate(classes)]
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.6 * ncol, 0.3 + 0.3 * -(-len(classes) // ncol)))
        ax.axis("off")
        ax.legend(handles=handles, ncol=ncol, loc="center", frameon=False, fontsize=8)
        return fig
    ax.legend(handles=handles, ncol=ncol, fontsize=7)
    return ax.figure


# --------------------------------------------------------------------------------------------------
# Curves


def read_log(path) -> dict:
    """A training run's ``log.csv`` as column name -> float array (empty cells are NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def smooth(y, window: int) -> np.ndarray:
    """Moving average over ``window`` points (the ends average what they have)."""
    y = np.asarray(y, dtype=np.float64)
    window = min(int(window), len(y))  # np.convolve's "same" is as long as the longer input
    if window <= 1:
        return y
    kernel = np.ones(window)
    return np.convolve(y, kernel, mode="same") / np.convolve(np.ones_like(y), kernel, mode="same")


def plot_curves(
    curves: dict,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    window: int = 1,
    logy: bool = False,
    ax=None,
):
    """Line plot of ``curves`` (label -> (x, y)), smoothed over ``window`` points."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, (x, y) in curves.items():
        ax.plot(x, smooth(y, window), label=label, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_training_logs(log_dir, groups: dict, key: str = "loss", window: int = 5, chain=(), logy=()):
    """One panel per group (title -> list of run names): the ``key`` column of ``log_dir/<run>.csv``
    against the step. In the panels named in ``chain`` the runs follow one another (each starts where the
    one before it ended, as the stages of one model do); the panels in ``logy`` have a log scale.
    Missing logs are named in the panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups.items()):
        curves, missing, offset = {}, [], 0
        for name in names:
            path = Path(log_dir) / f"{name}.csv"
            if not path.is_file():
                missing.append(name)
                continue
            log = read_log(path)
            curves[name] = (log["step"] + offset, log[key])
            if title in chain:
                offset += log["step"][-1]
        plot_curves(
            curves,
            xlabel="step (runs one after another)" if title in chain else "step",
            ylabel=key,
            title=title,
            window=window,
            logy=title in logy,
            ax=ax,
        )
        if missing:
            ax.text(0.02, 0.02, "missing: " + ", ".join(missing), transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    return fig


def plot_schedules(respacings: dict, steps: int = 1000):
    """The two GLIDE noise schedules and respaced processes.

    Left: alpha_bar_t of ``linear`` (upsamplers) and ``squaredcos_cap_v2`` (cosine, base models). Right:
    the original steps each respacing keeps (``respacings``: label -> (schedule, spec) such as
    ``("linear", "fast27")``), as points on its schedule's alpha_bar curve.
    """
    import matplotlib.pyplot as plt

    from piti.diffusion import create_diffusion

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    full = {}
    for name in ("linear", "squaredcos_cap_v2"):
        d = create_diffusion(name, steps)
        full[name] = d.alphas_cumprod.numpy()
        ax1.plot(np.arange(steps), full[name], label=name)
    ax1.set_xlabel("t")
    ax1.set_ylabel(r"$\bar\alpha_t$ (signal fraction)")
    ax1.set_title("noise schedules")
    ax1.legend(fontsize=7)
    for i, (label, (schedule, spec)) in enumerate(respacings.items()):
        kept = create_diffusion(schedule, steps, spec).timestep_map.numpy()
        ax2.plot(np.arange(steps), full[schedule], color="0.85", lw=1)
        ax2.scatter(kept, full[schedule][kept], s=10, label=f"{label} ({len(kept)} steps)", color=f"C{i}")
    ax2.set_xlabel("original step t")
    ax2.set_title("respaced sampling steps")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Networks


def part_of(name: str) -> str:
    """The part of a GLIDE or PITI network that parameter ``name`` belongs to (see :func:`parameter_breakdown`)."""
    name = name.removeprefix("decoder.")
    if name.startswith("encoder."):
        return "condition encoder (PITI)"
    if name.startswith(("token_embedding", "positional_embedding", "padding_embedding", "transformer.", "final_ln")):
        return "text transformer (GLIDE)"
    if ".encoder_kv." in name:
        return "condition keys/values in attention (encoder_kv)"
    if name.startswith("transformer_proj"):
        return "pooled condition -> AdaGN (transformer_proj)"
    if name.startswith("time_embed"):
        return "timestep embedding"
    for prefix, part in (
        ("input_blocks", "UNet down"),
        ("middle_block", "UNet middle"),
        ("output_blocks", "UNet up"),
        ("out.", "UNet output"),
    ):
        if name.startswith(prefix):
            return part
    return "other"


PARTS = (
    "text transformer (GLIDE)",
    "condition encoder (PITI)",
    "timestep embedding",
    "pooled condition -> AdaGN (transformer_proj)",
    "condition keys/values in attention (encoder_kv)",
    "UNet down",
    "UNet middle",
    "UNet up",
    "UNet output",
    "other",
)


def parameter_breakdown(model) -> dict:
    """Parameter counts of ``model`` by part (:func:`part_of`), in a fixed order; works on the meta device."""
    counts = defaultdict(int)
    for name, p in model.named_parameters():
        counts[part_of(name)] += p.numel()
    return {k: counts[k] for k in PARTS if counts.get(k)}


def plot_parameter_breakdown(breakdowns: dict, title: str = "parameters by part"):
    """Horizontal stacked bars: one bar per model (label -> :func:`parameter_breakdown`), in millions."""
    import matplotlib.pyplot as plt

    parts = [p for p in PARTS if any(p in b for b in breakdowns.values())]
    labels = list(breakdowns)
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.45 * len(labels)))
    left = np.zeros(len(labels))
    for i, part in enumerate(parts):
        values = np.array([breakdowns[m].get(part, 0) / 1e6 for m in labels])
        ax.barh(labels, values, left=left, label=part, color=f"C{i % 10}")
        left += values
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f}M", va="center", fontsize=7)
    ax.set_xlabel("millions of parameters")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _shape_of(value):
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shape_of(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_shape_of(v) for v in value]
    return type(value).__name__


def trace_shapes(model, *args, depth: int = 1, **kwargs) -> list:
    """Run ``model(*args, **kwargs)`` once and return, in the order they finish, ``(name, class, output shape)``
    of every submodule at most ``depth`` levels down (``depth=1``: the top level; the items of a ModuleList
    such as ``input_blocks.3`` count at the list's level)."""
    lists = {name for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)}
    rows, hooks = [], []
    for name, module in model.named_modules():
        parts = name.split(".")
        # an item of a ModuleList counts at the list's level (input_blocks.3 is as deep as middle_block)
        level = len(parts) - sum(p.isdigit() and ".".join(parts[:i]) in lists for i, p in enumerate(parts))
        if not name or level > depth or name in lists:
            continue
        kind = type(module).__name__
        if type(module).__name__ == "TimestepEmbedSequential":
            kind = " + ".join(type(c).__name__ for c in module)  # what a UNet block holds
        hooks.append(
            module.register_forward_hook(lambda m, i, o, name=name, kind=kind: rows.append((name, kind, _shape_of(o))))
        )
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return rows


# --------------------------------------------------------------------------------------------------
# Models outside the shipped set, and sampling paths the pipeline does not expose


def toy_glide_checkpoint(kind: str = "base") -> Path | None:
    """Path of the toy GLIDE pretraining (``kind`` "base" or "upsample"), or None when it cannot be had.

    Looked for in ``checkpoints/toy/intermediate/``, then taken from the git history of this checkout
    (commit ``TOY_GLIDE_COMMIT``) into a temporary folder.
    """
    from piti.pipeline import TOY_CHECKPOINT_DIR

    name = TOY_GLIDE_FILES[kind]
    local = TOY_CHECKPOINT_DIR / "intermediate" / name
    if local.is_file():
        return local
    cached = Path(tempfile.gettempdir()) / "piti-notebooks" / name
    if cached.is_file():
        return cached
    repo = TOY_CHECKPOINT_DIR.parent.parent
    try:
        command = ["git", "-C", str(repo), "show", f"{TOY_GLIDE_COMMIT}:checkpoints/toy/intermediate/{name}"]
        blob = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    tmp.write_bytes(blob)
    tmp.replace(cached)
    return cached


def toy_glide_missing_message(kind: str = "base") -> str:
    """What to do when :func:`toy_glide_checkpoint` finds nothing."""
    name = TOY_GLIDE_FILES[kind]
    return (
        f"the toy GLIDE pretraining {name} is not in checkpoints/toy/intermediate/ and this is not a git "
        f"checkout holding commit {TOY_GLIDE_COMMIT}; `git show {TOY_GLIDE_COMMIT}:checkpoints/toy/intermediate/"
        f"{name} > checkpoints/toy/intermediate/{name}` in a clone restores it, or `piti train --config "
        "configs/toy.yaml --stage pretrain` retrains it"
    )


@torch.no_grad()
def text_to_image(
    model,
    tokenizer,
    captions,
    *,
    guidance: float = 3.0,
    steps: str = "25",
    sampler: str = "ddpm",
    seed: int = 0,
    precision: str = "fp32",
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Sample a GLIDE base model from ``captions`` with plain classifier-free guidance w (the empty caption is
    the null condition, as in pretraining). Returns images (N, 3, S, S) in [-1, 1]."""
    from piti.diffusion import create_diffusion, guided_denoiser, sample
    from piti.precision import make_policy

    policy = make_policy("cpu", precision)
    net = policy.prepare(model)
    cfg = model.config
    tokens, mask = tokenizer.batch(list(captions), cfg.text_ctx)
    empty_tokens, empty_mask = tokenizer.batch([""], cfg.text_ctx)
    with policy.autocast():
        cond, null = model.encode_text(tokens, mask), model.encode_text(empty_tokens, empty_mask)

    def model_fn(x, t, c):
        with policy.autocast():
            return net(policy.input(x), t, cond_emb=c)

    denoise = guided_denoiser(model_fn, cond, null, guidance, mode="plain")
    diffusion = create_diffusion(cfg.noise_schedule, cfg.diffusion_steps, str(steps))
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(captions), 3, cfg.image_size, cfg.image_size), generator=gen)
    kwargs = {"noise_scale": noise_scale} if sampler == "ddpm" else {}
    return sample(sampler, denoise, x_T, diffusion, generator=gen, **kwargs).float().clamp(-1, 1)


def _setting(pipe, name):
    """A pipeline default, whether ``pipe.defaults`` is a dict or a settings dataclass."""
    d = pipe.defaults
    return d[name] if isinstance(d, dict) else getattr(d, name)


@torch.no_grad()
def upsample_images(
    pipe,
    cond: torch.Tensor,
    low_res: torch.Tensor,
    *,
    steps: str | None = None,
    start: float | None = None,
    sampler: str = "ddpm",
    seed: int = 0,
) -> torch.Tensor:
    """Run the pipeline's upsampler on given low-resolution images ``low_res`` (N, 3, s, s) in [-1, 1]
    for the condition tensor ``cond`` (C, S, S), as the pipeline runs it after its base model
    (temperature 0.997, optional start from the noised bicubic enlargement). Returns (N, 3, S', S')."""
    import torch.nn.functional as F

    model = pipe.upsampler_model
    if model is None:
        raise ValueError("this pipeline has no upsampler")
    cfg = model.config
    steps = steps if steps is not None else _setting(pipe, "upsample_steps")
    start = float(start if start is not None else _setting(pipe, "upsample_start"))
    ref = F.interpolate(cond[None].float(), size=(cfg.cond_size,) * 2, mode="nearest")
    n = low_res.shape[0]
    diffusion = pipe.diffusion(model, steps, start)
    gen = torch.Generator().manual_seed(seed)
    temperature = float(_setting(pipe, "upsample_temperature"))
    x_T = torch.randn((n, 3, cfg.image_size, cfg.image_size), generator=gen) * temperature
    if start < 1:
        enlarged = F.interpolate(low_res.float(), size=x_T.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        x_T = diffusion.q_sample(enlarged, torch.full((n,), diffusion.num_timesteps - 1, dtype=torch.long), x_T)
    denoise = pipe.upsampler_denoiser(ref, low_res.float())
    from piti.diffusion import sample

    return sample(sampler, denoise, x_T, diffusion, generator=gen).float().clamp(-1, 1)


GUIDANCE_SERIES = ("cond", "uncond", "plain", "normalized", "normalized_analytic")


@torch.no_grad()
def guidance_trace(
    pipe,
    cond: torch.Tensor,
    *,
    guidance: float,
    guidance_mode: str = "normalized",
    guidance_sigma: str = "measured",
    steps: str = "25",
    sampler: str = "ddpm",
    num_samples: int = 1,
    seed: int = 0,
    noise_scale: float | None = None,
):
    """Sample the pipeline's base model with guidance w and record, at every step, the mean and standard
    deviation (per sample over C, H, W, averaged over the batch) of the conditional epsilon, the null one,
    and the guided epsilons computed from them: plain, normalized with measured moments, and normalized
    with the paper's analytic moments (``normalized_analytic``).

    ``cond`` is a condition tensor (C, S, S) in [-1, 1] at the base model's condition size; the run is
    guided by ``guidance_mode`` (and ``guidance_sigma``), the other epsilons being computed alongside.
    Returns ``(images (N, 3, s, s) in [-1, 1], trace)`` with ``trace`` a dict of arrays over the steps:
    ``t`` (the model's timestep) and ``<series>_mean`` / ``<series>_std`` for ``GUIDANCE_SERIES``.
    """
    from piti.data.conditions import null_condition
    from piti.diffusion import guided_denoiser, normalized_guidance, plain_guidance, sample

    if guidance <= 0:
        raise ValueError("guidance_trace needs guidance w > 0 (at w = 0 the null prediction is not computed)")
    model, policy = pipe.base_model, pipe.policy
    cfg = model.config
    if tuple(cond.shape) != (cfg.cond_channels, cfg.cond_size, cfg.cond_size):
        raise ValueError(
            f"expected a condition tensor ({cfg.cond_channels}, {cfg.cond_size}, {cfg.cond_size}), "
            f"got {tuple(cond.shape)}"
        )
    ref = cond[None].float().to(policy.device)
    emb = {k: v.expand(num_samples, *v.shape[1:]) for k, v in pipe.encode(model, ref).items()}
    null = pipe.encode(model, null_condition(ref))
    trace = defaultdict(list)

    def model_fn(x, t, c):
        with policy.autocast():
            out = model(policy.input(x), t, cond_emb=c)
        out = out.float()
        eps_c, eps_u = out[:num_samples, :3], out[num_samples:, :3]
        series = {
            "cond": eps_c,
            "uncond": eps_u,
            "plain": plain_guidance(eps_c, eps_u, guidance),
            "normalized": normalized_guidance(eps_c, eps_u, guidance),
            "normalized_analytic": normalized_guidance(eps_c, eps_u, guidance, sigma="analytic"),
        }
        trace["t"].append(float(t[0]))
        for name, eps in series.items():
            flat = eps.flatten(1)
            trace[f"{name}_mean"].append(float(flat.mean(1).mean()))
            trace[f"{name}_std"].append(float(flat.std(1, unbiased=False).mean()))
        return out

    denoise = guided_denoiser(model_fn, emb, null, guidance, mode=guidance_mode, sigma=guidance_sigma)
    diffusion = pipe.diffusion(model, steps)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num_samples, 3, cfg.image_size, cfg.image_size), generator=gen)
    kwargs = {}
    if sampler == "ddpm":
        kwargs["noise_scale"] = float(noise_scale if noise_scale is not None else _setting(pipe, "noise_scale"))
    images = sample(sampler, denoise, x_T, diffusion, generator=gen, **kwargs).float().clamp(-1, 1)
    return images, {k: np.array(v) for k, v in trace.items()}


def plot_guidance_trace(trace: dict, title: str | None = None):
    """Two panels over the sampling steps (noisiest first) for each epsilon series of :func:`guidance_trace`:
    its standard deviation divided by the conditional epsilon's (log scale), and its mean."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    t = trace["t"]
    styles = {
        "cond": dict(color="k", lw=2),
        "uncond": dict(color="0.6", ls="--"),
        "plain": dict(color="C3"),
        "normalized": dict(color="C0", ls=":", lw=2),
        "normalized_analytic": dict(color="C2", ls="-."),
    }
    for name in GUIDANCE_SERIES:
        axes[0].plot(t, trace[f"{name}_std"] / trace["cond_std"], label=name, **styles[name])
        axes[1].plot(t, trace[f"{name}_mean"], label=name, **styles[name])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("std of epsilon / std of eps_cond")
    axes[1].set_ylabel("mean of epsilon")
    for ax in axes:
        ax.set_xlabel("model timestep t (sampling runs right to left)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Training, a few live steps


def recipe_path(name: str = "toy") -> Path:
    """``configs/<name>.yaml`` of this checkout."""
    return Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"


def train_steps(trainer, steps: int) -> dict:
    """Run ``steps`` optimisation steps of a :class:`piti.train.loop.Trainer` (no files, no progress bar);
    returns the metrics of every step as lists (``step``, ``loss``, ``mse``, ``vb``, ``grad_norm``, ...)."""
    data = trainer.data_iterator()
    log = defaultdict(list)
    for _ in range(steps):
        metrics = trainer.train_step(next(data))
        trainer.step += 1
        log["step"].append(trainer.step)
        for k, v in metrics.items():
            log[k].append(v)
    return dict(log)


def gradient_report(model) -> list:
    """``[part, parameters, trainable, with a gradient, max |grad|]`` for the encoder and decoder of a PITI model
    after a backward pass (the proof of which part a training stage updates)."""
    rows = []
    for part in ("encoder", "decoder"):
        params = list(getattr(model, part).parameters())
        grads = [p.grad for p in params if p.grad is not None]
        rows.append(
            [
                part,
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
                sum(g.numel() for g in grads),
                max((float(g.abs().max()) for g in grads), default=0.0),
            ]
        )
    return rows
