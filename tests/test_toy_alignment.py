"""The toy alignment check (piti.evaluation.alignment, eval/toy_alignment.py), the diagnostics
(piti.evaluation.diagnostics, eval/x0_error.py, eval/condition_probe.py) and eval/export_toy.py, on tiny
random-weight models.

A PLUMBING test: the models are tiny and random, so the mIoU and FID-T values mean nothing here; the
tests check that the code runs end to end, writes every field and the grids, builds conditions as the
training data does, fails clearly on missing files, and that fp16 exports load into the pipeline. The
scripts' command lines are run as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from piti.data.datasets import SynthDataset
from piti.errors import ConfigError
from piti.evaluation import alignment, diagnostics
from piti.evaluation.scenes import HELDOUT_STREAM, heldout_examples
from piti.evaluation.segmenter import Segmenter, SegmenterConfig, load_segmenter, save_segmenter
from piti.pipeline import PITIPipeline
from piti.settings import TOY_RECIPE

from conftest import tiny_checkpoints

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    """``python eval/NAME.py ARGS`` from the repository root, one thread, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "eval" / f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    """A small random segmenter (the judge's plumbing, not its quality)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "seg.safetensors"
    save_segmenter(path, Segmenter(SegmenterConfig(widths=(4, 8, 8, 8), feature_dim=6)))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {
        task: tiny_checkpoints(task, folder, sampling={"palette": "synth", "guidance": 0.5})
        for task in ("mask", "depth")
    }


def test_script_end_to_end_writes_json_and_grid(ckpts, segmenter_file, tmp_path):
    out = tmp_path / "alignment.json"
    base, up = ckpts["mask"]
    r = run_script(
        "toy_alignment",
        "--tasks",
        "mask",
        "--base",
        base,
        "--upsampler",
        up,
        "--num",
        "2",
        "--steps",
        "2",
        "--upsample-steps",
        "2",
        "--segmenter",
        segmenter_file,
        "--out",
        out,
        "--threads",
        "1",
        "--upsampler-ceiling",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert set(report["tasks"]["mask"]["upsampler_ceiling"]) >= {"bicubic", "upsampler"}
    assert "upsampler on real base images" in r.stdout
    assert "Inception" in report["fid_t"] and report["num"] == 2
    r_mask = report["tasks"]["mask"]
    check_result(r_mask)
    # the settings asked for, the checkpoint's recommended guidance, and (the header has none) the profile's
    # guidance mode: no flag given, nothing forced
    assert r_mask["settings"]["guidance_mode"] == "plain" and r_mask["settings"]["guidance"] == 0.5
    assert r_mask["settings"]["steps"] == "2" and r_mask["settings"]["upsample_steps"] == "2"
    assert "mask" in r.stdout


def check_result(r):
    assert r["size"] == 64 and r["at_base_size"]["size"] == 32  # tiny upsampler 32 -> 64
    for row in (r, r["at_base_size"]):
        assert 0 <= row["miou_generated"] <= 1 and 0 < row["miou_real"] <= 1 and row["fid_t"] >= 0
        assert row["miou_ratio"] == pytest.approx(row["miou_generated"] / row["miou_real"])
        assert len(row["iou_per_class"]) == 10
    assert r["seconds_per_image"] > 0 and r["base_seconds_per_image"] > 0 and r["upsample_seconds_per_image"] > 0
    assert r["redraws_per_sample"] == 0  # no redraw_threshold
    grid = Image.open(r["grid"])
    assert grid.width > 3 * 64 and grid.height > 2 * 64  # three columns, two scenes


def test_evaluate_toy_task_on_depth(ckpts, segmenter_file, tmp_path):
    pipe = PITIPipeline.from_checkpoints(*ckpts["depth"], precision="fp32")
    r = alignment.evaluate_toy_task(
        "depth",
        pipe,
        load_segmenter(segmenter_file),
        num=2,
        settings=dict(steps="2", upsample_steps="2"),
        grid=tmp_path / "g.png",
    )
    check_result(r)
    assert r["settings"]["guidance"] == 0.5  # the checkpoint's recommendation


def test_samples_drawn_together_are_judged_one_per_scene(ckpts):
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32")
    settings = dict(steps="2", upsample_steps="2", particle_guidance=1.0, particle_guidance_tmin=0.0)
    data = alignment.sample_heldout(pipe, "mask", 3, 5, seed=4, settings=settings, samples_per_call=2)
    for i, cond in enumerate(data["cond"]):  # scene i: sample i mod 2 of its own call of two
        out = pipe(cond, num_samples=2, seed=4 + i, progress=False, **settings)
        assert np.array_equal(data["generated"][i], np.asarray(out.images[i % 2]))
        assert np.array_equal(data["base_images"][i], np.asarray(out.base_images[i % 2]))
    assert data["redraws"] == [0] * 6  # every sample of the three calls, none redrawn
    with pytest.raises(ConfigError, match="samples_per_call"):
        alignment.sample_heldout(pipe, "mask", 2, samples_per_call=0)


def test_depth_is_also_judged_by_distance():
    data = heldout_examples("depth", 2, 0, 64, 64, depth=True)
    other = heldout_examples("depth", 2, 10, 64, 64)["real"]
    r = alignment.toy_control("depth", {**data, "generated": other})
    bands = r["by_distance"]
    assert len(bands["generated"]) == len(bands["real"]) == 5
    for side in bands.values():
        assert sum(b["pixel_share"] for b in side) == pytest.approx(1.0)
        assert sum(b["error_share"] for b in side) == pytest.approx(1.0)


def test_depth_names_the_scenes_that_hold_its_error():
    data = heldout_examples("depth", 3, 0, 64, 64, depth=True)
    generated = data["real"].copy()
    generated[1] = 255 - generated[1]  # one scene spoiled: it must head the list with most of the error
    r = alignment.toy_control("depth", {**data, "generated": generated})
    worst = r["worst_scenes"]
    assert [w["index"] for w in worst][0] == 1 and len(worst) == 3
    assert worst[0]["error_share"] > 0.5 > worst[0]["error_share_real"]
    assert sum(w["error_share"] for w in worst) == pytest.approx(1.0)
    assert sum(w["error_share_real"] for w in worst) == pytest.approx(1.0)
    # per scene: the unspoiled scenes score as the real images (ratio 1), so the median ignores the spoiled one
    rmse = np.array(r["scene_rmse"])
    assert rmse.shape == (3, 2) and np.allclose(rmse[[0, 2], 0], rmse[[0, 2], 1]) and rmse[1, 0] > rmse[1, 1]
    assert r["scene_ratio_median"] == pytest.approx(1.0) and r["ratio"] < 1


def test_upsampler_ceiling_judges_the_real_base_images(ckpts):
    seg = load_segmenter()  # the shipped judge, so that a random upsampler's images score visibly worse
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision="fp32")
    r = alignment.evaluate_upsampler_ceiling("mask", pipe, 2, settings=dict(upsample_steps="2"), segmenter=seg)
    assert r["size"] == 64 and r["base_size"] == 32 and r["num"] == 2
    data = heldout_examples("mask", 2, 0, 64, 64, 32)
    low = torch.from_numpy(data["real_base"]).permute(0, 3, 1, 2).float()
    enlarged = torch.nn.functional.interpolate(low / 127.5 - 1, size=(64, 64), mode="bicubic", align_corners=False)
    by_hand = ((enlarged.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert r["bicubic"] == alignment.toy_control("mask", {**data, "generated": by_hand}, seg)
    # the tiny random-weight upsampler loses against plain enlargement
    assert r["upsampler"]["measure"] == "mIoU" and 0 <= r["upsampler"]["ratio"] < r["bicubic"]["ratio"]
    with pytest.raises(ConfigError, match="needs a pipeline with an upsampler"):
        alignment.evaluate_upsampler_ceiling("mask", PITIPipeline.from_checkpoints(ckpts["mask"][0]), 2)


def test_upsampler_ceiling_loads_the_depth_estimator_once(ckpts, monkeypatch):
    from piti.evaluation import depth_estimator

    loads = []
    real_load = depth_estimator.load_depth_estimator
    monkeypatch.setattr(depth_estimator, "load_depth_estimator", lambda *a: loads.append(a) or real_load(*a))
    pipe = PITIPipeline.from_checkpoints(*ckpts["depth"], precision="fp32")
    r = alignment.evaluate_upsampler_ceiling("depth", pipe, 2, settings=dict(upsample_steps="2"))
    assert len(loads) == 1
    assert r["bicubic"]["measure"] == r["upsampler"]["measure"] == "depth RMSE"
    assert r["bicubic"]["real"] == r["upsampler"]["real"]  # the same estimator on the same real images


@pytest.mark.parametrize("task", ["mask", "sketch", "depth"])
def test_each_task_is_judged_by_its_own_measure(task):
    data = heldout_examples(task, 3, 0, 64, 64, depth=task == "depth")
    seg = load_segmenter()  # the shipped judges (the depth estimator is loaded by toy_control itself)
    # the real images judged as if generated: as faithful as the real images
    same = alignment.toy_control(task, {**data, "generated": data["real"]}, seg)
    assert same["measure"] == alignment.CONTROL_MEASURES[task] and same["ratio"] == pytest.approx(1.0)
    assert same["ratio_interval"] == pytest.approx([1.0, 1.0])  # every resampling of the scenes reads 1
    # other scenes' real images follow these conditions less
    other = heldout_examples(task, 3, 10, 64, 64)["real"]
    worse = alignment.toy_control(task, {**data, "generated": other}, seg)
    assert worse["real"] == same["real"] and worse["ratio"] < 1
    lo, hi = worse["ratio_interval"]
    assert 0 <= lo < hi < 1 + 1e-9  # three scenes resolve little, but none of them follows the others' condition
    assert alignment.interval_text(worse["ratio_interval"]) == f"{lo:.2f}-{hi:.2f}"
    if task == "sketch":
        assert same["real"] > 0.9  # the synthetic sketch is the Canny edges of the image itself


def test_variety_check_compares_with_the_official_noise(segmenter_file):
    pipe = PITIPipeline.from_checkpoints(task="mask", precision="fp32")  # the embedded model: a trained one
    seg = load_segmenter(segmenter_file)
    # not the header's settings
    settings = dict(
        sampler="ddpm", steps="6", noise_scale=1.0, reward_guidance=0.0, guidance_tmax=1.0, skip_terminal=False
    )
    wide = alignment.evaluate_toy_diversity("mask", pipe, seg, 2, 3, upsample=False, settings=settings)
    assert wide["samples"] == 3 and wide["size"] == 64
    assert wide["features_ratio"] == pytest.approx(1.0) and wide["pixel_l1_ratio"] == pytest.approx(1.0)
    assert wide["features_ratio_interval"] == pytest.approx([1.0, 1.0])
    assert len(wide["recommended"]["features_per_condition"]) == 2
    narrow = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "noise_scale": 0.0}
    )
    assert narrow["official_noise"] == wide["official_noise"]  # the reference: the same seeds at noise 1
    assert narrow["pixel_l1_ratio"] < 1 and narrow["features_ratio"] < 1
    lo, hi = narrow["features_ratio_interval"]  # two conditions: the bounds are each one's own ratio
    assert lo < narrow["features_ratio"] < hi
    # a deterministic sampler is compared with the official ancestral sampler too, not with itself
    ddim = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "sampler": "ddim"}
    )
    assert ddim["official_noise"] == wide["official_noise"] and ddim["features_ratio"] != 1
    # ... and condition annealing is measured against the sampler without it
    annealed = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "cond_noise": 1.0}
    )
    assert annealed["official_noise"] == wide["official_noise"] and annealed["recommended"] != wide["recommended"]
    # ... and so is reward guidance
    rewarded = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "reward_guidance": 0.15}
    )
    assert rewarded["official_noise"] == wide["official_noise"] and rewarded["recommended"] != wide["recommended"]
    # ... and a guidance interval
    interval = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "guidance_tmax": 0.5}
    )
    assert interval["official_noise"] == wide["official_noise"] and interval["recommended"] != wide["recommended"]
    # ... and particle guidance between the samples of a call
    pushed = alignment.evaluate_toy_diversity(
        "mask", pipe, seg, 2, 3, upsample=False, settings={**settings, "particle_guidance": 0.5}
    )
    assert pushed["official_noise"] == wide["official_noise"] and pushed["recommended"] != wide["recommended"]
    with pytest.raises(ConfigError, match="at least 2"):
        alignment.evaluate_toy_diversity("mask", pipe, seg, 2, 1, upsample=False, settings=settings)


def test_feature_diversity_is_zero_for_copies_and_grows_with_difference(segmenter_file):
    from piti.evaluation.diversity import feature_diversity

    seg = load_segmenter(segmenter_file)
    real = heldout_examples("mask", 3, 0, 64, 64)["real"]
    assert feature_diversity([np.stack([real[0]] * 3)], seg) == pytest.approx(0.0, abs=1e-6)
    noisy = np.clip(real[0].astype(int) + np.random.default_rng(0).integers(-20, 21, real[0].shape), 0, 255)
    near = feature_diversity([np.stack([real[0], noisy.astype(np.uint8)])], seg)
    far = feature_diversity([real], seg)
    assert 0 < near < far


def test_conditions_are_the_training_datas(segmenter_file):
    """The held-out conditions and images are SynthDataset's own, for scenes (HELDOUT_STREAM, i)."""
    data = heldout_examples("sketch", 2, 3, size=64, cond_size=32, base_size=32, depth=True)
    ds = SynthDataset(length=10, task="sketch", seed=HELDOUT_STREAM, image_size=64, cond_size=32, flip=False)
    for j in range(2):
        item = ds[3 + j]
        assert torch.equal(data["cond"][j], item["cond"])
        real = torch.from_numpy(data["real"][j]).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(real, item["image"], atol=1e-6)
    assert data["labels"].shape == (2, 64, 64) and data["labels_base"].shape == (2, 32, 32)
    assert data["real_base"].shape == (2, 32, 32, 3)
    assert data["depth"].shape == (2, 64, 64) and data["depth"].max() > 0 and (data["depth"] == 0).any()  # sky: 0
    assert not np.array_equal(data["labels"][0], data["labels"][1])  # two different scenes


class _FixedSegmenter:
    """Predicts the labels it was given, with every pixel of class 1 read as class 2 in the generated set."""

    class config:
        num_classes = 10

    def __init__(self, labels):
        self.labels = labels

    def predict(self, images):
        pred = self.labels.copy()
        if images[0, 0, 0, 0] == 1:  # the "generated" images
            pred[pred == 1] = 2
        return pred


def test_judge_reports_the_iou_of_each_class(monkeypatch):
    """Per-class IoU by hand: class 1 read as class 2 in the generated images gives IoU 0 for class 1,
    IoU 2/3 for class 2 (2 of its 3 predicted pixels are right), 1 for class 0, None for absent classes."""
    labels = np.array([[[0, 0], [1, 2]], [[0, 2], [0, 0]]], np.uint8)  # 5 x class 0, 1 x class 1, 2 x class 2
    real = np.zeros((2, 2, 2, 3), np.uint8)
    generated = real.copy() + 1
    scores = alignment.judge(_FixedSegmenter(labels), generated, real, labels, with_fid_t=False)
    per_class = scores["iou_per_class"]
    assert list(per_class)[:3] == ["sky", "sea", "sand"] and len(per_class) == 10
    assert per_class["sky"] == [1.0, 1.0] and per_class["sea"] == [0.0, 1.0]
    assert per_class["sand"][0] == pytest.approx(2 / 3) and per_class["sand"][1] == 1.0
    assert per_class["boat"] == [None, None]
    assert scores["miou_generated"] == pytest.approx((1 + 0 + 2 / 3) / 3) and scores["miou_real"] == 1.0


def test_missing_checkpoint_and_bad_arguments_are_clear_errors(ckpts, segmenter_file, tmp_path):
    missing = tmp_path / "nope-upsample.safetensors"
    r = run_script(
        "toy_alignment",
        "--tasks",
        "mask",
        "--base",
        ckpts["mask"][0],
        "--upsampler",
        missing,
        "--num",
        "2",
        "--segmenter",
        segmenter_file,
        "--out",
        tmp_path / "a.json",
    )
    assert r.returncode == 2 and "not found" in r.stderr and str(missing) in r.stderr
    assert not (tmp_path / "a.json").exists()
    # the embedded models' folder without them: every missing file named, before anything is sampled
    r = run_script("toy_alignment", "--models-dir", tmp_path, "--segmenter", segmenter_file)
    assert r.returncode == 2 and "make toy-models" in r.stderr
    assert all(
        str(tmp_path / f"piti-toy-{t}-{k}.safetensors") in r.stderr
        for t in ("mask", "sketch", "depth")
        for k in ("base", "upsample")
    )
    r = run_script("toy_alignment", "--tasks", "mask", "sketch", "--base", ckpts["mask"][0])
    assert r.returncode == 2 and "one --tasks" in r.stderr
    r = run_script("toy_alignment", "--tasks", "mask", "--no-upsample", "--upsampler-ceiling")
    assert r.returncode == 2 and "drop --no-upsample" in r.stderr
    r = run_script("toy_alignment", "--tasks", "mask", "--samples-per-call", "0")
    assert r.returncode == 2 and "--samples-per-call must be at least 1" in r.stderr


def test_fp16_export_loads_into_the_pipeline(ckpts, tmp_path):
    base, up = ckpts["mask"]
    r = run_script(
        "export_toy", "--task", "mask", "--base", base, "--upsampler", up, "--guidance", "1.5", "--out-dir", tmp_path
    )
    assert r.returncode == 0, r.stderr
    new_base, new_up = tmp_path / "piti-toy-mask-base.safetensors", tmp_path / "piti-toy-mask-upsample.safetensors"
    with safe_open(str(new_base), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert new_base.stat().st_size < 0.6 * base.stat().st_size

    pipe = PITIPipeline.from_checkpoints(new_base, new_up, precision="fp32")
    ref = PITIPipeline.from_checkpoints(base, up, precision="fp32")
    # the sampling header the pipeline reads: --guidance as given, the rest the recipe's defaults
    assert pipe.defaults.guidance == 1.5 and pipe.defaults.guidance_mode == "normalized"
    assert pipe.defaults.palette == "synth"
    assert pipe.defaults == TOY_RECIPE.replace(guidance=1.5)  # the recipe's other settings, unchanged
    assert pipe.base_model.checkpoint_metadata["stored_dtype"] == "float16"
    # weights widened to fp32, equal to the fp16-rounded originals
    for model, original in ((pipe.base_model, ref.base_model), (pipe.upsampler_model, ref.upsampler_model)):
        for (name, p), q in zip(model.state_dict().items(), original.state_dict().values()):
            assert p.dtype == q.dtype, name
            if p.is_floating_point():
                assert torch.equal(p, q.half().float()), name
    # exporting an exported file again (new settings) keeps its weights and the run it came from
    again = tmp_path / "again"
    assert (
        run_script(
            "export_toy",
            "--task",
            "mask",
            "--base",
            new_base,
            "--upsampler",
            new_up,
            "--guidance",
            "8",
            "--out-dir",
            again,
        ).returncode
        == 0
    )
    twice = PITIPipeline.from_checkpoints(again / new_base.name, again / new_up.name, precision="fp32")
    assert twice.defaults.guidance == 8 and twice.base_model.checkpoint_metadata["exported_from"] == str(base)
    assert all(
        torch.equal(p, q) for p, q in zip(twice.base_model.state_dict().values(), pipe.base_model.state_dict().values())
    )
    # and the samples stay close to the fp32 model's (same seed)
    cond = heldout_examples("mask", 1, 0, size=64, cond_size=32)["cond"][0]
    a = np.asarray(pipe(cond, seed=0, steps="2", upsample_steps="2", progress=False).images[0], np.int16)
    same = TOY_RECIPE.replace(steps="2", upsample_steps="2", guidance=1.5).to_dict()
    b = np.asarray(ref(cond, seed=0, progress=False, **same).images[0], np.int16)
    assert np.abs(a - b).mean() < 2.0


def test_export_names_the_class_model_of_particle_guidance(ckpts, tmp_path):
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    base, up = ckpts["depth"]
    flags = ["--task", "depth", "--base", base, "--upsampler", up, "--particle-guidance", "0.3"]
    classes = ["--particle-features", "classes", "--out-dir", tmp_path / "out"]
    r = run_script("export_toy", *flags, *classes, "--class-model", tmp_path / "gone.safetensors")
    assert r.returncode == 2 and "class model" in r.stderr and "gone.safetensors" in r.stderr
    save_reward_model(tmp_path / "c.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    r = run_script("export_toy", *flags, *classes, "--class-model", tmp_path / "c.safetensors")
    assert r.returncode == 0, r.stderr
    pipe = PITIPipeline.from_checkpoints(
        tmp_path / "out" / "piti-toy-depth-base.safetensors", precision="fp32"
    )  # named relative to the folder
    assert pipe.base_model.checkpoint_metadata["class_model"] == "../c.safetensors"
    assert pipe.class_model is not None and pipe.defaults.particle_guidance == 0.3


def test_export_checks_the_model_role(ckpts, tmp_path):
    base, up = ckpts["mask"]
    r = run_script("export_toy", "--task", "mask", "--base", up, "--upsampler", base, "--out-dir", tmp_path)
    assert r.returncode == 2 and "PITI base model" in r.stderr
    r = run_script("export_toy", "--task", "sketch", "--base", base, "--upsampler", up, "--out-dir", tmp_path)
    assert r.returncode == 2 and "task 'sketch'" in r.stderr


def test_x0_error_measures_the_conditions_influence_for_piti_and_glide(ckpts, tmp_path):
    """The diagnostic runs on PITI models (condition image) and GLIDE models (caption, with the tokenizer
    from the file), and its "other condition" column is exactly 0 for a network that cannot see it."""
    from piti.checkpoints import load_model, save_checkpoint
    from piti.data.tokenizer import WordTokenizer
    from piti.presets import create_model

    base = ckpts["mask"][0]
    r = run_script("x0_error", base, "--steps", "100", "900", "--num", "2")
    assert r.returncode == 0, r.stderr
    assert "2 held-out scenes" in r.stdout
    assert len([ln for ln in r.stdout.splitlines() if ln.strip().startswith(("100", "900"))]) == 2

    model = load_model(base).eval()
    errors = diagnostics.x0_errors(model, [100, 900], num=2)
    assert errors["scenes"] > 0.05 and all(errors[t][2] > 0 for t in (100, 900))
    with torch.no_grad():  # cut every path from the condition tokens into the decoder
        for name, p in model.decoder.named_parameters():
            if "encoder_kv" in name or "transformer_proj" in name:
                p.zero_()
    errors = diagnostics.x0_errors(model, [100, 900], num=2)
    assert all(errors[t][2] == 0 for t in (100, 900))

    torch.manual_seed(0)
    glide = create_model(
        "toy-glide-base",
        num_channels=32,
        num_res_blocks=1,
        channel_mult=[1, 2],
        attention_resolutions=[32],
        image_size=64,
        xf_width=64,
        xf_layers=1,
        xf_heads=2,
        text_ctx=24,
    )
    words = "a an and by the sea sky tree trees two three house boat under clear with".split()
    tok = WordTokenizer(words)
    errors = diagnostics.x0_errors(glide.eval(), [900], num=2, tokenizer=tok)
    assert errors[900][2] >= 0
    path = tmp_path / "glide.safetensors"
    save_checkpoint(path, glide, metadata={"tokenizer": tok.to_dict()})
    r = run_script("x0_error", path, "--steps", "900", "--num", "2")
    assert r.returncode == 0 and "x0 change, other condition" in r.stdout
    save_checkpoint(path, glide)
    r = run_script("x0_error", path, "--steps", "900", "--num", "2")
    assert r.returncode == 2 and "without its tokenizer" in r.stderr


def test_learned_variance_reads_the_interpolation_between_its_bounds(ckpts):
    """The row of one output is exact at the bounds (v = -1: the posterior's sigma; v = +1: sqrt(beta)) and
    halfway in log space at v = 0; the script prints one row per respaced step, noisiest first."""
    from piti.checkpoints import load_model
    from piti.diffusion import create_diffusion
    from piti.errors import PitiError

    diffusion = create_diffusion("squaredcos_cap_v2", 1000, "25")
    x_t = torch.zeros(2, 3, 8, 8)
    for index in (24, 12, 1):
        rows = {
            v: diagnostics.variance_row(diffusion, torch.cat([x_t, torch.full_like(x_t, v)], 1), x_t, index)
            for v in (-1.0, 0.0, 1.0)
        }
        upper = rows[1.0]["upper_ratio"]
        assert upper > 1.0 and rows[-1.0]["frac"] == 0.0 and rows[1.0]["frac"] == 1.0
        assert rows[-1.0]["sigma_ratio"] == pytest.approx(1.0, rel=1e-6)
        assert rows[1.0]["sigma_ratio"] == pytest.approx(upper, rel=1e-6)
        assert rows[0.0]["sigma_ratio"] == pytest.approx(upper**0.5, rel=1e-6)
    assert rows[0.0]["t"] == int(diffusion.timestep_map[1])
    with pytest.raises(PitiError, match="no learned variance"):
        diagnostics.variance_row(diffusion, x_t, x_t, 3)

    base = ckpts["mask"][0]
    rows = diagnostics.learned_variance(load_model(base).eval(), "10", num=2)
    assert [r["t"] for r in rows] == sorted((r["t"] for r in rows), reverse=True) and len(rows) == 10
    assert rows[0]["t"] == 999 and all(np.isfinite(r["sigma_ratio"]) for r in rows)
    r = run_script("x0_error", base, "--variance", "10", "--num", "2")
    assert r.returncode == 0, r.stderr
    assert "10 respaced steps" in r.stdout and len(r.stdout.splitlines()) == 12


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_x0_errors_feed_the_network_in_its_own_dtype(ckpts, precision):
    """A pipeline may cast its networks to bf16: the diagnostic gives them inputs of their dtype."""
    pipe = PITIPipeline.from_checkpoints(*ckpts["mask"], precision=precision)
    for model in (pipe.base_model, pipe.upsampler_model):
        errors = diagnostics.x0_errors(model, [50], num=2)
        assert np.isfinite(errors[50][0])


def test_condition_probe_trains_in_memory_and_reports_the_influence(ckpts):
    from piti.checkpoints import load_model

    base, up = ckpts["mask"]
    rows = list(diagnostics.probe(load_model(base).float(), steps=2, every=1, scenes=2))
    assert [r[0] for r in rows] == [0, 1, 2] and all(0 <= r[2] <= 2 for r in rows)
    assert rows[0][1:] != rows[2][1:]  # the model was trained between the measurements
    r = run_script("condition_probe", base, "--steps", "1", "--every", "1", "--scenes", "2")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4, r.stderr
    r = run_script("condition_probe", up, "--steps", "1")
    assert r.returncode == 2 and "PITI base model" in r.stderr


def test_export_names_the_colour_prior_and_class_model_of_the_colour_redraw(ckpts, tmp_path):
    from piti.train.colour_prior import load_colour_prior
    from piti.train.rewards import RewardConfig, RewardNet, save_reward_model

    base, up = ckpts["depth"]
    flags = ["--task", "depth", "--base", base, "--upsampler", up, "--redraw-colour-threshold", "25"]
    save_reward_model(tmp_path / "c.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    flags += ["--class-model", tmp_path / "c.safetensors", "--out-dir", tmp_path / "out"]
    r = run_script("export_toy", *flags, "--colour-prior", tmp_path / "gone.safetensors")
    assert r.returncode == 2 and "colour prior" in r.stderr and "fit_colour_prior" in r.stderr
    r = run_script(
        "fit_colour_prior",
        "--num",
        "4",
        "--check",
        "3",
        "--class-model",
        tmp_path / "c.safetensors",
        "--out",
        tmp_path / "p.safetensors",
    )
    assert r.returncode == 0, r.stderr
    assert "held-out real images (3)" in r.stdout
    assert "fit_colour_prior.py --num 4" in load_colour_prior(tmp_path / "p.safetensors").checkpoint_metadata["command"]
    r = run_script("export_toy", *flags, "--colour-prior", tmp_path / "p.safetensors")
    assert r.returncode == 0, r.stderr
    pipe = PITIPipeline.from_checkpoints(tmp_path / "out" / "piti-toy-depth-base.safetensors", precision="fp32")
    assert pipe.base_model.checkpoint_metadata["colour_prior"] == "../p.safetensors"
    assert pipe.colour_prior is not None and pipe.class_model is not None
    assert pipe.defaults.redraw_colour_threshold == 25
