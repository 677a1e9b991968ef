"""Conditions: what PITI translates from, and how each becomes the model's input.

Three tasks, each with one encoding fixed by the official code (PITI-Synthesis/PITI):

* ``mask``: a semantic label map drawn as an RGB colour map (not one-hot),
  3 channels. COCO-Stuff uses pix2pixHD's bit-interleaved ``labelcolormap``
  (label i gets the colour of id i+1; label 255 = unlabelled stays black).
* ``sketch``: white edges on black, encoded as the L1 distance transform of the
  inverted sketch, clipped to 0..255, 1 channel.
* ``depth``: the DIODE visualisations, normals then depth, 6 channels.

Every condition is a float tensor in [-1, 1] (``x / 127.5 - 1`` of the 8-bit
picture); the classifier-free-guidance null condition is the all-ones image,
defined once here in :func:`null_condition`. :func:`condition_tensor` is the
one place where a user's condition picture becomes the model's input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from piti.data.imageio import read_array, read_image
from piti.data.palettes import (  # noqa: F401  (re-exported: the palettes belong with the conditions' API)
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    PALETTES,
    SYNTH_CLASSES,
    SYNTH_PALETTE,
    _palette_name,
    get_palette,
    labelcolormap,
)
from piti.errors import ConditionError, ConfigError, DatasetError
from piti.tasks import TASK_CHANNELS

UNLABELLED = 255  # label index of "no class"; drawn black in every palette
DEPTH_PNG_SCALE = 256.0  # 16-bit depth PNGs of the training layout store round(metres * 256); 0 = invalid


# --------------------------------------------------------------------------- palettes (piti.data.palettes)


def labels_to_colors(labels: np.ndarray, palette="coco-stuff") -> np.ndarray:
    """Class indices (any shape) to RGB colours (shape + (3,)), uint8; 255 (unlabelled) -> black.

    Raises ConditionError for indices that are neither a class of the palette nor 255.
    """
    pal = get_palette(palette)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise ConditionError(f"label maps must hold integers, got dtype {labels.dtype}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(pal)] = pal
    known = np.zeros(256, dtype=bool)
    known[: len(pal)] = True
    known[UNLABELLED] = True
    if labels.dtype != np.uint8:
        outside = (labels < 0) | (labels > 255)
        if outside.any():
            raise ConditionError(
                f"label values must be 0..{len(pal) - 1} or 255, found {np.unique(labels[outside])[:5].tolist()}"
            )
        labels = labels.astype(np.uint8)
    bad = ~known[labels]
    if bad.any():
        raise ConditionError(
            f"label values must be 0..{len(pal) - 1} (the {_palette_name(palette)}) or 255, "
            f"found {np.unique(labels[bad])[:5].tolist()}"
        )
    return lut[labels]


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> int32 keys 0xRRGGBB."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colors_to_labels(colors: np.ndarray, palette="coco-stuff", snap: bool = False, source=None) -> np.ndarray:
    """RGB colour map (H, W, 3) uint8 to class indices (H, W) uint8, exactly and vectorised.

    Black maps to 255 (unlabelled). A colour that is no class of the palette is an
    error naming ``source`` (a file name or description) and the first few unknown
    colours with their pixel counts, unless ``snap=True``: then each unknown colour
    takes the class of the nearest palette colour (Euclidean in RGB, black included).
    """
    pal = get_palette(palette)
    colors = np.asarray(colors)
    if colors.ndim != 3 or colors.shape[2] != 3 or colors.dtype != np.uint8:
        raise ConditionError(
            f"{source or 'colour map'}: expected an (H, W, 3) uint8 colour map, "
            f"got shape {colors.shape} dtype {colors.dtype}"
        )
    # the lookup table: palette colours -> their index, black -> 255, sorted by packed key
    table_rgb = np.concatenate([pal, np.zeros((1, 3), np.uint8)])
    table_lab = np.concatenate([np.arange(len(pal)), [UNLABELLED]]).astype(np.uint8)
    keys = _pack(table_rgb)
    order = np.argsort(keys)
    keys, table_lab, table_rgb = keys[order], table_lab[order], table_rgb[order]

    key = _pack(colors)
    pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
    found = keys[pos] == key
    labels = table_lab[pos]
    if found.all():
        return labels
    unknown, inverse, counts = np.unique(key[~found], return_inverse=True, return_counts=True)
    if not snap:
        top = np.argsort(-counts, kind="stable")[:5]
        listed = ", ".join(
            f"({u >> 16}, {(u >> 8) & 255}, {u & 255}) x{c}"
            for u, c in zip(unknown[top].tolist(), counts[top].tolist())
        )
        raise ConditionError(
            f"{source or 'colour map'}: {int((~found).sum())} pixels in {len(unknown)} colours are not in the "
            f"{_palette_name(palette)}; most frequent: {listed}. Use a colour map drawn with that palette, "
            f"or pass snap=True (CLI: --snap) to map each colour to the nearest class colour"
        )
    # nearest palette colour for each distinct unknown colour, then scatter back
    u_rgb = np.stack([unknown >> 16, (unknown >> 8) & 255, unknown & 255], axis=1).astype(np.float32)
    d2 = ((u_rgb[:, None, :] - table_rgb[None].astype(np.float32)) ** 2).sum(-1)
    labels[~found] = table_lab[d2.argmin(1)][inverse.reshape(-1)]
    return labels


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """Class indices (H, W) to a float32 one-hot map (n, H, W); 255 (unlabelled) -> all zeros."""
    labels = np.asarray(labels).astype(np.int64)
    bad = (labels < 0) | ((labels >= n) & (labels != UNLABELLED))
    if bad.any():
        raise ConditionError(f"label values must be 0..{n - 1} or 255, found {np.unique(labels[bad])[:5].tolist()}")
    return (labels[None] == np.arange(n)[:, None, None]).astype(np.float32)


# --------------------------------------------------------------------------- sketches


def extract_sketch(image, low: float = 80.0, high: float = 160.0, blur: bool = True) -> np.ndarray:
    """Edges of a photo as a binary sketch (H, W) uint8, white (255) edges on black (0).

    Canny on the grey image (after a 3x3 Gaussian blur when ``blur``), hysteresis
    thresholds ``low``/``high`` on the L2 gradient magnitude. No downloaded weights;
    it stands in for the HED detector that the official sketch datasets used.
    """
    rgb = _as_uint8_rgb(image)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if blur:
        gray = cv2.GaussianBlur(gray, (3, 3), 0)
    return cv2.Canny(gray, low, high, L2gradient=True)


def binarize_sketch(image, threshold: int = 128) -> np.ndarray:
    """A user's sketch (PIL image or array, any mode) as (H, W) uint8 {0, 255}, white lines on black.

    Conversions: with a transparency channel that is not fully opaque, the opaque
    pixels are the strokes (a drawing layer); otherwise the picture is made grey and
    thresholded, and a mostly-bright picture (dark lines on white paper) is inverted,
    since strokes are always the minority of a sketch.
    """
    if isinstance(image, Image.Image):
        if image.mode == "P":
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            alpha = np.asarray(image.getchannel("A"))
            if alpha.min() < 255:
                return np.where(alpha >= threshold, 255, 0).astype(np.uint8)
        if image.mode in ("1", "I;16", "I", "F"):
            arr = np.asarray(image).astype(np.float32)
            gray = arr * (255.0 / max(float(arr.max()), 1.0))
        else:
            gray = np.asarray(image.convert("L")).astype(np.float32)
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 4 and arr[..., 3].min() < 255:
            return np.where(arr[..., 3] >= threshold, 255, 0).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., :3].astype(np.float32).mean(-1)
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ConditionError(
                f"a sketch must be an (H, W) or (H, W, 1|3|4) picture, got shape {np.asarray(image).shape}"
            )
        if arr.dtype == bool:
            gray = arr.astype(np.float32) * 255
        elif arr.dtype.kind == "f" and arr.max() <= 1.0:
            gray = arr.astype(np.float32) * 255
        else:
            gray = arr.astype(np.float32)
    edges = gray >= threshold
    if edges.mean() > 0.5:  # dark lines on a bright background
        edges = ~edges
    return np.where(edges, 255, 0).astype(np.uint8)


def sketch_to_distance(sketch: np.ndarray) -> np.ndarray:
    """The official sketch encoding: (H, W) binary sketch -> float32 (1, H, W) in [-1, 1].

    Pixels > 127 are edges. The L1 (city-block) distance of every pixel to the
    nearest edge pixel (``cv2.distanceTransform(255 - sketch, DIST_L1, 3)``, which is
    exact for L1), clipped to 0..255, then ``/ 127.5 - 1``: -1 on the lines, rising
    by 2/255 per pixel away from them. A sketch without edges gives all ones, which
    is the null condition.
    """
    sketch = np.asarray(sketch)
    if sketch.ndim != 2:
        raise ConditionError(f"a sketch must be (H, W), got shape {sketch.shape}")
    inverted = np.where(sketch > 127, 0, 255).astype(np.uint8)
    dist = cv2.distanceTransform(inverted, cv2.DIST_L1, 3)
    dist = np.clip(dist, 0, 255).astype(np.uint8)  # float -> uint8 truncation, as the official code
    return (dist.astype(np.float32) / 127.5 - 1.0)[None]


# --------------------------------------------------------------------------- depth

# matplotlib's "jet" segment data (x, y) per channel; sampled into 256 entries as matplotlib does
_JET = {
    "r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_X256 = np.linspace(0.0, 1.0, 256)
# 8-bit jet colours as plt.imsave writes them (float * 255, truncated)
JET_LUT = (np.stack([np.interp(_X256, *zip(*_JET[c])) for c in "rgb"], 1) * 255).astype(np.uint8)

DEPTH_MIN = 0.5  # metres; DIODE visualisation range is [0.5, min(300, 99th percentile)]
DEPTH_MAX = 300.0
FOV_DEGREES = 60.0  # horizontal field of view assumed when normals are derived from depth


def depth_visualization(depth: np.ndarray, valid_mask: np.ndarray | None = None) -> np.ndarray:
    """DIODE depth visualisation: (H, W) metres -> (H, W, 3) uint8 jet colours, invalid pixels black.

    As the official preprocessing: depth clipped to [0.5, min(300, 99th percentile
    of all pixels)], log, normalised by log(max + 1.01), ``jet``.
    """
    depth, valid = _depth_and_mask(depth, valid_mask)
    d_max = min(DEPTH_MAX, float(np.percentile(depth, 99)))
    d = np.clip(depth, DEPTH_MIN, max(d_max, DEPTH_MIN))
    norm = np.log(d) / np.log(d_max + 1.01)
    # matplotlib Colormap: index floor(x * 256), x == 1 -> 255, out of range -> the end colours
    idx = np.clip((norm * 256).astype(np.int64), 0, 255)
    out = JET_LUT[idx]
    out[~valid] = 0
    return out


def normals_from_depth(depth: np.ndarray, valid_mask: np.ndarray | None = None, fov: float = FOV_DEGREES) -> np.ndarray:
    """Surface normals (H, W, 3) float32 from a depth map, unit length, zero where invalid.

    The pixels are back-projected through a pinhole camera with horizontal field of
    view ``fov`` (camera axes x right, y up, z towards the viewer, as in OpenGL) and
    the normal is the cross product of the tangents along the rows and columns.
    Each tangent takes the one-sided difference with the smaller depth change, so
    occlusion edges do not smear.
    """
    depth, valid = _depth_and_mask(depth, valid_mask)
    h, w = depth.shape
    f = 0.5 * w / np.tan(np.radians(fov) / 2)
    u = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / f)[None, :]
    v = (((h - 1) / 2 - np.arange(h, dtype=np.float32)) / f)[:, None]
    d = np.where(valid, depth, np.float32(np.nan))
    # back-projected point of each pixel: P = (u d, v d, -d)

    def steps(a, axis):
        """Forward and backward differences of ``a`` along ``axis`` (NaN past the border), as views."""
        shape = (h + 1, w) if axis == 0 else (h, w + 1)
        out = np.full(shape, np.nan, np.float32)
        inner = (slice(1, -1), slice(None)) if axis == 0 else (slice(None), slice(1, -1))
        np.subtract(*((a[1:], a[:-1]) if axis == 0 else (a[:, 1:], a[:, :-1])), out=out[inner])
        return (out[1:], out[:-1]) if axis == 0 else (out[:, 1:], out[:, :-1])

    def tangent(axis, moving):
        """Change of depth and of the coordinate that varies along ``axis`` (``moving`` = v d or u d),
        from the side where the depth changes less, so occlusion edges do not smear."""
        fd, bd = steps(d, axis)
        fm, bm = steps(moving, axis)
        use_bwd = np.isnan(fd) | (np.abs(bd) < np.abs(fd))
        return np.where(use_bwd, bd, fd), np.where(use_bwd, bm, fm)

    dd_r, dy_r = tangent(0, v * d)  # along a column (down the rows): P_r = (u dd, dy, -dd)
    dd_c, dx_c = tangent(1, u * d)  # along a row: P_c = (dx, v dd, -dd)
    ax, ay, az = u * dd_r, dy_r, -dd_r
    bx, by, bz = dx_c, v * dd_c, -dd_c
    n = np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=-1)  # P_r x P_c: to the camera
    length = np.sqrt((n * n).sum(-1, keepdims=True))
    ok = valid[..., None] & (length > 0)  # NaN lengths compare False
    return np.where(ok, n / np.where(ok, length, 1.0), 0.0).astype(np.float32)


def normal_visualization(normals: np.ndarray) -> np.ndarray:
    """DIODE normal visualisation: (H, W, 3) normals in [-1, 1] -> (H, W, 3) uint8.

    As the official preprocessing: zero vectors (invalid) are set to the map's
    minimum, then ``(n - min) / 2`` clipped to [0, 1], written as 8 bits (truncated).
    """
    n = np.asarray(normals, dtype=np.float32)
    lo = float(n.min()) if n.size else 0.0
    n = n + (n.sum(2, keepdims=True) == 0) * lo
    viz = np.clip((n - n.min()) / 2.0, 0.0, 1.0)
    return (viz * 255).astype(np.uint8)


def depth_to_condition(
    depth: np.ndarray, valid_mask: np.ndarray | None = None, normals: np.ndarray | None = None
) -> np.ndarray:
    """The 6-channel depth condition: float32 (6, H, W) in [-1, 1], normals then depth.

    ``depth`` in metres; ``valid_mask`` marks measured pixels (default: finite and > 0);
    ``normals`` (H, W, 3), e.g. DIODE's ``_normal.npy`` (zeroed where the depth is
    invalid), else derived with :func:`normals_from_depth`. Both visualisations are quantised to 8 bits first, so
    this equals reading the official PNGs.
    """
    depth, valid = _depth_and_mask(depth, valid_mask)
    if normals is None:
        normals = normals_from_depth(depth, valid)
    elif np.shape(normals) != depth.shape + (3,):
        raise ConditionError(f"normals must have shape {depth.shape + (3,)}, got {np.shape(normals)}")
    else:
        normals = np.where(valid[..., None], normals, 0.0)  # no depth, no normal: black as well
    pair = np.concatenate([normal_visualization(normals), depth_visualization(depth, valid)], axis=2)
    return to_unit(pair)


def _depth_and_mask(depth, valid_mask):
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ConditionError(f"a depth map must be (H, W) metres, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    if valid_mask is not None:
        valid_mask = np.asarray(valid_mask)
        if valid_mask.ndim == 3 and valid_mask.shape[2] == 1:
            valid_mask = valid_mask[..., 0]
        if valid_mask.shape != depth.shape:
            raise ConditionError(f"depth mask shape {valid_mask.shape} differs from depth shape {depth.shape}")
        valid &= valid_mask > 0
    return np.where(valid, depth, 0.0).astype(np.float32), valid


# --------------------------------------------------------------------------- the model's input


def null_condition(like_or_shape, device=None, dtype=torch.float32):
    """The classifier-free-guidance null condition: the official all-ones image.

    ``like_or_shape``: a condition tensor or array (the result has its shape, type
    and device) or a shape such as ``(B, C, H, W)`` (gives a float32 torch tensor).
    """
    if isinstance(like_or_shape, torch.Tensor):
        return torch.ones_like(like_or_shape)
    if isinstance(like_or_shape, np.ndarray):
        return np.ones_like(like_or_shape)
    return torch.ones(tuple(like_or_shape), device=device, dtype=dtype)


def to_unit(pic: np.ndarray) -> np.ndarray:
    """An 8-bit picture (H, W, C) or (H, W) -> float32 (C, H, W) in [-1, 1]: ``x / 127.5 - 1``, as the official code."""
    pic = np.asarray(pic)
    if pic.ndim == 2:
        pic = pic[..., None]
    return np.ascontiguousarray(pic.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0


def resize_nearest(
    array: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Nearest-neighbour resize of any (H, W, ...) array to ``size = (height, width)``.

    Samples pixel centres like PIL's ``Image.NEAREST`` (which the official code uses
    for conditions), for every dtype: labels, uint16 depth, float depth, masks.
    ``box = (x0, y0, x1, y1)`` resizes only that source region, as PIL's ``box=``.
    """
    h, w = array.shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
    out_h, out_w = size
    rows = np.minimum((y0 + (np.arange(out_h) + 0.5) * ((y1 - y0) / out_h)).astype(np.int64), h - 1)
    cols = np.minimum((x0 + (np.arange(out_w) + 0.5) * ((x1 - x0) / out_w)).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


def resize_sketch(sketch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a binary sketch so thin lines survive: area average and re-threshold when shrinking.

    Nearest when enlarging. A shrunk pixel is an edge when at least a quarter of
    its area was, so 1-pixel lines survive up to 4x reduction.
    """
    h, w = sketch.shape
    if (h, w) == tuple(size):
        return sketch
    if size[0] >= h and size[1] >= w:
        return resize_nearest(sketch, size)
    area = cv2.resize(np.ascontiguousarray(sketch), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.where(area >= 64, 255, 0).astype(np.uint8)


def _as_uint8_rgb(image) -> np.ndarray:
    """A photo (PIL any mode, or (H, W[, 3|4]) array) as (H, W, 3) uint8; alpha is dropped."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ConditionError(f"expected an (H, W, 3) picture, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def picture_to_labels(image, palette="coco-stuff", snap: bool = False, source=None) -> np.ndarray:
    """A mask picture (PIL any mode, or array) -> (H, W) uint8 class indices, checked against the palette.

    RGB(A) colour maps go through :func:`colors_to_labels` (transparent pixels are
    unlabelled); grey 'L' pictures and integer (H, W) arrays are class indices.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("L", "I", "I;16"):  # a grey picture is read as class indices
            return _checked_labels(np.asarray(image), palette, source)
        image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "PA", "P") else image.convert("RGB")
        arr = np.asarray(image)
    else:
        arr = np.asarray(image)
        if arr.ndim == 2 and arr.dtype.kind in "iu":
            return _checked_labels(arr, palette, source)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise ConditionError(
            f"{source or 'mask'}: expected an RGB colour map (H, W, 3) uint8 or a label map (H, W) of integers, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    if arr.shape[2] == 4:  # transparent pixels are unlabelled
        arr = np.where(arr[..., 3:] >= 128, arr[..., :3], 0).astype(np.uint8)
    return colors_to_labels(np.ascontiguousarray(arr), palette, snap=snap, source=source)


def _checked_labels(labels, palette, source):
    try:
        labels_to_colors(labels, palette)
    except ConditionError as e:
        raise ConditionError(f"{source or 'label map'}: {e}") from None
    return np.asarray(labels).astype(np.uint8)


def _depth_pair(image, source) -> np.ndarray | None:
    """A pair of 8-bit visualisations (normal, depth) as (H, W, 6) uint8, or None if ``image`` is not one."""
    if isinstance(image, (tuple, list)) and len(image) == 2:
        parts = [_as_uint8_rgb(open_condition(p) if isinstance(p, (str, Path)) else p) for p in image]
        if parts[0].shape != parts[1].shape:
            raise ConditionError(
                f"{source or 'depth'}: normal and depth pictures differ in size: {parts[0].shape} vs {parts[1].shape}"
            )
        return np.concatenate(parts, axis=2)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 6:
        if image.dtype != np.uint8:
            raise ConditionError(
                f"{source or 'depth'}: a 6-channel pair of visualisations must be uint8, got {image.dtype}"
            )
        return image
    return None


def _depth_metres(image, source) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I"):
            return np.asarray(image).astype(np.float32) / DEPTH_PNG_SCALE
        if image.mode == "F":
            return np.asarray(image, dtype=np.float32)
        raise ConditionError(
            f"{source or 'depth'}: an 8-bit {image.mode} picture is not a depth map. Give depth in metres "
            f"(a float array or a 16-bit PNG storing metres x {DEPTH_PNG_SCALE:g}), "
            "or the pair (normal, depth) of visualisations"
        )
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu" or arr.dtype == np.uint8:
        raise ConditionError(
            f"{source or 'depth'}: expected depth in metres as an (H, W) float array, or an (H, W, 6) uint8 "
            f"pair of visualisations, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr.astype(np.float32)


LARGE_FACTOR = 4  # a mask or depth picture above this many times the target size is first reduced (nearest)


def open_condition(path):
    """Read a condition file: an image in its own mode (PIL), or a ``.npy`` array (e.g. depth in metres)."""
    try:
        if str(path).lower().endswith(".npy"):
            return read_array(path)
        return read_image(path, mode=None)
    except DatasetError as e:
        raise ConditionError(str(e)) from None


def _has_transparency(image) -> bool:
    """True for a PIL picture with an alpha channel (or transparent palette entry) that is not fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA", "P"):
        return False
    if image.mode == "P" and "transparency" not in image.info:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def _mid_grey_fraction(image) -> float:
    """Fraction of mid-grey pixels (48..207): a sketch is nearly binary, a photo is not."""
    if isinstance(image, Image.Image):
        if _has_transparency(image):
            return 0.0  # a transparent drawing layer: the strokes are the alpha channel
        gray = np.asarray(image.convert("L"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 4 and arr[..., 3].min() < 255:
            return 0.0
        if arr.dtype != np.uint8:
            return 0.0  # float or bool sketches are binarised as they are
        gray = arr[..., :3].mean(-1) if arr.ndim == 3 else arr
    return float(((gray >= 48) & (gray <= 207)).mean())


def _describe(image) -> str:
    if isinstance(image, Image.Image):
        return f"{image.width}x{image.height} {image.mode} image"
    return f"array of shape {tuple(np.shape(image))}"


def _tensor_condition(task: str, cond: torch.Tensor, size: int) -> tuple[torch.Tensor, list]:
    """A condition already in the model's encoding, (C, H, W) or (1, C, H, W) in [-1, 1], at ``size``."""
    c = TASK_CHANNELS[task]
    if cond.dim() == 4 and cond.shape[0] == 1:
        cond = cond[0]
    if cond.dim() != 3 or cond.shape[0] != c:
        raise ConditionError(f"a condition tensor for {task!r} must be ({c}, H, W) in [-1, 1], got {tuple(cond.shape)}")
    notes = []
    if tuple(cond.shape[1:]) != (size, size):
        notes.append(f"condition tensor resized (nearest) from {tuple(cond.shape[1:])} to {size}x{size}")
        cond = torch.nn.functional.interpolate(cond[None].float(), size=(size, size), mode="nearest")[0]
    return cond.float(), notes


def _picture_notes(task: str, image, size: int, name: str, from_photo: bool):
    """The notes on what converting a user's picture will do, and the picture (large ones reduced first)."""
    notes = []
    if isinstance(image, Image.Image):
        w, h = image.size
        transparent = _has_transparency(image)
        if image.mode == "P":
            notes.append(f"{name}: palette-mode (P) image converted to its RGB colours")
        if transparent and task == "mask":
            notes.append(f"{name}: alpha channel used: transparent pixels are unlabelled (black)")
        elif transparent and task == "sketch" and not from_photo:
            notes.append(f"{name}: alpha channel used: the opaque pixels are the strokes")
        elif image.mode in ("RGBA", "LA", "PA"):
            notes.append(f"{name}: alpha channel ignored (fully opaque)")
        if task in ("mask", "depth") and max(w, h) > LARGE_FACTOR * size:  # what the final NEAREST resize does anyway
            notes.append(f"{name}: large image ({w}x{h}) reduced before conversion")
            image = image.resize((LARGE_FACTOR * size, LARGE_FACTOR * size), Image.NEAREST)
    else:
        transparent = False
        shape = np.shape(image) if not isinstance(image, (tuple, list)) else ()
        h, w = shape[:2] if len(shape) >= 2 else (size, size)  # a (normal, depth) pair is checked later
    if (w, h) != (size, size):
        aspect = " (aspect ratio not kept, as in the official code)" if w != h else ""
        notes.append(f"{name}: resized from {w}x{h} to {size}x{size}{aspect}")
    if task == "sketch" and not from_photo:
        mid = _mid_grey_fraction(image)
        if mid > 0.2:
            raise ConditionError(
                f"{name} ({_describe(image)}) looks like a photo, not a sketch ({mid:.0%} of its pixels are mid-grey); "
                "a sketch is white lines on black (or dark lines on white). Use sketch_from_photo=True "
                "(CLI: --sketch-from-photo) to extract its edges first"
            )
        gray = np.asarray(image.convert("L")) if isinstance(image, Image.Image) and not transparent else None
        if gray is not None and (gray >= 128).mean() > 0.5:
            notes.append(f"{name}: dark lines on a light background, inverted to white lines on black")
    if from_photo:
        notes.append(f"{name}: sketch extracted from the photo (Canny edges at {size}x{size})")
    return image, notes


def condition_tensor(
    task: str,
    image,
    size: int = 256,
    palette="coco-stuff",
    *,
    snap: bool = False,
    from_photo: bool = False,
    source: str | None = None,
) -> tuple[torch.Tensor, list]:
    """Turn a user's condition into the model's input: ``(tensor, notes)``, float32 (C, size, size) in [-1, 1]
    and a list of sentences saying what was converted (resizing, alpha, palette mode, inverted sketch).

    ``image``: a PIL image of any mode, a NumPy array, a file path (``.npy`` for arrays), or a tensor already
    in the model's encoding ((C, H, W) in [-1, 1], only resized). The picture is squashed to ``size`` x
    ``size`` as the official code does. Per task:

    * ``"mask"`` (C=3): an RGB colour map in ``palette`` (RGBA: transparent pixels are
      unlabelled; palette mode 'P' is converted to colours; a grey 'L' picture or an
      integer (H, W) array is read as class indices). Colours are checked against the
      palette (``snap=True`` maps stray colours to the nearest class), resized NEAREST.
      An all-black (all unlabelled) map is an error.
    * ``"sketch"`` (C=1): white lines on black (dark-on-white pictures are inverted, a
      transparent drawing layer uses its strokes; see :func:`binarize_sketch`), reduced
      so thin lines survive, then :func:`sketch_to_distance`. A picture that looks like a
      photo is refused; ``from_photo=True`` takes a photo instead and extracts its edges at
      ``size``. A sketch without lines is an error.
    * ``"depth"`` (C=6): depth in metres (float array, 'F' picture, or 16-bit PNG storing
      metres x 256; zero / non-finite = invalid), resized NEAREST then visualised with
      :func:`depth_to_condition`; or an (H, W, 6) uint8 array / a (normal, depth) pair of
      the 8-bit visualisations, resized NEAREST.
    """
    if task not in TASK_CHANNELS:
        raise ConfigError(f"unknown task {task!r}; expected one of {list(TASK_CHANNELS)}")
    if from_photo and task != "sketch":
        raise ConfigError(f"sketch_from_photo applies to the sketch task only, not to {task!r}")
    if torch.is_tensor(image):
        return _tensor_condition(task, image, size)
    if isinstance(image, (str, Path)):
        image, source = open_condition(image), str(image)
    image, notes = _picture_notes(task, image, size, source or "the condition", from_photo)
    out = (size, size)

    if task == "mask":
        labels = picture_to_labels(image, palette, snap, source)
        if (labels == UNLABELLED).all():
            raise ConditionError(f"{source or 'mask'}: the mask is empty (every pixel is black = unlabelled)")
        cond = to_unit(labels_to_colors(resize_nearest(labels, out), palette))
    elif task == "sketch":
        if from_photo:
            photo = Image.fromarray(_as_uint8_rgb(image)).resize((size, size), Image.BICUBIC)
            sketch = extract_sketch(photo)
        else:
            sketch = resize_sketch(binarize_sketch(image), out)
        if not sketch.any():
            what = (
                "no edges were found in the photo"
                if from_photo
                else ("the sketch has no lines (expected white lines on black, or dark lines on white)")
            )
            raise ConditionError(f"{source or 'sketch'}: {what}")
        cond = sketch_to_distance(sketch)
    else:
        pair = _depth_pair(image, source)
        if pair is not None:
            cond = to_unit(resize_nearest(pair, out))
        else:
            depth = _depth_metres(image, source)
            if not (np.isfinite(depth) & (depth > 0)).any():
                raise ConditionError(f"{source or 'depth'}: the depth map has no valid (finite, positive) pixel")
            cond = depth_to_condition(resize_nearest(depth, out))
    return torch.from_numpy(cond), notes
