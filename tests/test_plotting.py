"""The notebooks' helpers (piti.plotting) on tiny inputs and tiny models."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from piti import plotting
from piti.checkpoints import save_checkpoint
from piti.pipeline import PITIPipeline
from piti.presets import create_model

from conftest import tiny_checkpoints, tiny_config, tiny_model_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def mask_pipe(tmp_path_factory):
    base, up = tiny_checkpoints("mask", tmp_path_factory.mktemp("tiny"))
    return PITIPipeline.from_checkpoints(base, up, precision="fp32")


@pytest.mark.parametrize("value, fast", [("1", True), ("true", True), ("0", False), ("", False)])
def test_fast_mode_reads_the_environment(monkeypatch, value, fast):
    monkeypatch.setenv(plotting.FAST_ENV, value)
    assert plotting.fast_mode() is fast
    assert plotting.pick("full", "fast") == ("fast" if fast else "full")


def test_to_picture_accepts_every_image_form():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert plotting.to_picture(gray).shape == (3, 4, 3)
    assert plotting.to_picture(Image.new("RGBA", (4, 3))).shape == (3, 4, 3)
    t = torch.full((1, 3, 2, 2), -1.0)
    t[0, 0] = 1.0
    pic = plotting.to_picture(t)
    assert pic.shape == (2, 2, 3) and pic[0, 0].tolist() == [255, 0, 0]
    assert plotting.to_picture(np.full((2, 2), 0.5))[0, 0, 0] == 128  # floats in [0, 1]
    with pytest.raises(ValueError):
        plotting.to_picture(np.zeros((2, 2, 5), np.uint8))


def test_condition_pictures_of_each_task():
    assert list(plotting.condition_pictures("mask", torch.zeros(3, 8, 8))) == ["colour map"]
    sketch = plotting.condition_pictures("sketch", torch.zeros(1, 1, 8, 8))
    assert next(iter(sketch.values())).shape == (8, 8, 3)
    depth = plotting.condition_pictures("depth", torch.cat([torch.ones(3, 8, 8), -torch.ones(3, 8, 8)]))
    normals, viz = depth.values()
    assert normals.min() == 255 and viz.max() == 0  # the two halves are the right channels


def test_image_grid_layouts():
    img = np.zeros((4, 4, 3), np.uint8)
    fig = plotting.image_grid([img, img, img], ["a", "b", "c"])
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    fig = plotting.image_grid([[img, img], [img, None]], ["x", "y"], row_labels=["r1", "r2"])
    assert len(fig.axes) == 4 and sum(bool(ax.images) for ax in fig.axes) == 3
    assert fig.axes[0].get_title() == "x" and fig.axes[2].get_title() == ""  # column titles on the first row
    with pytest.raises(ValueError):
        plotting.image_grid([])


def test_markdown_table():
    table = plotting.markdown_table([["a", 1234567, 0.123456]], ["name", "n", "x"])
    assert table.splitlines() == ["| name | n | x |", "|---|---|---|", "| a | 1,234,567 | 0.1235 |"]


def test_training_logs_are_read_and_missing_runs_named(tmp_path):
    (tmp_path / "run.csv").write_text("step,loss,perceptual\n25,0.5,\n50,0.25,\n")
    log = plotting.read_log(tmp_path / "run.csv")
    assert log["step"].tolist() == [25, 50] and log["loss"].tolist() == [0.5, 0.25]
    assert np.isnan(log["perceptual"]).all()
    fig = plotting.plot_training_logs(tmp_path, {"a": ["run", "absent"]})
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and "absent" in " ".join(t.get_text() for t in ax.texts)
    (tmp_path / "next.csv").write_text("step,loss\n25,0.2\n50,0.1\n")
    fig = plotting.plot_training_logs(tmp_path, {"chained": ["run", "next"]}, window=1, chain=["chained"])
    assert [line.get_xdata().tolist() for line in fig.axes[0].lines] == [[25, 50], [75, 100]]


def test_smooth_keeps_constants_and_length():
    y = np.full(7, 2.0)
    assert np.allclose(plotting.smooth(y, 3), y)
    assert plotting.smooth(np.arange(5.0), 4).shape == (5,)


def test_parameter_breakdown_full_size_on_meta():
    glide = plotting.parameter_breakdown(create_model("glide-base", device="meta"))
    assert sum(glide.values()) == 385_030_726  # the released GLIDE (filtered) base model
    assert glide["text transformer (GLIDE)"] > 0 and "condition encoder (PITI)" not in glide
    piti = plotting.parameter_breakdown(create_model("piti-base-mask", device="meta"))
    assert "text transformer (GLIDE)" not in piti and piti["condition encoder (PITI)"] > 0
    for part in ("UNet down", "UNet middle", "UNet up", "condition keys/values in attention (encoder_kv)"):
        assert piti[part] == glide[part]  # PITI keeps GLIDE's UNet
    fig = plotting.plot_parameter_breakdown({"glide": glide, "piti": piti})
    assert len(fig.axes[0].patches) == len(set(glide) | set(piti)) * 2


def test_trace_shapes_lists_blocks_with_their_output_shapes():
    model = create_model(
        "toy-piti-base-mask",
        image_size=32,
        num_channels=32,
        channel_mult=(1, 2),
        attention_resolutions=(16,),
        cond_size=32,
        encoder_cnn_channels=(8, 16, 128),
    ).eval()
    rows = plotting.trace_shapes(
        model, torch.randn(1, 3, 32, 32), torch.tensor([5.0]), ref=torch.randn(1, 3, 32, 32), depth=2
    )
    names = [r[0] for r in rows]
    shapes = {r[0]: r[2] for r in rows}
    assert shapes["decoder.out"] == (1, 6, 32, 32) and shapes["decoder"] == (1, 6, 32, 32)
    assert shapes["encoder"] == {"xf_proj": (1, 128), "xf_out": (1, 128, 64)}
    assert "decoder.input_blocks.1" in names and "decoder.input_blocks.1.0" not in names
    assert names.index("encoder") < names.index("decoder.out")  # call order
    kinds = {r[0]: r[1] for r in rows}
    assert "AttentionBlock" in kinds["decoder.middle_block"]
    assert not model.encoder._forward_hooks  # hooks removed


def test_plot_schedules_marks_the_respaced_steps():
    fig = plotting.plot_schedules({"fast27": ("linear", "fast27"), "ten": ("squaredcos_cap_v2", "10")})
    scatters = fig.axes[1].collections
    assert [len(c.get_offsets()) for c in scatters] == [27, 10]


def test_guidance_trace_normalized_keeps_the_conditional_statistics(mask_pipe):
    cond = torch.rand(3, 32, 32) * 2 - 1
    images, trace = plotting.guidance_trace(mask_pipe, cond, guidance=3.0, steps="4", num_samples=2)
    assert images.shape == (2, 3, 32, 32)
    assert len(trace["t"]) == 4 and trace["t"][0] > trace["t"][-1]
    assert np.allclose(trace["normalized_std"], trace["cond_std"], rtol=1e-4)
    assert np.allclose(trace["normalized_mean"], trace["cond_mean"], atol=1e-5)
    assert not np.allclose(trace["plain_std"], trace["cond_std"], rtol=1e-3)
    assert np.allclose(trace["normalized_analytic_mean"], trace["cond_mean"], atol=1e-5)
    fig = plotting.plot_guidance_trace(trace)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == len(plotting.GUIDANCE_SERIES)
    with pytest.raises(ValueError):
        plotting.guidance_trace(mask_pipe, cond, guidance=0.0)
    with pytest.raises(ValueError):
        plotting.guidance_trace(mask_pipe, torch.zeros(3, 16, 16), guidance=1.0)


def test_guidance_trace_runs_the_sampler_it_traces(mask_pipe):
    cond = torch.rand(3, 32, 32) * 2 - 1
    a, _ = plotting.guidance_trace(mask_pipe, cond, guidance=2.0, guidance_mode="plain", steps="3", seed=1)
    b, _ = plotting.guidance_trace(mask_pipe, cond, guidance=2.0, guidance_mode="normalized", steps="3", seed=1)
    again, _ = plotting.guidance_trace(mask_pipe, cond, guidance=2.0, guidance_mode="plain", steps="3", seed=1)
    assert torch.equal(a, again) and not torch.equal(a, b)


def test_upsample_images_shapes_and_start(mask_pipe):
    cond = torch.rand(3, 32, 32) * 2 - 1
    low = torch.rand(2, 3, 32, 32) * 2 - 1
    out = plotting.upsample_images(mask_pipe, cond, low, steps="2", start=1.0)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    near = plotting.upsample_images(mask_pipe, cond, low, steps="2", start=0.05)
    enlarged = torch.nn.functional.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert (near - enlarged).abs().mean() < (out - enlarged).abs().mean()  # started from the noised enlargement


def test_text_to_image_on_a_tiny_glide():
    from piti.data.tokenizer import WordTokenizer

    model = create_model(
        "toy-glide-base",
        image_size=16,
        num_channels=32,
        channel_mult=(1, 2),
        attention_resolutions=(8,),
        xf_width=32,
        xf_layers=1,
        xf_heads=2,
        text_ctx=8,
    )
    tok = WordTokenizer.from_captions(["a boat on the sea", "a house"])
    out = plotting.text_to_image(model, tok, ["a boat", "a house"], guidance=2.0, steps="3")
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_toy_glide_checkpoint_found_or_explained():
    path = plotting.toy_glide_checkpoint("base")
    if path is None:  # not a git checkout with the history: the message says how to get it
        assert plotting.TOY_GLIDE_COMMIT in plotting.toy_glide_missing_message("base")
    else:
        assert path.is_file() and path.stat().st_size > 1_000_000


def test_train_steps_and_gradient_report_show_the_frozen_decoder(tmp_path):
    from piti.train.loop import Trainer

    init = tmp_path / "init.safetensors"
    model = create_model("toy-piti-base-mask", **tiny_model_overrides("encoder"))
    with torch.no_grad():  # a "pretrained" decoder: the zero-initialised output layers would stop every gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    save_checkpoint(init, model)
    trainer = Trainer(tiny_config(tmp_path, "encoder", init=str(init), iterations=2))
    before = [p.clone() for p in trainer.model.decoder.parameters()]
    log = plotting.train_steps(trainer, 2)
    assert log["step"] == [1, 2] and len(log["loss"]) == 2 and trainer.step == 2
    rows = {r[0]: r for r in plotting.gradient_report(trainer.model)}
    assert rows["decoder"][2] == 0 and rows["decoder"][3] == 0  # nothing trainable, no gradient
    assert rows["encoder"][3] == rows["encoder"][1] and rows["encoder"][4] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.decoder.parameters()))
    assert not (tmp_path / "encoder").exists()  # no files written
