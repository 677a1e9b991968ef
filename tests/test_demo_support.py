"""What the demo app computes (piti.demo_support) and the Hub loader (piti.hub), without gradio."""

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

from piti import demo_support as ds
from piti.data.palettes import COCO_STUFF_CLASSES, PALETTES, SYNTH_PALETTE
from piti.errors import ConditionError, ConfigError
from piti.pipeline import PITIPipeline
from piti.settings import setting_specs

from conftest import depth_metres, sketch_picture, synth_mask, tiny_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")
SKY, GRASS, HOUSE = (int(v) for v in (0, 3, 7))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {
        task: tiny_checkpoints(task, folder, sampling={"palette": "synth", "guidance": 2.5})
        for task in ("mask", "sketch", "depth")
    }


@pytest.fixture(scope="module")
def pipes(ckpts):
    return {task: PITIPipeline.from_checkpoints(*paths, precision="fp32") for task, paths in ckpts.items()}


# --------------------------------------------------------------------------------------------------
# Palette, brush, legend


def test_brush_colors_are_the_classes_then_black():
    colors = ds.brush_colors("synth")
    assert len(colors) == len(SYNTH_PALETTE) + 1 and colors[-1] == "#000000"
    assert colors[0] == "#" + "".join(f"{v:02x}" for v in SYNTH_PALETTE[0])
    assert len(ds.brush_colors("coco-stuff")) == len(PALETTES["coco-stuff"][0]) + 1


@pytest.mark.parametrize("palette", list(PALETTES))
def test_legend_shows_every_class_colour(palette):
    legend = np.asarray(ds.palette_legend(palette, columns=4))
    colors = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    assert all(tuple(int(v) for v in c) in colors for c in PALETTES[palette][0])  # each swatch is drawn
    assert (0, 0, 0) in colors  # and the unlabelled one
    one_column = ds.palette_legend(palette)
    assert one_column.height > 3 * legend.shape[0] and one_column.width < legend.shape[1] / 3


def test_snap_colors_snaps_near_colours_and_leaves_a_foreign_picture():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:5] = SYNTH_PALETTE[SKY]
    rgb[5:] = SYNTH_PALETTE[GRASS]
    rgb[0, :3] = SYNTH_PALETTE[SKY] - 4  # antialiasing rounding: within the snap distance
    out, changed = ds.snap_colors(rgb, "synth")
    assert changed == 3 and (out[0, :3] == SYNTH_PALETTE[SKY]).all() and (out[5:] == SYNTH_PALETTE[GRASS]).all()
    # one far colour on 1 % of the pixels (a seam between strokes) is snapped to the nearest class
    rgb[9, 9] = (200, 200, 200)
    out, changed = ds.snap_colors(rgb, "synth")
    assert changed == 4 and tuple(out[9, 9]) in {tuple(c) for c in SYNTH_PALETTE.tolist()}
    # a picture mostly in other colours is left for the pipeline to reject
    white = np.full((10, 10, 3), 255, np.uint8)
    out, changed = ds.snap_colors(white, "synth")
    assert changed == 0 and (out == 255).all()


def test_canvas_layers_cover_the_background_without_blending():
    background = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent: unlabelled
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[:8, :, :3] = SYNTH_PALETTE[SKY]
    layer[:8, :, 3] = 255
    layer[8, :, :3] = SYNTH_PALETTE[GRASS] + 3  # an edge row, half transparent, colour off by rounding
    layer[8, :, 3] = 140
    layer[9, :, :3], layer[9, :, 3] = SYNTH_PALETTE[HOUSE], 60  # mostly transparent: not a stroke
    value = {"background": background, "layers": [Image.fromarray(layer)], "composite": None}
    colormap, notes = ds.canvas_to_colormap(value, "synth")
    arr = np.asarray(colormap)
    assert (arr[:8] == SYNTH_PALETTE[SKY]).all() and (arr[8] == SYNTH_PALETTE[GRASS]).all()
    assert (arr[9:] == 0).all()
    assert len(notes) == 1 and "16 pixels" in notes[0]


def test_canvas_without_layers_uses_the_composite_or_says_it_is_empty():
    picture = synth_mask()
    colormap, notes = ds.canvas_to_colormap({"background": None, "layers": [], "composite": picture}, "synth")
    assert np.array_equal(np.asarray(colormap), np.asarray(picture)) and notes == []
    for empty in (None, {"background": None, "layers": [], "composite": None}):
        with pytest.raises(ConditionError, match="canvas is empty"):
            ds.canvas_to_colormap(empty, "synth")


def test_editor_image_composites_layers_when_no_composite_is_sent():
    bg = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    stroke = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    stroke.putpixel((2, 3), (255, 255, 255, 255))
    out = ds.editor_image({"background": bg, "layers": [stroke], "composite": None})
    assert out.mode == "RGBA" and out.getpixel((2, 3)) == (255, 255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 0, 255)
    with pytest.raises(ConditionError, match="sketch pad is empty"):
        ds.editor_image(None, "sketch pad")


# --------------------------------------------------------------------------------------------------
# Uploads and examples


def test_open_upload_reads_depth_and_names_bad_files(tmp_path):
    depth = np.round(depth_metres() * 256).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", depth_metres())
    png, name = ds.open_upload(tmp_path / "d.png")
    assert name == "d.png" and np.array_equal(np.asarray(png), depth)  # 16 bits kept
    arr, _ = ds.open_upload(tmp_path / "d.npy")
    assert arr.dtype == np.float32 and arr.shape == depth.shape
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(ConditionError, match=r"^text.png: not a readable image"):
        ds.open_upload(tmp_path / "text.png")
    with pytest.raises(ConditionError, match="expected a .png or .npy file"):
        ds.open_upload(tmp_path / "x.txt")
    with pytest.raises(ConditionError, match="no file was uploaded"):
        ds.open_upload(None)


@pytest.mark.parametrize("palette", ["synth", "coco-stuff", "ade20k"])
def test_example_scenes_are_valid_conditions_in_each_palette(tmp_path, palette):
    from piti.data.conditions import condition_tensor

    scenes = ds.write_examples(tmp_path, 2, 64, palette)
    assert len(scenes) == 2 and scenes[0].seed == (7, 0)
    for s in scenes:
        for task, path in (("mask", s.colormap), ("sketch", s.sketch), ("depth", s.depth)):
            cond, _ = condition_tensor(task, path, 64, palette)  # strict: no colour outside the palette
            assert cond.shape[-1] == 64
        assert Image.open(s.depth).mode.startswith("I")  # 16-bit depth
        assert Image.open(s.photo).size == (64, 64)
    sky = COCO_STUFF_CLASSES.index("sky-other")
    if palette == "coco-stuff":  # the synthetic sky is COCO-Stuff's sky-other
        top = np.asarray(Image.open(scenes[0].colormap))[0, 0]
        assert tuple(top) == tuple(PALETTES["coco-stuff"][0][sky])


def test_random_scenes_differ(tmp_path):
    a, b = (ds.random_scene_files(tmp_path, 32, "synth") for _ in range(2))
    assert a.seed != b.seed and a.colormap.is_file() and b.depth.is_file()


# --------------------------------------------------------------------------------------------------
# Controls and a request


def test_controls_come_from_the_settings_and_the_checkpoint(pipes):
    specs = ds.control_specs()
    assert specs["sampler"]["choices"] == list(setting_specs()["sampler"].choices)
    assert specs["guidance_mode"]["choices"] == list(setting_specs()["guidance_mode"].choices)
    assert specs["guidance"]["minimum"] == 0 and specs["guidance"]["maximum"] == ds.GUIDANCE_UI_MAX
    assert specs["num_samples"] == dict(minimum=1, maximum=4)
    values = ds.control_values(pipes["mask"])
    assert values["guidance"] == 2.5  # the checkpoint's recommendation
    assert values["sampler"] == pipes["mask"].defaults.sampler and values["steps"] == int(pipes["mask"].defaults.steps)
    assert values["upsample"] is True


@pytest.mark.parametrize("task", ["mask", "sketch", "depth"])
def test_translate_returns_images_condition_and_settings(pipes, task):
    condition = {"mask": synth_mask, "sketch": sketch_picture, "depth": depth_metres}[task]()
    images, cond, record = ds.translate(
        pipes[task],
        condition,
        num_samples=2,
        seed=3,
        guidance=1.5,
        guidance_mode="normalized",
        sampler="ddim",
        steps=3,
        upsample=True,
        notes=["from the canvas"],
        progress=False,
        upsample_steps=2,
    )
    assert len(images) == 2 and images[0].size == (64, 64)
    assert cond.size == ((32, 32) if task == "mask" else (64, 32))  # normals | depth, lines | distance map
    assert cond.mode == {"mask": "RGB", "sketch": "L", "depth": "RGB"}[task]
    s = record["settings"]
    used = (s["seed"], s["guidance"], s["guidance_mode"], s["sampler"], s["steps"])
    assert used == (3, 1.5, "normalized", "ddim", "3")
    assert record["notes"][0] == "from the canvas"
    json.dumps(record)
    # the same request again gives the same pixels
    again, _, _ = ds.translate(
        pipes[task],
        condition,
        num_samples=2,
        seed=3,
        guidance=1.5,
        guidance_mode="normalized",
        sampler="ddim",
        steps=3,
        upsample=True,
        progress=False,
        upsample_steps=2,
    )
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))


def test_translate_without_upsampler_and_bad_requests(pipes):
    images, _, record = ds.translate(
        pipes["mask"],
        synth_mask(),
        num_samples=1,
        seed=0,
        guidance=1.0,
        guidance_mode="plain",
        sampler="ddpm",
        steps=3,
        upsample=False,
        progress=False,
    )
    assert images[0].size == (32, 32) and record["settings"]["upsample"] is False
    with pytest.raises(ConfigError, match="1 to 4"):
        ds.translate(
            pipes["mask"],
            synth_mask(),
            num_samples=5,
            seed=0,
            guidance=1.0,
            guidance_mode="plain",
            sampler="ddpm",
            steps=3,
            upsample=False,
        )
    with pytest.raises(ConditionError, match="not in the 'synth' palette"):
        ds.translate(
            pipes["mask"],
            Image.new("RGB", (8, 8), "white"),
            num_samples=1,
            seed=0,
            guidance=1.0,
            guidance_mode="plain",
            sampler="ddpm",
            steps=3,
            upsample=False,
            progress=False,
        )


def test_condition_picture_and_preview_match_what_the_model_sees(pipes):
    from piti.data.conditions import condition_tensor

    tensor, _ = condition_tensor("mask", synth_mask(), 32, "synth")
    assert np.array_equal(
        np.asarray(ds.condition_picture("mask", tensor)), np.asarray(synth_mask().resize((32, 32), Image.NEAREST))
    )
    edges = ds.preview_condition(
        pipes["sketch"],
        Image.open(ds.write_scene(Path(pipes["sketch"].sources["base"]).parent / "scene", (7, 1), 64, "synth").photo),
        from_photo=True,
    )
    arr = np.asarray(edges)
    lines, distance = arr[:, :32], arr[:, 32:]
    assert edges.size == (64, 32) and lines.max() == 255 and np.array_equal(lines == 255, distance == 0)
    assert distance.max() > 0
    preview = ds.preview_condition(pipes["depth"], depth_metres())
    assert preview.size == (64, 32)


def test_model_store_loads_each_task_once():
    calls = []
    store = ds.ModelStore(lambda task: calls.append(task) or object(), ["mask", "depth"])
    assert store.loaded() == []
    first = store.get("mask")
    assert store.get("mask") is first and calls == ["mask"] and store.loaded() == ["mask"]
    with pytest.raises(ConfigError, match="serves mask, depth"):
        store.get("sketch")


# --------------------------------------------------------------------------------------------------
# The Hub loader, offline against a cache laid out as the Hub's


def hub_cache(root: Path, repo: str, files: dict[str, Path], commit: str = "a" * 40) -> Path:
    """A Hugging Face cache holding ``files`` (name -> source) as revision ``main`` of the model repo ``repo``."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    return root


HUB_SCRIPT = """
import json, sys
from piti.pipeline import PITIPipeline
from piti.errors import PitiError
try:
    pipe = PITIPipeline.from_pretrained(sys.argv[1], task=sys.argv[2], precision="fp32")
except PitiError as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
else:
    print(json.dumps({"task": pipe.task, "sources": pipe.sources, "palette": pipe.defaults.palette}))
"""


def run_offline(cache: Path, repo: str, task: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"))
    proc = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, repo, task], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_from_pretrained_reads_the_official_file_names_from_the_hub_cache(tmp_path, ckpts):
    # project safetensors stored under the official names: the loader detects the format from the content
    cache = hub_cache(
        tmp_path / "hub", "tfwang/PITI", {"base_mask.pt": ckpts["mask"][0], "upsample_mask.pt": ckpts["mask"][1]}
    )
    out = run_offline(cache, "tfwang/PITI", "mask")
    assert out["task"] == "mask" and out["palette"] == "synth"
    assert out["sources"]["base"].endswith("base_mask.pt") and out["sources"]["upsampler"].endswith("upsample_mask.pt")
    assert str(cache) in out["sources"]["base"]
    # the sketch pair is not in this cache: the message names the file, the repo and the offline mode
    missing = run_offline(cache, "tfwang/PITI", "sketch")["error"]
    assert missing.startswith("MissingWeightsError: base.pt of the Hugging Face model repo tfwang/PITI")
    assert "HF_HUB_OFFLINE" in missing and "--base" in missing


def test_hub_files_and_unknown_tasks():
    from piti.hub import HUB_FILES, hub_files

    assert hub_files("mask") == ("base_mask.pt", "upsample_mask.pt") and hub_files("sketch") == HUB_FILES["sketch"]
    assert hub_files("depth", {"depth": ("b.pt", "u.pt")}) == ("b.pt", "u.pt")
    with pytest.raises(ConfigError, match="no 'depth' checkpoints"):
        hub_files("depth")


def test_condition_picture_of_a_3d_tensor():
    t = torch.zeros(1, 4, 4)
    t[0, 1, 2] = -1  # a line pixel
    pic = np.asarray(ds.condition_picture("sketch", t))
    assert pic.shape == (4, 8) and pic[1, 2] == 255 and pic[:, :4].sum() == 255 and pic[1, 6] == 0 and pic[0, 4] == 128


def test_app_process_reports_an_app_that_exits(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("import sys\nprint('no models here')\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"(?s)the app exited \(3\).*no models here"):
        with ds.AppProcess(app=app, timeout=60):
            pass
