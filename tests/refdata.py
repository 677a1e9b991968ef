"""Helpers for the reference data copied from the official networks (see tests/data/reference/README.md).

The official networks were given deterministic weights by a rule that depends only on key names and
shapes; :func:`rule_state_dict` reproduces it, so any model with the official keys gets the same weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

REF_DIR = Path(__file__).parent / "data" / "reference"

# reference file stem -> our preset name
PRESET_OF = {
    "base_mask": "piti-base-mask",
    "base_sketch": "piti-base-sketch",
    "upsample_mask": "piti-upsample-mask",
    "upsample_sketch": "piti-upsample-sketch",
    "glide_base": "glide-base",
    "glide_upsample": "glide-upsample",
}

_NORM_WEIGHT = re.compile(r"(^|\.)[^.]*(norm|ln)[^.]*\.weight$")


def rule_tensor(index: int, key: str, shape) -> torch.Tensor:
    """The reference README's weight rule for the ``index``-th key in sorted order."""
    r = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(index), dtype=torch.float32)
    return 1 + 0.1 * r if _NORM_WEIGHT.search(key) else 0.05 * r


def rule_state_dict(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Weights by the rule for every key of ``shapes`` (key -> shape)."""
    return {k: rule_tensor(i, k, shapes[k]) for i, k in enumerate(sorted(shapes))}


def read_manifest(path: Path) -> dict[str, tuple]:
    """A ``*_keys.tsv`` manifest as {key: shape}."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        out[key] = tuple(json.loads(shape))
    return out


def manifest_params(path: Path) -> int:
    """The parameter count written in a manifest's header line."""
    first = Path(path).read_text().splitlines()[0]
    return int(re.search(r"params=(\d+)", first).group(1))


def small_overrides(stem: str) -> dict:
    """The official option values used for a ``small_<stem>`` reference network."""
    cfg = json.loads((REF_DIR / f"small_{stem}_config.json").read_text())
    keys = ["num_channels", "num_res_blocks", "num_head_channels", "dropout"]
    if stem.startswith("glide"):
        keys.append("xf_layers")
    return {k: cfg[k] for k in keys}


def small_model(stem: str):
    """Our model built with the official small options of a reference network, in eval mode."""
    from piti import create_model

    return create_model(PRESET_OF[stem], **small_overrides(stem)).eval()
