"""The decoder's optional locality prior for PITI's grid of condition tokens (``cond_locality``)."""

import math

import pytest
import torch

from piti.errors import ConditionError, ConfigError
from piti.nn.unet import AttentionBlock, grid_locality_bias
from piti.presets import ModelConfig, create_model, get_config


def test_bias_prefers_the_covering_token_and_is_normalised():
    bias = grid_locality_bias(8, 8, 16, alpha=1.0)  # 8x8 pixels, 4x4 tokens: each token covers 2x2 pixels
    assert bias.shape == (64, 16)
    # At zero logits the 16 tokens together weigh as much as the 64 pixels: logsumexp over tokens = log(HW).
    torch.testing.assert_close(bias.logsumexp(dim=1), torch.full((64,), math.log(64)))
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    covering = (rows // 2 * 4 + cols // 2).reshape(-1)
    assert torch.equal(bias.argmax(dim=1), covering)


def test_bias_needs_a_square_grid():
    with pytest.raises(ConditionError, match="square grid"):
        grid_locality_bias(8, 8, 15, alpha=1.0)


def _token_effect(block, corner_token: int) -> torch.Tensor:
    """|change| of the block's output per pixel when one condition token changes (8x8 pixels, 4x4 tokens)."""
    torch.manual_seed(0)
    x, xf_out = torch.randn(1, 32, 8, 8), torch.randn(1, 16, 16)
    changed = xf_out.clone()
    changed[:, :, corner_token] += 3.0
    with torch.no_grad():
        return (block(x, changed) - block(x, xf_out)).abs().sum(dim=1)[0]  # (8, 8)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_locality_makes_a_token_act_where_it_lies(alpha):
    torch.manual_seed(1)
    block = AttentionBlock(32, num_head_channels=32, encoder_channels=16, cond_locality=alpha)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)  # open the zero-initialised output
    effect = _token_effect(block, corner_token=0)  # the top-left token
    near, far = effect[:2, :2].mean(), effect[-2:, -2:].mean()
    if alpha:
        assert near > 20 * far
    else:
        assert near < 2 * far  # without the prior, position does not matter


def test_config_option_is_checked_and_round_trips():
    config = get_config("toy-piti-base-mask", cond_locality=1.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert get_config("toy-piti-base-sketch").cond_locality == 1.0  # the toy default
    assert get_config("toy-piti-upsample-sketch").cond_locality == 0.0
    assert get_config("piti-base-mask").cond_locality == 0.0  # official networks unchanged
    with pytest.raises(ConfigError, match=">= 0"):
        get_config("toy-piti-base-mask", cond_locality=-1.0)
    with pytest.raises(ConfigError, match="text tokens have no position"):
        get_config("toy-glide-base", cond_locality=1.0)


def test_model_with_locality_keeps_the_state_dict_keys():
    plain = create_model("toy-piti-base-mask", cond_locality=0.0, device="meta")
    local = create_model("toy-piti-base-mask", cond_locality=1.0, device="meta")
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in local.state_dict().items()}
