"""The depth task's colour prior and the pipeline's colour redraw (``redraw_colour_threshold``).

The prior is checked on hand-made Gaussians (exact distances) and fitted on a few synthetic scenes (real colours read
closer than the same pictures with red and blue swapped); the redraw on tiny random-weight models (plumbing, not
quality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from piti.checkpoints import export_model
from piti.data.synth import CLASSES
from piti.errors import CheckpointError, ConfigError, MissingWeightsError
from piti.pipeline import PITIPipeline
from piti.settings import REDRAW_TRIES
from piti.train.colour_prior import (
    UNSEEN,
    ColourPrior,
    fit_colour_prior,
    load_colour_prior,
    save_colour_prior,
)
from piti.train.rewards import RewardConfig, RewardNet, condition_target, save_reward_model

from conftest import FEW, depth_metres, pixels, synth_mask, tiny_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def hand_made_prior() -> ColourPrior:
    """Two classes; class 0 in every depth bin: mean grey 0.5, precision 4 I; class 1 never seen."""
    prior = ColourPrior(2)
    bins = len(prior.edges) + 1
    prior.mean[:bins], prior.precision[:bins], prior.seen[:bins] = 0.5, 4 * torch.eye(3), True
    return prior


def flat(value: float, n: int = 1, size: int = 4) -> torch.Tensor:
    """Images of one colour, given in [0, 1], as (n, 3, size, size) in [-1, 1]."""
    return torch.full((n, 3, size, size), value * 2 - 1)


def everywhere(size: int = 4, n: int = 1) -> dict:
    return {"norm": torch.full((n, size, size), 0.3), "valid": torch.ones(n, size, size, dtype=torch.bool)}


def test_the_prior_reads_squared_mahalanobis_distances_capped_for_unseen_classes():
    prior = hand_made_prior()
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert prior(flat(0.5), labels, everywhere()).item() == pytest.approx(0.0, abs=1e-4)
    # a quarter off grey in each channel, as the 8-bit picture reads it: 3 * 4 * d^2
    grey = round((0.75 * 2 - 1 + 1) * 127.5) / 255
    assert prior(flat(0.75), labels, everywhere()).item() == pytest.approx(12 * (grey - 0.5) ** 2, rel=1e-4)
    assert prior(flat(0.5), torch.ones_like(labels), everywhere()).item() == UNSEEN  # class 1: never seen
    assert prior(flat(0.0), labels, everywhere()).item() == pytest.approx(3.0, rel=1e-2)  # 3 * 4 * 0.25
    far = prior(flat(1.0) * 40, labels, everywhere())  # out of range: read as the 8-bit picture, white
    assert far.item() == pytest.approx(3.0, rel=1e-2)


def test_only_pixels_with_a_depth_count():
    prior = hand_made_prior()
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[:, :2] = 1  # unseen class in the top half...
    target = everywhere()
    target["valid"][:, :2] = False  # ...where the condition has no depth (sky)
    assert prior(flat(0.5), labels, target).item() == pytest.approx(0.0, abs=1e-4)


def test_the_prior_checks_its_inputs():
    with pytest.raises(ConfigError, match="colour prior"):
        hand_made_prior()(flat(0.5), torch.zeros(1, 3, 3, dtype=torch.long), everywhere())


def test_a_fitted_prior_reads_real_colours_closer_than_swapped_ones():
    from piti.evaluation.scenes import heldout_examples

    prior = fit_colour_prior(num=6)
    assert prior.seen.any() and torch.isfinite(prior.precision[prior.seen]).all()
    data = heldout_examples("depth", 3, 0, 16, 32, 16)
    x = torch.as_tensor(data["real_base"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.as_tensor(data["labels_base"]).long()
    target = condition_target("depth", data["cond"].float(), 16)
    real, swapped = prior(x, labels, target), prior(x.flip(1), labels, target)  # red and blue swapped
    assert (real < swapped).all() and (real < UNSEEN).all()


def test_save_and_load(tmp_path):
    prior = hand_made_prior()
    save_colour_prior(tmp_path / "p.safetensors", prior, {"command": "test"})
    back = load_colour_prior(tmp_path / "p.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(prior.state_dict().values(), back.state_dict().values()))
    assert back.checkpoint_metadata["command"] == "test"
    with pytest.raises(MissingWeightsError, match="fit_colour_prior"):
        load_colour_prior(tmp_path / "gone.safetensors")
    save_reward_model(tmp_path / "r.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    with pytest.raises(CheckpointError, match="not a colour prior"):
        load_colour_prior(tmp_path / "r.safetensors")


# ---------------------------------------------------------------------------------------------- the redraw


@pytest.fixture(scope="module")
def depth_files(tmp_path_factory):
    """Tiny depth models, a tiny class model and a prior whose every class and bin is grey: a base header that
    recommends the colour redraw and names both beside it."""
    folder = tmp_path_factory.mktemp("colour")
    base, up = tiny_checkpoints("depth", folder)
    torch.manual_seed(0)
    save_reward_model(folder / "c.safetensors", RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    grey = ColourPrior(len(CLASSES))  # as many classes as the class model reads
    grey.mean[:], grey.precision[:], grey.seen[:] = 0.5, 4 * torch.eye(3), True
    save_colour_prior(folder / "p.safetensors", grey)
    recommended = folder / "recommended.safetensors"
    sampling = {"redraw_colour_threshold": 1000.0}
    export_model(
        base,
        recommended,
        role="base",
        task="depth",
        sampling=sampling,
        class_model="c.safetensors",
        colour_prior="p.safetensors",
    )
    return {"base": base, "up": up, "recommended": recommended, "folder": folder}


RUN = dict(seed=2, sampler="ddpm", num_samples=2, upsample=False, **FEW)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_colour_redraw_draws_again_what_the_prior_rejects(depth_files, precision):
    pipe = PITIPipeline.from_checkpoints(depth_files["recommended"], precision=precision)
    assert pipe.colour_prior is not None and pipe.defaults.redraw_colour_threshold == 1000.0
    plain = pipe(depth_metres(), **RUN, redraw_colour_threshold=0.0)
    lenient = pipe(depth_metres(), **RUN)  # the header's threshold: above any reading (at most UNSEEN)
    assert lenient.settings["redraws"] == [0, 0] and np.array_equal(pixels(lenient.images), pixels(plain.images))
    assert lenient.settings["colour_checkpoint"].endswith("p.safetensors")

    read = pipe.colour_distance(plain.condition, plain.base_images[0].size[0])

    def distance(out):  # the prior's reading of each 8-bit base image
        x = torch.as_tensor(pixels(out.base_images), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
        return read(x)

    strict = pipe(depth_metres(), **RUN, redraw_colour_threshold=1e-6)  # every draw rejected
    assert strict.settings["redraws"] == [REDRAW_TRIES] * 2
    assert (distance(strict) <= distance(plain) + 1e-3).all()  # the closest draw kept


def test_the_larger_of_the_two_readings_decides(depth_files, monkeypatch):
    pipe = PITIPipeline.from_checkpoints(depth_files["recommended"], precision="fp32")
    monkeypatch.setattr(pipe, "reward_loss", lambda *args: lambda x: 1 + x.mean(dim=(1, 2, 3)))  # 1.5, 0.5
    monkeypatch.setattr(pipe, "colour_distance", lambda *args: lambda x: 10 - 10 * x.mean(dim=(1, 2, 3)))  # 5, 15
    given = []

    def redraw(ref, n, *args, partners=None, counts=None):  # reads 1 and 10
        given.append(partners)
        return torch.zeros(n, 3, 4, 4)

    monkeypatch.setattr(pipe, "sample_base", redraw)
    x0 = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -0.5)])
    for thresholds, counts in (
        ((2.0, 20.0), [0, 0]),  # badness 0.75 and 0.75
        ((2.0, 10.0), [0, 1]),  # 0.75 and 1.5 (the colour): redrawn once, to max(0.5, 1.0), accepted
        ((1.0, 20.0), [1, 0]),  # 1.5 (the reward) and 0.75
    ):
        s = pipe.resolve_settings(redraw_threshold=thresholds[0], redraw_colour_threshold=thresholds[1])
        out, got = pipe.redraw_rejected(None, x0.clone(), s, None, False, True)
        assert got == counts
        assert all((out[i] == 0).all() == bool(c) for i, c in enumerate(counts))
        kept = [i for i, c in enumerate(counts) if not c]
        assert torch.equal(given.pop(), x0[kept]) if sum(counts) else not given  # pushed away from the kept ones


def test_the_colour_redraw_says_what_it_needs(depth_files, tmp_path):
    plain = PITIPipeline.from_checkpoints(depth_files["base"], precision="fp32")
    with pytest.raises(ConfigError, match="needs a colour prior and a class model"):
        plain(depth_metres(), **RUN, redraw_colour_threshold=1.0)
    with pytest.raises(MissingWeightsError, match="colour prior"):  # asked for, named by no header: an error
        PITIPipeline.from_checkpoints(
            depth_files["base"],
            precision="fp32",
            colour_prior=tmp_path / "gone.safetensors",
            class_model=depth_files["folder"] / "c.safetensors",
            redraw_colour_threshold=1.0,
        )
    mask_base, _ = tiny_checkpoints("mask", tmp_path, sampling={"palette": "synth"})
    mask = PITIPipeline.from_checkpoints(
        mask_base,
        precision="fp32",
        colour_prior=depth_files["folder"] / "p.safetensors",
        class_model=depth_files["folder"] / "c.safetensors",
    )
    with pytest.raises(ConfigError, match="for the depth task"):
        mask(synth_mask(), **RUN, redraw_colour_threshold=1.0)


def test_a_header_whose_prior_is_missing_samples_without_the_colour_redraw(depth_files, tmp_path):
    import shutil

    for name in ("recommended.safetensors", "c.safetensors"):  # copied without the prior
        shutil.copy(depth_files["folder"] / name, tmp_path / name)
    pipe = PITIPipeline.from_checkpoints(tmp_path / "recommended.safetensors", precision="fp32")
    assert pipe.defaults.redraw_colour_threshold == 0 and pipe.colour_prior is None
    assert any("without the colour redraw" in n for n in pipe.load_notes)
    with pytest.raises(MissingWeightsError, match="colour prior"):  # asked for by the caller: an error
        PITIPipeline.from_checkpoints(tmp_path / "recommended.safetensors", precision="fp32", redraw_colour_threshold=5)
    (tmp_path / "c.safetensors").unlink()  # without the class model too: the note names the missing class model
    pipe = PITIPipeline.from_checkpoints(tmp_path / "recommended.safetensors", precision="fp32")
    assert pipe.defaults.redraw_colour_threshold == 0
    assert any("'c.safetensors' is missing" in n and "colour redraw" in n for n in pipe.load_notes)
