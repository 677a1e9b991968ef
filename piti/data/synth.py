"""The synthetic scene world: procedural outdoor scenes with labels, sketch, depth and a caption.

It stands in for both of the paper's data sources at CPU scale: the captions make
a text-to-image pretraining corpus, and the label maps, sketches and depth maps
make the paired (condition, image) datasets for PITI finetuning.

A scene is a level ground plane under a sky, seen by a pinhole camera: the
horizon row and the camera height fix the depth of every ground pixel, so depth,
normals and the sizes of objects in perspective all agree. The layout (kind of
scene, shoreline, mountains, road, objects) is drawn in image-relative
coordinates from one random stream, so the same seed gives the same scene at any
size; only the fine grain of the textures depends on the size. Everything is
painted with whole-array NumPy operations (objects within their bounding boxes).

CLI: ``piti synth --out DIR --num N --size S --seed K`` writes
``images/ labels/ colors/ sketches/ depth/`` (PNGs ``%06d.png``; depth is 16-bit,
metres x 256, 0 = sky), ``captions.jsonl`` and ``classes.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from piti.data.conditions import (
    DEPTH_PNG_SCALE,
    FOV_DEGREES,
    SYNTH_CLASSES,
    SYNTH_PALETTE,
    extract_sketch,
    labels_to_colors,
    normals_from_depth,
)
from piti.errors import ConfigError

CLASSES = SYNTH_CLASSES
SKY, SEA, SAND, GRASS, MOUNTAIN, SNOW, TREE, HOUSE, ROAD, BOAT = range(len(CLASSES))

F_NORM = 0.5 / np.tan(np.radians(FOV_DEGREES) / 2)  # focal length in image widths
MAX_DEPTH = 250.0  # metres; the far ground and the mountains stop here (fits a 16-bit PNG at x256)
NUMBER_WORDS = ("no", "a", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass
class Scene:
    """One scene of the synthetic world; all maps are (size, size)."""

    image: np.ndarray  # (H, W, 3) uint8 photo
    labels: np.ndarray  # (H, W) uint8 class indices into CLASSES
    colors: np.ndarray  # (H, W, 3) uint8 label map in SYNTH_PALETTE
    sketch: np.ndarray  # (H, W) uint8, white edges on black (extract_sketch of the image)
    depth: np.ndarray  # (H, W) float32 metres, multiples of 1/256; 0 = no depth (sky)
    normals: np.ndarray  # (H, W, 3) float32 unit normals from the depth (x right, y up, z to the camera)
    caption: str  # one English sentence
    counts: dict = field(default_factory=dict)  # visible objects: {"tree": 2, "house": 1, "boat": 0}


# --------------------------------------------------------------------------- textures


def _lookup(lattice: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Smoothstep interpolation of a lattice spanning the unit square at points ``ys`` (h, 1) x ``xs`` (1, w)."""
    cells = lattice.shape[0] - 1

    def axis(t):
        t = np.clip(t.ravel(), 0, 1) * cells
        i = np.minimum(t.astype(np.int64), cells - 1)
        f = t - i
        return i, (f * f * (3 - 2 * f)).astype(np.float32)

    iy, fy = axis(ys)
    ix, fx = axis(xs)
    rows = lattice[iy] * (1 - fy[:, None]) + lattice[iy + 1] * fy[:, None]  # (h, cells+1)
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _value_noise(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] at image-relative points ``ys`` (h, 1) x ``xs`` (1, w).

    A random (cells+1)^2 lattice over the unit square, smoothstep-interpolated; the
    lattice is the only random draw, so the noise is the same at every resolution.
    """
    return _lookup(rng.random((cells + 1, cells + 1), dtype=np.float32), ys, xs)


@cache
def _refine(coarse: int, fine: int) -> np.ndarray:
    """(fine+1, coarse+1) matrix that linearly interpolates a coarse lattice at the fine lattice points."""
    t = np.arange(fine + 1) * (coarse / fine)
    i = np.minimum(t.astype(np.int64), coarse - 1)
    m = np.zeros((fine + 1, coarse + 1), np.float32)
    m[np.arange(fine + 1), i] = 1 - (t - i)
    m[np.arange(fine + 1), i + 1] += t - i
    return m


def _fbm(rng: np.random.Generator, ys, xs, cells: int, octaves: int = 3) -> np.ndarray:
    """Fractal noise in [0, 1]: octaves of lattice noise, each twice as fine and half as strong.

    The octaves are summed on the finest lattice (coarser ones refined linearly),
    then interpolated to the pixels once.
    """
    fine = cells * 2 ** (octaves - 1)
    total = np.zeros((fine + 1, fine + 1), np.float32)
    for k in range(octaves):
        c = cells * 2**k
        m = _refine(c, fine)
        total += 0.5**k * (m @ rng.random((c + 1, c + 1), dtype=np.float32) @ m.T)
    return _lookup(total / (2 - 0.5 ** (octaves - 1)), ys, xs)  # divide by the sum of the amplitudes


def _jitter(rng, rgb, amount=0.08):
    """A class colour varied per scene (brightness and a little hue)."""
    c = np.asarray(rgb, np.float32) / 255.0
    c = c * (1 + rng.uniform(-amount, amount)) + rng.uniform(-amount / 2, amount / 2, 3)
    return np.minimum(np.maximum(c, 0), 1).astype(np.float32)


# --------------------------------------------------------------------------- shapes (local, vectorised)


class _Canvas:
    """The scene being painted: float RGB, labels, depth, and an instance map for visibility."""

    def __init__(self, size: int):
        self.n = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.labels = np.zeros((size, size), np.uint8)
        self.depth = np.zeros((size, size), np.float32)
        self.instance = np.zeros((size, size), np.int16)  # 0 = background, k = k-th object
        self.drawn: dict[int, int] = {}  # pixels drawn per instance

    def box(self, x0, y0, x1, y1):
        """Pixel slice and pixel-centre coordinates (image-relative) of a bounding box, or None."""
        n = self.n
        c0, c1 = max(int(np.floor(x0 * n)), 0), min(int(np.ceil(x1 * n)), n)
        r0, r1 = max(int(np.floor(y0 * n)), 0), min(int(np.ceil(y1 * n)), n)
        if c1 <= c0 or r1 <= r0:
            return None
        ys = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / n)[:, None]
        xs = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / n)[None, :]
        return (slice(r0, r1), slice(c0, c1)), ys, xs

    def paint(self, region, mask, rgb, label, depth, inst):
        """Write the pixels of ``mask`` (within ``region``) with colour, class, depth and instance id.

        ``rgb`` and ``depth`` broadcast against the region (a constant, a row, a full array).
        """
        count = int(np.count_nonzero(mask))
        if not count:
            return
        np.copyto(self.rgb[region], rgb, where=mask[..., None])
        np.copyto(self.labels[region], np.uint8(label), where=mask)
        np.copyto(self.depth[region], depth, where=mask)
        np.copyto(self.instance[region], np.int16(inst), where=mask)
        self.drawn[inst] = self.drawn.get(inst, 0) + count


def _triangle(ys, xs, p0, p1, p2):
    """Pixels inside the triangle p0 p1 p2 (points (x, y)), by the signs of three edge functions."""

    def edge(a, b):
        return (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])

    e0, e1, e2 = edge(p0, p1), edge(p1, p2), edge(p2, p0)
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


# --------------------------------------------------------------------------- the world


class _World:
    """Layout of one scene in image-relative coordinates (x, y in [0, 1], y down)."""

    def __init__(self, rng: np.random.Generator):
        self.horizon = rng.uniform(0.36, 0.56)
        self.cam_h = rng.uniform(4.0, 7.0)  # metres above the ground
        self.kind = rng.choice(["coast", "meadow", "beach", "open sea"], p=[0.4, 0.32, 0.16, 0.12])
        self.sky = rng.choice(["clear", "cloudy", "sunset"], p=[0.4, 0.35, 0.25])
        self.sun_left = bool(rng.random() < 0.5)
        self.has_mountains = bool(rng.random() < 0.55)
        self.has_road = self.kind == "meadow" and bool(rng.random() < 0.55)

        # shoreline: the sea covers the ground from the horizon down to shore(x)
        if self.kind == "meadow":
            self.shore_a, self.shore_b = -1.0, 0.0  # no sea
        elif self.kind == "open sea":
            self.shore_a, self.shore_b = 2.0, 0.0  # sea to the bottom
        else:
            depth_frac = rng.uniform(0.12, 0.5) if self.kind == "coast" else rng.uniform(0.05, 0.25)
            self.shore_a = self.horizon + depth_frac * (1 - self.horizon)
            self.shore_b = rng.uniform(-0.35, 0.35) * (1 - self.horizon)  # a slanted coast
        self.shore_wave = (rng.uniform(0.005, 0.02), rng.uniform(3, 9), rng.uniform(0, 2 * np.pi))
        self.sand_width = rng.uniform(8, 25) if self.kind == "coast" else 1e6  # metres; beach: sand to the bottom

        # mountains: a ridge of triangular peaks above the horizon
        n_peaks = int(rng.integers(2, 6))
        self.peaks = [
            (rng.uniform(-0.1, 1.1), rng.uniform(0.06, 0.3), rng.uniform(0.15, 0.45)) for _ in range(n_peaks)
        ]  # (x, height, half-width)
        self.ridge_noise = (rng.uniform(0.004, 0.012), rng.uniform(15, 40), rng.uniform(0, 2 * np.pi))
        self.snowline = rng.uniform(0.14, 0.26)  # peaks higher than this above the horizon wear snow

        # road (meadow only): from the bottom to a vanishing point, gently curved
        self.road = (rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.7), rng.uniform(-0.25, 0.25), rng.uniform(6, 10))

        # colours
        self.c_grass = _jitter(rng, (86, 160, 60))
        self.c_sand = _jitter(rng, (226, 202, 146), 0.05)
        self.c_sea = _jitter(rng, (28, 82, 150))
        self.c_mountain = _jitter(rng, (120, 105, 100))
        self.c_road = _jitter(rng, (95, 95, 100), 0.05)
        if self.sky == "sunset":
            self.c_top, self.c_low = _jitter(rng, (70, 70, 150), 0.05), _jitter(rng, (250, 170, 100), 0.05)
            self.c_cloud = np.array([1.0, 0.78, 0.72], np.float32)
        elif self.sky == "cloudy":
            self.c_top, self.c_low = _jitter(rng, (105, 135, 180), 0.05), _jitter(rng, (200, 210, 225), 0.05)
            self.c_cloud = np.array([0.94, 0.94, 0.96], np.float32)
        else:
            self.c_top, self.c_low = _jitter(rng, (45, 110, 215), 0.05), _jitter(rng, (165, 205, 245), 0.05)
            self.c_cloud = np.array([1.0, 1.0, 1.0], np.float32)
        self.cloud_cover = {
            "clear": rng.uniform(0.0, 0.15),
            "cloudy": rng.uniform(0.45, 0.7),
            "sunset": rng.uniform(0.1, 0.35),
        }[self.sky]
        self.sun = (rng.uniform(0.15, 0.85), rng.uniform(0.02, 0.06))  # sunset: sun position and radius

    # -- geometry in image-relative coordinates
    def ground_depth(self, y):
        """Depth (metres along the view axis) of the ground at row y: a plane seen from cam_h."""
        return np.minimum(self.cam_h * F_NORM / np.maximum(y - self.horizon, 1e-6), MAX_DEPTH)

    def shore(self, x):
        amp, freq, phase = self.shore_wave
        return self.shore_a + self.shore_b * (x - 0.5) + amp * np.sin(freq * x + phase)

    def ridge(self, x):
        """Row of the mountain ridge at x (smaller = higher); >= horizon means no mountain."""
        height = np.zeros_like(x, dtype=np.float32)
        for px, ph, pw in self.peaks:
            height = np.maximum(height, ph * (1 - np.abs(x - px) / pw))
        amp, freq, phase = self.ridge_noise
        height = height + amp * np.sin(freq * x + phase) * (height > 0)
        return self.horizon - np.clip(height, 0, self.horizon - 0.04)

    def road_span(self, y):
        """Centre and half-width of the road at row y (half-width 0 above the horizon)."""
        x_bottom, x_vanish, bend, width_m = self.road
        t = np.clip((y - self.horizon) / (1 - self.horizon), 0, None)
        centre = x_vanish + (x_bottom - x_vanish) * t + bend * t * (1 - t)
        half = 0.5 * width_m * F_NORM / self.ground_depth(y)
        return centre, half

    def on_land(self, x, y):
        if self.kind == "open sea" or y <= self.shore(x):
            return False
        if self.has_road:
            centre, half = self.road_span(y)
            if abs(x - centre) < half * 1.6:
                return False
        return True

    def on_sea(self, x, y):
        return self.kind != "meadow" and self.horizon < y < self.shore(x)


def _paint_background(cv: _Canvas, w: _World, rng, fine):
    """Sky (with mountains) above the horizon, sea / sand / grass / road below, one band each."""
    n = cv.n
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    xs = coords[None, :]
    r_h = int(np.searchsorted(coords, w.horizon))  # rows above the horizon
    sky_rows, ground_rows = slice(0, r_h), slice(r_h, n)
    ys_sky, ys_ground = coords[sky_rows, None], coords[ground_rows, None]

    # sky: vertical gradient, clouds from thresholded fractal noise, a sun at sunset
    ys = ys_sky
    t = np.clip(ys / max(w.horizon, 1e-3), 0, 1) ** 1.4
    sky = w.c_top * (1 - t[..., None]) + w.c_low * t[..., None]
    clouds = _fbm(rng, ys, xs, 3, octaves=4)
    stretch = np.clip((w.horizon - ys) / w.horizon, 0, 1)  # thinner clouds near the horizon
    cover = (np.clip((clouds - (1 - w.cloud_cover)) * 6.0, 0, 1) * stretch)[..., None]
    shade = (0.85 + 0.15 * np.clip((clouds - 0.5) * 3, 0, 1))[..., None]
    sky = sky * (1 - cover) + (w.c_cloud * shade) * cover
    if w.sky == "sunset":
        sx, sr = w.sun
        d = np.sqrt((xs - sx) ** 2 + (ys - (w.horizon - 0.08)) ** 2)
        glow = np.clip(1.0 - d / (sr * 4), 0, 1) ** 2 * 0.5
        sky = sky + glow[..., None] * np.array([1.0, 0.8, 0.4], np.float32)
        sky = np.where((d < sr)[..., None], np.array([1.0, 0.95, 0.75], np.float32), sky)
    cv.paint((sky_rows, slice(None)), np.ones(sky.shape[:2], bool), sky, SKY, 0.0, 0)

    # mountains: shaded by the slope facing the sun, hazy, snow on high parts
    ridge = w.ridge(xs)
    if w.has_mountains and r_h > 0:
        r_m = min(int(np.searchsorted(coords, ridge.min())), r_h)
        rows = slice(r_m, r_h)
        ys = coords[rows, None]
        streaks = _fbm(rng, ys, xs, 6, octaves=3)
        mtn = ys >= ridge
        slope = np.gradient(ridge[0]) * n  # d(row)/dx: > 0 where the ridge descends to the right
        lit = (np.sign(slope) * (1 if w.sun_left else -1)).astype(np.float32)[None, :, None]
        base = w.c_mountain * (1 + 0.18 * lit + 0.25 * (streaks[..., None] - 0.5))
        rgb = base * 0.75 + w.c_low * 0.25  # distant: a quarter of the horizon's colour
        height = w.horizon - ys
        snow = mtn & (height > w.snowline + 0.03 * (streaks - 0.5)) & (w.horizon - ridge > w.snowline)
        snow_rgb = np.array([0.93, 0.94, 0.98], np.float32) * (1 + 0.06 * lit)
        # a smooth slope that recedes with height, so the normals read as a mountainside
        depth = 170.0 + 60.0 * np.clip(height / 0.3, 0, 1) + 20.0 * _value_noise(rng, ys, xs, 2)
        cv.paint((rows, slice(None)), mtn & ~snow, rgb, MOUNTAIN, depth, 0)
        cv.paint((rows, slice(None)), snow, snow_rgb, SNOW, depth, 0)
    if r_h == n:
        return

    # ground: sea, sand, grass, road; depth of the ground plane; haze towards the horizon
    ys = ys_ground
    region = (ground_rows, slice(None))
    z = w.ground_depth(ys).astype(np.float32)  # (h, 1)
    haze = np.clip(z / 400.0, 0, 0.55)[..., None]
    haze_rgb = w.c_low * haze
    patches = _fbm(rng, ys, xs, 5, octaves=3)
    grain = fine.standard_normal(patches.shape, dtype=np.float32)  # the only size-dependent draw
    sea = ys < w.shore(xs) if w.kind != "meadow" else np.zeros(patches.shape, bool)
    if sea.any():
        lam = 7.0  # wavelength of the swell, metres
        phase = 2 * np.pi * (z / lam + 0.25 * xs * z * F_NORM / lam) + 5.0 * patches
        rows_per_wave = lam * (ys - w.horizon) ** 2 * n / (w.cam_h * F_NORM)
        amp = np.clip(rows_per_wave / 4.0 - 0.25, 0, 1)  # waves fade where they would alias
        crest = np.clip((np.sin(phase) - 0.55) * 4, 0, 1) * amp
        rgb = w.c_sea * (0.85 + 0.2 * (np.cos(phase) * amp)[..., None]) + 0.3 * crest[..., None]
        cv.paint(region, sea, rgb * (1 - haze) + haze_rgb, SEA, z, 0)
    land = ~sea
    if land.any():
        if w.kind in ("coast", "beach"):
            shore_z = w.ground_depth(np.maximum(w.shore(xs), w.horizon + 1e-4))
            sand = land & (z > shore_z - w.sand_width)
        else:
            sand = np.zeros_like(land)
        tex = patches[..., None]
        grass_rgb = w.c_grass * (0.8 + 0.35 * tex + 0.05 * grain[..., None])
        cv.paint(region, land & ~sand, grass_rgb * (1 - haze) + haze_rgb, GRASS, z, 0)
        if sand.any():
            sand_rgb = w.c_sand * (0.95 + 0.08 * tex + 0.04 * grain[..., None])
            cv.paint(region, sand, sand_rgb * (1 - haze) + haze_rgb, SAND, z, 0)
        if w.has_road:
            centre, half = w.road_span(ys)
            off = np.abs(xs - centre)
            dash = (off < half * 0.07) & (np.sin(2 * np.pi * z / 6.0) > 0)
            rgb = np.where(dash[..., None], np.float32(0.92), w.c_road * (0.95 + 0.05 * grain[..., None]))
            cv.paint(region, land & (off < half), rgb * (1 - haze) + haze_rgb, ROAD, z, 0)


# rough half-width and height of each kind of object, metres (for placement only)
_EXTENT = {"tree": (2.5, 9.0), "house": (6.5, 10.0), "boat": (5.0, 8.5)}


def _place(w: _World, rng, kind, placed):
    """Choose a free spot (x, y, metre scale) for an object, or None; analytic, independent of the size.

    The object must stand on land (boats: on the sea), be 9% to 50% of the image
    height, and not stand in the same place as an object at a similar distance.
    """
    half_m, height_m = _EXTENT[kind]
    lo = w.horizon + 0.06 * (1 - w.horizon)
    for _ in range(12):
        x, y = rng.uniform(0.05, 0.95), rng.uniform(lo, 1.0)
        ok = w.on_sea(x, y - 0.01) and w.on_sea(x, y) if kind == "boat" else w.on_land(x, y)
        scale = (y - w.horizon) / w.cam_h  # image height of one metre at this row
        half = half_m * scale
        if not ok or not 0.09 <= height_m * scale <= 0.5:  # visible at 64 px, at most half the image
            continue
        if all(abs(x - px) > 0.9 * (half + ph) or abs(y - py) > 0.08 for px, py, ph in placed):
            placed.append((x, y, half))
            return x, y, scale
    return None


def _draw_tree(cv, w, rng, x, y, scale, inst):
    conifer = rng.random() < 0.4
    height = rng.uniform(5, 9) * scale
    z = float(w.ground_depth(y))
    trunk_rgb = _jitter(rng, (100, 70, 45))
    leaf = _jitter(rng, (28, 95, 45) if conifer else (45, 120, 45), 0.12)
    light = -1.0 if w.sun_left else 1.0
    if conifer:
        half = height * rng.uniform(0.2, 0.28)
        box = cv.box(x - half, y - height, x + half, y)
        if box is None:
            return
        region, ys, xs = box
        crown = _triangle(ys, xs, (x, y - height), (x - half, y - 0.15 * height), (x + half, y - 0.15 * height))
        trunk = (np.abs(xs - x) < 0.05 * height) & (ys >= y - 0.2 * height)
        lumps = _value_noise(rng, (ys - y + height) / height, (xs - x + half) / (2 * half), 4)
        shade = 1 + 0.25 * light * (xs - x) / half
        rgb = leaf * (shade * (0.9 + 0.2 * lumps))[..., None]
        cv.paint(region, trunk & ~crown, trunk_rgb, TREE, z, inst)
        cv.paint(region, crown, rgb, TREE, z - 0.3 * half / scale * (1 - np.abs(xs - x) / half), inst)
    else:
        r = height * rng.uniform(0.28, 0.36)
        cy = y - height + r
        box = cv.box(x - r, y - height, x + r, y)
        if box is None:
            return
        region, ys, xs = box
        rho2 = ((xs - x) / r) ** 2 + ((ys - cy) / (r * 1.05)) ** 2
        crown = rho2 < 1
        trunk = (np.abs(xs - x) < 0.06 * height) & (ys >= cy)
        lumps = _value_noise(rng, (ys - y + height) / height, (xs - x + r) / (2 * r), 4)
        shade = 1 - 0.3 * (light * (xs - x) + (ys - cy)) / r  # lit from the sun's side and from above
        rgb = leaf * (shade * (0.85 + 0.3 * lumps))[..., None]
        bulge = r / scale * np.sqrt(np.clip(1 - rho2, 0, 1))  # the crown is a ball: nearer in the middle
        cv.paint(region, trunk & ~crown, trunk_rgb, TREE, z, inst)
        cv.paint(region, crown, rgb, TREE, z - bulge, inst)


def _draw_house(cv, w, rng, x, y, scale, inst):
    width = rng.uniform(7, 12) * scale
    wall_h = rng.uniform(3.5, 6) * scale
    roof_h = rng.uniform(2, 4) * scale
    over = 0.08 * width
    box = cv.box(x - width / 2 - over, y - wall_h - roof_h, x + width / 2 + over, y)
    if box is None:
        return
    region, ys, xs = box
    z = float(w.ground_depth(y))
    wall_rgb = _jitter(rng, [(235, 230, 215), (220, 200, 160), (180, 200, 220), (200, 120, 90)][rng.integers(4)], 0.05)
    roof_rgb = _jitter(rng, [(170, 50, 40), (110, 70, 50), (70, 70, 80)][rng.integers(3)], 0.08)
    glass = np.array([1.0, 0.85, 0.45] if w.sky == "sunset" else [0.55, 0.75, 0.95], np.float32)
    wall = (np.abs(xs - x) <= width / 2) & (ys >= y - wall_h) & (ys < y)
    roof = _triangle(
        ys, xs, (x - width / 2 - over, y - wall_h), (x + width / 2 + over, y - wall_h), (x, y - wall_h - roof_h)
    )
    rgb = np.broadcast_to(wall_rgb, ys.shape[:1] + xs.shape[1:] + (3,)).copy()
    # windows: a grid of panes on the upper part of the wall, and a door
    cols = int(rng.integers(2, 4))
    door_col = int(rng.integers(cols))
    pane_w, pane_h = width / (cols * 2.4), wall_h * 0.28
    for c in range(cols):
        cx = x - width / 2 + (c + 0.5) * width / cols
        if c == door_col:
            door = (np.abs(xs - cx) < pane_w * 0.55) & (ys >= y - wall_h * 0.55)
            rgb[door] = np.array([0.35, 0.22, 0.12], np.float32)
        else:
            pane = (np.abs(xs - cx) < pane_w / 2) & (np.abs(ys - (y - wall_h * 0.55)) < pane_h / 2)
            rgb[pane] = glass
    roof_rgb_map = roof_rgb * (1 - 0.15 * ((ys - (y - wall_h - roof_h)) / roof_h))[..., None]
    cv.paint(region, wall & ~roof, rgb, HOUSE, z, inst)
    cv.paint(region, roof, roof_rgb_map, HOUSE, z, inst)


def _draw_boat(cv, w, rng, x, y, scale, inst):
    length = rng.uniform(5, 10) * scale
    hull_h = rng.uniform(0.9, 1.4) * scale
    sail_h = rng.uniform(4, 7) * scale
    box = cv.box(x - length / 2, y - hull_h - sail_h, x + length / 2, y)
    if box is None:
        return
    region, ys, xs = box
    z = float(w.ground_depth(y))
    hull_rgb = _jitter(rng, [(240, 240, 240), (180, 40, 40), (90, 60, 40)][rng.integers(3)], 0.05)
    sail_rgb = _jitter(rng, (245, 240, 225), 0.03)
    top = y - hull_h
    taper = (ys - top) / hull_h * 0.2 * length  # the hull narrows towards the keel
    hull = (ys >= top) & (ys < y) & (np.abs(xs - x) <= length / 2 - taper)
    side = 1 if rng.random() < 0.5 else -1
    sail = _triangle(
        ys, xs, (x, top - sail_h), (x, top - 0.05 * sail_h), (x + side * 0.42 * length, top - 0.05 * sail_h)
    )
    mast = (np.abs(xs - x) < 0.02 * length + 0.5 / cv.n) & (ys >= top - sail_h) & (ys < top)
    cv.paint(region, hull, hull_rgb, BOAT, z, inst)
    cv.paint(region, sail & ~hull, sail_rgb, BOAT, z, inst)
    cv.paint(region, mast & ~sail & ~hull, np.float32(0.3), BOAT, z, inst)


_DRAW = {"tree": _draw_tree, "house": _draw_house, "boat": _draw_boat}


def _count_phrase(n, noun):
    return f"{NUMBER_WORDS[n]} {noun}{'s' if n > 1 else ''}" if n < len(NUMBER_WORDS) else f"many {noun}s"


def _caption(w: _World, counts: dict) -> str:
    """One sentence: the visible objects, the setting, the mountains, the sky."""
    things = [_count_phrase(counts[k], k) for k in ("tree", "house", "boat") if counts[k]]
    subject = ", ".join(things[:-1]) + " and " + things[-1] if len(things) > 1 else (things[0] if things else "")
    only_boats = bool(counts["boat"]) and not (counts["tree"] or counts["house"])
    if w.kind == "open sea":
        setting = "on the open sea" if subject else "the open sea"
    elif w.kind == "meadow":
        setting = "in a green meadow" if subject else "a green meadow"
    elif w.kind == "beach":
        setting = (
            ("on the sea off a sandy beach" if only_boats else "on a sandy beach by the sea")
            if subject
            else "a sandy beach by the sea"
        )
    else:
        setting = (
            ("on the sea off a grassy coast" if only_boats else "by the sea")
            if subject
            else "a grassy coast by the sea"
        )
    parts = [subject, setting] if subject else [setting]
    if w.has_road:
        parts.append("along a road")
    if w.has_mountains:
        snowy = float((w.horizon - w.ridge(np.linspace(0, 1, 512))).max()) > w.snowline + 0.01
        parts.append("with snowy mountains" if snowy else "with mountains")
    parts.append({"clear": "under a clear sky", "cloudy": "under a cloudy sky", "sunset": "at sunset"}[w.sky])
    return " ".join(parts)


def generate_scene(seed, size: int = 256) -> Scene:
    """Draw one scene of the synthetic world, deterministically from ``seed`` (an int or a tuple of ints).

    The layout depends only on the seed, so the same seed at another ``size`` gives
    the same scene at another resolution.
    """
    if int(size) < 16:
        raise ConfigError(f"scene size must be at least 16 pixels, got {size}")
    key = [int(s) for s in np.atleast_1d(seed)]
    rng = np.random.default_rng(key)  # layout, colours, noise lattices: independent of the size
    fine = np.random.default_rng(key + [int(size), 7919])  # per-pixel grain
    w = _World(rng)
    cv = _Canvas(int(size))
    _paint_background(cv, w, rng, fine)

    # objects: how many of each kind, where; drawn far to near so nearer ones occlude
    wanted = []
    if w.kind != "open sea":
        wanted += ["tree"] * int(rng.choice(7, p=[0.12, 0.22, 0.22, 0.16, 0.12, 0.1, 0.06]))
        wanted += ["house"] * int(rng.choice(4, p=[0.35, 0.4, 0.17, 0.08]))
    if w.kind in ("coast", "open sea", "beach"):
        wanted += ["boat"] * int(rng.choice(4, p=[0.4, 0.35, 0.15, 0.1]) + (w.kind == "open sea"))
    placed, objects = [], []
    for kind in wanted:
        spot = _place(w, rng, kind, placed)
        if spot is not None:
            objects.append((spot[1], kind, spot))
    objects.sort(key=lambda o: o[0])
    kinds = {}
    for inst, (_, kind, (x, y, scale)) in enumerate(objects, start=1):
        kinds[inst] = kind
        _DRAW[kind](cv, w, rng, x, y, scale, inst)

    # an object counts in the caption when at least 40% of it stays visible
    visible = np.bincount(cv.instance.ravel(), minlength=len(objects) + 1)
    counts = {"tree": 0, "house": 0, "boat": 0}
    for inst, kind in kinds.items():
        if cv.drawn.get(inst, 0) and visible[inst] >= 0.4 * cv.drawn[inst]:
            counts[kind] += 1

    image = np.clip(np.round(cv.rgb * 255), 0, 255).astype(np.uint8)
    depth = np.round(cv.depth * DEPTH_PNG_SCALE) / DEPTH_PNG_SCALE  # exactly what the 16-bit PNG stores
    depth = depth.astype(np.float32)
    return Scene(
        image=image,
        labels=cv.labels,
        colors=labels_to_colors(cv.labels, SYNTH_PALETTE),
        sketch=extract_sketch(image),
        depth=depth,
        normals=normals_from_depth(depth),
        caption=_caption(w, counts),
        counts=counts,
    )


def classes_json() -> list[dict]:
    """The ``classes.json`` entries: ``{"id", "name", "color"}`` per class."""
    return [{"id": i, "name": name, "color": SYNTH_PALETTE[i].tolist()} for i, name in enumerate(CLASSES)]


# --------------------------------------------------------------------------- CLI


def write_scenes(out: str | Path, num: int, size: int = 256, seed: int = 0, progress: bool = True) -> Path:
    """Write ``num`` scenes (scene i drawn from seed ``(seed, i)``) in the training layout under ``out``."""
    from tqdm import tqdm

    from piti.data.imageio import save_png, save_text

    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    out = Path(out)
    captions = []
    for i in tqdm(range(num), desc="synth", unit="scene", disable=not progress):
        scene = generate_scene((seed, i), size)
        name = f"{i:06d}.png"
        save_png(out / "images" / name, scene.image)
        save_png(out / "labels" / name, scene.labels)
        save_png(out / "colors" / name, scene.colors)
        save_png(out / "sketches" / name, scene.sketch)
        save_png(out / "depth" / name, np.round(scene.depth * DEPTH_PNG_SCALE).astype(np.uint16))
        captions.append(json.dumps({"file": name, "caption": scene.caption}))
    save_text(out / "captions.jsonl", "\n".join(captions) + "\n")
    save_text(out / "classes.json", json.dumps(classes_json(), indent=1) + "\n")
    return out


def configure_parser(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--num", type=int, default=1000, help="number of scenes (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; scene i uses (seed, i) (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    start = time.perf_counter()
    out = write_scenes(args.out, args.num, args.size, args.seed, progress=not args.quiet)
    secs = time.perf_counter() - start
    print(f"wrote {args.num} scenes of {args.size}px to {out} in {secs:.1f}s ({args.num / secs:.1f} scenes/s)")
    return 0
