"""`piti eval fid`: FID-T / FID-I / FID-C through clean-fid, statistics files, and the weights lookup.

The Inception and CLIP paths run end to end with STAND-IN networks of the real files' interface (a TorchScript
module with clean-fid's Inception layout; a tiny CLIP ViT in OpenAI's state-dict layout), placed where the real
weights are looked for. They test the code a user with the real weights runs; their numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from piti.cli import main as piti_main
from piti.evaluation import fid
from piti.evaluation.scenes import heldout_set
from piti.evaluation.segmenter import default_segmenter_path, load_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
SEGMENTER = default_segmenter_path()
needs_segmenter = pytest.mark.skipif(not SEGMENTER.is_file(), reason="the shipped toy segmenter is missing")


def write_folder(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def noisy(images, std, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.float64) + rng.normal(0, std, images.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two folders of 8 held-out scenes (64 px): real, and the same scenes again."""
    root = tmp_path_factory.mktemp("scenes")
    images, _ = heldout_set(8, 64)
    return root, images, write_folder(root / "real", images)


def fid_cli(*args) -> int:
    return piti_main(["eval", "fid", *map(str, args)])


@needs_segmenter
def test_fid_t_of_a_folder_against_itself_is_zero_and_grows_with_noise(scenes, capsys):
    root, images, real = scenes
    values = []
    for std in (0, 8, 32):
        fake = write_folder(root / f"noise-{std}", noisy(images, std) if std else images)
        out = root / f"fid-{std}.json"
        assert fid_cli("--real", real, "--fake", fake, "--features", "toy", "--out", out) == 0
        values.append(json.loads(out.read_text())["fid"])
    assert values[0] == pytest.approx(0, abs=1e-6) and values[0] < values[1] < values[2]
    r = json.loads((root / "fid-32.json").read_text())
    assert r["metric"] == "FID-T" and r["num_real"] == r["num_fake"] == 8 and "NOT Inception" in r["note"]
    assert r["weights"].endswith("segmenter.safetensors") and r["command"].startswith("piti eval fid")
    # the folder path (clean-fid's get_files_features) gives what fid_t gives on the same pictures
    assert r["fid"] == pytest.approx(fid.fid_t(images, noisy(images, 32), load_segmenter()), rel=1e-6)


@needs_segmenter
def test_cached_statistics_give_the_same_number(scenes, capsys):
    root, images, real = scenes
    fake = write_folder(root / "noise-16", noisy(images, 16, seed=1))
    stats, a, b = root / "real.npz", root / "a.json", root / "b.json"
    assert (
        fid_cli("--real", real, "--fake", fake, "--features", "toy", "--kid", "--save-real-stats", stats, "--out", a)
        == 0
    )
    assert fid_cli("--real", stats, "--fake", fake, "--features", "toy", "--kid", "--out", b) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["fid"] == pytest.approx(rb["fid"], rel=1e-12) and ra["kid"] == pytest.approx(rb["kid"], rel=1e-12)
    # statistics of another extractor are refused
    assert fid_cli("--real", stats, "--fake", fake, "--features", "clip") == 1
    err = capsys.readouterr().err
    assert "missing clip weights" in err or "computed with features 'toy'" in err


def test_bad_folders_are_named_and_leave_no_result(tmp_path, scenes, capsys):
    root, images, real = scenes
    out = tmp_path / "r.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = ["--weights", str(SEGMENTER)]
    assert fid_cli("--real", real, "--fake", empty, "--features", "toy", "--out", out, *weights) == 1
    assert "no images in" in capsys.readouterr().err
    broken = write_folder(tmp_path / "broken", images[:3])
    (broken / "bad.png").write_bytes(b"not a png")
    assert fid_cli("--real", real, "--fake", broken, "--features", "toy", "--out", out, *weights) == 1
    err = capsys.readouterr().err
    assert "unreadable" in err and str(broken / "bad.png") in err
    mixed = write_folder(tmp_path / "mixed", [np.zeros((32, 32, 3), np.uint8), np.zeros((48, 48, 3), np.uint8)])
    assert fid_cli("--real", real, "--fake", mixed, "--features", "toy", "--out", out, *weights) == 1
    assert "--toy-size" in capsys.readouterr().err
    assert not out.exists()
    if SEGMENTER.is_file():  # resized consistently when asked
        assert fid_cli("--real", real, "--fake", mixed, "--features", "toy", "--toy-size", "64", "--out", out) == 0
        assert json.loads(out.read_text())["sizes"] == [[32, 32], [48, 48], [64, 64]]


# ------------------------------------------------------------------------------------------ Inception


def test_missing_inception_file_is_the_documented_message(tmp_path, monkeypatch, scenes, capsys):
    from piti import weights

    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setitem(
        weights.WEIGHTS, "inception", dataclasses.replace(weights.WEIGHTS["inception"], default_dir=lambda: tmp_path)
    )
    root, _, real = scenes
    out = tmp_path / "r.json"
    assert fid_cli("--real", real, "--fake", real, "--features", "inception", "--out", out) == 1
    err = capsys.readouterr().err
    assert "missing inception weights" in err and "inception-2015-12-05.pt" in err and str(tmp_path) in err
    assert "not fetched automatically" in err and not out.exists()


class _StandInLayers(nn.Module):
    """2048 features from a 299-px image: pooled colours through a fixed random projection."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 2048)

    def forward(self, x):
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1))[:, :, None, None]


class _StandInInception(nn.Module):
    """clean-fid's TorchScript interface: ``.layers`` (normalised 299-px input), ``forward(x, return_features)``."""

    def __init__(self):
        super().__init__()
        self.layers = _StandInLayers()

    def forward(self, x, return_features: bool = False):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


@pytest.fixture
def inception_stand_in(tmp_path, monkeypatch):
    """The stand-in TorchScript Inception in $PITI_WEIGHTS_DIR, one of the places the real file is looked for."""
    torch.manual_seed(0)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.jit.save(torch.jit.script(_StandInInception()), str(weights_dir / "inception-2015-12-05.pt"))
    monkeypatch.setenv("PITI_WEIGHTS_DIR", str(weights_dir))
    return weights_dir / "inception-2015-12-05.pt"


def test_inception_features_with_a_stand_in(inception_stand_in, scenes):
    """Found where the real file goes, loaded as TorchScript into clean-fid's wrapper, fed by clean-fid's
    resize (clean: PIL bicubic to 299 outside; legacy_tensorflow: inside the network): 2048-D features."""
    root, images, real = scenes
    files = sorted(real.iterdir())[:3]
    for mode in ("clean", "legacy_tensorflow"):
        ext = fid.build_extractor("inception", mode)
        assert ext.weights == str(inception_stand_in) and ext.mode == mode
        feats = fid.folder_features(files, ext)
        assert feats.shape == (3, 2048) and np.isfinite(feats).all() and feats.std(0).max() > 0
    inception_stand_in.write_bytes(b"<html>error page</html>")  # not TorchScript: a clear error
    with pytest.raises(Exception, match="not clean-fid's TorchScript Inception"):
        fid.build_extractor("inception")


@pytest.mark.slow  # the 2048-D matrix square root takes 10-20 s on one core (minutes on a busy machine)
def test_inception_fid_end_to_end_with_a_stand_in(inception_stand_in, tmp_path, scenes):
    """The whole command a user with the real weights runs, down to clean-fid's 2048-D Fréchet distance."""
    root, images, real = scenes
    fake = write_folder(tmp_path / "fake", noisy(images, 24)[:4])
    out = tmp_path / "fid.json"
    assert fid_cli("--real", real, "--fake", fake, "--features", "inception", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["metric"] == "FID-I" and r["mode"] == "clean" and r["fid"] > 0
    assert r["weights"] == str(inception_stand_in) and (r["num_real"], r["num_fake"]) == (8, 4)


# ------------------------------------------------------------------------------------------ CLIP


def tiny_clip_state(width=64, layers=1, patch=32, grid=7, embed=512, seed=0) -> dict:
    """A tiny CLIP ViT image tower in OpenAI's key layout (``visual.*``), random weights."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return scale * torch.randn(*shape, generator=g)

    s = {
        "visual.class_embedding": r(width),
        "visual.positional_embedding": r(grid * grid + 1, width),
        "visual.conv1.weight": r(width, 3, patch, patch),
        "visual.ln_pre.weight": 1 + r(width),
        "visual.ln_pre.bias": r(width),
        "visual.ln_post.weight": 1 + r(width),
        "visual.ln_post.bias": r(width),
        "visual.proj": r(width, embed),
    }
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        s.update(
            {
                b + "ln_1.weight": 1 + r(width),
                b + "ln_1.bias": r(width),
                b + "ln_2.weight": 1 + r(width),
                b + "ln_2.bias": r(width),
                b + "attn.in_proj_weight": r(3 * width, width),
                b + "attn.in_proj_bias": r(3 * width),
                b + "attn.out_proj.weight": r(width, width),
                b + "attn.out_proj.bias": r(width),
                b + "mlp.c_fc.weight": r(4 * width, width),
                b + "mlp.c_fc.bias": r(4 * width),
                b + "mlp.c_proj.weight": r(width, 4 * width),
                b + "mlp.c_proj.bias": r(width),
            }
        )
    return s


def clip_encode_image(s: dict, x: torch.Tensor, layers=1) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer.forward, written out (one head per 64 channels, QuickGELU)."""
    width = s["visual.class_embedding"].shape[0]
    heads = width // 64
    h = F.conv2d(x, s["visual.conv1.weight"], stride=s["visual.conv1.weight"].shape[-1]).flatten(2).transpose(1, 2)
    h = torch.cat([s["visual.class_embedding"].expand(h.shape[0], 1, width), h], 1) + s["visual.positional_embedding"]
    h = F.layer_norm(h, (width,), s["visual.ln_pre.weight"], s["visual.ln_pre.bias"], 1e-5)
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        y = F.layer_norm(h, (width,), s[b + "ln_1.weight"], s[b + "ln_1.bias"], 1e-5)
        q, k, v = (y @ s[b + "attn.in_proj_weight"].T + s[b + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda t: t.unflatten(-1, (heads, width // heads)).transpose(1, 2)  # noqa: E731
        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5, -1) @ split(v)
        h = h + a.transpose(1, 2).flatten(2) @ s[b + "attn.out_proj.weight"].T + s[b + "attn.out_proj.bias"]
        y = F.layer_norm(h, (width,), s[b + "ln_2.weight"], s[b + "ln_2.bias"], 1e-5)
        y = y @ s[b + "mlp.c_fc.weight"].T + s[b + "mlp.c_fc.bias"]
        h = h + (y * torch.sigmoid(1.702 * y)) @ s[b + "mlp.c_proj.weight"].T + s[b + "mlp.c_proj.bias"]
    return (
        F.layer_norm(h[:, 0], (width,), s["visual.ln_post.weight"], s["visual.ln_post.bias"], 1e-5) @ s["visual.proj"]
    )


def scripted_state(state: dict) -> torch.jit.ScriptModule:
    """A TorchScript archive holding ``state`` under its dotted names, as OpenAI's ViT-B-32.pt is one."""
    root = nn.Module()
    for key, value in state.items():
        *path, name = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(name, nn.Parameter(value.clone()))
    return torch.jit.script(root)


def test_clip_tower_is_clips_encode_image():
    """timm's ViT with the OpenAI weights converted computes CLIP's image embedding exactly."""
    state = tiny_clip_state(width=128, layers=2)
    tower = fid.clip_image_tower(state)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tower(x), clip_encode_image(state, x, layers=2), rtol=1e-4, atol=1e-5)


def test_clip_path_end_to_end_with_a_stand_in(tmp_path, monkeypatch, scenes):
    """The stand-in sits where OpenAI's clip.load caches ViT-B-32.pt (~/.cache/clip), as a TorchScript archive."""
    monkeypatch.delenv("PITI_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".cache" / "clip"
    cache.mkdir(parents=True)
    torch.jit.save(scripted_state(tiny_clip_state()), str(cache / "ViT-B-32.pt"))
    root, images, real = scenes
    fake = write_folder(tmp_path / "fake", noisy(images, 24))
    out = tmp_path / "fidc.json"
    assert fid_cli("--real", real, "--fake", fake, "--features", "clip", "--tag", "table5/coco-mask", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["metric"] == "FID-C" and r["fid"] > 0 and r["weights"] == str(cache / "ViT-B-32.pt")
    assert r["tag"] == "table5/coco-mask"
    # the features are CLIP's embedding of clean-fid's 224-px preprocessing, CLIP-normalised
    ext = fid.build_extractor("clip")
    pic = fid.clip_preprocess(images[0])
    assert pic.shape == (224, 224, 3)
    x = torch.from_numpy(pic).permute(2, 0, 1)[None].float()
    mean, std = torch.tensor(fid.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(fid.CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(
        ext.fn(x), clip_encode_image(tiny_clip_state(), (x / 255 - mean) / std), rtol=1e-4, atol=1e-5
    )
    assert fid_cli("--real", real, "--fake", fake, "--features", "clip", "--mode", "legacy_pytorch") == 1
