"""The decoder's optional condition hint (``cond_hint``): the condition image added to the first block's output."""

from __future__ import annotations

import pytest
import torch

from piti.checkpoints import HINT_PREFIX, load_checkpoint, load_model, load_weights, save_checkpoint
from piti.errors import CheckpointError, ConditionError, ConfigError
from piti.pipeline import PITIPipeline
from piti.presets import ModelConfig, create_model, get_config
from piti.train.loop import Trainer

from conftest import FEW, TINY, depth_metres, pixels, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(cond_hint: bool, seed: int = 0):
    """A tiny depth base model, every weight perturbed except the hint's zero-initialised output conv."""
    model = create_model("toy-piti-base-depth", image_size=32, channel_mult=(1, 2), cond_hint=cond_hint, **TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(HINT_PREFIX):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def inputs(batch=2):
    torch.manual_seed(0)
    return torch.randn(batch, 3, 32, 32), torch.tensor([700, 50])[:batch], torch.rand(batch, 6, 32, 32) * 2 - 1


def open_hint(model, std=0.2):
    torch.manual_seed(3)
    torch.nn.init.normal_(model.decoder.hint_in.conv_out.weight, std=std)


def test_config_option_is_checked_and_round_trips():
    config = get_config("toy-piti-base-depth", cond_hint=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert not get_config("toy-piti-base-depth").cond_hint and not get_config("piti-base-mask").cond_hint
    with pytest.raises(ConfigError, match="cond_hint applies to a PITI base model"):
        get_config("toy-piti-upsample-depth", cond_hint=True)
    with pytest.raises(ConfigError, match="cond_hint applies to a PITI base model"):
        get_config("toy-glide-base", cond_hint=True)


def test_a_file_without_the_hint_loads_and_predicts_exactly_as_before(tmp_path):
    plain = tiny(False)
    save_checkpoint(tmp_path / "plain.safetensors", plain)
    hinted = create_model(get_config("toy-piti-base-depth", image_size=32, channel_mult=(1, 2), cond_hint=True, **TINY))
    load_weights(hinted, load_checkpoint(tmp_path / "plain.safetensors"))
    extra = set(hinted.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(HINT_PREFIX) for k in extra)
    x, t, ref = inputs()
    with torch.no_grad():
        torch.testing.assert_close(hinted.eval()(x, t, ref=ref), plain(x, t, ref=ref), rtol=0, atol=0)
    # the other way is still strict: hint weights do not fit a model without the hint
    save_checkpoint(tmp_path / "hinted.safetensors", hinted)
    with pytest.raises(CheckpointError, match="unexpected keys: decoder.hint_in"):
        load_weights(tiny(False), load_checkpoint(tmp_path / "hinted.safetensors"))


def test_a_saved_hint_model_round_trips(tmp_path):
    model = tiny(True)
    open_hint(model)
    save_checkpoint(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.cond_hint
    x, t, ref = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ref=ref), model(x, t, ref=ref))


def test_the_hint_carries_the_condition_where_it_lies():
    model = tiny(True)
    open_hint(model)
    x, t, ref = inputs(1)
    emb = model.encode(ref)
    assert torch.equal(emb["hint"], ref)
    changed = dict(emb, hint=emb["hint"].clone())
    changed["hint"][:, :, :8, :8] += 1.0  # the top-left corner of the condition image only, tokens unchanged
    with torch.no_grad():
        effect = (model(x, t, cond_emb=changed) - model(x, t, cond_emb=emb)).abs().sum(dim=1)[0]  # (32, 32)
    assert effect.sum() > 0
    assert effect[:8, :8].mean() > 3 * effect[-8:, -8:].mean()  # the UNet spreads it, but most stays near


def test_wrong_or_missing_hints_are_named():
    x, t, ref = inputs()
    hinted, plain = tiny(True), tiny(False)
    emb = hinted.encode(ref)
    with pytest.raises(ConditionError, match=r"takes a hint \(2, 6, S, S\).*got None"):
        hinted.decode(x, t, emb["xf_proj"], emb["xf_out"])
    with pytest.raises(ConditionError, match=r"takes a hint \(2, 6, S, S\).*got \(2, 3, 32, 32\)"):
        hinted(x, t, cond_emb=dict(emb, hint=ref[:, :3]))
    with pytest.raises(ConditionError, match="takes no hint"):
        plain(x, t, cond_emb=emb)
    with pytest.raises(ConditionError, match="got \\['extra', 'xf_out', 'xf_proj'\\]"):
        plain(x, t, cond_emb={"xf_proj": emb["xf_proj"], "xf_out": emb["xf_out"], "extra": ref})


def test_pipeline_samples_with_a_hint_model_and_guidance(tmp_path):
    model = tiny(True)
    open_hint(model)
    save_checkpoint(tmp_path / "base.safetensors", model)
    pipe = PITIPipeline.from_checkpoints(tmp_path / "base.safetensors", precision="fp32")
    for encode_once in (True, False):  # the hint rides in the encoded dict or is re-read from the raw condition
        out = pipe(depth_metres(), num_samples=2, seed=0, guidance=3.0, encode_once=encode_once, **FEW)
        assert [im.size for im in out.images] == [(32, 32)] * 2
        assert pixels(out.images).std() > 1


def test_training_from_a_file_without_the_hint_opens_it(tmp_path):
    plain = create_model("toy-piti-base-mask", **tiny_config(tmp_path, "joint").model_overrides)
    save_checkpoint(tmp_path / "plain.safetensors", plain)
    config = tiny_config(tmp_path, "joint", from_scratch=False, init=str(tmp_path / "plain.safetensors"))
    config.model_overrides["cond_hint"] = True
    trainer = Trainer(config)
    assert not trainer.model.decoder.hint_in.conv_out.weight.any()
    trainer.train()
    assert trainer.model.decoder.hint_in.conv_out.weight.abs().sum() > 0  # the zero conv learned something
    assert load_model(trainer.run_dir / "model.safetensors").config.cond_hint
