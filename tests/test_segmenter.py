"""The toy segmenter of the synthetic world: training, shapes, files."""

import numpy as np
import pytest
import torch
from PIL import Image

from piti.checkpoints import save_checkpoint
from piti.data.synth import CLASSES
from piti.errors import CheckpointError, ConfigError
from piti.evaluation.segmenter import (
    HELDOUT_STREAM,
    TRAIN_STREAM,
    Segmenter,
    SegmenterConfig,
    _training_batch,
    heldout_set,
    load_segmenter,
    save_segmenter,
    train_segmenter,
)

TINY = SegmenterConfig(widths=(6, 12, 16), feature_dim=8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_a_tiny_segmenter_learns(monkeypatch):
    """The training loop (weighted loss, AdamW, schedule) fits one repeated batch of real scenes."""
    import piti.evaluation.segmenter as seg

    batch = _training_batch(np.random.default_rng(0), counter=0, batch_size=1, seed=0)
    monkeypatch.setattr(seg, "_training_batch", lambda *args: batch)
    torch.manual_seed(0)
    model = Segmenter(TINY)
    losses = train_segmenter(model, steps=25, batch_size=1, lr=3e-2)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * losses[0]
    assert not model.training  # left in eval mode, ready to judge


def test_training_on_fresh_scenes_runs():
    torch.manual_seed(0)
    model = Segmenter(TINY)
    losses = train_segmenter(model, steps=3, batch_size=2, lr=1e-2, seed=1)
    assert len(losses) == 3 and all(np.isfinite(losses))
    with pytest.raises(ConfigError, match="steps >= 1"):
        train_segmenter(model, steps=0)


def test_training_scenes_are_fresh_and_held_out_ones_apart():
    rng = np.random.default_rng(0)
    x, y = _training_batch(rng, counter=0, batch_size=2, seed=0)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 64, 64)
    assert x.min() >= -1 and x.max() <= 1 and y.max() < len(CLASSES)
    x2, _ = _training_batch(rng, counter=2, batch_size=2, seed=0)
    assert not torch.equal(x, x2)
    assert TRAIN_STREAM != HELDOUT_STREAM
    a, _ = heldout_set(2, 64)
    b, _ = heldout_set(1, 64, start=1)
    np.testing.assert_array_equal(a[1], b[0])  # a held-out scene depends only on its index


@pytest.mark.parametrize("size", [64, 128, 256])
def test_predict_and_embed_shapes(size):
    torch.manual_seed(0)
    model = Segmenter(TINY).train()
    images, labels = heldout_set(2, size)
    pred = model.predict(images)
    assert pred.shape == labels.shape == (2, size, size) and pred.dtype == np.uint8
    assert pred.max() < TINY.num_classes
    assert model.training  # predict restores the mode it found
    feats = model.embed(images)
    assert feats.shape == (2, TINY.feature_dim) and feats.dtype == np.float64
    # the same pictures as a float tensor in [-1, 1], as a single array and as PIL images
    as_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_array_equal(model.predict(as_tensor), pred)
    np.testing.assert_array_equal(model.predict(images[0])[0], pred[0])
    np.testing.assert_array_equal(model.predict([Image.fromarray(im) for im in images]), pred)


def test_bad_inputs_are_explained():
    model = Segmenter(TINY)
    with pytest.raises(ConfigError, match="uint8"):
        model.predict(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ConfigError, match="multiples of 4"):
        model.predict(np.zeros((1, 30, 30, 3), np.uint8))
    with pytest.raises(ConfigError, match="float"):
        model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="share a size"):
        model.predict([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Segmenter(TINY)
    train_segmenter(model, steps=2, batch_size=1)  # moves the batch-norm statistics off their defaults
    path = tmp_path / "seg.safetensors"
    save_segmenter(path, model, metadata={"results": {"miou": 0.5}})
    loaded = load_segmenter(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.checkpoint_metadata["results"] == {"miou": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    images, _ = heldout_set(2, 64)
    np.testing.assert_array_equal(loaded.predict(images), model.predict(images))


def test_loading_something_else_fails_clearly(tmp_path):
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, {"weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not a segmenter"):
        load_segmenter(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_segmenter(tmp_path / "missing.safetensors")


def test_the_toy_training_pairs_agree_with_the_shipped_segmenter():
    """Data integrity of the PITI stages: the training dataset's items (random flips included) hold each
    image with ITS condition map. The shipped segmenter's labels of the images agree with the labels written
    in the colour maps on most pixels, and clearly less with the mirrored maps."""
    import torch.nn.functional as F

    from piti.data.conditions import colors_to_labels
    from piti.data.datasets import SynthDataset

    ds = SynthDataset(length=8, task="mask", seed=0, image_size=64, cond_size=128, flip=True)
    batch = [ds[i] for i in range(8)]
    images, cond = torch.stack([b["image"] for b in batch]), torch.stack([b["cond"] for b in batch])
    colours = ((cond.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    labels = torch.from_numpy(np.stack([colors_to_labels(c, "synth") for c in colours]).astype(np.int64))
    labels = F.interpolate(labels[:, None].float(), size=64, mode="nearest")[:, 0].long()
    predicted = torch.from_numpy(load_segmenter().predict(images).astype(np.int64))
    agree, agree_mirrored = (predicted == labels).float().mean(), (predicted == labels.flip(-1)).float().mean()
    assert agree > 0.9 and agree > agree_mirrored + 0.1, (float(agree), float(agree_mirrored))
