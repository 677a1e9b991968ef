"""Presets, ModelConfig, and the behaviour of the toy networks (shapes, bad input, init, checkpointing)."""

import json

import pytest
import torch

from piti.errors import ConditionError, ConfigError
from piti.presets import ModelConfig, create_model, list_presets

OFFICIAL = ["glide-base", "glide-upsample"] + [
    f"piti-{s}-{t}" for s in ("base", "upsample") for t in ("mask", "sketch", "depth")
]
TOY = [f"toy-{n}" for n in OFFICIAL]


# A few channels and pixels, for the tests that train or compare many passes.
TINY = dict(
    image_size=32,
    channel_mult=(1, 2),
    attention_resolutions=(16,),
    cond_size=32,
    encoder_cnn_channels=(32, 64, 128),
    dropout=0.0,
)


@pytest.fixture(scope="module")
def toy_mask():
    torch.manual_seed(0)
    return create_model("toy-piti-base-mask").eval()


def inputs(config, batch=2):
    """Random x_t, t and condition kwargs for a model of this config."""
    s = config.image_size
    kw = dict(x=torch.randn(batch, 3, s, s), t=torch.randint(0, 1000, (batch,)))
    if config.kind == "glide":
        kw["tokens"] = torch.randint(0, config.n_vocab, (batch, config.text_ctx))
        kw["mask"] = torch.arange(config.text_ctx).expand(batch, -1) < 5
    else:
        kw["ref"] = torch.rand(batch, config.cond_channels, config.cond_size, config.cond_size) * 2 - 1
    if config.super_res:
        kw["low_res"] = torch.randn(batch, 3, 64, 64)
    return kw


def unzero(model, seed=1):
    """Give the zero-initialised layers (GLIDE's out convs) random weights so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


# --- presets and configs ---


def test_every_required_preset_exists():
    assert set(OFFICIAL + TOY) <= set(list_presets())


def test_official_presets_use_official_options():
    base = create_model("piti-base-mask", device="meta").config
    up = create_model("piti-upsample-sketch", device="meta").config
    assert base.resolved_channel_mult() == (1, 2, 3, 4) and base.attention_ds() == (2, 4, 8)
    assert up.resolved_channel_mult() == (1, 1, 2, 2, 4, 4) and up.attention_ds() == (8, 16, 32)
    assert (base.noise_schedule, up.noise_schedule) == ("squaredcos_cap_v2", "linear")
    assert up.super_res and up.cond_channels == 1 and up.cond_size == 256 and up.task == "sketch"
    assert create_model("piti-base-depth", device="meta").config.cond_channels == 6


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model preset 'piti-base-foo'.*piti-base-mask"):
        create_model("piti-base-foo")


def test_unknown_override_lists_valid_options():
    with pytest.raises(ConfigError, match=r"unknown model option\(s\) \['num_chanels'\].*num_channels"):
        create_model("toy-glide-base", num_chanels=64)


def test_overrides_use_official_names_and_strings():
    model = create_model(
        "toy-glide-base",
        device="meta",
        num_channels=64,
        attention_resolutions="32,16,8",
        channel_mult="1,2,2,2",
        dropout=0.0,
    )
    c = model.config
    assert (c.name, c.num_channels) == ("toy-glide-base", 64)
    assert (c.attention_resolutions, c.channel_mult) == ((32, 16, 8), (1, 2, 2, 2))
    assert model.state_dict()["input_blocks.0.0.weight"].shape == (64, 3, 3, 3)


def test_config_round_trips_through_json():
    config = create_model("toy-piti-upsample-depth", device="meta", dropout=0.0).config
    data = json.loads(json.dumps(config.to_dict()))
    again = ModelConfig.from_dict(data)
    assert again == config and again.encoder_cnn_channels == config.encoder_cnn_channels
    rebuilt = create_model(data, device="meta")
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in create_model(config, device="meta").state_dict().items()
    }
    with pytest.raises(ConfigError, match="unknown model option"):
        ModelConfig.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cond_channels=1), "task 'mask' has 3-channel conditions"),
        (dict(attention_resolutions="12"), "attention resolution 12 is not one of"),
        (dict(encoder_cnn_channels=(16, 32, 64)), "must equal xf_width 128"),
        (dict(image_size=96), "no official default"),
        (dict(num_channels=48), "multiple of 32"),
        (dict(noise_schedule="cosine"), "noise_schedule must be one of"),
        (dict(kind="glide"), "a GLIDE model has task 'text'"),
    ],
)
def test_inconsistent_config_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_model("toy-piti-base-mask", device="meta", **overrides)


@pytest.mark.parametrize("stage", ["base", "upsample"])
def test_toy_piti_decoder_is_the_toy_glide_unet(stage):
    """GLIDE weights minus the text stack (the official transfer rule) fit the PITI decoder exactly."""
    glide = create_model(f"toy-glide-{stage}", device="meta").state_dict()
    text = ("padding_embedding", "positional_embedding", "token_embedding", "final_ln")
    kept = {
        k: v.shape
        for k, v in glide.items()
        if not (k.startswith("transformer") and "transformer_proj" not in k) and not k.startswith(text)
    }
    for task in ("mask", "sketch", "depth"):
        piti = create_model(f"toy-piti-{stage}-{task}", device="meta").state_dict()
        assert {k[len("decoder.") :]: v.shape for k, v in piti.items() if k.startswith("decoder.")} == kept


# --- the toy networks ---


@pytest.mark.parametrize(
    "name", ["toy-glide-base", "toy-glide-upsample", "toy-piti-base-sketch", "toy-piti-upsample-depth"]
)
@torch.no_grad()
def test_toy_forward_shapes_and_reuse(name):
    torch.manual_seed(0)
    model = unzero(create_model(name).eval())
    c = model.config
    b = 1 if c.super_res else 2  # the upsamplers are the slow ones
    kw = inputs(c, batch=b)
    out = model(**kw)
    assert out.shape == (b, 6, c.image_size, c.image_size) and torch.isfinite(out).all()
    emb = model.encode(kw["ref"]) if c.kind == "piti" else model.encode_text(kw["tokens"], kw["mask"])
    n_tokens = c.num_cond_tokens if c.kind == "piti" else c.text_ctx
    assert emb["xf_proj"].shape == (b, c.xf_width) and emb["xf_out"].shape == (b, c.xf_width, n_tokens)
    assert torch.equal(model(kw["x"], kw["t"], low_res=kw.get("low_res"), cond_emb=emb), out)
    assert torch.equal(model.decode(kw["x"], kw["t"], low_res=kw.get("low_res"), **emb), out)


@torch.no_grad()
def test_plain_resampling_and_additive_embedding_variant():
    """resblock_updown=False (strided conv `op` / nearest + `conv`) and use_scale_shift_norm=False."""
    model = unzero(create_model("toy-glide-base", resblock_updown=False, use_scale_shift_norm=False).eval())
    keys = model.state_dict()
    levels = len(model.config.resolved_channel_mult())
    assert sum(k.startswith("input_blocks") and k.endswith(".op.weight") for k in keys) == levels - 1
    assert sum(k.startswith("output_blocks") and k.endswith(".conv.weight") for k in keys) == levels - 1
    assert keys["input_blocks.1.0.emb_layers.1.weight"].shape == (32, 128)  # no scale/shift pair
    assert model(**inputs(model.config, batch=1)).shape == (1, 6, 64, 64)


def test_initialisation(toy_mask):
    sd = toy_mask.state_dict()
    assert all(torch.isfinite(v).all() for v in sd.values())
    zero = [k for k in sd if k.startswith("decoder.out.2.") or ".proj_out." in k or ".out_layers.3." in k]
    assert len(zero) > 10 and all(sd[k].abs().max() == 0 for k in zero)
    for k in ("encoder.cls_token", "encoder.positional_embedding"):
        assert 0.01 < sd[k].std() < 0.04  # properly initialised (the official code leaves torch.empty)
    glide = create_model("toy-glide-base").state_dict()
    for k in ("positional_embedding", "padding_embedding", "token_embedding.weight"):
        assert 0.01 < glide[k].std() < 0.04


def test_wrong_condition_channels_says_what_is_expected(toy_mask):
    kw = inputs(toy_mask.config)
    kw["ref"] = kw["ref"][:, :1]
    with pytest.raises(ConditionError, match=r"expected a 3-channel 128x128 colour map .*got \(2, 1, 128, 128\)"):
        toy_mask(**kw)


def test_wrong_condition_size_says_what_is_expected(toy_mask):
    with pytest.raises(ConditionError, match=r"3-channel 128x128 .*got \(2, 3, 64, 64\)"):
        toy_mask.encode(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ConditionError, match="1-channel 256x256 sketch"):
        create_model("piti-base-sketch", device="meta").encode(torch.zeros(1, 3, 256, 256, device="meta"))


def test_wrong_x_t_low_res_and_condition_batch(toy_mask):
    kw = inputs(toy_mask.config)
    with pytest.raises(ConditionError, match=r"x_t of shape \(B, 3, 64, 64\)"):
        toy_mask(torch.zeros(2, 3, 32, 32), kw["t"], ref=kw["ref"])
    with pytest.raises(ConditionError, match="not a super-resolution model"):
        toy_mask(**kw, low_res=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConditionError, match="batch of 2"):
        toy_mask(kw["x"], kw["t"], ref=kw["ref"][:1])
    with pytest.raises(ConditionError, match="either the condition image `ref` or `cond_emb`"):
        toy_mask(kw["x"], kw["t"])


def test_wrong_glide_inputs():
    model = create_model("toy-glide-upsample")
    kw = inputs(model.config)
    with pytest.raises(ConditionError, match="needs `low_res`"):
        model(kw["x"], kw["t"], tokens=kw["tokens"], mask=kw["mask"])
    with pytest.raises(ConditionError, match=r"tokens` of shape \(B, 32\)"):
        model.encode_text(torch.zeros(2, 128, dtype=torch.long))
    with pytest.raises(ConditionError, match="bool `mask`"):
        model.encode_text(torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(ConditionError, match=r"token ids must lie in \[0, 1024\)"):
        model.encode_text(torch.full((1, 32), 5000), torch.ones(1, 32, dtype=torch.bool))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = unzero(create_model("toy-piti-base-sketch", **TINY))
    ckpt = create_model("toy-piti-base-sketch", use_checkpoint=True, **TINY)
    ckpt.load_state_dict(plain.state_dict())
    kw = inputs(plain.config)
    grads, saved = [], []
    for model in (plain, ckpt):
        count = []  # tensors kept for the backward pass outside the checkpointed blocks
        with torch.autograd.graph.saved_tensors_hooks(lambda t, count=count: count.append(1) or t, lambda t: t):
            loss = model(**kw).square().mean()
        loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
        saved.append(len(count))
    assert saved[1] < saved[0] / 2  # checkpointing really drops the blocks' activations
    assert grads[0]["encoder.cnn.conv1.weight"].abs().max() > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-6)


def test_meta_device_builds_without_memory():
    model = create_model("piti-upsample-mask", device="meta")
    assert all(p.is_meta for p in model.parameters())
