"""`piti prepare`: raw layouts to the training layout, resuming, and its errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti.cli import main
from piti.data import conditions as C
from piti.data.datasets import DIODEDataset, PreparedDataset
from piti.data.prepare import prepare
from piti.errors import DatasetError

W, H = 40, 30


def make_coco(root, n=3):
    (root / "val2017").mkdir(parents=True)
    (root / "stuffthingmaps_trainval2017" / "val2017").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        labels = rng.choice(np.array([0, 5, 181, 255], np.uint8), (H, W))
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "val2017" / f"{i:012d}.jpg")
        Image.fromarray(labels).save(root / "stuffthingmaps_trainval2017" / "val2017" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.jpg"})
    (root / "annotations").mkdir()
    anns = [{"id": i, "image_id": i, "caption": f"picture number {i}"} for i in range(n)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def make_diode(root):
    scan = root / "val" / "indoors" / "scene_00019" / "scan_00183"
    scan.mkdir(parents=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(scan / "00019_00183_indoors_000_010.png")
    depth = (np.round(np.linspace(1, 9, H * W) * 256) / 256).astype(np.float32).reshape(H, W, 1)  # PNG-exact
    mask = np.ones((H, W), np.float32)
    mask[:, :4] = 0
    normals = np.zeros((H, W, 3), np.float32)
    normals[..., 1] = -1
    normals[: H // 2, :, :] = (0, 0, 1)
    np.save(scan / "00019_00183_indoors_000_010_depth.npy", depth)
    np.save(scan / "00019_00183_indoors_000_010_depth_mask.npy", mask)
    np.save(scan / "00019_00183_indoors_000_010_normal.npy", normals)
    return root


def test_coco_mask_to_training_layout(tmp_path):
    raw, out = make_coco(tmp_path / "raw"), tmp_path / "out"
    counts = prepare("coco-stuff", raw, out, "mask", split="val", size=0, progress=False)
    assert counts == {"written": 3, "skipped_done": 0, "skipped_bad": 0}
    source = np.asarray(Image.open(raw / "stuffthingmaps_trainval2017" / "val2017" / "000000000001.png"))
    labels = np.asarray(Image.open(out / "labels" / "000000000001.png"))
    assert np.array_equal(labels, source)  # --size 0 keeps the size: indices unchanged, 255 kept
    colors = np.asarray(Image.open(out / "colors" / "000000000001.png"))
    assert np.array_equal(colors, C.labels_to_colors(source, "coco-stuff"))
    assert Image.open(out / "images" / "000000000001.png").size == (W, H)
    classes = json.loads((out / "classes.json").read_text())
    assert len(classes) == 183 and classes[181] == {
        "id": 181,
        "name": "wood",
        "color": C.COCO_STUFF_PALETTE[181].tolist(),
    }
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert lines[2] == {"file": "000000000002.png", "caption": "picture number 2"}
    item = PreparedDataset(out, "mask", image_size=16, cond_size=32)[0]
    assert item["cond"].shape == (3, 32, 32) and item["caption"] == "picture number 0"


def test_resize_to_short_side_and_resume(tmp_path):
    raw, out = make_coco(tmp_path / "raw"), tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--dataset",
                "coco-stuff",
                "--root",
                str(raw),
                "--out",
                str(out),
                "--task",
                "mask",
                "--split",
                "val",
                "--size",
                "20",
                "--quiet",
            ]
        )
        == 0
    )
    assert Image.open(out / "images" / "000000000000.png").size == (27, 20)  # 40x30 -> short side 20
    assert Image.open(out / "labels" / "000000000000.png").size == (27, 20)
    kept = out / "colors" / "000000000000.png"
    before = kept.stat().st_mtime_ns
    (out / "labels" / "000000000002.png").unlink()  # as if interrupted while writing item 2
    counts = prepare("coco-stuff", raw, out, "mask", split="val", size=20, progress=False)
    assert counts == {"written": 1, "skipped_done": 2, "skipped_bad": 0}
    assert (out / "labels" / "000000000002.png").is_file() and kept.stat().st_mtime_ns == before
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_sketches_are_extracted_from_the_resized_photo(tmp_path):
    raw, out = make_coco(tmp_path / "raw"), tmp_path / "out"
    prepare("coco-stuff", raw, out, "sketch", split="val", size=24, progress=False)
    sketch = np.asarray(Image.open(out / "sketches" / "000000000000.png"))
    assert sketch.shape == (24, 32) and set(np.unique(sketch)) <= {0, 255} and sketch.any()
    assert not (out / "classes.json").exists()
    assert PreparedDataset(out, "sketch", cond_size=24)[0]["cond"].shape == (1, 24, 24)


def test_diode_depth_round_trip(tmp_path):
    raw, out = make_diode(tmp_path / "raw"), tmp_path / "out"
    prepare("diode", raw, out, "depth", size=0, progress=False)
    name = "00019_00183_indoors_000_010.png"
    stored = np.asarray(Image.open(out / "depth" / name)).astype(np.float32) / C.DEPTH_PNG_SCALE
    source = np.load(next(raw.rglob("*_depth.npy")))[..., 0]
    assert (stored[:, :4] == 0).all()  # masked: invalid
    assert np.array_equal(stored[:, 4:], source[:, 4:])
    normals = np.asarray(Image.open(out / "normals" / name))
    # round((n + 1) * 127.5), with 0 kept for "no normal" (so -1 is stored as 1)
    assert normals[0, 10].tolist() == [128, 128, 255] and normals[-1, 10].tolist() == [128, 1, 128]
    assert (normals[:, :4] == 0).all()
    kwargs = dict(image_size=16, cond_size=W, resize="squash", flip=False)
    a = PreparedDataset(out, "depth", **kwargs)[0]["cond"]
    b = DIODEDataset(raw, **kwargs)[0]["cond"]
    assert a.shape == b.shape == (6, W, W)
    assert torch.equal(a[3:], b[3:])  # depth visualisation: identical
    assert (a[:3] - b[:3]).abs().max() <= 2 / 127.5 + 1e-6  # normals stored in 8 bits: at most 2 levels apart


def test_folder_with_stray_colours_fails_unless_snapped(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    (raw / "images").mkdir(parents=True)
    (raw / "conditions").mkdir()
    colors = np.broadcast_to(C.SYNTH_PALETTE[3], (H, W, 3)).copy()
    colors[0, 0] = (9, 9, 9)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(raw / "images" / "a.jpg")
    Image.fromarray(colors).save(raw / "conditions" / "a.png")
    args = [
        "prepare",
        "--dataset",
        "folder",
        "--root",
        str(raw),
        "--out",
        str(out),
        "--task",
        "mask",
        "--palette",
        "synth",
        "--size",
        "0",
        "--quiet",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "a.png" in err and "(9, 9, 9)" in err and "Traceback" not in err
    assert main(args + ["--snap"]) == 0
    labels = np.asarray(Image.open(out / "labels" / "a.png"))
    assert labels[0, 0] == 255 and (labels[0, 1:] == 3).all()  # (9, 9, 9) snaps to black = unlabelled
    assert json.loads((out / "classes.json").read_text())[3]["name"] == "grass"


def test_corrupt_files_stop_or_are_listed(tmp_path):
    raw, out = make_coco(tmp_path / "raw"), tmp_path / "out"
    (raw / "val2017" / "000000000001.jpg").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="000000000001.jpg"):
        prepare("coco-stuff", raw, out, "mask", split="val", progress=False)
    counts = prepare("coco-stuff", raw, out, "mask", split="val", skip_bad=True, progress=False)
    assert counts["skipped_bad"] == 1 and counts["written"] + counts["skipped_done"] == 2
    assert "000000000001.jpg" in (out / "skipped.txt").read_text()


def test_empty_source_says_what_was_expected(tmp_path, capsys):
    (tmp_path / "val2017").mkdir()
    assert (
        main(
            [
                "prepare",
                "--dataset",
                "coco-stuff",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--task",
                "mask",
                "--split",
                "val",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "no images found in" in err and "stuffthingmaps_trainval2017" in err
