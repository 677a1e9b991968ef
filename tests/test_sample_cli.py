"""``piti sample``: files written, settings recorded, and one clear line for every bad input.

Tiny random-weight checkpoints (see test_pipeline.py): this tests the command's plumbing, not image quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from piti.cli import main

from conftest import depth_metres, sketch_picture, synth_mask, tiny_checkpoints

FAST = ["--steps", "3", "--upsample-steps", "2", "--no-progress", "--precision", "fp32"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_cli")
    return {
        "mask": tiny_checkpoints("mask", folder, sampling={"palette": "synth"}),
        "sketch": tiny_checkpoints("sketch", folder),
    }


def sample_cmd(ckpts, task, cond, out, *extra):
    base, up = ckpts[task]
    return [
        "sample",
        "--task",
        task,
        "--cond",
        str(cond),
        "--out",
        str(out),
        "--base",
        str(base),
        "--upsampler",
        str(up),
        *FAST,
        *extra,
    ]


def one_clean_error(capsys, argv) -> str:
    """Run the command, expect exit status 1 and a single stderr line without a traceback."""
    capsys.readouterr()  # forget earlier output
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_cli_writes_pngs_and_settings(ckpts, tmp_path, capsys):
    cond = tmp_path / "labels.png"
    synth_mask().save(cond)
    out = tmp_path / "out"
    same = ["--num", "2", "--seed", "7", "--guidance", "1.5", "--guidance-mode", "normalized", "--sampler", "ddim"]
    same += ["--upsample-start", "0.5"]
    noise = ["--noise-scale", "0.7", "--upsample-noise-scale", "0.9"]
    assert main(sample_cmd(ckpts, "mask", cond, out, *same, *noise)) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["base-000.png", "base-001.png", "sample-000.png", "sample-001.png", "settings.json"]
    assert Image.open(out / "base-000.png").size == (32, 32) and Image.open(out / "sample-000.png").size == (64, 64)
    record = json.loads((out / "settings.json").read_text())
    s = record["settings"]
    assert (s["seed"], s["num_samples"], s["guidance"], s["guidance_mode"], s["sampler"]) == (
        7,
        2,
        1.5,
        "normalized",
        "ddim",
    )
    assert s["upsample_sampler"] == "dpmpp" and s["palette"] == "synth" and s["precision"] == "fp32"
    assert s["upsample_start"] == 0.5 and (s["noise_scale"], s["upsample_noise_scale"]) == (0.7, 0.9)
    assert record["condition"] == str(cond) and "torch" in record["versions"]
    assert any("resized" in n for n in record["notes"])  # 48x40 -> 32x32
    assert "wrote 2 sample(s)" in capsys.readouterr().out

    # same seed, same pixels
    again = tmp_path / "again"
    assert main(sample_cmd(ckpts, "mask", cond, again, *same)) == 0
    for name in ("base-001.png", "sample-001.png"):
        assert (np.asarray(Image.open(out / name)) == np.asarray(Image.open(again / name))).all()


def test_cli_official_guidance_scale_and_bf16(ckpts, tmp_path):
    cond = tmp_path / "labels.png"
    synth_mask().save(cond)
    out = tmp_path / "s"
    assert main(sample_cmd(ckpts, "mask", cond, out, "--guidance-scale", "2.5", "--precision", "bf16")) == 0
    s = json.loads((out / "settings.json").read_text())["settings"]
    assert s["guidance"] == 1.5 and s["guidance_scale_official"] == 2.5 and s["precision"] == "bf16"


def test_cli_reward_guidance_needs_and_takes_a_reward_model(ckpts, tmp_path, capsys):
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    cond, out, reward = tmp_path / "labels.png", tmp_path / "r", tmp_path / "mask-reward.safetensors"
    synth_mask().save(cond)
    err = one_clean_error(capsys, sample_cmd(ckpts, "mask", cond, out, "--reward-guidance", "0.1"))
    assert "needs a reward model" in err
    save_reward_model(reward, RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    argv = sample_cmd(ckpts, "mask", cond, out, "--reward-guidance", "0.1", "--reward-model", str(reward))
    assert main(argv) == 0
    s = json.loads((out / "settings.json").read_text())["settings"]
    assert s["reward_guidance"] == 0.1 and s["reward_checkpoint"] == str(reward)
    capsys.readouterr()
    argv = sample_cmd(ckpts, "mask", cond, out, "--redraw-threshold", "1e-9", "--reward-model", str(reward))
    assert main(argv) == 0  # every sample disagrees by more than 1e-9: each drawn again, and the CLI says so
    assert "1 base sample(s) drawn again (redraw_threshold, redraw_colour_threshold)" in capsys.readouterr().out
    assert json.loads((out / "settings.json").read_text())["settings"]["redraws"] == [3]
    assert main(argv + ["--redraw-early-t", "0.5"]) == 0  # rejected midway too: 3 restarts of each of 4 draws
    assert "12 draw(s) restarted midway (redraw_early_t)" in capsys.readouterr().out


def test_cli_no_upsample_and_sketch_from_photo(ckpts, tmp_path):
    photo = tmp_path / "photo.png"
    yy, xx = np.mgrid[0:48, 0:48]
    img = Image.fromarray(np.stack([xx * 5, yy * 5, (xx + yy) * 2], -1).astype(np.uint8))
    img.paste((250, 250, 250), (10, 10, 30, 30))
    img.save(photo)
    out = tmp_path / "sk"
    assert main(sample_cmd(ckpts, "sketch", photo, out, "--no-upsample", "--sketch-from-photo")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["base-000.png", "sample-000.png", "settings.json"]
    assert Image.open(out / "sample-000.png").size == (32, 32)
    assert json.loads((out / "settings.json").read_text())["settings"]["sketch_from_photo"] is True


def test_cli_notes_for_alpha_and_huge_images(ckpts, tmp_path, capsys):
    rgba = tmp_path / "alpha.png"
    synth_mask().convert("RGBA").save(rgba)
    assert main(sample_cmd(ckpts, "mask", rgba, tmp_path / "a", "--no-upsample")) == 0
    assert "alpha channel" in capsys.readouterr().err
    huge = tmp_path / "huge.png"
    synth_mask(1500, 2500).save(huge)
    assert main(sample_cmd(ckpts, "mask", huge, tmp_path / "h", "--no-upsample")) == 0
    err = capsys.readouterr().err
    assert "large image (2500x1500)" in err and "Traceback" not in err


def test_cli_bad_inputs_give_one_line(ckpts, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    black = tmp_path / "black.png"
    Image.new("RGB", (40, 40)).save(black)
    blank_sketch = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank_sketch)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    sketch = tmp_path / "sketch.png"
    sketch_picture().save(sketch)

    assert "not in the 'synth' palette" in one_clean_error(capsys, sample_cmd(ckpts, "mask", photo, tmp_path / "o"))
    assert "empty" in one_clean_error(capsys, sample_cmd(ckpts, "mask", black, tmp_path / "o"))
    assert "no lines" in one_clean_error(capsys, sample_cmd(ckpts, "sketch", blank_sketch, tmp_path / "o"))
    assert "--sketch-from-photo" in one_clean_error(capsys, sample_cmd(ckpts, "sketch", photo, tmp_path / "o"))
    assert "broken.png" in one_clean_error(capsys, sample_cmd(ckpts, "mask", broken, tmp_path / "o"))
    assert "not found" in one_clean_error(capsys, sample_cmd(ckpts, "mask", tmp_path / "nope.png", tmp_path / "o"))
    # a sketch checkpoint asked to do the mask task, then a missing one

    def with_base(base):
        return [
            "sample",
            "--task",
            "mask",
            "--cond",
            str(sketch),
            "--out",
            str(tmp_path / "o"),
            "--base",
            str(base),
            *FAST,
        ]

    argv = with_base(ckpts["sketch"][0])
    assert "sketch-to-image model" in one_clean_error(capsys, argv)
    argv = with_base(tmp_path / "missing.safetensors")
    assert "checkpoint file not found" in one_clean_error(capsys, argv)
    fp16 = sample_cmd(ckpts, "mask", black, tmp_path / "o")[:-1] + ["fp16"]  # replaces --precision fp32
    assert "fp16 needs a CUDA GPU" in one_clean_error(capsys, fp16)
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_cli_missing_embedded_models(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("piti.pipeline.TOY_CHECKPOINT_DIR", tmp_path / "toy")
    cond = tmp_path / "sketch.png"
    sketch_picture().save(cond)
    err = one_clean_error(capsys, ["sample", "--task", "sketch", "--cond", str(cond), "--out", str(tmp_path / "o")])
    assert "make toy-models" in err


def test_cli_depth_takes_metres_or_a_visualisation_pair(tmp_path, capsys, ckpts):
    folder = tmp_path / "ck"
    folder.mkdir()
    base, _ = tiny_checkpoints("depth", folder)
    npy = tmp_path / "depth.npy"
    np.save(npy, depth_metres())
    argv = ["sample", "--task", "depth", "--cond", str(npy), "--out", str(tmp_path / "d"), "--base", str(base), *FAST]
    assert main(argv) == 0
    normal, depth = tmp_path / "normal.png", tmp_path / "depth_viz.png"
    Image.new("RGB", (40, 40), (128, 128, 255)).save(normal)
    Image.fromarray(np.linspace(0, 255, 40 * 40 * 3).astype(np.uint8).reshape(40, 40, 3)).save(depth)
    argv = [
        "sample",
        "--task",
        "depth",
        "--cond",
        str(normal),
        str(depth),
        "--out",
        str(tmp_path / "p"),
        "--base",
        str(base),
        *FAST,
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "p" / "settings.json").read_text())["condition"] == f"{normal} + {depth}"
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (30, 90, 200)).save(photo)
    argv[argv.index("--cond") + 1 : argv.index("--out")] = [str(photo)]
    assert "not a depth map" in one_clean_error(capsys, argv)
