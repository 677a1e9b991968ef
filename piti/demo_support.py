"""What the Gradio demo (``demo/app.py``) computes, kept here where tests reach it.

The app is a layout and callbacks; this module holds everything behind them: the brush palette and its
legend, the canvas of a ``gr.ImageEditor`` turned into a colour map (with antialiased stroke edges snapped
to their class), uploads of depth maps, example scenes drawn from the synthetic world, the condition
pictured as the model saw it, the ranges of the controls, and one translation call with its settings record.
Nothing here imports gradio.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from piti.data.conditions import DEPTH_PNG_SCALE, condition_tensor, open_condition
from piti.data.palettes import PALETTES, SYNTH_CLASSES, get_palette
from piti.errors import ConditionError, ConfigError

TASK_TITLES = {"mask": "Mask to image", "sketch": "Sketch to image", "depth": "Depth to image"}
# The half-transparent edge pixels of a brush stroke keep its colour up to rounding: colours within this
# RGB distance of a class colour are taken as that class.
SNAP_DISTANCE = 16.0
# Colours farther than SNAP_DISTANCE from every class (seams where two strokes of different classes blend)
# are snapped too when they cover at most this fraction of the canvas; more is a picture in other colours.
STRAY_FRACTION = 0.02
MAX_SAMPLES = 4
LEGEND_BESIDE = 24  # a palette of up to this many classes has its legend beside the canvas, a longer one below
GUIDANCE_UI_MAX = 20.0  # the guidance slider's top (the setting itself allows up to 100)
STEPS_UI_MAX = 1000
# The synthetic world's classes by their names in the other palettes (ADE20K has no snow class).
SYNTH_CLASS_NAMES = {
    "synth": dict(zip(SYNTH_CLASSES, SYNTH_CLASSES)),
    "coco-stuff": dict(zip(SYNTH_CLASSES, SYNTH_CLASSES), sky="sky-other"),
    "ade20k": dict(zip(SYNTH_CLASSES, SYNTH_CLASSES), snow="mountain"),
}


# --------------------------------------------------------------------------------------------------
# The palette: brush colours and the legend


def palette_classes(palette: str) -> tuple[np.ndarray, tuple]:
    """The (n, 3) uint8 colours and the class names of a named palette."""
    if palette not in PALETTES:
        raise ConfigError(f"unknown palette {palette!r}; expected one of {', '.join(PALETTES)}")
    return PALETTES[palette]


def brush_colors(palette: str) -> list[str]:
    """The colours of the mask brush as ``#rrggbb``: every class of ``palette``, then black (unlabelled)."""
    colors, _ = palette_classes(palette)
    return ["#" + "".join(f"{int(v):02x}" for v in c) for c in colors] + ["#000000"]


def palette_legend(palette: str, columns: int = 1, swatch: int = 16, column_width: int = 170) -> Image.Image:
    """A picture naming each colour of ``palette``: a swatch and the class name per line, in ``columns``
    columns, black (unlabelled) last."""
    colors, names = palette_classes(palette)
    entries = [(tuple(int(v) for v in c), n) for c, n in zip(colors, names)] + [((0, 0, 0), "unlabelled")]
    rows = math.ceil(len(entries) / columns)
    line = swatch + 6
    image = Image.new("RGB", (columns * column_width + 8, rows * line + 8), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=swatch - 2)
    for i, (color, name) in enumerate(entries):
        x, y = 4 + (i // rows) * column_width, 4 + (i % rows) * line
        draw.rectangle((x, y, x + swatch, y + swatch), fill=color, outline=(128, 128, 128))
        draw.text((x + swatch + 6, y + 1), name, fill="black", font=font)
    return image


def snap_colors(
    rgb: np.ndarray, palette: str, distance: float = SNAP_DISTANCE, stray_fraction: float = STRAY_FRACTION
) -> tuple[np.ndarray, int]:
    """Snap near-palette colours of an (H, W, 3) uint8 picture to their class colour (black included).

    A colour within ``distance`` of a class colour becomes it; the colours farther from every class become
    the nearest one too when they cover at most ``stray_fraction`` of the pixels, and are otherwise left as
    they are (for the pipeline to name). Returns the new picture and the number of pixels changed.
    """
    rgb = np.asarray(rgb)
    table = np.concatenate([get_palette(palette), np.zeros((1, 3), np.uint8)]).astype(np.float32)
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
    colors = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], 1).astype(np.float32)
    d2 = ((colors[:, None] - table[None]) ** 2).sum(-1)
    nearest, gap = d2.argmin(1), np.sqrt(d2.min(1))
    far = gap > distance
    change = (gap > 0) & ~far
    if counts[far].sum() <= stray_fraction * keys.size:
        change |= far
    new = np.where(change[:, None], table[nearest], colors).astype(np.uint8)
    return new[inverse.reshape(keys.shape)], int(counts[change].sum())


# --------------------------------------------------------------------------------------------------
# Inputs: the canvas, uploads


def _as_pil(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def editor_image(value, what: str = "canvas") -> Image.Image:
    """The picture of a ``gr.ImageEditor`` value (``{"background", "layers", "composite"}``, or a bare image)
    as RGBA: its composite, or the background with the layers over it when no composite was sent."""
    empty = ConditionError(f"the {what} is empty: paint on it, upload a picture or pick an example")
    if value is None:
        raise empty
    if not isinstance(value, dict):
        return _as_pil(value).convert("RGBA")
    if value.get("composite") is not None:
        return _as_pil(value["composite"]).convert("RGBA")
    layers = [_as_pil(layer).convert("RGBA") for layer in value.get("layers") or [] if layer is not None]
    if value.get("background") is None and not layers:
        raise empty
    base = (
        _as_pil(value["background"]).convert("RGBA")
        if value.get("background") is not None
        else Image.new("RGBA", layers[0].size, (0, 0, 0, 0))
    )
    for layer in layers:
        base = Image.alpha_composite(base, layer.resize(base.size, Image.NEAREST))
    return base


def _opaque_rgb(image) -> tuple[np.ndarray, np.ndarray]:
    """RGB and the opaque pixels (alpha >= 128) of a picture."""
    rgba = np.asarray(_as_pil(image).convert("RGBA"))
    return rgba[..., :3], rgba[..., 3] >= 128


def canvas_to_colormap(value, palette: str) -> tuple[Image.Image, list[str]]:
    """A painted mask canvas (a ``gr.ImageEditor`` value or a picture) as an RGB colour map in ``palette``.

    The background's transparent pixels are unlabelled (black); each layer's opaque pixels (alpha >= 128:
    a stroke and the inner half of its antialiased edge) cover it, so strokes never blend with what lies
    under them. Colours near a class colour are then snapped (:func:`snap_colors`). Returns the map and
    a note on what was snapped.
    """
    layers = [x for x in (value.get("layers") or []) if x is not None] if isinstance(value, dict) else []
    background = value.get("background") if isinstance(value, dict) else value
    if background is None and not layers:
        background = editor_image(value, "canvas")  # a composite alone, or the error for an empty canvas
    if background is not None:
        rgb, opaque = _opaque_rgb(background)
        rgb = np.where(opaque[..., None], rgb, 0).astype(np.uint8)
    else:
        rgb = np.zeros(np.asarray(layers[0]).shape[:2] + (3,), np.uint8)
    for layer in layers:
        layer_rgb, opaque = _opaque_rgb(_as_pil(layer).resize(rgb.shape[1::-1], Image.NEAREST))
        rgb[opaque] = layer_rgb[opaque]
    snapped, changed = snap_colors(rgb, palette)
    notes = []
    if changed:
        notes.append(
            f"canvas: {changed} pixels ({changed / rgb[..., 0].size:.1%}) of colours near a class colour "
            "(antialiased brush edges) were snapped to that class"
        )
    return Image.fromarray(snapped), notes


def open_upload(path, kinds: tuple = (".png", ".npy")) -> tuple[object, str]:
    """An uploaded condition file: a picture in its own mode (16-bit PNGs stay 16-bit) or a ``.npy`` array.

    Returns ``(condition, file name)``; ConditionError for no file, another kind of file, or unreadable content.
    """
    if path is None:
        raise ConditionError("no file was uploaded: upload a " + " or ".join(kinds) + " file, or pick an example")
    name = Path(str(path)).name
    if kinds and Path(name).suffix.lower() not in kinds:
        raise ConditionError(f"{name}: expected a {' or '.join(kinds)} file")
    try:
        return open_condition(path), name
    except ConditionError as e:
        raise ConditionError(str(e).replace(str(path), name)) from None


# --------------------------------------------------------------------------------------------------
# Example scenes from the synthetic world


@dataclass
class ExampleScene:
    """The files of one example scene, as the app's inputs take them."""

    seed: tuple
    colormap: Path  # label map in the app's palette (RGB PNG)
    sketch: Path  # white edges on black (PNG)
    depth: Path  # 16-bit PNG, metres x 256
    photo: Path  # the scene's photo (for the sketch-from-photo input)


def scene_colormap(labels: np.ndarray, palette: str) -> np.ndarray:
    """A synthetic scene's label map drawn in ``palette`` (each class by its name there)."""
    colors, names = palette_classes(palette)
    index = {n: i for i, n in enumerate(names)}
    lut = np.array([colors[index[SYNTH_CLASS_NAMES[palette][c]]] for c in SYNTH_CLASSES], np.uint8)
    return lut[labels]


def write_scene(folder, seed, size: int, palette: str) -> ExampleScene:
    """Draw the synthetic scene of ``seed`` and write its condition files into ``folder``."""
    from piti.data.synth import generate_scene

    scene = generate_scene(seed, size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "scene-" + "-".join(str(int(s)) for s in np.atleast_1d(seed))
    files = ExampleScene(
        seed=tuple(np.atleast_1d(seed).tolist()),
        colormap=folder / f"{stem}-mask.png",
        sketch=folder / f"{stem}-sketch.png",
        depth=folder / f"{stem}-depth.png",
        photo=folder / f"{stem}-photo.png",
    )
    Image.fromarray(scene_colormap(scene.labels, palette)).save(files.colormap)
    Image.fromarray(scene.sketch).save(files.sketch)
    Image.fromarray(np.round(scene.depth * DEPTH_PNG_SCALE).astype(np.uint16)).save(files.depth)
    Image.fromarray(scene.image).save(files.photo)
    return files


def write_examples(folder, count: int, size: int, palette: str, world_seed: int = 7) -> list[ExampleScene]:
    """``count`` example scenes (scene i from seed ``(world_seed, i)``; the toy models train on world 0)."""
    return [write_scene(folder, (world_seed, i), size, palette) for i in range(count)]


def random_scene_files(folder, size: int, palette: str) -> ExampleScene:
    """A scene of the synthetic world from a fresh random seed, written into ``folder``."""
    return write_scene(folder, (random_seed(),), size, palette)


def blank_canvas(size: int) -> Image.Image:
    """An opaque black square: an unlabelled mask, or paper for white lines."""
    return Image.new("RGBA", (size, size), (0, 0, 0, 255))


def random_seed() -> int:
    return secrets.randbelow(2**31)


# --------------------------------------------------------------------------------------------------
# Outputs


def condition_picture(task: str, condition: torch.Tensor) -> Image.Image:
    """The model's condition tensor ((1, C, S, S) or (C, S, S) in [-1, 1]) as a picture: the colour map
    (mask), the lines (white on black) beside their distance map, which is the encoding the model takes
    (sketch), or the normal and depth visualisations side by side (depth)."""
    c = condition[0] if condition.dim() == 4 else condition
    pic = ((c.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if task == "sketch":  # distance 0 (value -1) is a line
        return Image.fromarray(np.concatenate([np.where(pic[..., 0] == 0, 255, 0).astype(np.uint8), pic[..., 0]], 1))
    if task == "depth":
        return Image.fromarray(np.concatenate([pic[..., :3], pic[..., 3:]], axis=1))
    return Image.fromarray(pic)


def preview_condition(pipe, condition, **kwargs) -> Image.Image:
    """``condition`` as the base model of ``pipe`` will see it (:func:`piti.data.conditions.condition_tensor`
    with the keywords ``snap``, ``from_photo``, ``source``)."""
    tensor, _ = condition_tensor(
        pipe.task, condition, pipe.base_model.config.cond_size, pipe.defaults.palette, **kwargs
    )
    return condition_picture(pipe.task, tensor)


def control_specs() -> dict:
    """Ranges and choices of the demo's controls, from the declared settings (:func:`piti.settings.setting_specs`);
    the guidance slider stops at :data:`GUIDANCE_UI_MAX` and the steps slider at :data:`STEPS_UI_MAX`."""
    from piti.settings import setting_specs

    specs = setting_specs()
    return {
        "num_samples": dict(minimum=1, maximum=MAX_SAMPLES),
        "guidance": dict(
            minimum=max(specs["guidance"].low, 0.0),
            maximum=min(specs["guidance"].high, GUIDANCE_UI_MAX),
            info=specs["guidance"].help,
        ),
        "guidance_mode": dict(choices=list(specs["guidance_mode"].choices), info=specs["guidance_mode"].help),
        "sampler": dict(choices=list(specs["sampler"].choices), info=specs["sampler"].help),
        "steps": dict(minimum=2, maximum=STEPS_UI_MAX),
    }


def control_values(pipe) -> dict:
    """The controls' starting values: the pipeline's recommended settings (a respacing such as ``fast27``
    shows as its number of steps)."""
    d = pipe.defaults
    digits = "".join(ch for ch in d.steps if ch.isdigit())
    return {
        "guidance": d.guidance,
        "guidance_mode": d.guidance_mode,
        "sampler": d.sampler,
        "steps": int(digits or 20),
        "upsample": pipe.upsampler_model is not None,
    }


def translate(
    pipe,
    condition,
    *,
    num_samples: int,
    seed: int,
    guidance: float,
    guidance_mode: str,
    sampler: str,
    steps: int,
    upsample: bool,
    notes=(),
    progress: bool = True,
    **kwargs,
):
    """One demo request: ``pipe`` on ``condition`` with the controls' values.

    Returns ``(images, condition picture, record)``; the record holds every setting used, the notes on the
    condition and the seed, JSON-ready. Raises the pipeline's errors (PitiError) for bad input.
    """
    if not 1 <= int(num_samples) <= MAX_SAMPLES:
        raise ConfigError(f"number of samples must be 1 to {MAX_SAMPLES}, got {num_samples}")
    out = pipe(
        condition,
        num_samples=int(num_samples),
        seed=int(seed),
        upsample=bool(upsample) and pipe.upsampler_model is not None,
        progress=progress,
        guidance=float(guidance),
        guidance_mode=guidance_mode,
        sampler=sampler,
        steps=str(int(steps)),
        **kwargs,
    )
    record = {"settings": out.settings, "notes": list(notes) + out.notes}
    return out.images, condition_picture(pipe.task, out.condition), record


# --------------------------------------------------------------------------------------------------
# Models


class ModelStore:
    """Pipelines loaded on first use, once per task, by ``loader(task)``; safe to share between threads."""

    def __init__(self, loader, tasks):
        self.loader, self.tasks = loader, tuple(tasks)
        self._pipes: dict = {}
        self._lock = threading.Lock()

    def get(self, task: str):
        if task not in self.tasks:
            raise ConfigError(f"this app serves {', '.join(self.tasks)}, not {task!r}")
        with self._lock:
            if task not in self._pipes:
                self._pipes[task] = self.loader(task)
            return self._pipes[task]

    def loaded(self) -> list[str]:
        return list(self._pipes)


# --------------------------------------------------------------------------------------------------
# The app in a subprocess (tests, benchmarks)

APP_PATH = Path(__file__).resolve().parent.parent / "demo" / "app.py"  # in a checkout of the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """``demo/app.py`` in a subprocess on a free localhost port: ``with AppProcess() as url: ...``.

    The port goes through GRADIO_SERVER_PORT, or with ``port_flag`` through ``--port`` while the variable
    names another port. ``env`` adds variables; the app's output is kept in a file (:meth:`output`).
    """

    def __init__(
        self,
        args=(),
        *,
        app=APP_PATH,
        env: dict | None = None,
        port_flag: bool = False,
        timeout: float = 120.0,
        threads: int = 1,
    ):
        self.port = free_port()
        self.app, self.timeout = Path(app), timeout
        self.args = [*args, "--port", str(self.port)] if port_flag else list(args)
        self.env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_SERVER_PORT=str(free_port() if port_flag else self.port),
            **(env or {}),
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = None

    def __enter__(self) -> str:
        self.log = tempfile.TemporaryFile("w+")  # a pipe nobody reads would fill with progress bars and block
        self.proc = subprocess.Popen(
            [sys.executable, str(self.app), *self.args],
            cwd=self.app.parent,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return self.url
            except OSError:
                time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"the app did not answer on {self.url} within {self.timeout:.0f} s:\n{self.output()}")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()
