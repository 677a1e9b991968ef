"""The one place where external pretrained weights are looked for.

PITI needs weights it does not train: VGG19 for the upsampler's perceptual loss, VGG16 or
AlexNet as the LPIPS backbone, Inception for FID and CLIP ViT-B/32 for FID-C. Nothing here
downloads anything. Each file is searched, in order, at

1. the explicit ``path`` given by the caller (a file, or a folder holding the file);
2. ``$PITI_WEIGHTS_DIR/<file name>``;
3. the location the usual tool caches it at (the torch hub cache for torchvision models,
   clean-fid's folder for Inception, the ``clip`` package's cache for CLIP).

When it is absent, :class:`~piti.errors.MissingWeightsError` says which file to put where, with
the official download address. A randomly initialised network is only built when the caller
passes ``allow_random=True``; a loud warning is logged and the module carries
``piti_random_weights = True`` so that training can record it in the checkpoint metadata.
"""

from __future__ import annotations

import logging
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from piti.errors import CheckpointError, MissingWeightsError

# Where the embedded default models live (trained by `make toy-models`); here, in a module that imports no other
# part of the package, so that the judges and the pipeline can both name it.
TOY_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "toy"

__all__ = [
    "ENV_VAR",
    "WeightSpec",
    "WEIGHTS",
    "find_weights",
    "describe_weights",
    "load_state_dict",
    "vgg19_features",
    "lpips_model",
    "uses_random_weights",
]

log = logging.getLogger(__name__)

ENV_VAR = "PITI_WEIGHTS_DIR"


def _torch_hub_checkpoints() -> Path:
    """Where torchvision's ``weights=...`` caches downloads: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _cleanfid_dir() -> Path:
    """clean-fid's ``feature_extractor`` loads its TorchScript Inception from ``/tmp`` ("./" on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def _clip_dir() -> Path:
    """OpenAI's ``clip.load`` (used by clean-fid's ``clip_vit_b_32``) caches in ``~/.cache/clip``."""
    return Path("~/.cache/clip").expanduser()


@dataclass(frozen=True)
class WeightSpec:
    """An external weights file: its name, official address, usual folder and use."""

    filename: str
    url: str
    default_dir: Callable[[], Path]
    purpose: str


# File names are those the usual tools cache them under (tests check them against torchvision).
WEIGHTS: dict[str, WeightSpec] = {
    "vgg19": WeightSpec(
        "vgg19-dcbb9e9d.pth",
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        _torch_hub_checkpoints,
        "perceptual loss of the upsampler (torchvision VGG19)",
    ),
    "vgg16": WeightSpec(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        _torch_hub_checkpoints,
        "LPIPS backbone, net='vgg' (torchvision VGG16)",
    ),
    "alexnet": WeightSpec(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        _torch_hub_checkpoints,
        "LPIPS backbone, net='alex' (torchvision AlexNet)",
    ),
    "inception": WeightSpec(
        "inception-2015-12-05.pt",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        _cleanfid_dir,
        "FID (clean-fid's TorchScript Inception-v3)",
    ),
    "inception-pytorch": WeightSpec(
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        _torch_hub_checkpoints,
        "FID in clean-fid's legacy_pytorch mode (pytorch-fid's Inception-v3)",
    ),
    "clip": WeightSpec(
        "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        _clip_dir,
        "FID-C (CLIP ViT-B/32 image features, clean-fid's clip_vit_b_32 protocol)",
    ),
}


def _spec(name: str) -> WeightSpec:
    if name not in WEIGHTS:
        raise MissingWeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(WEIGHTS))}")
    return WEIGHTS[name]


def _candidates(name: str, path: str | os.PathLike | None) -> list[Path]:
    """The places searched for ``name``, in order."""
    spec = _spec(name)
    if path is not None:  # an explicit choice is the only place looked at
        p = Path(path).expanduser()
        return [p / spec.filename if p.is_dir() else p]
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]).expanduser() / spec.filename)
    out.append(spec.default_dir() / spec.filename)
    return out


def _missing_message(name: str, looked: list[Path]) -> str:
    spec = _spec(name)
    where = "\n".join(f"  - {p}" for p in looked)
    return (
        f"missing {name} weights ({spec.purpose}).\n"
        f"Place the file {spec.filename} in {spec.default_dir()} (or in ${ENV_VAR}, or pass its path).\n"
        f"Looked at:\n{where}\n"
        f"Official download (not fetched automatically): {spec.url}"
    )


def find_weights(name: str, path: str | os.PathLike | None = None) -> Path:
    """Return the path of the weights file ``name`` (a key of :data:`WEIGHTS`).

    Raises :class:`MissingWeightsError` naming the file, the folder to put it in and its URL.
    """
    looked = _candidates(name, path)
    for p in looked:
        if p.is_file():
            return p
    raise MissingWeightsError(_missing_message(name, looked))


def describe_weights() -> list[tuple[str, Path, bool]]:
    """``(name, path, present)`` for every known weights file, for ``piti info``.

    ``path`` is where the file was found, or where it is expected when absent.
    """
    rows = []
    for name in WEIGHTS:
        looked = _candidates(name, None)
        found = next((p for p in looked if p.is_file()), None)
        rows.append((name, found or looked[-1], found is not None))
    return rows


def load_state_dict(name: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Find and load the state dict ``name`` on the CPU (tensors only, no pickled code)."""
    file = find_weights(name, path)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, an HTML error page, a TorchScript archive...
        raise CheckpointError(f"{file} could not be read as a state dict for {name}: {e}") from e


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], file: str) -> None:
    """Strict load with an error that names the file and the first differing keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        raise CheckpointError(
            f"{file} does not fit the network: missing keys {missing[:5]}, "
            f"wrong shapes {[(k, tuple(state[k].shape)) for k in bad[:5]]}"
        )
    module.load_state_dict({k: state[k] for k in own})


def _file_or_random(name: str, path, allow_random: bool) -> str | None:
    """The weights file of ``name``, or ``None`` (after a loud warning) when random weights are allowed."""
    try:
        return str(find_weights(name, path))
    except MissingWeightsError as e:
        if not allow_random:
            raise MissingWeightsError(
                f"{e}\nFor a smoke run only, allow a randomly initialised network (allow_random=True)."
            ) from None
        log.warning(
            "!" * 78 + "\n!!! RANDOM %s WEIGHTS: %s is missing, so the network is randomly "
            "initialised.\n!!! Results are NOT meaningful; this is recorded as piti_random_weights.\n" + "!" * 78,
            name,
            WEIGHTS[name].filename,
        )
        return None


def _mark(module: nn.Module, random_weights: bool) -> nn.Module:
    module.piti_random_weights = random_weights
    return module.requires_grad_(False).eval()


def vgg19_features(
    n_layers: int = 8, path: str | os.PathLike | None = None, allow_random: bool = False
) -> nn.Sequential:
    """torchvision's VGG19 ``features[:n_layers]``, frozen, in eval mode.

    ``n_layers=8`` ends at conv2_2 before its ReLU (the official perceptual loss). Loads
    ``vgg19-dcbb9e9d.pth``; without it, raises unless ``allow_random``.
    """
    from torchvision.models.vgg import cfgs, make_layers

    net = make_layers(cfgs["E"])[:n_layers]  # VGG19's convolutional part, without the 120M-weight classifier
    file = _file_or_random("vgg19", path, allow_random)
    if file is not None:
        state = load_state_dict("vgg19", file)
        # torchvision keys are "features.<i>.weight"; the slice's own keys are "<i>.weight".
        _load_into(net, {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}, file)
    return _mark(net, file is None)


def lpips_model(net: str = "vgg", path: str | os.PathLike | None = None, allow_random: bool = False) -> nn.Module:
    """An ``lpips.LPIPS`` metric whose backbone is loaded here, never downloaded.

    The LPIPS linear layers ship inside the ``lpips`` package; the backbone (``net`` = "vgg" or
    "alex") is torchvision's VGG16 or AlexNet, looked up like every other weight.
    """
    import lpips

    name = {"vgg": "vgg16", "alex": "alexnet"}.get(net)
    if name is None:
        raise MissingWeightsError(f"LPIPS backbone must be 'vgg' or 'alex', got {net!r}")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    file = _file_or_random(name, path, allow_random)
    if file is not None:
        state = load_state_dict(name, file)
        # lpips keeps torchvision's layer indices inside its slices: "slice<k>.<i>.w" <- "features.<i>.w".
        mapped = {k: state.get("features." + k.split(".", 1)[1]) for k in model.net.state_dict()}
        _load_into(model.net, {k: v for k, v in mapped.items() if v is not None}, file)
    return _mark(model, file is None)


def uses_random_weights(module: nn.Module) -> bool:
    """True if ``module`` or any submodule was built with random stand-in weights."""
    return any(getattr(m, "piti_random_weights", False) for m in module.modules())
