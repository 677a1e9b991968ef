"""Conditions: palettes, sketches, depth, the null condition and condition_tensor."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from piti.data import conditions as C
from piti.errors import ConditionError, ConfigError

# ---------------------------------------------------------------- palettes


def test_coco_palette_is_pix2pixhd_bit_interleaved_with_label_plus_one():
    pal = C.COCO_STUFF_PALETTE
    assert pal.shape == (183, 3) and pal.dtype == np.uint8
    # worked out by hand: label i takes id i+1; id bit 3k -> red bit 7-k, 3k+1 -> green, 3k+2 -> blue
    assert pal[0].tolist() == [128, 0, 0]  # id 1 = 0b001
    assert pal[1].tolist() == [0, 128, 0]  # id 2 = 0b010
    assert pal[2].tolist() == [128, 128, 0]  # id 3 = 0b011
    assert pal[3].tolist() == [0, 0, 128]  # id 4 = 0b100
    assert pal[6].tolist() == [128, 128, 128]  # id 7 = 0b111
    assert pal[7].tolist() == [64, 0, 0]  # id 8 = 0b001000: bit 3 -> red bit 6
    assert pal[62].tolist() == [192, 192, 192]  # id 63 = 0b111111: bits 0-2 -> 128 each, bits 3-5 -> 64 each
    assert len(np.unique(pal, axis=0)) == 183


def test_palettes_sizes_names_and_no_black():
    assert C.ADE20K_PALETTE.shape == (150, 3) and len(C.ADE20K_CLASSES) == 150
    assert (
        len(C.COCO_STUFF_CLASSES) == 183 and C.COCO_STUFF_CLASSES[0] == "person" and C.COCO_STUFF_CLASSES[181] == "wood"
    )
    # index 182 ("other") is the colour the official preprocessing gives the label after the 182 classes
    assert C.COCO_STUFF_CLASSES[182] == "other" and C.COCO_STUFF_PALETTE[182].tolist() == [128, 224, 192]
    assert len(C.SYNTH_CLASSES) >= 8
    for pal, _ in C.PALETTES.values():
        assert not (pal == 0).all(1).any()


@pytest.mark.parametrize("name", ["coco-stuff", "ade20k", "synth"])
def test_palette_round_trip_including_unlabelled(name):
    pal = C.get_palette(name)
    labels = np.concatenate([np.arange(len(pal)), [255, 255]]).astype(np.uint8)
    labels = np.tile(labels, (3, 1))  # (3, n+2)
    colors = C.labels_to_colors(labels, name)
    assert (colors[:, -1] == 0).all()  # 255 -> black
    assert (colors[0, : len(pal)] == pal).all()
    back = C.colors_to_labels(colors, name)
    assert back.dtype == np.uint8 and (back == labels).all()


def test_unknown_colours_are_named_with_the_source_or_snapped():
    colors = C.labels_to_colors(np.zeros((4, 4), np.uint8), "synth")
    colors[0, 0] = (1, 2, 3)
    colors[1, :2] = (111, 181, 254)  # next to the sky colour (110, 180, 255)
    with pytest.raises(ConditionError) as e:
        C.colors_to_labels(colors, "synth", source="masks/x.png")
    msg = str(e.value)
    assert "masks/x.png" in msg and "(111, 181, 254) x2" in msg and "(1, 2, 3) x1" in msg and "snap" in msg
    snapped = C.colors_to_labels(colors, "synth", snap=True)
    assert snapped[1, 0] == C.SYNTH_CLASSES.index("sky")
    assert snapped[0, 0] == 255  # (1, 2, 3) is nearest to black = unlabelled


def test_labels_outside_the_palette_are_rejected_and_one_hot():
    with pytest.raises(ConditionError, match="found \\[200\\]"):
        C.labels_to_colors(np.array([[0, 200]], np.uint8), "synth")
    oh = C.one_hot(np.array([[0, 2], [255, 1]]), 3)
    assert oh.shape == (3, 2, 2)
    assert oh[:, 0, 0].tolist() == [1, 0, 0] and oh[:, 0, 1].tolist() == [0, 0, 1]
    assert oh[:, 1, 0].tolist() == [0, 0, 0]  # unlabelled: no class


# ---------------------------------------------------------------- sketches


def test_distance_transform_against_hand_computed_values():
    sketch = np.zeros((3, 4), np.uint8)
    sketch[0, 0] = 255
    sketch[2, 3] = 255
    # city-block distance to the nearest of the two edge pixels, by hand
    expected = np.array([[0, 1, 2, 2], [1, 2, 2, 1], [2, 2, 1, 0]], np.float32)
    out = C.sketch_to_distance(sketch)
    assert out.shape == (1, 3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected / 127.5 - 1, atol=1e-6)


def test_distance_is_clipped_at_255_and_empty_sketch_is_the_null_condition():
    row = np.zeros((1, 300), np.uint8)
    row[0, 0] = 255
    out = C.sketch_to_distance(row)[0, 0]
    assert out[0] == -1.0 and out[10] == pytest.approx(10 / 127.5 - 1)
    assert (out[255:] == 1.0).all()  # 255 and beyond: clipped
    empty = C.sketch_to_distance(np.zeros((5, 5), np.uint8))
    assert torch.equal(torch.from_numpy(empty), C.null_condition(torch.zeros(1, 5, 5)))


def test_binarize_user_sketches():
    white_on_black = np.zeros((8, 8), np.uint8)
    white_on_black[4, 1:7] = 255
    black_on_white = 255 - white_on_black
    assert (C.binarize_sketch(white_on_black) == white_on_black).all()
    assert (C.binarize_sketch(Image.fromarray(black_on_white)) == white_on_black).all()
    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent layer with black strokes
    rgba[4, 1:7, 3] = 255
    assert (C.binarize_sketch(Image.fromarray(rgba, "RGBA")) == white_on_black).all()


def test_extract_sketch_finds_the_outline_of_a_square():
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 255
    edges = C.extract_sketch(img)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    assert edges[8:24, 7:9].any() and edges[7:9, 8:24].any()  # left and top borders
    assert not edges[12:20, 12:20].any() and not edges[:4, :].any()  # flat areas stay empty


# ---------------------------------------------------------------- depth


def _official_depth_png(depth, valid):
    """The official DIODE visualisation, written with matplotlib as their script does."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    d_max = min(300, np.percentile(depth, 99))
    dm = np.ma.masked_where(~valid, np.log(np.clip(depth, 0.5, d_max)))
    cmap = plt.cm.jet.with_extremes(bad="black")
    image = cmap(plt.Normalize(vmin=0, vmax=np.log(d_max + 1.01))(dm))
    buf = io.BytesIO()
    plt.imsave(buf, np.clip(image, 0.0, 1.0), format="png")
    return np.asarray(Image.open(buf).convert("RGB"))


def test_depth_visualisation_matches_the_official_matplotlib_output():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 400, (24, 30)).astype(np.float32)
    valid = rng.random((24, 30)) > 0.2
    ours = C.depth_visualization(np.where(valid, depth, 0), valid)
    assert (ours == _official_depth_png(np.where(valid, depth, 0), valid)).all()
    assert (ours[~valid] == 0).all()


def test_normals_of_planes():
    h = w = 16
    wall = C.normals_from_depth(np.full((h, w), 5.0, np.float32))
    np.testing.assert_allclose(wall[2:-2, 2:-2], np.broadcast_to([0, 0, 1], (h - 4, w - 4, 3)), atol=1e-5)
    # a ground plane seen from 2 m: depth = 2 f / (row - horizon) below a horizon at row 3.5
    f = 0.5 * w / np.tan(np.radians(C.FOV_DEGREES) / 2)
    rows = np.arange(h, dtype=np.float32)[:, None] - 3.5
    ground = np.where(rows > 0, 2 * f / np.maximum(rows, 1e-3), 0).astype(np.float32) * np.ones((1, w), np.float32)
    n = C.normals_from_depth(ground)
    assert (n[:4] == 0).all()  # no depth above the horizon: no normal
    below = n[6:, :]
    np.testing.assert_allclose(below, np.broadcast_to(below[0, 0], below.shape), atol=1e-4)  # flat
    # up, tilted towards the camera by the pitch that puts the horizon above the centre row 7.5
    tilt = (7.5 - 3.5) / f
    np.testing.assert_allclose(below[0, 0], np.array([0, 1, tilt]) / np.hypot(1, tilt), atol=1e-4)


def test_depth_to_condition_shape_range_and_invalid_black():
    depth = np.linspace(1, 50, 20 * 20, dtype=np.float32).reshape(20, 20)
    depth[:5] = 0  # invalid (e.g. sky)
    cond = C.depth_to_condition(depth)
    assert cond.shape == (6, 20, 20) and cond.dtype == np.float32
    assert cond.min() >= -1 and cond.max() <= 1
    assert (cond[:, :5] == -1).all()  # black in both visualisations


def test_null_condition_is_all_ones_everywhere():
    like = torch.randn(2, 3, 8, 8)
    assert torch.equal(C.null_condition(like), torch.ones(2, 3, 8, 8))
    assert C.null_condition((1, 6, 4, 4)).shape == (1, 6, 4, 4)
    assert (C.null_condition(np.zeros((1, 2), np.float32)) == 1).all()


# ---------------------------------------------------------------- condition_tensor


def _synth_mask(h=20, w=30):
    labels = np.zeros((h, w), np.uint8)
    labels[h // 2 :] = C.SYNTH_CLASSES.index("grass")
    return labels, C.labels_to_colors(labels, "synth")


def test_condition_tensor_mask_modes():
    labels, colors = _synth_mask()
    t = C.condition_tensor("mask", Image.fromarray(colors), size=16, palette="synth")[0]
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    grass = torch.tensor(C.SYNTH_PALETTE[C.SYNTH_CLASSES.index("grass")] / 127.5 - 1, dtype=torch.float32)
    assert torch.allclose(t[:, -1, 0], grass)
    # RGBA: transparent pixels become unlabelled (black); the rest is unchanged
    rgba = np.concatenate([colors, np.full(colors.shape[:2] + (1,), 255, np.uint8)], 2)
    rgba[:2, :, 3] = 0
    t2 = C.condition_tensor("mask", Image.fromarray(rgba, "RGBA"), size=20, palette="synth")[0]
    assert (t2[:, :2] == -1).all() and torch.allclose(t2[:, -1, 0], grass)
    # palette-mode picture and a grey label-index picture give the same tensor as RGB
    p_mode = Image.fromarray(colors).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert torch.equal(C.condition_tensor("mask", p_mode, 16, "synth")[0], t)
    assert torch.equal(C.condition_tensor("mask", Image.fromarray(labels, "L"), 16, "synth")[0], t)
    # a huge picture is resized, not rejected
    big = Image.fromarray(colors).resize((3000, 2000), Image.NEAREST)
    assert C.condition_tensor("mask", big, 16, "synth")[0].shape == (3, 16, 16)


def test_condition_tensor_mask_errors():
    with pytest.raises(ConditionError, match="empty"):
        C.condition_tensor("mask", Image.new("RGB", (8, 8)), 8, "synth")[0]
    _, colors = _synth_mask()
    colors[0, 0] = (7, 7, 7)
    with pytest.raises(ConditionError, match="user_mask.png.*\\(7, 7, 7\\)"):
        C.condition_tensor("mask", colors, 8, "synth", source="user_mask.png")[0]
    assert C.condition_tensor("mask", colors, 8, "synth", snap=True)[0].shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="unknown task"):
        C.condition_tensor("edges", colors)[0]


def test_condition_tensor_sketch():
    canvas = np.full((40, 40), 255, np.uint8)  # dark lines drawn on white paper
    canvas[20, 5:35] = 0
    t = C.condition_tensor("sketch", Image.fromarray(canvas), size=40)[0]
    assert t.shape == (1, 40, 40) and t[0, 20, 10] == -1
    assert t[0, 0, 0] == pytest.approx((20 + 5) / 127.5 - 1)  # 20 rows and 5 columns from the line
    assert torch.equal(C.condition_tensor("sketch", 255 - canvas, size=40)[0], t)
    # thin lines survive a 4x reduction
    big = np.zeros((160, 160), np.uint8)
    big[81, :] = 255
    assert (C.condition_tensor("sketch", big, size=40)[0][0].min(1).values == -1).sum() >= 1
    with pytest.raises(ConditionError, match="no lines"):
        C.condition_tensor("sketch", Image.new("L", (32, 32)), 32)[0]
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[16:48, 16:48] = 200
    assert (C.condition_tensor("sketch", photo, size=32, from_photo=True)[0] == -1).any()


def test_condition_tensor_depth():
    depth = np.round(np.linspace(1, 20, 30 * 30).reshape(30, 30) * 256).astype(np.float32) / 256  # PNG-exact
    t = C.condition_tensor("depth", depth, size=16)[0]
    assert t.shape == (6, 16, 16)
    pair = np.concatenate([np.full((10, 10, 3), 255, np.uint8), np.zeros((10, 10, 3), np.uint8)], 2)
    t2 = C.condition_tensor("depth", pair, size=8)[0]
    assert (t2[:3] == 1).all() and (t2[3:] == -1).all()
    # a 16-bit PNG of metres x 256 equals the float map it stores
    png = Image.fromarray(np.round(depth * C.DEPTH_PNG_SCALE).astype(np.uint16))
    assert torch.equal(C.condition_tensor("depth", png, size=16)[0], t)
    with pytest.raises(ConditionError, match="not a depth map"):
        C.condition_tensor("depth", Image.new("RGB", (8, 8)), 8)[0]
    with pytest.raises(ConditionError, match="no valid"):
        C.condition_tensor("depth", np.zeros((8, 8), np.float32), 8)[0]


def test_nearest_resize_matches_pil():
    x = np.random.default_rng(1).integers(0, 255, (37, 53), dtype=np.uint8)
    for size, box in [((64, 100), None), ((10, 7), None), ((32, 32), (10, 0, 47, 37))]:
        ref = Image.fromarray(x).resize(size[::-1], Image.NEAREST, box=box)
        assert (np.asarray(ref) == C.resize_nearest(x, size, box)).all()
