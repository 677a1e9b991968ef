"""The full-size presets have the state-dict names and shapes of the official checkpoints.

Manifests in tests/data/reference; models are built on the `meta` device (shapes only, no memory,
no init cost). The small manifests are checked with the reference outputs (test_nn_reference.py).
"""

import pytest

from piti.presets import create_model

from refdata import REF_DIR, manifest_params, read_manifest

# manifest -> our preset (sketch = the official `coco-edge` mode)
FULL = {
    "full_base_mask": "piti-base-mask",
    "full_base_sketch": "piti-base-sketch",
    "full_upsample_mask": "piti-upsample-mask",
    "full_upsample_sketch": "piti-upsample-sketch",
    "full_glide_base": "glide-base",
    "full_glide_upsample": "glide-upsample",
}
# Parameter counts of the official constructors (research notes, piti_official.md section 2.5, glide.md).
PARAMS = {
    "piti-base-mask": 338_015_302,
    "piti-base-sketch": 338_012_166,
    "piti-upsample-mask": 351_345_862,
    "piti-upsample-sketch": 351_342_726,
    "glide-base": 385_030_726,
    "glide-upsample": 398_361_286,
}


def model_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def diff(ours: dict, official: dict) -> str:
    missing = sorted(set(official) - set(ours))
    extra = sorted(set(ours) - set(official))
    wrong = sorted(k for k in set(ours) & set(official) if ours[k] != official[k])
    return f"missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}), wrong shapes {wrong[:5]}"


def test_manifest_set_is_complete():
    assert {p.name[: -len("_keys.tsv")] for p in REF_DIR.glob("full_*_keys.tsv")} == set(FULL)


@pytest.mark.parametrize("manifest", sorted(FULL))
def test_full_model_matches_official_manifest(manifest):
    official = read_manifest(REF_DIR / f"{manifest}_keys.tsv")
    params = manifest_params(REF_DIR / f"{manifest}_keys.tsv")
    model = create_model(FULL[manifest], device="meta")
    ours = model_shapes(model)
    assert ours == official, diff(ours, official)
    assert sum(p.numel() for p in model.parameters()) == params == PARAMS[FULL[manifest]]


def test_piti_keys_split_into_encoder_and_decoder():
    keys = model_shapes(create_model("piti-base-mask", device="meta"))
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder"}
    assert len(keys) == 708
    assert keys["encoder.positional_embedding"] == (1, 257, 512)
    assert sum(k.endswith("encoder_kv.weight") for k in keys) == 22  # 22 attention blocks in the base


def test_depth_differs_from_mask_only_in_the_condition_conv():
    mask = model_shapes(create_model("piti-base-mask", device="meta"))
    depth = model_shapes(create_model("piti-base-depth", device="meta"))
    assert set(mask) == set(depth)
    assert {k for k in mask if mask[k] != depth[k]} == {"encoder.cnn.conv1.weight"}
    assert depth["encoder.cnn.conv1.weight"] == (32, 6, 7, 7)
