"""Feature caching (DeepCache): the UNet's deep features reused between the calls of one sampling run."""

from __future__ import annotations

import pytest
import torch

from piti.errors import ConfigError
from piti.nn.unet import FeatureCache
from piti.pipeline import PITIPipeline
from piti.settings import PROFILES, setting_specs

from conftest import FEW, pixels, synth_mask, tiny_checkpoints, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def depth_model():  # one per test: a test hooks its blocks
    return tiny_model("depth", upsampler=False, cond_hint=True).eval()  # the hint is added after the first block


def inputs(model, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    ref = torch.rand(batch, cfg.cond_channels, cfg.cond_size, cfg.cond_size, generator=gen) * 2 - 1
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)
    return x, torch.tensor([700, 650])[:batch], model.encode(ref)


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@torch.no_grad()
@pytest.mark.parametrize("branch", [1, 2, 3, 4])  # the tiny base has 4 input and 4 output blocks
def test_a_reusing_call_on_the_same_input_is_the_whole_network(depth_model, branch):
    x, t, cond = inputs(depth_model)
    whole = depth_model(x, t, cond_emb=cond)
    cache = FeatureCache(interval=2, branch=branch)
    first = depth_model(x, t, cond_emb=cond, cache=cache)
    again = depth_model(x, t, cond_emb=cond, cache=cache)  # reuses what the first call kept, computed from x
    assert torch.equal(first, whole) and torch.equal(again, whole)
    assert cache.whole == 1 and cache.features is not None


@torch.no_grad()
def test_reusing_calls_skip_the_deep_blocks_and_follow_the_interval(depth_model):
    x, t, cond = inputs(depth_model)
    decoder = depth_model.decoder
    middle, inner, outer = map(count_calls, (decoder.middle_block, decoder.input_blocks[2], decoder.input_blocks[1]))
    cache = FeatureCache(interval=3, branch=2)
    outs = [depth_model(x + 0.3 * k, t - 20 * k, cond_emb=cond, cache=cache) for k in range(7)]
    assert len(middle) == len(inner) == 3 == cache.whole  # calls 0, 3, 6 whole
    assert len(outer) == 7  # the first `branch` input blocks run at every call
    whole = depth_model(x + 0.3, t - 20, cond_emb=cond)
    assert not torch.allclose(outs[1], whole, atol=1e-4)  # call 1 reused call 0's deep features
    assert all(torch.isfinite(o).all() for o in outs)


@torch.no_grad()
def test_calls_at_or_above_tmax_run_whole(depth_model):
    x, t, cond = inputs(depth_model)  # t / T = 0.7 for the first sample, which decides
    cache = FeatureCache(interval=2, branch=2, tmax=0.7)
    outs = [depth_model(x, t, cond_emb=cond, cache=cache) for _ in range(3)]
    assert cache.whole == 3 and all(torch.equal(o, depth_model(x, t, cond_emb=cond)) for o in outs)
    depth_model(x, t - 1, cond_emb=cond, cache=cache)  # 0.699: below the window's end, reuses
    assert cache.whole == 3


@torch.no_grad()
def test_a_new_batch_size_runs_whole(depth_model):
    cache = FeatureCache(interval=4, branch=2)
    x, t, cond = inputs(depth_model)
    depth_model(x, t, cond_emb=cond, cache=cache)
    x1, t1, cond1 = inputs(depth_model, batch=1)
    assert torch.equal(depth_model(x1, t1, cond_emb=cond1, cache=cache), depth_model(x1, t1, cond_emb=cond1))
    assert cache.whole == 2


def test_bad_cache_settings_are_refused_with_their_name(depth_model):
    for bad in (dict(cache_interval=0), dict(cache_interval=2.5), dict(cache_interval=True), dict(cache_branch=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            PROFILES["fast"].replace(**bad)
    assert PROFILES["fast"].replace(cache_interval="3", cache_branch=2.0).cache_interval == 3
    assert setting_specs()["cache_interval"].describe() == "in [1, 100]"
    with pytest.raises(ConfigError, match="interval >= 1"):
        FeatureCache(interval=0, branch=2)
    x, t, cond = inputs(depth_model)
    with pytest.raises(ConfigError, match="cache_branch 5 exceeds this UNet's 4 input blocks"):
        depth_model(x, t, cond_emb=cond, cache=FeatureCache(interval=2, branch=5))


@pytest.fixture(scope="module")
def mask_pipe(tmp_path_factory):
    paths = tiny_checkpoints("mask", tmp_path_factory.mktemp("tiny"), sampling={"palette": "synth"})
    return PITIPipeline.from_checkpoints(*paths, precision="fp32")


def test_the_pipeline_caches_per_run_and_records_the_setting(mask_pipe, monkeypatch):
    kwargs = dict(num_samples=2, seed=5, sampler="ddpm", **{**FEW, "steps": 4})
    plain = mask_pipe(synth_mask(), **kwargs)
    assert pixels(mask_pipe(synth_mask(), cache_interval=1, **kwargs).images).tolist() == pixels(plain.images).tolist()
    caches = []
    real = FeatureCache.reuse
    monkeypatch.setattr(FeatureCache, "reuse", lambda self, x, t: caches.append(self) or real(self, x, t))
    cached = mask_pipe(synth_mask(), cache_interval=2, cache_branch=1, **kwargs)
    first = mask_pipe(synth_mask(), cache_interval=2, cache_branch=1, **kwargs)
    assert pixels(cached.images).tolist() == pixels(first.images).tolist()  # a fresh cache for each call
    assert (pixels(cached.base_images) != pixels(plain.base_images)).any()
    assert len(set(map(id, caches))) == 2 and all(c.whole == 2 for c in set(caches))  # 4 steps: calls 0 and 2 whole
    assert cached.settings["cache_interval"] == 2 and cached.settings["cache_branch"] == 1
    mask_pipe(synth_mask(), cache_interval=2, cache_branch=1, cache_tmax=0.001, **kwargs)
    assert caches[-1].whole == 3  # only the last step, at t = 0, below the window's end
