"""The sampling pipeline, end to end, on tiny random-weight models.

These tests check the plumbing (loading, conditions, guidance wiring, the encoder-once path, seeds,
upsampling, errors), NOT image quality: the models are a few thousand parameters with random weights,
saved to temporary checkpoints with ``save_checkpoint`` and loaded back like any project checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti.data.conditions import condition_tensor
from piti.data.palettes import SYNTH_PALETTE
from piti.diffusion import sample
from piti.errors import CheckpointError, ConditionError, ConfigError, MissingWeightsError
from piti.pipeline import PITIPipeline, to_pil, to_uint8
from piti.precision import cpu_has_native_bf16

from conftest import FEW, PRECISIONS, depth_metres, pixels, sketch_picture, synth_mask, tiny_checkpoints

CONDITIONS = {"mask": synth_mask, "sketch": sketch_picture, "depth": depth_metres}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {
        task: tiny_checkpoints(task, folder, sampling={"palette": "synth"} if task == "mask" else None)
        for task in CONDITIONS
    }


@pytest.fixture(scope="module")
def mask_pipe(ckpts):
    return PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32")


def prepare(task, image, size, **kwargs):
    """The condition as the pipeline gives it to a model: (1, C, size, size), and the notes."""
    cond, notes = condition_tensor(task, image, size, **kwargs)
    return cond[None], notes


# --------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("task", list(CONDITIONS))
def test_pipeline_end_to_end_each_task(ckpts, task, precision):
    pipe = PITIPipeline.from_checkpoints(*ckpts[task], precision=precision)
    assert pipe.task == task and pipe.profile == "fast"  # project checkpoints get the fast defaults
    out = pipe(CONDITIONS[task](), num_samples=2, seed=0, **FEW)
    assert [im.size for im in out.base_images] == [(32, 32)] * 2
    assert [im.size for im in out.images] == [(64, 64)] * 2 and out.images == out.upsampled_images
    assert all(im.mode == "RGB" for im in out.images + out.base_images)
    assert out.condition.shape == (1, {"mask": 3, "sketch": 1, "depth": 6}[task], 32, 32)
    assert out.settings["task"] == task and out.settings["upsample"] is True
    assert out.settings["steps"] == "3" and out.settings["upsample_steps"] == "2"
    assert out.settings["precision"] == precision
    json.dumps(out.settings)  # JSON-ready, for the CLI's settings.json
    # two samples of one condition differ (different noise), and images are not constant
    assert (pixels(out.images[:1]) != pixels(out.images[1:])).any()
    assert pixels(out.images).std() > 1


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_every_sampler_and_encoder_path_in_each_precision(ckpts, sampler, precision):
    # every path that feeds a network goes through the precision policy: bf16 weights get bf16-safe inputs
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision=precision)
    for encode_once in (True, False):
        out = pipe(
            synth_mask(),
            seed=0,
            sampler=sampler,
            upsample_sampler=sampler,
            guidance=1.0,
            guidance_mode="normalized",
            encode_once=encode_once,
            eta=0.5,
            upsample_start=0.5,
            **FEW,
        )
        assert pixels(out.images).std() > 1


@pytest.mark.parametrize("task", list(CONDITIONS))
def test_pipeline_base_only_each_task(ckpts, task):
    pipe = PITIPipeline.from_checkpoints(ckpts[task][0], precision="fp32")  # no upsampler
    out = pipe(CONDITIONS[task](), num_samples=1, seed=0, **FEW)
    assert out.upsampled_images == [] and out.images == out.base_images
    assert out.images[0].size == (32, 32) and out.settings["upsample"] is False
    with pytest.raises(ConfigError, match="no upsampler"):
        pipe(CONDITIONS[task](), upsample=True, **FEW)


def test_no_upsample_option_skips_the_upsampler(mask_pipe):
    out = mask_pipe(synth_mask(), upsample=False, seed=0, **FEW)
    assert out.images[0].size == (32, 32) and out.upsampled_images == []
    assert "upsample_s" not in out.settings["timings"]


def test_base_images_are_exactly_what_the_upsampler_sees(mask_pipe):
    # official: clamp + 8-bit truncation before the upsampler; the 64-px PIL images are that input
    out = mask_pipe(synth_mask(), seed=4, **FEW)
    x = torch.linspace(-1.2, 1.2, 3 * 8 * 8).view(1, 3, 8, 8)
    assert (to_uint8(x).float() == torch.floor((x.clamp(-1, 1) + 1) * 127.5)).all()
    assert np.asarray(to_pil(x)[0]).dtype == np.uint8
    assert out.settings["quantize_low_res"] is True and out.settings["upsample_temperature"] == 0.997


def test_upsample_start_begins_from_the_noised_base_image(mask_pipe):
    # SDEdit start: from the bicubic enlargement of the 8-bit base image noised to step 0.02 T, even a
    # random upsampler stays near that enlargement; from pure noise (official, 1.0) it does not
    def distance(out):
        base = torch.from_numpy(np.array(out.base_images[0])).permute(2, 0, 1)[None].float()
        size = out.images[0].size[::-1]
        enlarged = torch.nn.functional.interpolate(base, size=size, mode="bicubic").clamp(0, 255)
        return (torch.from_numpy(np.array(out.images[0])).permute(2, 0, 1)[None].float() - enlarged).abs().mean()

    near = mask_pipe(synth_mask(), seed=1, upsample_start=0.02, **FEW)
    full = mask_pipe(synth_mask(), seed=1, **FEW)
    assert near.settings["upsample_start"] == 0.02 and full.settings["upsample_start"] == 1.0
    assert distance(near) < 0.5 * distance(full)
    with pytest.raises(ConfigError, match="upsample_start"):
        mask_pipe(synth_mask(), upsample_start=0.0, **FEW)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_skip_terminal_starts_the_base_sampler_below_T(mask_pipe, monkeypatch, sampler):
    import piti.diffusion.samplers as samplers

    seen = []
    original = samplers._denoise

    def spy(denoise, diffusion, x, t):
        seen.append(int(diffusion.timestep_map[t[0]]))
        return original(denoise, diffusion, x, t)

    monkeypatch.setattr(samplers, "_denoise", spy)
    run = dict(sampler=sampler, steps=5, upsample=False, progress=False)
    official = mask_pipe(synth_mask(), seed=1, **run)
    calls, seen[:] = list(seen), []
    skipped = mask_pipe(synth_mask(), seed=1, skip_terminal=True, **run)
    assert calls[0] == 999 and seen == calls[1:]  # the same steps but the one at T
    assert official.settings["skip_terminal"] is False and skipped.settings["skip_terminal"] is True
    assert not np.array_equal(pixels(skipped.base_images), pixels(official.base_images))


def test_noise_scale_reaches_each_ddpm_sampler_only(mask_pipe, monkeypatch):
    import piti.diffusion.samplers as samplers

    seen = []
    original = samplers.ddpm_step

    def spy(*args, noise_scale=1.0, **kwargs):
        seen.append(noise_scale)
        return original(*args, noise_scale=noise_scale, **kwargs)

    monkeypatch.setattr(samplers, "ddpm_step", spy)
    ddpm = dict(sampler="ddpm", upsample_sampler="ddpm", steps=2, upsample_steps=3, progress=False)
    quiet = mask_pipe(synth_mask(), seed=1, noise_scale=0.5, upsample_noise_scale=0.25, **ddpm)
    assert seen == [0.5, 0.5, 0.25, 0.25, 0.25]  # 2 base steps, then 3 upsampler steps
    assert quiet.settings["noise_scale"] == 0.5 and quiet.settings["upsample_noise_scale"] == 0.25
    official = mask_pipe(synth_mask(), seed=1, **ddpm)
    assert official.settings["noise_scale"] == 1.0 and not np.array_equal(
        pixels(quiet.base_images), pixels(official.base_images)
    )
    seen.clear()
    mask_pipe(synth_mask(), seed=1, noise_scale=0.5, **FEW)  # the deterministic samplers draw no noise
    assert seen == []
    for key in ("noise_scale", "upsample_noise_scale"):
        with pytest.raises(ConfigError, match=key):
            mask_pipe(synth_mask(), **{key: -0.5}, **FEW)


# --------------------------------------------------------------------------------------------------
# The encoder runs once: same predictions as re-encoding at every step


def test_encoder_once_equals_encoder_every_step(mask_pipe):
    ref, _ = prepare("mask", synth_mask(), 32, palette="synth")
    settings = mask_pipe.resolve_settings(guidance=0.7, guidance_mode="normalized")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    t = torch.full((3,), 500.0)
    once = mask_pipe.base_denoiser(ref, 3, settings, encode_once=True)(x, t)
    every = mask_pipe.base_denoiser(ref, 3, settings, encode_once=False)(x, t)
    assert once.shape == (3, 6, 32, 32) and once.abs().max() > 1e-3
    torch.testing.assert_close(once, every, atol=1e-5, rtol=1e-5)

    low_res = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    x_up = torch.randn(3, 3, 64, 64, generator=gen)
    once = mask_pipe.upsampler_denoiser(ref, low_res, encode_once=True)(x_up, t)
    every = mask_pipe.upsampler_denoiser(ref, low_res, encode_once=False)(x_up, t)
    torch.testing.assert_close(once, every, atol=1e-5, rtol=1e-5)

    # and whole samples agree to the 8-bit pixel (float noise may flip a truncation boundary)
    a = mask_pipe(synth_mask(), seed=1, encode_once=True, **FEW)
    b = mask_pipe(synth_mask(), seed=1, encode_once=False, **FEW)
    assert np.abs(pixels(a.images) - pixels(b.images)).max() <= 1


def test_encoder_runs_once_per_call(mask_pipe, monkeypatch):
    calls = []
    for model in (mask_pipe.base_model, mask_pipe.upsampler_model):
        original = model.encoder.forward
        monkeypatch.setattr(model.encoder, "forward", lambda ref, f=original: calls.append(ref.shape[0]) or f(ref))
    mask_pipe(synth_mask(), num_samples=2, seed=0, **FEW)
    # base: the condition and the null condition once each; upsampler: the condition once
    assert calls == [1, 1, 1]


# --------------------------------------------------------------------------------------------------
# Seeds, guidance


def test_same_seed_same_pixels(mask_pipe):
    kwargs = dict(num_samples=2, sampler="ddpm", upsample_sampler="ddim", eta=0.5, **FEW)
    a = mask_pipe(synth_mask(), seed=11, **kwargs)
    b = mask_pipe(synth_mask(), seed=11, **kwargs)
    c = mask_pipe(synth_mask(), seed=12, **kwargs)
    assert (pixels(a.images) == pixels(b.images)).all() and (pixels(a.base_images) == pixels(b.base_images)).all()
    assert (pixels(a.images) != pixels(c.images)).any()
    d = mask_pipe(synth_mask(), seed=None, num_samples=1, **FEW)
    assert isinstance(d.settings["seed"], int)  # a drawn seed is recorded so the run can be repeated


def test_condition_annealing_varies_the_samples_reproducibly(mask_pipe):
    kwargs = dict(num_samples=2, sampler="ddpm", guidance=2.0, **FEW)
    plain = mask_pipe(synth_mask(), seed=3, **kwargs)
    annealed = [mask_pipe(synth_mask(), seed=3, cond_noise=1.0, **kwargs) for _ in range(2)]
    assert (pixels(annealed[0].base_images) == pixels(annealed[1].base_images)).all()  # the seed fixes its noise
    assert (pixels(annealed[0].base_images) != pixels(plain.base_images)).any()
    assert annealed[0].settings["cond_noise"] == 1.0
    with pytest.raises(ConfigError, match="encode_once"):
        mask_pipe(synth_mask(), cond_noise=1.0, encode_once=False, **FEW)
    with pytest.raises(ConfigError, match="cond_noise_tmin must be below"):
        mask_pipe(synth_mask(), cond_noise=1.0, cond_noise_tmin=0.9, cond_noise_tmax=0.5, **FEW)


def test_a_guidance_interval_that_holds_no_step_is_no_guidance(mask_pipe):
    kwargs = dict(seed=4, sampler="ddpm", upsample=False, **FEW)
    unguided = mask_pipe(synth_mask(), guidance=0.0, **kwargs)
    # the first (noisiest) step is t/T 0.999
    outside = mask_pipe(synth_mask(), guidance=3.0, guidance_tmin=0.9995, **kwargs)
    inside = mask_pipe(synth_mask(), guidance=3.0, guidance_tmax=0.5, **kwargs)
    assert (pixels(outside.base_images) == pixels(unguided.base_images)).all()
    assert (pixels(inside.base_images) != pixels(unguided.base_images)).any()
    assert outside.settings["guidance_tmin"] == 0.9995


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_guidance_zero_equals_the_conditional_sampler(mask_pipe, sampler):
    """Guidance 0 (paper w, the official s = 1) runs the plain conditional model, nothing else."""
    seed = 5
    out = mask_pipe(synth_mask(), seed=seed, guidance=0.0, sampler=sampler, upsample=False, **FEW)
    guided = mask_pipe(synth_mask(), seed=seed, guidance=3.0, sampler=sampler, upsample=False, **FEW)

    # the conditional sampler, written out by hand with the same generator and draws
    model = mask_pipe.base_model
    ref, _ = prepare("mask", synth_mask(), 32, palette="synth")
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((1, 3, 32, 32), generator=gen)
    cond_emb = model.encode(ref)
    x0 = sample(sampler, lambda x, t: model(x, t, cond_emb=cond_emb), x_T, mask_pipe.diffusion(model, 3), generator=gen)
    expected = pixels(to_pil(x0.clamp(-1, 1)))

    assert (pixels(out.images) == expected).all()
    assert (pixels(guided.images) != expected).any()  # guidance does change the result


def test_guidance_modes_and_settings_are_recorded(mask_pipe):
    plain = mask_pipe(synth_mask(), seed=2, guidance=2.0, upsample=False, **FEW)
    normed = mask_pipe(synth_mask(), seed=2, guidance=2.0, guidance_mode="normalized", upsample=False, **FEW)
    assert (pixels(plain.images) != pixels(normed.images)).any()
    s = normed.settings
    assert s["guidance_mode"] == "normalized" and s["guidance"] == 2.0 and s["guidance_scale_official"] == 3.0
    analytic = mask_pipe(
        synth_mask(), seed=2, guidance=2.0, guidance_mode="normalized", guidance_sigma="analytic", upsample=False, **FEW
    )
    assert (
        analytic.settings["guidance_sigma"] == "analytic" and (pixels(analytic.images) != pixels(normed.images)).any()
    )
    with pytest.raises(ConfigError, match="guidance_convention"):
        mask_pipe(synth_mask(), guidance=1.3, guidance_convention="official", **FEW)  # the Python API takes w only


def test_profiles_and_checkpoint_recommendations(ckpts):
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32", profile="official")
    assert pipe.defaults.sampler == "ddpm" and pipe.defaults.steps == "250"
    assert pipe.defaults.upsample_steps == "fast27"
    assert pipe.defaults.palette == "synth"  # from the checkpoint header's "sampling"
    fast = PITIPipeline.from_checkpoints(*ckpts["sketch"], precision="fp32")
    assert fast.defaults.sampler == "dpmpp" and fast.defaults.palette == "coco-stuff"
    # the official profile computes in fp32 unless asked otherwise; the fast one in the machine's best precision
    assert PITIPipeline.from_checkpoints(*ckpts["mask"], profile="official").policy.precision == "fp32"
    assert (
        PITIPipeline.from_checkpoints(*ckpts["mask"], profile="official", precision="bf16").policy.precision == "bf16"
    )
    auto = "bf16" if cpu_has_native_bf16() else "fp32"
    assert PITIPipeline.from_checkpoints(*ckpts["mask"], profile="fast").policy.precision == auto
    with pytest.raises(ConfigError, match="profile"):
        PITIPipeline.from_checkpoints(*ckpts["mask"], profile="turbo")


def test_bf16_runs_and_stays_close_to_fp32(ckpts, mask_pipe):
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="bf16")
    assert next(pipe.base_model.decoder.parameters()).dtype == torch.bfloat16
    norm = pipe.base_model.decoder.out[0]
    assert norm.weight.dtype == torch.float32  # norm layers stay fp32
    ref, _ = prepare("mask", synth_mask(), 32, palette="synth")
    settings = pipe.resolve_settings()
    x, t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.full((1,), 300.0)
    low = pipe.base_denoiser(ref, 1, settings)(x, t).float()
    full = mask_pipe.base_denoiser(ref, 1, settings)(x, t)
    assert torch.isfinite(low).all()
    assert (low - full).abs().max() < 0.1 * full.abs().max()
    out = pipe(synth_mask(), seed=0, upsample=False, steps=2, progress=False)
    assert out.images[0].size == (32, 32) and out.settings["precision"] == "bf16"
    # where bf16 is emulated (slow), the user is told
    assert any("emulated" in n for n in out.notes) != cpu_has_native_bf16()


def test_auto_precision_follows_the_hardware(ckpts):
    pipe = PITIPipeline.from_checkpoints(ckpts["mask"][0])  # precision="auto"
    assert pipe.policy.precision == ("bf16" if cpu_has_native_bf16() else "fp32")


# --------------------------------------------------------------------------------------------------
# Conditions that need a conversion, and bad inputs


def test_alpha_and_palette_pngs_are_converted_with_a_note(mask_pipe, tmp_path):
    rgba = synth_mask().convert("RGBA")
    out = mask_pipe(rgba, seed=0, upsample=False, **FEW)
    assert any("alpha channel ignored (fully opaque)" in n for n in out.notes)
    alpha = np.full((40, 48), 255, np.uint8)
    alpha[:20, :24] = 0  # a transparent corner: unlabelled, i.e. black in the colour map
    rgba.putalpha(Image.fromarray(alpha))
    out = mask_pipe(rgba, seed=0, upsample=False, **FEW)
    assert any("transparent pixels are unlabelled" in n for n in out.notes)
    assert (out.condition[0, :, :16, :16] == -1).all() and (out.condition[0, :, 16:, 16:] > -1).any()
    labels = np.asarray(synth_mask().convert("RGB"))  # the same picture stored as palette indices
    index = np.zeros(labels.shape[:2], np.uint8)
    for i, colour in enumerate(SYNTH_PALETTE):
        index[(labels == colour).all(-1)] = i
    pal = Image.fromarray(index, mode="P")
    pal.putpalette(SYNTH_PALETTE.flatten().tolist())
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    out_p = mask_pipe(str(tmp_path / "pal.png"), seed=0, upsample=False, **FEW)
    assert any("palette-mode" in n for n in out_p.notes)
    plain = mask_pipe(synth_mask(), seed=0, upsample=False, **FEW)
    assert (pixels(out_p.images) == pixels(plain.images)).all()  # same colours, same condition


def test_huge_image_is_resized_with_a_note(mask_pipe):
    big = synth_mask(1500, 2000)
    ref, notes = prepare("mask", big, 32, palette="synth")
    assert ref.shape == (1, 3, 32, 32)
    assert any("large image (2000x1500)" in n for n in notes)
    assert any("resized from 2000x1500 to 32x32" in n for n in notes)
    small_ref, _ = prepare("mask", synth_mask(150, 200), 32, palette="synth")
    # the reduction only moves region borders by a pixel at most
    assert (ref != small_ref).any(1).float().mean() < 0.1


def test_photo_to_mask_task_is_refused(mask_pipe):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with pytest.raises(ConditionError, match="not in the 'synth' palette"):
        mask_pipe(photo, **FEW)


def test_photo_to_sketch_task_is_refused_unless_asked(ckpts):
    pipe = PITIPipeline.from_checkpoints(ckpts["sketch"][0], precision="fp32")
    yy, xx = np.mgrid[0:48, 0:48]
    photo = Image.fromarray(np.stack([xx * 5, yy * 5, (xx + yy) * 2], -1).astype(np.uint8))
    photo.paste((250, 250, 250), (10, 10, 30, 30))
    with pytest.raises(ConditionError, match="sketch-from-photo"):
        pipe(photo, **FEW)
    out = pipe(photo, sketch_from_photo=True, seed=0, **FEW)
    assert any("extracted" in n for n in out.notes)
    with pytest.raises(ConfigError, match="sketch task only"):
        prepare("mask", photo, 32, from_photo=True)


def test_dark_on_white_sketch_is_inverted_with_a_note(ckpts):
    pipe = PITIPipeline.from_checkpoints(ckpts["sketch"][0], precision="fp32")
    white = Image.eval(sketch_picture(), lambda v: 255 - v)
    a = pipe(white, seed=0, **FEW)
    b = pipe(sketch_picture(), seed=0, **FEW)
    assert any("inverted" in n for n in a.notes)
    assert (pixels(a.images) == pixels(b.images)).all()


@pytest.mark.parametrize("task", list(CONDITIONS))
def test_empty_canvas_is_refused(ckpts, task):
    pipe = PITIPipeline.from_checkpoints(ckpts[task][0], precision="fp32")
    blank = {
        "mask": Image.new("RGB", (40, 40)),
        "sketch": Image.new("L", (40, 40)),
        "depth": np.zeros((40, 40), np.float32),
    }[task]
    with pytest.raises(ConditionError, match="empty|no lines|no valid"):
        pipe(blank, **FEW)


def test_unreadable_condition_file(mask_pipe, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConditionError, match="broken.png"):
        mask_pipe(str(bad), **FEW)
    with pytest.raises(ConditionError, match="not found"):
        mask_pipe(str(tmp_path / "absent.png"), **FEW)


def test_checkpoint_errors(ckpts, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        PITIPipeline.from_checkpoints(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="given as the base model"):
        PITIPipeline.from_checkpoints(ckpts["mask"][1])  # an upsampler as the base
    with pytest.raises(ConfigError, match="sketch-to-image model, but the task is 'mask'"):
        PITIPipeline.from_checkpoints(ckpts["sketch"][0], task="mask")
    with pytest.raises(
        ConfigError, match="sketch-upsample.safetensors is a sketch-to-image model, but the task is 'mask'"
    ):
        PITIPipeline.from_checkpoints(ckpts["mask"][0], ckpts["sketch"][1])
    # the embedded default models: a clear message until `make toy-models` has built them
    monkeypatch.setattr("piti.pipeline.TOY_CHECKPOINT_DIR", tmp_path / "toy")
    with pytest.raises(MissingWeightsError, match="make toy-models"):
        PITIPipeline.from_checkpoints(task="depth")


def test_device_and_precision_errors(ckpts):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        PITIPipeline.from_checkpoints(*ckpts["mask"], device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            PITIPipeline.from_checkpoints(*ckpts["mask"], device="cuda")


def test_bad_settings(mask_pipe):
    with pytest.raises(ConfigError, match="unknown sampler"):
        mask_pipe(synth_mask(), sampler="euler", **FEW)
    with pytest.raises(ConfigError, match="steps must be between"):
        mask_pipe(synth_mask(), steps=0, progress=False)
    with pytest.raises(ConfigError, match="timestep 0 alone"):  # respacing "1" = [0] (official rule)
        mask_pipe(synth_mask(), steps=1, progress=False)
    with pytest.raises(ConfigError, match="respacing"):
        mask_pipe(synth_mask(), steps="fast", progress=False)
    with pytest.raises(ConfigError, match="guidance_mode"):
        mask_pipe(synth_mask(), guidance_mode="strong", **FEW)
    with pytest.raises(ConfigError, match="num_samples"):
        mask_pipe(synth_mask(), num_samples=0, **FEW)
    with pytest.raises(ConfigError, match="unknown sampling setting"):
        mask_pipe(synth_mask(), temperature=0.5, **FEW)


# --------------------------------------------------------------------------------------------------
# Reward guidance


@pytest.mark.parametrize("task", list(CONDITIONS))
def test_reward_guidance_uses_the_reward_model_named_in_the_header(ckpts, tmp_path, task):
    from piti.checkpoints import export_model
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    torch.manual_seed(0)
    reward = RewardNet(RewardConfig(task=task, widths=(4, 8), groups=2))
    save_reward_model(tmp_path / "rewards" / "r.safetensors", reward)
    base = tmp_path / "base.safetensors"
    sampling = {"palette": "synth"} if task == "mask" else {}
    export_model(ckpts[task][0], base, role="base", task=task, sampling=sampling, reward_model="rewards/r.safetensors")
    pipe = PITIPipeline.from_checkpoints(base, precision="fp32")
    kwargs = dict(seed=2, sampler="ddpm", guidance=1.0, upsample=False, **FEW)
    plain = pipe(CONDITIONS[task](), **kwargs)
    guided = pipe(CONDITIONS[task](), reward_guidance=0.5, **kwargs)
    assert (pixels(guided.images) != pixels(plain.images)).any()
    assert guided.settings["reward_checkpoint"].endswith("r.safetensors") and "reward_checkpoint" not in plain.settings
    window = pipe(CONDITIONS[task](), reward_guidance=0.5, reward_guidance_tmin=0.9995, **kwargs)
    assert (pixels(window.images) == pixels(plain.images)).all()  # the last step is t / T = 0.999

    (tmp_path / "rewards" / "r.safetensors").unlink()
    assert PITIPipeline.from_checkpoints(base, precision="fp32").reward_model is None  # the header asks for none
    export_model(
        ckpts[task][0],
        base,
        role="base",
        task=task,
        sampling={**sampling, "reward_guidance": 0.1},
        reward_model="rewards/r.safetensors",
    )
    pipe = PITIPipeline.from_checkpoints(base, precision="fp32")  # recommended by the header only: a note
    assert pipe.reward_model is None and pipe.defaults.reward_guidance == 0
    assert any("reward model" in n for n in pipe(CONDITIONS[task](), **kwargs).notes)
    with pytest.raises(MissingWeightsError, match="reward model"):  # asked for by the caller: an error
        PITIPipeline.from_checkpoints(base, precision="fp32", reward_guidance=0.1)
    assert PITIPipeline.from_checkpoints(base, precision="fp32", reward_guidance=0.0).reward_model is None


def test_upsample_reward_guidance_guides_the_upsampler_only(ckpts, tmp_path):
    from piti.checkpoints import export_model
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    torch.manual_seed(0)
    save_reward_model(tmp_path / "r.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32", reward_model=tmp_path / "r.safetensors")
    kwargs = dict(seed=2, sampler="ddpm", upsample_sampler="ddpm", upsample_start=0.3, **FEW)
    plain = pipe(synth_mask(), **kwargs)
    guided = pipe(synth_mask(), upsample_reward_guidance=0.5, **kwargs)
    assert (pixels(guided.base_images) == pixels(plain.base_images)).all()  # the base steps are untouched
    assert (pixels(guided.images) != pixels(plain.images)).any()
    assert guided.settings["reward_checkpoint"].endswith("r.safetensors") and "reward_checkpoint" not in plain.settings
    assert guided.settings["upsample_reward_guidance"] == 0.5

    base = tmp_path / "base.safetensors"  # recommended by a header whose reward model is missing: a note
    sampling = {"palette": "synth", "upsample_reward_guidance": 0.1}
    export_model(ckpts["mask"][0], base, role="base", task="mask", sampling=sampling, reward_model="gone.safetensors")
    pipe = PITIPipeline.from_checkpoints(base, ckpts["mask"][1], precision="fp32")
    assert pipe.reward_model is None and pipe.defaults.upsample_reward_guidance == 0
    assert any("reward model" in n for n in pipe.load_notes)
    with pytest.raises(MissingWeightsError, match="reward model"):  # asked for by the caller: an error
        PITIPipeline.from_checkpoints(base, ckpts["mask"][1], precision="fp32", upsample_reward_guidance=0.1)
    plain_pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32")
    with pytest.raises(ConfigError, match="upsample_reward_guidance > 0 needs a reward model"):
        plain_pipe(synth_mask(), upsample_reward_guidance=0.1, **FEW)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_reward_model_runs_in_the_pipelines_precision(ckpts, tmp_path, precision):
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    torch.manual_seed(0)
    save_reward_model(tmp_path / "r.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision=precision, reward_model=tmp_path / "r.safetensors")
    conv = next(m for m in pipe.reward_model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = pipe(synth_mask(), seed=2, sampler="ddpm", upsample_sampler="ddpm", reward_guidance=0.5, **FEW)
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert np.isfinite(pixels(out.images)).all() and pipe.reward_model.training is False


def test_redraw_threshold_draws_again_the_samples_the_reward_model_rejects(ckpts, tmp_path):
    from piti.checkpoints import export_model
    from piti.settings import REDRAW_TRIES
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    torch.manual_seed(0)
    save_reward_model(tmp_path / "r.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32", reward_model=tmp_path / "r.safetensors")
    kwargs = dict(seed=2, sampler="ddpm", num_samples=2, upsample=False, **FEW)
    plain = pipe(synth_mask(), **kwargs)
    lenient = pipe(synth_mask(), redraw_threshold=100.0, **kwargs)  # nothing rejected: the same pixels
    assert lenient.settings["redraws"] == [0, 0] and np.array_equal(pixels(lenient.images), pixels(plain.images))

    read = pipe.reward_loss(plain.condition, plain.base_images[0].size[0], "synth", "redraw_threshold")

    def loss(out):  # the reward model's disagreement of each base image with the condition
        x = torch.as_tensor(pixels(out.base_images), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
        return read(x)

    first = loss(plain)
    strict = pipe(synth_mask(), redraw_threshold=1e-9, **kwargs)  # every draw rejected: each sample redrawn 3 times
    assert strict.settings["redraws"] == [REDRAW_TRIES] * 2
    assert (loss(strict) <= first + 1e-2).all()  # the closest draw kept (read here on the 8-bit images)

    with pytest.raises(ConfigError, match="redraw_threshold > 0 needs a reward model"):
        PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32")(synth_mask(), redraw_threshold=0.1, **FEW)
    base = tmp_path / "base.safetensors"  # recommended by a header whose reward model is missing: off, with a note
    sampling = {"palette": "synth", "redraw_threshold": 0.1}
    export_model(ckpts["mask"][0], base, role="base", task="mask", sampling=sampling, reward_model="gone.safetensors")
    pipe = PITIPipeline.from_checkpoints(base, precision="fp32")
    assert pipe.defaults.redraw_threshold == 0 and any("without redraw_threshold" in n for n in pipe.load_notes)


def test_the_early_redraw_restarts_midway_what_the_checks_reject_by_the_margin(mask_pipe, monkeypatch):
    from piti.settings import EARLY_MARGIN, REDRAW_TRIES

    reading = {"value": 0.0}  # every image reads this (the reward model's disagreement)
    monkeypatch.setattr(mask_pipe, "reward_loss", lambda *args: lambda x: torch.full((len(x),), reading["value"]))
    kwargs = dict(seed=2, sampler="ddpm", num_samples=2, upsample=False, steps=6, progress=False)
    plain = mask_pipe(synth_mask(), redraw_threshold=1.0, **kwargs)
    early = mask_pipe(synth_mask(), redraw_threshold=1.0, redraw_early_t=0.5, **kwargs)  # nothing rejected
    assert early.settings["early_redraws"] == 0 and np.array_equal(pixels(early.images), pixels(plain.images))
    unchecked = mask_pipe(synth_mask(), redraw_early_t=0.5, **kwargs)  # no redraw check: no effect
    assert unchecked.settings["early_redraws"] == 0 and np.array_equal(pixels(unchecked.images), pixels(plain.images))

    reading["value"] = (1 + EARLY_MARGIN) / 2  # over the threshold, under the margin: only the finished draws
    out = mask_pipe(synth_mask(), redraw_threshold=1.0, redraw_early_t=0.5, **kwargs)
    assert out.settings["early_redraws"] == 0 and out.settings["redraws"] == [REDRAW_TRIES] * 2
    reading["value"] = EARLY_MARGIN * 1.1  # rejected midway too: every draw, the first and each redraw's
    out = mask_pipe(synth_mask(), redraw_threshold=1.0, redraw_early_t=0.5, **kwargs)
    assert out.settings["early_redraws"] == 2 * REDRAW_TRIES * (1 + REDRAW_TRIES)
    assert out.settings["redraws"] == [REDRAW_TRIES] * 2 and np.isfinite(pixels(out.images)).all()


def test_the_early_redraw_splits_the_steps_at_its_fraction(mask_pipe):
    diffusion = mask_pipe.diffusion(mask_pipe.base_model, 6)  # t/T of its steps: 0, 0.2, 0.4, 0.599, 0.799, 0.999
    for early, split in ((0.5, 3), (0.599, 3), (0.6, 4), (0.9, 5), (1e-4, 1), (1.0, None), (0.0, None)):
        assert (
            mask_pipe.early_split(diffusion, mask_pipe.resolve_settings(redraw_threshold=1.0, redraw_early_t=early))
            == split
        )
    assert mask_pipe.early_split(diffusion, mask_pipe.resolve_settings(redraw_early_t=0.5)) is None  # no check on


@pytest.mark.parametrize("redraws, expected", [([0.9, 0.2, 0.7], (3, 0.2)), ([-0.2, 0.9], (1, -0.2))])
def test_redraws_keep_the_closest_draw_and_stop_once_accepted(mask_pipe, monkeypatch, redraws, expected):
    draws = iter(redraws)  # each redraw of the rejected sample: a constant image, its loss 1 + its value
    monkeypatch.setattr(mask_pipe, "reward_loss", lambda *args: lambda x: 1 + x.mean(dim=(1, 2, 3)))
    monkeypatch.setattr(mask_pipe, "sample_base", lambda ref, n, *args, **kw: torch.full((n, 3, 4, 4), next(draws)))
    x0 = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -0.5)])  # losses 1.5 and 0.5
    settings = mask_pipe.resolve_settings(redraw_threshold=1.0)
    out, counts = mask_pipe.redraw_rejected(None, x0.clone(), settings, None, False, True)
    assert counts == [expected[0], 0]
    assert (out[0] == expected[1]).all() and (out[1] == -0.5).all()


def test_particle_guidance_pushes_the_samples_of_one_call_apart(mask_pipe):
    kwargs = dict(seed=2, sampler="ddpm", guidance=1.0, upsample=False, **FEW)
    pushed = dict(particle_guidance=2.0, particle_guidance_tmin=0.0)

    def spread(out):  # mean pairwise L1 between the samples of one call
        return torch.pdist(torch.as_tensor(pixels(out.images), dtype=torch.float32).flatten(1), p=1).mean()

    plain = mask_pipe(synth_mask(), num_samples=3, **kwargs)
    apart = mask_pipe(synth_mask(), num_samples=3, **pushed, **kwargs)
    assert spread(apart) > spread(plain)
    assert apart.settings["particle_guidance"] == 2.0
    one = [mask_pipe(synth_mask(), num_samples=1, **extra, **kwargs) for extra in ({}, pushed)]
    assert (pixels(one[0].images) == pixels(one[1].images)).all()  # a single sample has nothing to be pushed from
    # ... unless it is given finished samples to be pushed from (the redraw's kept samples)
    settings = mask_pipe.resolve_settings(**pushed, sampler="ddpm", guidance=1.0, steps=FEW["steps"])

    def draw(partners):
        generator = torch.Generator().manual_seed(2)
        return mask_pipe.sample_base(one[0].condition, 1, settings, generator, False, True, partners=partners)

    alone = draw(None)
    assert torch.equal(draw(alone[:0]), alone)  # no partners: as alone
    assert (draw(alone) - alone).abs().mean() > 1e-3
    with pytest.raises(ConfigError, match="particle_guidance_tmin must be below"):
        mask_pipe(synth_mask(), particle_guidance=1.0, particle_guidance_tmin=0.5, particle_guidance_tmax=0.5)
    with pytest.raises(ConfigError, match="needs a class model"):
        mask_pipe(synth_mask(), particle_guidance=1.0, particle_features="classes", **FEW)


def test_antithetic_noise_couples_the_base_draws_of_one_call_only(mask_pipe, monkeypatch):
    import piti.pipeline as pipeline

    seen = []
    original = pipeline.sample

    def spy(name, denoise, x_T, diffusion, **kwargs):
        seen.append((x_T.clone(), kwargs.get("antithetic_noise")))
        return original(name, denoise, x_T, diffusion, **kwargs)

    monkeypatch.setattr(pipeline, "sample", spy)
    run = dict(seed=3, sampler="ddpm", upsample_sampler="ddpm", steps=2, upsample_steps=2, progress=False)
    out = mask_pipe(synth_mask(), num_samples=2, antithetic_noise=True, **run)
    (base_x, base_flag), (_, upsample_flag) = seen
    assert base_flag is True and upsample_flag is None  # the upsampler draws independently
    assert torch.allclose(base_x[0], -base_x[1], atol=1e-6) and out.settings["antithetic_noise"] is True
    one = [mask_pipe(synth_mask(), num_samples=1, antithetic_noise=a, **run) for a in (False, True)]
    assert np.array_equal(pixels(one[0].images), pixels(one[1].images))  # one sample: drawn as without


def test_particle_guidance_on_classes_uses_the_class_model_named_in_the_header(ckpts, tmp_path):
    from piti.checkpoints import export_model
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    torch.manual_seed(0)
    save_reward_model(tmp_path / "c.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    save_reward_model(tmp_path / "d.safetensors", RewardNet(RewardConfig(task="depth", widths=(4, 8), groups=2)))
    base = tmp_path / "base.safetensors"
    sampling = dict(particle_guidance=2.0, particle_features="classes", particle_guidance_tmin=0.0)
    export_model(ckpts["depth"][0], base, role="base", task="depth", sampling=sampling, class_model="c.safetensors")
    pipe = PITIPipeline.from_checkpoints(base, precision="fp32")  # a depth model pushed apart by classes
    kwargs = dict(seed=2, sampler="ddpm", guidance=1.0, num_samples=3, **FEW)
    pushed = pipe(CONDITIONS["depth"](), **kwargs)
    plain = pipe(CONDITIONS["depth"](), **kwargs, particle_guidance=0.0)
    assert (pixels(pushed.images) != pixels(plain.images)).any()
    assert pushed.settings["class_checkpoint"].endswith("c.safetensors") and "class_checkpoint" not in plain.settings
    with pytest.raises(ConfigError, match="class model must read classes"):
        PITIPipeline.from_checkpoints(base, precision="fp32", class_model=tmp_path / "d.safetensors")

    (tmp_path / "c.safetensors").unlink()  # recommended by the header only: sampled without it, with a note
    pipe = PITIPipeline.from_checkpoints(base, precision="fp32")
    assert pipe.class_model is None and pipe.defaults.particle_guidance == 0
    assert any("class model" in n for n in pipe(CONDITIONS["depth"](), **kwargs).notes)
    with pytest.raises(MissingWeightsError, match="class model"):  # asked for by the caller: an error
        PITIPipeline.from_checkpoints(base, precision="fp32", particle_guidance=0.5)


def test_reward_guidance_without_a_reward_model_is_a_clear_error(mask_pipe, ckpts, tmp_path):
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    with pytest.raises(ConfigError, match="needs a reward model"):
        mask_pipe(synth_mask(), reward_guidance=0.1, upsample=False, **FEW)
    save_reward_model(tmp_path / "depth.safetensors", RewardNet(RewardConfig(task="depth", widths=(4, 8), groups=2)))
    with pytest.raises(ConfigError, match="reward model"):
        PITIPipeline.from_checkpoints(*ckpts["mask"], reward_model=tmp_path / "depth.safetensors")
