"""Checkpoint formats: official GLIDE -> PITI decoder, official PITI, stage-1 encoders, safetensors."""

import pytest
import torch

from piti.checkpoints import (
    check_state_dict,
    glide_to_piti_decoder,
    infer_preset,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
)
from piti.errors import CheckpointError

from refdata import REF_DIR, read_manifest, rule_state_dict, small_model


@pytest.fixture(scope="module")
def piti_small():
    torch.manual_seed(0)
    return small_model("base_mask")


@pytest.fixture(scope="module")
def glide_sd():
    """A GLIDE-format state dict with the official small keys and the reference weight rule."""
    return rule_state_dict(read_manifest(REF_DIR / "small_glide_base_keys.tsv"))


def test_glide_checkpoint_loads_into_piti_decoder(tmp_path, piti_small, glide_sd):
    path = tmp_path / "base.pt"
    torch.save(glide_sd, path)  # the official files are plain torch state dicts
    ckpt = load_checkpoint(path)
    assert ckpt.format == "glide"
    assert infer_preset(ckpt) == "glide-base"

    converted = glide_to_piti_decoder(glide_sd)
    dropped = set(glide_sd) - set(converted)
    assert dropped and all(
        k.startswith(("transformer.", "token_embedding", "positional_embedding", "padding_embedding", "final_ln"))
        for k in dropped
    )
    assert "transformer_proj.weight" in converted

    encoder_before = {k: v.clone() for k, v in piti_small.encoder.state_dict().items()}
    load_weights(piti_small, ckpt)
    dec = piti_small.decoder.state_dict()
    assert set(dec) == set(converted)
    assert all(torch.equal(dec[k], converted[k]) for k in dec)
    # the encoder is new in PITI: a GLIDE file leaves it untouched
    assert all(torch.equal(v, encoder_before[k]) for k, v in piti_small.encoder.state_dict().items())


def test_official_piti_and_stage1_files_load_strictly(tmp_path, piti_small):
    sd = rule_state_dict(read_manifest(REF_DIR / "small_base_mask_keys.tsv"))
    torch.save(sd, tmp_path / "base_mask.pt")
    ckpt = load_checkpoint(tmp_path / "base_mask.pt")
    assert ckpt.format == "piti" and infer_preset(ckpt) == "piti-base-mask"
    load_weights(piti_small, ckpt)
    got = piti_small.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)

    # stage-1 files hold the encoder alone, without the "encoder." prefix
    enc = {k[len("encoder.") :]: v * 2 for k, v in sd.items() if k.startswith("encoder.")}
    torch.save(enc, tmp_path / "stage1.pt")
    ckpt = load_checkpoint(tmp_path / "stage1.pt")
    assert ckpt.format == "piti-encoder"
    load_weights(piti_small, ckpt)
    assert torch.equal(piti_small.encoder.cls_token, enc["cls_token"])


def test_safetensors_round_trip_is_bit_exact(tmp_path, piti_small):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, piti_small, step=123, metadata={"stage": "joint"})
    ckpt = load_checkpoint(path)
    assert ckpt.metadata["step"] == 123 and ckpt.metadata["stage"] == "joint"
    assert ckpt.config == piti_small.config.to_dict()
    reloaded = load_model(path)
    assert reloaded.config == piti_small.config
    a, b = piti_small.state_dict(), reloaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temporary file


def test_mismatched_checkpoint_lists_every_problem(piti_small):
    sd = dict(piti_small.state_dict())
    for k in list(sd)[:7]:
        del sd[k]
    sd["bogus.weight"] = torch.zeros(1)
    k = "decoder.out.2.weight"
    sd[k] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as e:
        check_state_dict(piti_small, sd, "ckpt.pt")
    msg = str(e.value)
    assert "ckpt.pt" in msg and "7 missing keys" in msg and "1 unexpected keys: bogus.weight" in msg
    assert "1 keys with wrong shapes: decoder.out.2.weight (5, 5)" in msg
    with pytest.raises(CheckpointError):  # and never torch's RuntimeError
        load_weights(piti_small, _as_ckpt(sd))


def _as_ckpt(sd):
    from piti.checkpoints import Checkpoint

    return Checkpoint(state_dict=sd, format="piti", path="in-memory")


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty or truncated"),
        (b"hello, I am a text file and not weights", "not a checkpoint"),
        (b"PK\x03\x04" + b"\0" * 100, "not a readable PyTorch checkpoint"),
    ],
)
def test_non_checkpoint_files_are_named(tmp_path, content, words):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_truncated_files_are_named(tmp_path, piti_small):
    for name in ["model.safetensors", "model.pt"]:
        path = tmp_path / name
        if name.endswith(".pt"):
            torch.save(piti_small.decoder.state_dict(), path)
        else:
            save_checkpoint(path, piti_small.decoder.state_dict())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value)


def test_missing_official_file_says_where_it_is_published(tmp_path):
    with pytest.raises(CheckpointError, match="glide-text2im") as e:
        load_checkpoint(tmp_path / "base.pt")
    assert str(tmp_path / "base.pt") in str(e.value)
    with pytest.raises(CheckpointError, match="PITI-Synthesis/PITI"):
        load_checkpoint(tmp_path / "upsample_mask.pt")
