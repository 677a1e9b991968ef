"""The synthetic scene world: determinism, consistency of its maps and captions, the `piti synth` layout."""

import json

import numpy as np
import pytest
from PIL import Image

from piti.cli import main
from piti.data import synth
from piti.data.conditions import DEPTH_PNG_SCALE, SYNTH_PALETTE
from piti.errors import ConfigError


def test_same_seed_same_scene_other_seed_other_scene():
    a, b = synth.generate_scene(7, 48), synth.generate_scene(7, 48)
    for field in ("image", "labels", "colors", "sketch", "depth", "normals"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.caption == b.caption
    c = synth.generate_scene(8, 48)
    assert not np.array_equal(a.image, c.image)


def test_scene_maps_are_consistent():
    s = synth.generate_scene((1, 2), 64)
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.labels.shape == (64, 64) and s.labels.max() < len(synth.CLASSES)
    assert np.array_equal(s.colors, SYNTH_PALETTE[s.labels])
    assert set(np.unique(s.sketch)) <= {0, 255} and s.sketch.any()
    assert s.depth.dtype == np.float32
    sky = s.labels == synth.SKY
    assert (s.depth[sky] == 0).all() and (s.depth[~sky] > 0).all()  # sky has no depth, like DIODE
    assert np.array_equal(s.depth * DEPTH_PNG_SCALE, np.round(s.depth * DEPTH_PNG_SCALE))  # PNG-exact
    length = np.linalg.norm(s.normals, axis=-1)
    assert np.allclose(length[length > 0], 1, atol=1e-4) and (length[sky] == 0).all()


def test_world_has_distinct_classes_all_of_which_occur():
    assert len(synth.CLASSES) >= 8 and len(np.unique(SYNTH_PALETTE, axis=0)) == len(synth.CLASSES)
    seen = set()
    for i in range(40):
        seen |= set(np.unique(synth.generate_scene((3, i), 32).labels).tolist())
    assert seen == set(range(len(synth.CLASSES)))


def test_captions_match_what_is_drawn():
    numbers = {"a": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    captions = set()
    for i in range(30):
        s = synth.generate_scene((4, i), 48)
        captions.add(s.caption)
        present = set(np.unique(s.labels).tolist())
        words = s.caption.split()
        for noun, cls in (("tree", synth.TREE), ("house", synth.HOUSE), ("boat", synth.BOAT)):
            n = s.counts[noun]
            if n:
                assert cls in present
                phrase = f"{n if n > 6 else next(k for k, v in numbers.items() if v == n)} {noun}{'s' if n > 1 else ''}"
                assert phrase in s.caption, (phrase, s.caption)
            else:
                assert noun not in words and noun + "s" not in words
        assert ("sea" in words) == (synth.SEA in present), s.caption
        assert (synth.MOUNTAIN in present or synth.SNOW in present) <= ("mountains" in words), s.caption
    assert len(captions) >= 20  # varied


def test_the_layout_does_not_depend_on_the_size():
    small = synth.generate_scene(11, 64)
    large = synth.generate_scene(11, 256)
    assert small.caption == large.caption
    agree = (large.labels[2::4, 2::4] == small.labels).mean()
    assert agree > 0.9


def test_cli_writes_the_layout_byte_identically(tmp_path, capsys):
    for name in ("a", "b"):
        assert (
            main(["synth", "--out", str(tmp_path / name), "--num", "3", "--size", "32", "--seed", "5", "--quiet"]) == 0
        )
    assert "3 scenes" in capsys.readouterr().out
    a, b = tmp_path / "a", tmp_path / "b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [str(f) for f in files] == sorted(
        [f"{d}/{i:06d}.png" for d in ("images", "labels", "colors", "sketches", "depth") for i in range(3)]
        + ["captions.jsonl", "classes.json"]
    )
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    lines = [json.loads(x) for x in (a / "captions.jsonl").read_text().splitlines()]
    assert [x["file"] for x in lines] == ["000000.png", "000001.png", "000002.png"]
    assert lines[1]["caption"] == synth.generate_scene((5, 1), 32).caption
    classes = json.loads((a / "classes.json").read_text())
    assert classes[0] == {"id": 0, "name": synth.CLASSES[0], "color": SYNTH_PALETTE[0].tolist()}
    assert len(classes) == len(synth.CLASSES)
    scene = synth.generate_scene((5, 2), 32)
    depth_png = Image.open(a / "depth" / "000002.png")
    assert depth_png.mode.startswith("I")
    assert np.array_equal(np.asarray(depth_png) / DEPTH_PNG_SCALE, scene.depth)
    assert np.array_equal(np.asarray(Image.open(a / "labels" / "000002.png")), scene.labels)
    assert np.array_equal(np.asarray(Image.open(a / "images" / "000002.png")), scene.image)


def test_bad_synth_arguments(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--num", "0"]) == 1
    assert "--num" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="at least 16"):
        synth.generate_scene(0, 8)
