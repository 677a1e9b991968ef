"""Dataset readers on tiny fixtures laid out like the real datasets, and their errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti.data import conditions as C
from piti.data.datasets import (
    ADE20KDataset,
    COCOStuffDataset,
    DIODEDataset,
    FolderDataset,
    PreparedDataset,
    SynthDataset,
    make_dataset,
)
from piti.data.synth import write_scenes
from piti.errors import ConfigError, DatasetError

W, H = 40, 30  # a landscape picture: the crop has to choose


def _close(a, b):
    return torch.allclose(a, b, atol=1e-6)  # x / 127.5 - 1 in float32 vs float64


def _halves(left_label, right_label):
    """An image white on the left, black on the right, and labels split the same way."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = 255
    labels = np.full((H, W), right_label, np.uint8)
    labels[:, : W // 2] = left_label
    return image, labels


def make_ade(root, n=2):
    base = root / "ADEChallengeData2016"
    for i in range(n):
        image, labels = _halves(1, 0)  # annotation 1 = "wall" (class 0), 0 = other (unlabelled)
        for split in ("training", "validation"):
            (base / "images" / split).mkdir(parents=True, exist_ok=True)
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(base / "images" / split / f"ADE_{split}_{i:08d}.jpg", quality=95)
            Image.fromarray(labels).save(base / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return root


def make_coco(root, n=2, captions=True):
    (root / "val2017").mkdir(parents=True)
    (root / "stuffthingmaps_trainval2017" / "val2017").mkdir(parents=True)
    images = []
    for i in range(n):
        image, labels = _halves(0, 255)  # person | unlabelled
        labels[0, 0] = 181  # wood
        Image.fromarray(image).save(root / "val2017" / f"{i:012d}.jpg", quality=95)
        Image.fromarray(labels).save(root / "stuffthingmaps_trainval2017" / "val2017" / f"{i:012d}.png")
        images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg"})
    if captions:
        (root / "annotations").mkdir()
        anns = [
            {"id": 9, "image_id": 100, "caption": "second caption"},
            {"id": 3, "image_id": 100, "caption": " a person "},
        ]
        anns += [{"id": 20 + i, "image_id": 100 + i, "caption": f"image {i}"} for i in range(1, n)]
        (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def make_diode(root, normals=True):
    scan = root / "val" / "outdoor" / "scene_00022" / "scan_00193"
    scan.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth = np.linspace(2, 40, H * W, dtype=np.float32).reshape(H, W, 1)
    mask = np.ones((H, W), np.float32)
    mask[:5] = 0  # sky
    Image.fromarray(image).save(scan / "00022_00193_outdoor_000_000.png")
    np.save(scan / "00022_00193_outdoor_000_000_depth.npy", depth)
    np.save(scan / "00022_00193_outdoor_000_000_depth_mask.npy", mask)
    if normals:
        n = np.zeros((H, W, 3), np.float32)
        n[..., 2] = 1  # facing the camera
        n[-1, -1] = (0, -1, 0)  # one pixel facing down: the map's minimum is -1
        np.save(scan / "00022_00193_outdoor_000_000_normal.npy", n)
    return root


def make_folder(root, task="mask"):
    (root / "images").mkdir(parents=True)
    (root / "conditions").mkdir()
    for i in range(2):
        image, labels = _halves(C.SYNTH_CLASSES.index("grass"), C.SYNTH_CLASSES.index("sky"))
        Image.fromarray(image).save(root / "images" / f"photo{i}.jpg")
        if task == "mask":
            Image.fromarray(C.labels_to_colors(labels, "synth")).save(root / "conditions" / f"photo{i}.png")
        elif task == "sketch":
            sketch = np.full((H, W), 255, np.uint8)
            sketch[:, W // 2] = 0  # a dark line on white paper
            Image.fromarray(sketch).save(root / "conditions" / f"photo{i}.png")
        else:
            np.save(root / "conditions" / f"photo{i}.npy", np.full((H, W), 3.0, np.float32))
    return root


def _check_item(item, image_size, channels, cond_size):
    assert item["image"].shape == (3, image_size, image_size) and item["image"].dtype == torch.float32
    assert item["cond"].shape == (channels, cond_size, cond_size) and item["cond"].dtype == torch.float32
    for key in ("image", "cond"):
        assert item[key].min() >= -1 and item[key].max() <= 1
    assert isinstance(item["path"], str)


# ---------------------------------------------------------------- readers


def test_ade20k_reader_maps_annotations_to_classes(tmp_path):
    ds = ADE20KDataset(make_ade(tmp_path), split="validation", image_size=16, cond_size=32, resize="squash", flip=False)
    assert len(ds) == 2
    item = ds[0]
    _check_item(item, 16, 3, 32)
    wall = torch.tensor(C.ADE20K_PALETTE[0] / 127.5 - 1, dtype=torch.float32)
    assert _close(item["cond"][:, 5, 2], wall)  # annotation 1 -> class 0 "wall"
    assert (item["cond"][:, 5, -2] == -1).all()  # annotation 0 -> unlabelled -> black
    assert item["path"].endswith("ADE_validation_00000000.jpg") and "caption" not in item
    # the root may also be the ADEChallengeData2016 folder itself, and "train" means "training"
    assert len(ADE20KDataset(tmp_path / "ADEChallengeData2016", split="train")) == 2


def test_coco_stuff_reader_with_captions(tmp_path):
    ds = COCOStuffDataset(make_coco(tmp_path), split="val", image_size=64, cond_size=32, resize="squash", flip=False)
    item = ds[0]
    _check_item(item, 64, 3, 32)
    assert item["caption"] == "a person"  # the lowest annotation id, stripped
    person = torch.tensor(C.COCO_STUFF_PALETTE[0] / 127.5 - 1, dtype=torch.float32)
    assert _close(item["cond"][:, 10, 3], person) and (item["cond"][:, 10, -3] == -1).all()
    onehot = COCOStuffDataset(tmp_path, split="val", cond_size=32, resize="squash", flip=False, mask_encoding="onehot")
    oh = onehot[0]["cond"]
    assert oh.shape == (183, 32, 32) and ((oh == 1).sum(0) <= 1).all()
    assert oh[0, 10, 3] == 1 and (oh[:, 10, -3] == -1).all()
    sketch = COCOStuffDataset(tmp_path, split="val", task="sketch", image_size=16, cond_size=32, flip=False)
    assert (sketch[0]["cond"] == -1).any()  # the edge between the halves, found by the extractor


def test_diode_reader_uses_depth_mask_and_normals(tmp_path):
    ds = DIODEDataset(make_diode(tmp_path), split="val", image_size=16, cond_size=W, resize="squash", flip=False)
    item = ds[0]
    _check_item(item, 16, 6, W)
    rows_per_out = H / W
    sky_rows = int(5 / rows_per_out)  # rows of the output that sample the masked top rows
    assert (item["cond"][:, :sky_rows] == -1).all()  # invalid: black in both visualisations
    # the given normals (0, 0, 1) appear as the official visualisation: (n - min) / 2 * 255, truncated
    expected = np.array([127, 127, 255]) / 127.5 - 1
    assert _close(item["cond"][:3, -1, 0], torch.tensor(expected, dtype=torch.float32))
    no_normals = DIODEDataset(make_diode(tmp_path / "b", normals=False), cond_size=W, resize="squash", flip=False)
    assert no_normals[0]["cond"].shape == (6, W, W)


def test_folder_reader_for_each_task(tmp_path):
    ds = FolderDataset(
        make_folder(tmp_path / "m"), task="mask", palette="synth", image_size=16, cond_size=16, flip=False
    )
    _check_item(ds[1], 16, 3, 16)
    sk = FolderDataset(
        make_folder(tmp_path / "s", "sketch"), task="sketch", image_size=16, cond_size=30, resize="center", flip=False
    )
    cond = sk[0]["cond"]
    assert (cond[0, :, 15] == -1).all()  # the line at column 20 of 40; the centre crop starts at column 5
    dp = FolderDataset(make_folder(tmp_path / "d", "depth"), task="depth", cond_size=16)
    _check_item(dp[0], 64, 6, 16)


def test_prepared_layout_reader_matches_the_synth_world(tmp_path):
    write_scenes(tmp_path, 2, size=32, seed=9, progress=False)
    for task, ch in C.TASK_CHANNELS.items():
        files = PreparedDataset(tmp_path, task, image_size=32, cond_size=32, resize="squash", flip=False)
        live = SynthDataset(2, task, seed=9, image_size=32, cond_size=32)
        a, b = files[1], live[1]
        _check_item(a, 32, ch, 32)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["cond"], b["cond"]), task
        assert a["caption"] == b["caption"] != ""


def test_synth_dataset_is_deterministic_and_sized(tmp_path):
    ds = SynthDataset(5, "sketch", seed=1, image_size=16, cond_size=64)
    a, b = ds[3], ds[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["cond"], b["cond"])
    _check_item(a, 16, 1, 64)
    assert not torch.equal(ds[2]["image"], a["image"]) and a["path"] == "synth:1/3"
    assert len(make_dataset("synth", task="depth", length=7)) == 7


def test_synth_items_carry_the_scene_labels_when_asked():
    from piti.data.conditions import resize_nearest
    from piti.data.synth import generate_scene

    plain = SynthDataset(3, "depth", seed=4, image_size=16, cond_size=32)
    ds = SynthDataset(3, "depth", seed=4, image_size=16, cond_size=32, labels=True)
    assert "labels" not in plain[1] and torch.equal(plain[1]["image"], ds[1]["image"])
    expected = resize_nearest(generate_scene((4, 1), 32).labels, (16, 16))
    item = ds[1]
    assert item["labels"].dtype == torch.int64 and np.array_equal(item["labels"].numpy(), expected)
    flipping = SynthDataset(3, "depth", seed=4, image_size=16, cond_size=32, labels=True, flip=True)
    torch.manual_seed(0)
    flips = [flipping[1] for _ in range(8)]
    for f in flips:  # the labels follow the image's flip
        same = torch.equal(f["image"], item["image"])
        assert same != torch.equal(f["image"], item["image"].flip(-1))
        assert torch.equal(f["labels"], item["labels"] if same else item["labels"].flip(-1))
    assert {torch.equal(f["image"], item["image"]) for f in flips} == {True, False}


# ---------------------------------------------------------------- geometry


def test_flip_is_applied_to_image_and_condition_together(tmp_path):
    ds = FolderDataset(
        make_folder(tmp_path), task="mask", palette="synth", image_size=30, cond_size=30, resize="center"
    )
    grass = torch.tensor(C.SYNTH_PALETTE[C.SYNTH_CLASSES.index("grass")] / 127.5 - 1, dtype=torch.float32)
    flips = set()
    torch.manual_seed(0)
    for _ in range(12):
        item = ds[0]
        image_white_left = bool(item["image"][0, 15, 0] > 0)
        cond_grass_left = _close(item["cond"][:, 15, 0], grass)
        assert image_white_left == cond_grass_left
        flips.add(image_white_left)
    assert flips == {True, False}  # both orientations happened


def test_crop_keeps_the_aspect_ratio_and_squash_keeps_everything(tmp_path):
    root = make_folder(tmp_path)
    # mark the leftmost 5 columns with another class
    for p in (root / "conditions").iterdir():
        colors = np.asarray(Image.open(p)).copy()
        colors[:, :5] = C.SYNTH_PALETTE[C.SYNTH_CLASSES.index("road")]
        Image.fromarray(colors).save(p)
    road = torch.tensor(C.SYNTH_PALETTE[C.SYNTH_CLASSES.index("road")] / 127.5 - 1, dtype=torch.float32)
    squash = FolderDataset(root, task="mask", palette="synth", cond_size=40, resize="squash", flip=False)[0]["cond"]
    center = FolderDataset(root, task="mask", palette="synth", cond_size=30, resize="center", flip=False)[0]["cond"]
    assert _close(squash[:, 20, 0], road)  # squash: the whole width is there
    assert not _close(center[:, 20, 0], road)  # centre crop 30 of 40 columns: the 5 road columns are cut
    torch.manual_seed(0)
    crops = [FolderDataset(root, task="mask", palette="synth", cond_size=30, flip=False)[0]["cond"] for _ in range(20)]
    assert len({bool(_close(c[:, 20, 0], road)) for c in crops}) == 2  # random crops: both happen


# ---------------------------------------------------------------- bad input


def test_empty_or_missing_folders_name_the_folder_and_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "conditions").mkdir()
    with pytest.raises(DatasetError, match=f"(?s)no images found in {tmp_path / 'images'}.*ROOT/conditions/STEM"):
        FolderDataset(tmp_path)
    with pytest.raises(DatasetError, match="(?s)does not exist.*ADEChallengeData2016"):
        ADE20KDataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="(?s)val2017 not found.*stuffthingmaps_trainval2017"):
        COCOStuffDataset(tmp_path, split="val")
    with pytest.raises(ConfigError, match="supports tasks"):
        ADE20KDataset(tmp_path, task="depth")


def test_unmatched_stems_and_sizes_name_both_files(tmp_path):
    root = make_folder(tmp_path)
    (root / "conditions" / "photo1.png").rename(root / "conditions" / "other.png")
    with pytest.raises(DatasetError, match="(?s)photo1.jpg.*other.png"):
        FolderDataset(root, palette="synth")
    (root / "conditions" / "other.png").rename(root / "conditions" / "photo1.png")
    Image.new("RGB", (W + 2, H), tuple(C.SYNTH_PALETTE[0].tolist())).save(root / "conditions" / "photo1.png")
    ds = FolderDataset(root, palette="synth")
    with pytest.raises(DatasetError, match="photo1.jpg is 40x30.*photo1.png is 42x30"):
        ds[1]


def test_corrupt_image_and_stray_colours_are_named(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "photo0.jpg").write_bytes(b"this is not a jpeg")
    ds = FolderDataset(root, palette="synth")
    with pytest.raises(DatasetError, match="photo0.jpg: not a readable image"):
        ds[0]
    colors = np.asarray(Image.open(root / "conditions" / "photo1.png")).copy()
    colors[0, 0] = (1, 2, 3)
    Image.fromarray(colors).save(root / "conditions" / "photo1.png")
    with pytest.raises(DatasetError, match="photo1.png.*\\(1, 2, 3\\)"):
        ds[1]
    assert FolderDataset(root, palette="synth", snap=True)[1]["cond"].shape == (3, 256, 256)


def test_missing_annotation_is_named(tmp_path):
    make_ade(tmp_path)
    missing = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_validation_00000001.png"
    missing.unlink()
    with pytest.raises(DatasetError, match="ADE_validation_00000001.jpg"):
        ADE20KDataset(tmp_path, split="validation")
