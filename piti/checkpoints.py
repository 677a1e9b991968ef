"""Checkpoints: the official GLIDE and PITI formats, and the project's own safetensors files.

Formats understood by :func:`load_checkpoint` (detected from the keys, not the file name):

``glide``        official GLIDE ``base.pt`` / ``upsample.pt``: a flat UNet + text-stack state dict.
``piti``         official PITI ``base_mask.pt``, ``upsample_mask.pt``, sketch pair: ``encoder.*`` + ``decoder.*``.
``piti-encoder`` an official stage-1 file: the condition encoder alone, without the ``encoder.`` prefix.
``project``      the project's own ``.safetensors``: any of the above layouts plus a JSON header
                 (``piti`` metadata key) with the preset config, the training step and provenance.

Loading is always strict. A mismatch raises one :class:`~piti.errors.CheckpointError` listing the missing,
unexpected and wrongly shaped keys (the first few of each, with counts), never torch's bare RuntimeError. One
exception: a PITI file without ``cond_hint`` weights loads into a model with them, whose hint then adds zero.
Nothing is ever downloaded: a missing file says which file is expected and where it is published.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piti.errors import CheckpointError
from piti.fileio import atomic_write

FORMAT_VERSION = 1
METADATA_KEY = "piti"

# Where the official weights are published (never fetched by this code).
OFFICIAL_SOURCES = {
    "base.pt": "GLIDE (filtered) base model, published by openai/glide-text2im "
    "(glide_text2im/download.py, 'base' in MODEL_PATHS)",
    "upsample.pt": "GLIDE (filtered) 64->256 upsampler, published by openai/glide-text2im "
    "(glide_text2im/download.py, 'upsample' in MODEL_PATHS)",
    "base_mask.pt": "PITI mask-to-image base model, linked from the README of PITI-Synthesis/PITI",
    "upsample_mask.pt": "PITI mask-to-image upsampler, linked from the README of PITI-Synthesis/PITI",
    "base_edge.pt": "PITI sketch-to-image base model, linked from the README of PITI-Synthesis/PITI "
    "(named base.pt in the Hugging Face model repo tfwang/PITI)",
    "upsample_edge.pt": "PITI sketch-to-image upsampler, linked from the README of PITI-Synthesis/PITI "
    "(named upsample.pt in the Hugging Face model repo tfwang/PITI)",
}

# Keys of GLIDE's text stack that a PITI decoder does not have (reference README, "Facts").
log = logging.getLogger(__name__)
HINT_PREFIX = "decoder.hint_in."  # cond_hint's module (piti.nn.unet.ConditionHint)
_GLIDE_TEXT_PREFIXES = ("padding_embedding", "positional_embedding", "token_embedding", "final_ln")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: tensors, their detected layout, and the JSON header."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "glide", "piti", "piti-encoder" (layout of the tensors)
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)  # empty for official files

    @property
    def config(self) -> dict | None:
        return self.metadata.get("config")


# --------------------------------------------------------------------------------------------------
# Reading


def _missing_file_message(path: Path) -> str:
    msg = f"checkpoint file not found: {path}"
    source = OFFICIAL_SOURCES.get(path.name)
    if source:
        msg += f". This name is the {source}; download it yourself and place it at {path}"
    return msg


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata from a safetensors or torch file, with clear errors."""
    if not path.exists():
        raise CheckpointError(_missing_file_message(path))
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path} is not a checkpoint: the file is empty or truncated ({len(head)} bytes)")

    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and header_len < path.stat().st_size:
        from safetensors import SafetensorError, safe_open

        try:
            tensors, metadata = {}, {}
            with safe_open(str(path), framework="pt") as f:
                raw_meta = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {e}"
            ) from None
        if METADATA_KEY in raw_meta:
            try:
                metadata = json.loads(raw_meta[METADATA_KEY])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON: {e}") from None
        return tensors, metadata

    # torch.save files: zip archives (PyTorch >= 1.6) or legacy pickles
    if not (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a checkpoint: neither a safetensors nor a PyTorch file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
    except Exception as e:  # pickle errors from weights_only loading: foreign objects inside
        raise CheckpointError(f"{path} could not be loaded as a plain state dict: {type(e).__name__}: {e}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a state dict of tensors, found {type(obj).__name__}"
        )
    return dict(obj), {}


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell the official layouts apart by their keys."""
    keys = state_dict.keys()
    if any(k.startswith("decoder.") for k in keys) or any(k.startswith("encoder.") for k in keys):
        return "piti"
    if "token_embedding.weight" in keys or "input_blocks.0.0.weight" in keys:
        return "glide"
    if "cls_token" in keys and any(k.startswith("cnn.") for k in keys):
        return "piti-encoder"
    raise CheckpointError(
        "unrecognised state dict: expected GLIDE keys (input_blocks.*, token_embedding.*), "
        "PITI keys (encoder.*, decoder.*) or a stage-1 encoder (cls_token, cnn.*); "
        f"found e.g. {sorted(keys)[:5]}"
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file. Tensors stay on the CPU."""
    path = Path(path)
    tensors, metadata = _read_raw(path)
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    fmt = metadata.get("layout") or detect_format(tensors)
    return Checkpoint(state_dict=tensors, format=fmt, path=str(path), metadata=metadata)


# --------------------------------------------------------------------------------------------------
# Converting and loading into a model


def glide_to_piti_decoder(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop GLIDE's text stack so the rest loads into a PITI decoder (as the official training does).

    Removed: every key starting with ``transformer`` except ``transformer_proj*``, and the
    token/positional/padding embeddings and ``final_ln``. Nothing is renamed.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("transformer") and not k.startswith("transformer_proj"):
            continue
        if k.startswith(_GLIDE_TEXT_PREFIXES):
            continue
        out[k] = v
    return out


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise one CheckpointError describing every difference between ``state_dict`` and ``module``."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{source} does not fit {type(module).__name__}:"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} keys with wrong shapes: {_preview(mismatched, 3)}")
    raise CheckpointError("\n  ".join(parts))


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with a readable error instead of torch's."""
    check_state_dict(module, state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, checkpoint: Checkpoint | str | os.PathLike) -> nn.Module:
    """Load a checkpoint of any supported format into ``model``, strictly.

    - a PITI model takes a full PITI checkpoint, a GLIDE checkpoint (into its decoder, text stack
      dropped; the encoder keeps its fresh initialisation) or a stage-1 encoder file (into its encoder);
    - a GLIDE model takes a GLIDE checkpoint.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    sd, src = ckpt.state_dict, ckpt.path
    is_piti = hasattr(model, "encoder") and hasattr(model, "decoder")
    if ckpt.format == "piti":
        hint = {k: v for k, v in model.state_dict().items() if k.startswith(HINT_PREFIX)}
        if hint and not any(k.startswith(HINT_PREFIX) for k in sd):  # a model without cond_hint: it starts at zero
            sd = {**sd, **hint}
            log.info("%s has no cond_hint weights; the hint starts at its initialisation, which adds zero", src)
        load_state_dict_strict(model, sd, src)
    elif ckpt.format == "glide" and is_piti:
        load_state_dict_strict(model.decoder, glide_to_piti_decoder(sd), src)
    elif ckpt.format == "glide":
        load_state_dict_strict(model, sd, src)
    elif ckpt.format == "piti-encoder" and is_piti:
        load_state_dict_strict(model.encoder, sd, src)
    else:
        raise CheckpointError(
            f"{src} holds a {ckpt.format} checkpoint, which cannot be loaded into {type(model).__name__}"
        )
    return model


def infer_preset(ckpt: Checkpoint) -> str:
    """Guess the official preset of an official checkpoint from its tensor shapes."""
    sd = ckpt.state_dict
    if ckpt.format == "glide":
        in_ch = sd["input_blocks.0.0.weight"].shape[1]
        return "glide-upsample" if in_ch == 6 else "glide-base"
    if ckpt.format == "piti":
        in_ch = sd["decoder.input_blocks.0.0.weight"].shape[1]
        cond_ch = sd["encoder.cnn.conv1.weight"].shape[1]
        task = {3: "mask", 1: "sketch", 6: "depth"}.get(cond_ch)
        if task is None:
            raise CheckpointError(
                f"{ckpt.path}: condition encoder takes {cond_ch} channels; known: 3 (mask), 1 (sketch), 6 (depth)"
            )
        return f"piti-{'upsample' if in_ch == 6 else 'base'}-{task}"
    raise CheckpointError(
        f"{ckpt.path}: a {ckpt.format} file does not describe a whole model; build the model and use load_weights"
    )


def load_model(
    path: str | os.PathLike, preset: str | None = None, device: str | torch.device = "cpu", **overrides
) -> nn.Module:
    """Build the model a checkpoint describes and load it.

    Project checkpoints carry their config; for official files the preset is inferred from the shapes
    (or given explicitly, e.g. to apply ``overrides``).
    """
    from piti.presets import ModelConfig, create_model

    ckpt = load_checkpoint(path)
    if preset is None and ckpt.config is not None:
        config = ModelConfig.from_dict(ckpt.config)
        model = create_model(config, **overrides)
    else:
        model = create_model(preset or infer_preset(ckpt), **overrides)
    load_weights(model, ckpt)
    model.checkpoint_metadata = ckpt.metadata
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    path: str | os.PathLike,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    config: Any = None,
    step: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save weights as safetensors with a JSON header, atomically.

    ``config`` defaults to ``model.config`` (a ``ModelConfig``); ``metadata`` holds anything else worth
    keeping beside the weights (stage, data, whether stand-in weights were used, ...).
    """
    from safetensors.torch import save_file

    if isinstance(model_or_state_dict, nn.Module):
        config = config if config is not None else getattr(model_or_state_dict, "config", None)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = dict(model_or_state_dict)
    # safetensors refuses shared or non-contiguous storage; copies cost nothing next to the disk write
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    try:
        layout = detect_format(tensors)
    except CheckpointError:
        layout = "other"  # e.g. a discriminator: stored as is, loaded by its own code
    header: dict[str, Any] = {"format_version": FORMAT_VERSION, "layout": layout}
    if config is not None:
        header["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if step is not None:
        header["step"] = int(step)
    if metadata:
        header.update(metadata)
    meta = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


# --------------------------------------------------------------------------------------------------
# Exporting a trained model file

EXPORT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}  # the weight types a model file is exported in
_SET_BY_SAVE = ("format_version", "layout", "config", "step")  # save_checkpoint writes these itself


def export_model(
    src,
    dst,
    *,
    role: str,
    task: str,
    sampling: dict,
    dtype: str = "fp16",
    reward_model: str | None = None,
    class_model: str | None = None,
    colour_prior: str | None = None,
) -> None:
    """Copy the model file ``src`` (a PITI ``role`` = "base" or "upsample" model of ``task``) to ``dst``,
    floating-point tensors cast to ``dtype``, with ``sampling`` added to its header, and for a base model
    ``reward_model`` (the reward model file of its reward guidance, relative to ``dst``'s folder; None = none) and
    ``class_model`` (the same for the class model of its particle guidance and colour redraw) and ``colour_prior``
    (the colour prior of its colour redraw)."""
    ckpt = load_checkpoint(src)
    cfg = ckpt.config or {}
    if cfg.get("kind") != "piti" or bool(cfg.get("super_res")) != (role == "upsample") or cfg.get("task") != task:
        raise CheckpointError(
            f"{src} should hold a PITI {role} model of task {task!r}; its header says kind "
            f"{cfg.get('kind')!r}, super_res {cfg.get('super_res')!r}, task {cfg.get('task')!r}"
        )
    extra = {"reward_model": reward_model, "class_model": class_model, "colour_prior": colour_prior}
    extra = extra if role == "base" else {}
    copy_model(src, dst, dtype=dtype, ckpt=ckpt, sampling=sampling, **extra)


def copy_model(src, dst, *, dtype: str = "fp16", ckpt=None, **metadata) -> None:
    """Copy any model file of this project (``ckpt``: ``src`` already loaded) with its floating-point tensors
    cast to ``dtype``, its header kept and ``metadata`` added (e.g. a toy GLIDE pretraining, kept in fp16)."""
    ckpt = ckpt or load_checkpoint(src)
    tensors = {k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{src}: {len(bad)} tensors are not finite in {dtype} (e.g. {bad[0]}); export in fp32")
    meta = {k: v for k, v in ckpt.metadata.items() if k not in _SET_BY_SAVE}
    # re-exporting a shipped file (e.g. to change its sampling settings) keeps the name of the run it came from
    meta.update(
        metadata,
        stored_dtype=str(EXPORT_DTYPES[dtype]).removeprefix("torch."),
        exported_from=meta.get("exported_from", str(src)),
    )
    save_checkpoint(dst, tensors, config=ckpt.config or {}, step=ckpt.metadata.get("step"), metadata=meta)
