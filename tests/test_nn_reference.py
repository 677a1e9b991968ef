"""The networks compute what the official GLIDE / PITI code computes.

`tests/data/reference/small_*_io.npz` hold inputs and outputs of the official networks (small UNet,
full-size PITI encoder), run with deterministic "rule" weights that depend only on key names and
shapes (`refdata.rule_state_dict`). Our model, given the same weights and inputs, must agree
within 1e-4 in fp32.
"""

import json

import numpy as np
import pytest
import torch

from piti.presets import create_model

from refdata import PRESET_OF, REF_DIR, manifest_params, read_manifest, rule_state_dict, small_overrides

SMALL = sorted(p.name[len("small_") : -len("_io.npz")] for p in REF_DIR.glob("small_*_io.npz"))
# official `mode` -> our task
OFFICIAL_MODES = {"coco": "mask", "coco-edge": "sketch", "depth-normal": "depth"}


def load_case(stem: str):
    """(model with rule weights in eval mode, dict of reference arrays as tensors).

    The weights are made from the OFFICIAL manifest (names and shapes) and loaded strictly, so this
    also proves that our state dict has exactly the official keys and shapes.
    """
    model = create_model(PRESET_OF[stem], device="meta", **small_overrides(stem)).eval()  # shapes only
    official = read_manifest(REF_DIR / f"small_{stem}_keys.tsv")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official, f"differs: {sorted(set(official) ^ set(ours))[:5]}"
    assert sum(p.numel() for p in model.parameters()) == manifest_params(REF_DIR / f"small_{stem}_keys.tsv")
    model.load_state_dict(rule_state_dict(official), strict=True, assign=True)
    data = {k: torch.from_numpy(v) for k, v in np.load(REF_DIR / f"small_{stem}_io.npz").items()}
    return model, data


def test_reference_cases_present():
    assert set(SMALL) == set(PRESET_OF)


@pytest.mark.parametrize("stem", SMALL)
def test_presets_agree_with_the_official_options(stem):
    """Every official option of the reference network equals our preset + the small overrides."""
    official = json.loads((REF_DIR / f"small_{stem}_config.json").read_text())
    ours = create_model(PRESET_OF[stem], device="meta", **small_overrides(stem)).config
    shared = [
        "image_size",
        "num_channels",
        "num_res_blocks",
        "num_heads",
        "num_head_channels",
        "dropout",
        "use_scale_shift_norm",
        "resblock_updown",
        "xf_width",
        "xf_heads",
        "xf_padding",
        "xf_final_ln",
        "noise_schedule",
        "diffusion_steps",
    ]
    assert {k: getattr(ours, k) for k in shared} == {k: official[k] for k in shared}
    assert ours.channel_mult == () and official["channel_mult"] == ""
    assert ours.attention_resolutions == tuple(int(r) for r in official["attention_resolutions"].split(","))
    assert ours.super_res == bool(official["super_res"])
    if "mode" in official:  # PITI
        assert (ours.kind, ours.task) == ("piti", OFFICIAL_MODES[official["mode"]])
    else:
        assert (ours.kind, ours.xf_layers, ours.text_ctx) == ("glide", official["xf_layers"], official["text_ctx"])


@pytest.mark.parametrize("stem", SMALL)
@torch.no_grad()
def test_matches_official_outputs(stem):
    model, d = load_case(stem)
    low_res = d.get("low_res")
    if "ref" in d:
        cond = dict(ref=d["ref"])
        emb = model.encode(d["ref"])
        assert (emb["xf_proj"] - d["xf_proj"]).abs().max() < 1e-4
        assert (emb["xf_out"] - d["xf_out"]).abs().max() < 1e-4
    else:
        cond = dict(tokens=d["tokens"], mask=d["mask"])
        emb = model.encode_text(d["tokens"], d["mask"])
        assert emb["xf_proj"].shape == (len(d["x"]), 512) and emb["xf_out"].shape == (len(d["x"]), 512, 128)
    out = model(d["x"], d["t"], low_res=low_res, cond_emb=emb)
    assert out.shape == d["out"].shape
    assert d["out"].abs().max() > 0.1  # the reference is not trivially zero
    assert (out - d["out"]).abs().max() < 1e-4
    if low_res is None:  # the official call with the raw condition gives exactly the same output
        assert torch.equal(model(d["x"], d["t"], **cond), out)  # (base cases only: the cheap decoders)
