"""The embedded toy models (checkpoints/toy/) load with no arguments and translate.

Not plumbing: these are the shipped trained weights. The mask model's images must be segmented into
their condition's classes by the shipped segmenter, at a floor (half of the quality bar's ratio of 0.7)
that a broken, untrained or mismatched model cannot reach; checkpoints/toy/README.md has the full numbers
(`python eval/toy_alignment.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from piti.cli import main as piti_main
from piti.evaluation.alignment import judge
from piti.evaluation.diagnostics import x0_errors
from piti.evaluation.images import condition_picture
from piti.evaluation.scenes import heldout_examples
from piti.evaluation.segmenter import load_segmenter
from piti.pipeline import TASKS, TOY_BUDGET_MB, TOY_CHECKPOINT_DIR, PITIPipeline, toy_checkpoint_paths

SHIPPED = [p for task in TASKS for p in toy_checkpoint_paths(task)]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    pytest.mark.skipif(
        not any(p.is_file() for p in SHIPPED),
        reason="the embedded toy model files are missing (`make toy-models` makes them)",
    ),
]

MIN_MASK_RATIO = 0.35  # half of the quality bar (generated mIoU >= 0.7 x real mIoU)


@pytest.fixture(scope="module")
def pipes():
    return {task: PITIPipeline.from_checkpoints(task=task) for task in TASKS}


def test_shipped_weights_fit_the_budget():
    files = SHIPPED + [TOY_CHECKPOINT_DIR / "segmenter.safetensors"]
    missing = [str(p) for p in files if not p.is_file()]
    assert not missing, f"shipped toy files missing: {missing}"
    shipped = sorted(TOY_CHECKPOINT_DIR.rglob("*.safetensors"))
    assert sum(p.stat().st_size for p in shipped) / 1e6 <= TOY_BUDGET_MB, [p.name for p in shipped]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_translates_a_heldout_condition(pipes, task):
    pipe = pipes[task]
    assert pipe.upsampler_model is not None and pipe.defaults.palette == "synth"
    data = heldout_examples(task, 1, 0, 128, pipe.base_model.config.cond_size)
    out = pipe(data["cond"][0], num_samples=1, seed=0, progress=False)  # the settings in the files' headers
    image, base = np.asarray(out.images[0]), np.asarray(out.base_images[0])
    assert image.shape == (128, 128, 3) and base.shape == (64, 64, 3)
    # a picture, not a flat field or noise: the upsampled image keeps the base image's layout
    assert image.std() > 10
    small = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR)).astype(float)
    assert np.abs(small - base.astype(float)).mean() < 25


def test_mask_model_follows_its_condition(pipes):
    pipe, segmenter, n = pipes["mask"], load_segmenter(), 6
    data = heldout_examples("mask", n, 100, 64, pipe.base_model.config.cond_size)
    images = np.stack(
        [
            np.asarray(pipe(data["cond"][i], num_samples=1, seed=i, upsample=False, progress=False).images[0])
            for i in range(n)
        ]
    )
    scores = judge(segmenter, images, data["real"], data["labels"])
    assert scores["miou_ratio"] >= MIN_MASK_RATIO, scores


def test_piti_sample_uses_the_embedded_models(tmp_path):
    data = heldout_examples("mask", 1, 0, 128, 128)
    cond = tmp_path / "label.png"
    Image.fromarray(condition_picture("mask", data["cond"][0])).save(cond)
    rc = piti_main(
        [
            "sample",
            "--task",
            "mask",
            "--cond",
            str(cond),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "8",
            "--upsample-steps",
            "4",
        ]
    )
    assert rc == 0
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert pngs and all(Image.open(p).size in ((64, 64), (128, 128)) for p in pngs)


def test_models_predict_clean_images_at_low_noise(pipes):
    # a trained model's x0 estimate from a lightly noised held-out image is close (a random one is off by ~1)
    for model in (pipes["mask"].base_model, pipes["mask"].upsampler_model):
        errors = x0_errors(model, [50], num=2)
        assert errors[50][0] < 0.1, (model.config.name, errors)
