"""FID-I, FID-C and FID-T through clean-fid: one Fréchet implementation, three feature spaces.

* **FID-I** (``features="inception"``): clean-fid's TorchScript Inception-v3 (``inception-2015-12-05.pt``,
  the StyleGAN2-ADA port of the TensorFlow FID network), 2048-D pool features. ``mode`` is clean-fid's:
  ``clean`` (PIL bicubic resize to 299 on float pixels, no quantisation; the default), ``legacy_tensorflow``
  (the resize inside the network, as TensorFlow FID) or ``legacy_pytorch`` (pytorch-fid's network
  ``pt_inception-2015-12-05-6726825d.pth`` and bilinear resize: pytorch-fid's numbers, which the official PITI
  environment pinned).
* **FID-C** (``features="clip"``): FID on CLIP ViT-B/32 image embeddings (512-D), clean-fid's
  ``clip_vit_b_32`` protocol (Kynkäänniemi et al. 2022): resize 224 bicubic + centre crop (clean-fid's
  ``img_preprocess_clip``), CLIP's normalisation, ``encode_image``. The image tower is OpenAI's weights
  (``ViT-B-32.pt``) loaded into timm's ViT with QuickGELU, in fp32. The paper does not define FID-C in the
  text available to us; this is our reading (docs/evaluation.md).
* **FID-T** (``features="toy"``): the toy segmenter's pooled penultimate features (32-D), a feature space
  that knows the synthetic world. Not comparable with FID-I nor with any published number.

Every extractor is a callable ``batch (N, 3, H, W) float in [0, 255] -> features (N, D)``, the interface of
clean-fid's custom extractors; folders go through ``cleanfid.fid.get_files_features`` and the distance through
``cleanfid.fid.frechet_distance`` (via :func:`piti.evaluation.metrics.frechet_distance`). No weights are
downloaded: :func:`check_extractor` finds the file (:mod:`piti.weights`) before any image is read, and a
missing file is a :class:`~piti.errors.MissingWeightsError` naming it and where it goes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from piti.errors import CheckpointError, ConfigError, DatasetError, MissingWeightsError
from piti.evaluation.images import check_readable, images_to_tensor, list_images
from piti.evaluation.metrics import feature_statistics, frechet_distance

FEATURES = ("inception", "clip", "toy")
MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation (clean-fid's CLIP_fx)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FID_T_NOTE = (
    "FID-T: Fréchet distance between Gaussians fitted to the toy segmenter's pooled penultimate "
    "features (32-D) of generated and real images of the same scenes; NOT Inception FID, "
    "comparable only at the same number of images and the same segmenter file"
)


@dataclass
class Extractor:
    """A feature extractor and what the results must record about it."""

    name: str  # "inception", "clip" or "toy"
    fn: object  # batch (N, 3, H, W) float in [0, 255] -> features (N, D) (tensor or array)
    weights: str  # the weights file used
    mode: str  # clean-fid's resize mode (for clip and toy: their own fixed preprocessing)
    fn_resize: object = None  # uint8 (H, W, 3) -> array: the preprocessing of each image, None = clean-fid's mode
    dim: int = 0
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------ Inception


def _inception_torchscript(file: Path, resize_inside: bool, device):
    """clean-fid's ``InceptionV3W`` around the TorchScript file ``file`` (its forward, unchanged)."""
    from cleanfid.inception_torchscript import InceptionV3W

    class _Inception(InceptionV3W):
        def __init__(self):  # InceptionV3W.__init__ would download when the file is missing; we never do
            torch.nn.Module.__init__(self)
            try:
                self.base = torch.jit.load(str(file), map_location="cpu").eval()
                self.layers = self.base.layers
            except Exception as e:  # a truncated download, a state dict instead of TorchScript...
                raise CheckpointError(f"{file} is not clean-fid's TorchScript Inception ({e})") from None
            self.resize_inside = resize_inside

    return _Inception().to(device).eval()


def _inception_pytorch(file: Path, device):
    """pytorch-fid's Inception (clean-fid's ``legacy_pytorch`` network) with its weights read from ``file``."""
    from unittest import mock

    from cleanfid import inception_pytorch

    state = torch.load(str(file), map_location="cpu", weights_only=True)
    with mock.patch.object(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: state):
        model = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ CLIP


def clip_preprocess(img_np: np.ndarray) -> np.ndarray:
    """clean-fid's ``img_preprocess_clip``: PIL RGB, resize the short side to 224 (bicubic), centre crop 224, uint8.
    (Copied because clean-fid's module imports the ``clip`` package at import time.)"""
    import torchvision.transforms as T
    from PIL import Image

    x = Image.fromarray(img_np.astype(np.uint8)).convert("RGB")
    x = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])(x)
    return np.asarray(x).clip(0, 255).astype(np.uint8)


def clip_state_dict(file: Path) -> dict:
    """The ``visual.*`` tensors of an OpenAI CLIP file (TorchScript archive as distributed, or a state dict), fp32."""
    try:
        state = torch.jit.load(str(file), map_location="cpu").state_dict()
    except Exception:
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{file} is neither OpenAI's CLIP TorchScript file nor a state dict ({e})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    visual = {k: v.float() for k, v in state.items() if k.startswith("visual.")}
    if "visual.class_embedding" not in visual or "visual.proj" not in visual:
        raise CheckpointError(f"{file} holds no CLIP ViT image tower (no visual.class_embedding / visual.proj)")
    return visual


def clip_image_tower(state: dict):
    """timm's ViT with CLIP's layout (pre-norm, QuickGELU, class token, LayerNorm eps 1e-5, a bias-free
    projection as the head), sized from the state dict as CLIP's ``build_model`` sizes it, weights loaded
    through timm's OpenAI-CLIP converter. For ViT-B/32: patch 32, width 768, 12 layers, 12 heads, 224 px, 512-D."""
    from timm.layers import LayerNorm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    width, _, patch, _ = state["visual.conv1.weight"].shape
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    embed_dim = state["visual.proj"].shape[1]
    model = VisionTransformer(
        img_size=patch * grid,
        patch_size=patch,
        embed_dim=width,
        depth=layers,
        num_heads=max(1, width // 64),
        pre_norm=True,
        norm_layer=partial(LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
        num_classes=embed_dim,
        global_pool="token",
    )
    converted = checkpoint_filter_fn(state, model)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the CLIP image tower does not fit timm's ViT: {e}") from None
    return model.eval()


def _clip_fn(model, device):
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def fn(batch):
        return model((batch.to(device, torch.float32) / 255.0 - mean) / std)

    return fn


# ------------------------------------------------------------------------------------------ toy


def _toy_fn(segmenter, device):
    segmenter = segmenter.to(device).eval()

    def fn(batch):
        return torch.from_numpy(segmenter.embed(batch.float() / 127.5 - 1.0))

    return fn


# ------------------------------------------------------------------------------------------ building


def check_extractor(features: str, mode: str = "clean", weights=None) -> Path:
    """The weights file ``features`` needs, found before any work; a clear error when it is absent."""
    if features not in FEATURES:
        raise ConfigError(f"unknown features {features!r}; expected one of {', '.join(FEATURES)}")
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if features != "inception" and mode != "clean":
        raise ConfigError(
            f"--mode {mode} is an Inception resize mode; {features} features have their own "
            "preprocessing (leave --mode clean)"
        )
    from piti.weights import find_weights

    if features == "inception":
        return find_weights("inception-pytorch" if mode == "legacy_pytorch" else "inception", weights)
    if features == "clip":
        return find_weights("clip", weights)
    from piti.evaluation.segmenter import default_segmenter_path

    path = Path(weights) if weights is not None else default_segmenter_path()
    if not path.is_file():
        raise MissingWeightsError(
            f"the toy segmenter (FID-T features) is missing: {path}; `python eval/train_segmenter.py` trains it"
        )
    return path


def build_extractor(features: str, mode: str = "clean", weights=None, device="cpu") -> Extractor:
    """The extractor of ``features`` with its weights (see :func:`check_extractor`)."""
    file = check_extractor(features, mode, weights)
    device = torch.device(device)
    if features == "inception":
        if mode == "legacy_pytorch":
            model = _inception_pytorch(file, device)

            def fn(batch):
                return model(batch.to(device) / 255)[0].squeeze(-1).squeeze(-1)
        else:
            model = _inception_torchscript(file, mode == "legacy_tensorflow", device)

            def fn(batch):
                with torch.no_grad():
                    return model(batch.to(device))

        return Extractor("inception", fn, str(file), mode, dim=2048)
    if features == "clip":
        model = clip_image_tower(clip_state_dict(file)).to(device)
        return Extractor(
            "clip", _clip_fn(model, device), str(file), "clean", fn_resize=clip_preprocess, dim=model.num_classes
        )
    from piti.evaluation.segmenter import load_segmenter

    segmenter = load_segmenter(file)
    return Extractor(
        "toy", _toy_fn(segmenter, device), str(file), "clean", fn_resize=lambda x: x, dim=segmenter.config.feature_dim
    )


# ------------------------------------------------------------------------------------------ features


def _resize_to(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3), PIL bicubic, unchanged when it already fits."""
    from PIL import Image

    return x if x.shape[:2] == (size, size) else np.asarray(Image.fromarray(x).resize((size, size), Image.BICUBIC))


def folder_features(
    files,
    extractor: Extractor,
    batch_size: int = 32,
    size: int | None = None,
    device="cpu",
    progress: bool = False,
    description: str = "",
) -> np.ndarray:
    """Features (N, D) of image ``files`` through ``cleanfid.fid.get_files_features`` (its resize for the mode,
    or the extractor's own preprocessing). Toy features need one image size: with ``size``, every image is
    resized to it (PIL bicubic) first; without, the sizes must agree."""
    from cleanfid.fid import get_files_features

    files = [str(f) for f in files]
    fn_resize = extractor.fn_resize
    if extractor.name == "toy" and size is not None:
        fn_resize = partial(_resize_to, size=size)
    feats = get_files_features(
        files,
        extractor.fn,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device(device),
        mode=extractor.mode,
        custom_fn_resize=fn_resize,
        description=description,
        verbose=progress,
    )
    feats = np.asarray(feats, np.float64)
    if not np.isfinite(feats).all():
        raise DatasetError(f"{description or 'images'}: the features hold NaN or infinite values")
    return feats


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N, D), through clean-fid's Fréchet distance."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def statistics(feats: np.ndarray) -> dict:
    mu, sigma = feature_statistics(feats)
    return {"mu": mu, "sigma": sigma, "num": int(feats.shape[0])}


def kid_from_features(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """KID (clean-fid's ``kernel_distance``: polynomial kernel MMD over 100 subsets), with a fixed seed."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(real, fake))
    finally:
        np.random.set_state(state)


def save_stats(path, feats: np.ndarray, extractor: Extractor, source: str, keep_features: bool = False) -> None:
    """Reference statistics (mu, sigma, count) as ``.npz``, with the extractor, its weights and the mode recorded.
    Written atomically (a temporary file renamed), so an interrupted run leaves no partial file."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"statistics files end in .npz, got {path}")
    stats = statistics(feats)
    meta = {
        "features": extractor.name,
        "mode": extractor.mode,
        "weights": Path(extractor.weights).name,
        "num": stats["num"],
        "source": source,
    }
    arrays = {"mu": stats["mu"], "sigma": stats["sigma"], "meta": np.array(json.dumps(meta))}
    if keep_features:
        arrays["feats"] = feats
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_stats(path, extractor: Extractor) -> dict:
    """Statistics saved by :func:`save_stats`; an error when they were made with other features, mode or weights."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a statistics file of `piti eval fid` ({e})") from None
    if "meta" not in data or "mu" not in data or "sigma" not in data:
        raise DatasetError(f"{path} is not a statistics file of `piti eval fid` (no mu, sigma and meta)")
    meta = json.loads(str(data["meta"]))
    for key, want in (
        ("features", extractor.name),
        ("mode", extractor.mode),
        ("weights", Path(extractor.weights).name),
    ):
        if meta.get(key) != want:
            raise ConfigError(
                f"{path} was computed with {key} {meta.get(key)!r}, this run uses {want!r}; "
                "statistics are comparable only with the same extractor"
            )
    out = {"mu": data["mu"], "sigma": data["sigma"], "num": int(meta["num"]), "meta": meta}
    if "feats" in data:
        out["feats"] = data["feats"]
    return out


# ------------------------------------------------------------------------------------------ FID-T


def fid_t(real_images, fake_images, segmenter, batch_size: int = 32) -> float:
    """FID-T: the Fréchet distance (clean-fid's) between the segmenter's pooled penultimate features of
    ``real_images`` and ``fake_images`` (see the module docstring; NOT Inception FID).

    Both sets take any form :func:`~piti.evaluation.images.images_to_tensor` accepts and must have the same
    image size (features depend on the resolution) and at least two images each.
    """
    real, fake = images_to_tensor(real_images), images_to_tensor(fake_images)
    if real.shape[-2:] != fake.shape[-2:]:
        raise ConfigError(
            f"FID-T compares images of one size; real are {tuple(real.shape[-2:])}, generated {tuple(fake.shape[-2:])}"
        )
    return fid_from_features(segmenter.embed(real, batch_size), segmenter.embed(fake, batch_size))


def check_folder(folder, what: str) -> tuple[list[Path], list[tuple[int, int]]]:
    """The images of a folder, every one opened first (unreadable files named), with their sizes."""
    files = list_images(folder, what)
    return files, check_readable(files, what)
