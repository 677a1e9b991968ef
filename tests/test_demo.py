"""The Gradio app end to end: started in a subprocess on a free localhost port, driven through gradio_client.

The app runs the embedded toy models (checkpoints/toy/) with few steps, so each request takes a second or two.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piti import demo_support as ds

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "demo" / "app.py"
CHEAP = dict(num_samples=1, seed=0, guidance=5.0, guidance_mode="normalized", sampler="ddim", steps=3, upsample=True)

gradio_client = pytest.importorskip("gradio_client", reason="the demo extra is not installed (pip install -e .[demo])")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def app():
    with ds.AppProcess() as url:  # the port comes from GRADIO_SERVER_PORT
        yield url


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app, verbose=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """An example scene as the app draws them (same function, same seed)."""
    return ds.write_examples(tmp_path_factory.mktemp("examples"), 1, 128, "synth")[0]


def editor(path) -> dict:
    """An ImageEditor value with ``path`` as its background, as a client sends it."""
    return {"background": gradio_client.handle_file(str(path)), "layers": [], "composite": None, "id": None}


def check_result(result, task: str, count: int = 1):
    gallery, condition, record = result
    assert len(gallery) == count
    images = [Image.open(item["image"]) for item in gallery]
    assert all(im.size == (128, 128) for im in images)  # the toy upsampler's size
    assert np.asarray(images[0]).std() > 1  # a picture, not a flat colour
    assert Image.open(condition).size == ((128, 128) if task == "mask" else (256, 128))  # two pictures side by side
    assert record["settings"]["task"] == task and record["settings"]["steps"] == "3"
    return record


def test_only_the_three_tasks_are_public(client):
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {
        "/mask",
        "/sketch",
        "/depth",
    }


def test_mask_tab_translates_an_example(client, scene):
    record = check_result(client.predict(editor(scene.colormap), False, *CHEAP.values(), api_name="/mask"), "mask")
    assert record["settings"]["palette"] == "synth"


def test_sketch_tab_translates_a_sketch_and_a_photo(client, scene):
    check_result(client.predict("sketch", editor(scene.sketch), None, *CHEAP.values(), api_name="/sketch"), "sketch")
    photo = gradio_client.handle_file(str(scene.photo))
    record = check_result(client.predict("photo", None, photo, *CHEAP.values(), api_name="/sketch"), "sketch")
    assert record["settings"]["sketch_from_photo"] is True
    assert any("extracted from the photo" in n for n in record["notes"])


def test_depth_tab_translates_an_example(client, scene):
    cheap = dict(CHEAP, num_samples=2)
    check_result(
        client.predict(gradio_client.handle_file(str(scene.depth)), *cheap.values(), api_name="/depth"),
        "depth",
        count=2,
    )


def test_bad_inputs_give_the_message_and_the_app_keeps_serving(client, scene, tmp_path):
    AppError = gradio_client.exceptions.AppError
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(AppError, match="notes.png: not a readable image"):
        client.predict(gradio_client.handle_file(str(tmp_path / "notes.png")), *CHEAP.values(), api_name="/depth")
    with pytest.raises(AppError, match="an 8-bit RGB picture is not a depth map"):
        client.predict(gradio_client.handle_file(str(scene.photo)), *CHEAP.values(), api_name="/depth")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    with pytest.raises(AppError, match="not in the 'synth' palette.*tick 'Snap every colour'"):
        client.predict(editor(tmp_path / "white.png"), False, *CHEAP.values(), api_name="/mask")
    Image.new("RGB", (64, 64), "black").save(tmp_path / "black.png")
    with pytest.raises(AppError, match="the mask is empty"):
        client.predict(editor(tmp_path / "black.png"), False, *CHEAP.values(), api_name="/mask")
    with pytest.raises(AppError, match="the sketch has no lines"):
        client.predict("sketch", editor(tmp_path / "white.png"), None, *CHEAP.values(), api_name="/sketch")
    with pytest.raises(AppError, match="looks like a photo.*Choose 'photo'"):
        client.predict("sketch", editor(scene.photo), None, *CHEAP.values(), api_name="/sketch")
    # the next good request works
    check_result(
        client.predict(gradio_client.handle_file(str(scene.depth)), *CHEAP.values(), api_name="/depth"), "depth"
    )
    # a white canvas snapped on request is a canvas of snow
    record = check_result(
        client.predict(editor(tmp_path / "white.png"), True, *CHEAP.values(), api_name="/mask"), "mask"
    )
    assert record["settings"]["snap"] is True


def test_two_concurrent_requests_both_succeed(app, scene):
    clients = [gradio_client.Client(app, verbose=False) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(c.predict, editor(scene.colormap), False, *dict(CHEAP, seed=i).values(), api_name="/mask")
            for i, c in enumerate(clients)
        ]
        results = [job.result(timeout=240) for job in jobs]
    seeds = [check_result(r, "mask")["settings"]["seed"] for r in results]
    assert seeds == [0, 1]


def test_one_task_on_given_checkpoints_in_another_palette(tmp_path, scene):
    """As with official checkpoints: --task, --base, --upsampler, --palette (and --host, --port)."""
    from piti.pipeline import toy_checkpoint_paths

    base, up = toy_checkpoint_paths("mask")
    args = [
        "--task",
        "mask",
        "--base",
        str(base),
        "--upsampler",
        str(up),
        "--palette",
        "coco-stuff",
        "--host",
        "127.0.0.1",
    ]
    coco = ds.write_scene(tmp_path, (7, 0), 128, "coco-stuff")  # the example scene in COCO-Stuff's colours
    with ds.AppProcess(args, port_flag=True) as url:  # --port wins over GRADIO_SERVER_PORT
        c = gradio_client.Client(url, verbose=False)
        assert set(c.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/mask"}
        record = check_result(c.predict(editor(coco.colormap), False, *CHEAP.values(), api_name="/mask"), "mask")
        assert record["settings"]["palette"] == "coco-stuff"
        with pytest.raises(gradio_client.exceptions.AppError, match="not in the 'coco-stuff' palette"):
            c.predict(editor(scene.colormap), False, *CHEAP.values(), api_name="/mask")  # synthetic-world colours


def test_bad_command_lines_are_refused():
    proc = subprocess.run([sys.executable, str(APP), "--base", "x.pt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--base/--upsampler need --task" in proc.stderr


def test_a_space_layout_serves_the_package_beside_the_app(tmp_path, scene):
    """A Space's repository: app.py at the root with piti/ and checkpoints/toy/ beside it (demo/README.md)."""
    space = tmp_path / "space"
    space.mkdir()
    shutil.copy(APP, space / "app.py")
    shutil.copytree(ROOT / "piti", space / "piti", ignore=shutil.ignore_patterns("__pycache__"))
    (space / "checkpoints" / "toy").mkdir(parents=True)
    for f in (ROOT / "checkpoints" / "toy").glob("piti-toy-depth-*.safetensors"):
        shutil.copy(f, space / "checkpoints" / "toy" / f.name)
    shutil.copytree(ROOT / "checkpoints" / "toy" / "rewards", space / "checkpoints" / "toy" / "rewards")
    with ds.AppProcess(app=space / "app.py", env={"PITI_TASK": "depth"}) as url:
        c = gradio_client.Client(url, verbose=False)
        record = check_result(
            c.predict(gradio_client.handle_file(str(scene.depth)), *CHEAP.values(), api_name="/depth"), "depth"
        )
    assert record["settings"]["base_checkpoint"].startswith(str(space))  # the package and models beside app.py


def test_space_requirements_are_the_project_dependencies():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["demo"])
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "demo" / "requirements.txt").read_text().splitlines()]
    required = {ln for ln in lines if ln}
    assert required and required <= declared, required - declared
    assert {"torch>=2.2", "gradio>=6", "huggingface_hub>=0.30"} <= required


def test_the_progress_follows_the_sampler_steps(client, scene):
    import time

    slow = dict(CHEAP, sampler="ddpm", steps=30)
    job = client.submit(editor(scene.colormap), False, *slow.values(), api_name="/mask")
    seen = set()
    while not job.done():
        for p in job.status().progress_data or []:
            seen.add((p.length, p.unit))
        time.sleep(0.05)
    record = job.result()[2]["settings"]
    assert len(job.result()[0]) == 1 and record["steps"] == "30"
    # the base sampler's tqdm bar, as gradio's progress: one tick per network call (the header may skip t = T)
    assert (30 - record["skip_terminal"], "steps") in seen


def test_official_checkpoints_from_the_hub_cache_offline(tmp_path):
    """--hub tfwang/PITI with HF_HUB_OFFLINE=1: the mask files are in the cache (the toy models under the
    official names), the sketch files are not, and the sketch tab says so."""
    from test_demo_support import hub_cache

    from piti.pipeline import toy_checkpoint_paths

    base, up = toy_checkpoint_paths("mask")
    cache = hub_cache(tmp_path / "hub", "tfwang/PITI", {"base_mask.pt": base, "upsample_mask.pt": up})
    coco = ds.write_scene(tmp_path / "coco", (7, 1), 128, "coco-stuff")  # official checkpoints: COCO-Stuff
    sketch = ds.write_scene(tmp_path / "synth", (7, 1), 128, "synth").sketch
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    with ds.AppProcess(["--hub", "tfwang/PITI"], env=env) as url:
        c = gradio_client.Client(url, verbose=False)
        assert set(c.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/mask", "/sketch"}
        record = check_result(c.predict(editor(coco.colormap), False, *CHEAP.values(), api_name="/mask"), "mask")
        assert record["settings"]["base_checkpoint"].startswith(str(cache))
        with pytest.raises(
            gradio_client.exceptions.AppError,
            match="base.pt of the Hugging Face model repo tfwang/PITI is not in the Hugging Face cache",
        ):
            c.predict("sketch", editor(sketch), None, *CHEAP.values(), api_name="/sketch")
