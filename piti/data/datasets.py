"""(condition, image) training pairs from datasets on disk or from the synthetic world.

Every dataset returns a dict per item:

* ``image``: float32 (3, image_size, image_size) in [-1, 1] (64 for the base
  model, 256 for the upsampler target);
* ``cond``: float32 (C, cond_size, cond_size) in [-1, 1] (C from ``TASK_CHANNELS``,
  or the class count for one-hot masks);
* ``path``: the image file (or ``synth:<seed>/<index>``), for error messages;
* ``caption``: str, in datasets that have captions (COCO with its caption file,
  the training layout with ``captions.jsonl``, the synthetic world).

Geometry. Image and condition are cut from the same source region and brought to
``R = max(image_size, cond_size)``, flipped together, then the image is reduced
to ``image_size`` (bicubic) and the condition sampled at ``cond_size``:

* ``resize="crop"`` (default): keep the aspect ratio, a random square of the
  short side's size (``"center"``: the centre square, for evaluation);
* ``resize="squash"``: the whole picture squashed to a square, as the official
  code does (it computes a crop position but never applies it). The paper's
  numbers were produced this way.

Images use PIL bicubic; label maps, depth and conditions use nearest neighbour
(pixel centres, as PIL); sketches from files are reduced by area and
re-thresholded; sketches for raw datasets are extracted from the image at
``cond_size`` with :func:`~piti.data.conditions.extract_sketch`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from piti.data.conditions import (
    DEPTH_PNG_SCALE,
    SYNTH_PALETTE,
    TASK_CHANNELS,
    UNLABELLED,
    binarize_sketch,
    depth_to_condition,
    extract_sketch,
    get_palette,
    labels_to_colors,
    one_hot,
    picture_to_labels,
    resize_nearest,
    resize_sketch,
    sketch_to_distance,
    to_unit,
)
from piti.data.imageio import is_image_file, read_array, read_image
from piti.errors import ConditionError, ConfigError, DatasetError

RESIZE_MODES = ("crop", "center", "squash")


@dataclass
class Item:
    """One pair on disk: the image and whatever files hold its condition."""

    image: Path
    cond: dict[str, Path] = field(default_factory=dict)  # e.g. {"labels": ...}, {"depth": ..., "mask": ...}
    caption: str | None = None


@dataclass
class RawPair:
    """A pair at the source resolution, before any geometry.

    ``kind`` says what ``cond`` holds: ``"labels"`` (H, W) uint8 class indices,
    ``"sketch"`` (H, W) uint8 binary, ``"photo"`` (no file: the sketch is extracted
    from the image), ``"depth"`` a tuple (metres (H, W) float32, valid (H, W) bool,
    normals (H, W, 3) float32 or None). ``labels``: the scene's (H, W) class indices beside any condition
    (synthetic scenes, for a class-feedback term), or None.
    """

    image: Image.Image
    kind: str
    cond: object
    path: str
    cond_path: str
    caption: str | None = None
    labels: np.ndarray | None = None


def _sorted_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def _read_labels_png(path: Path) -> np.ndarray:
    """A label-index PNG (mode L / P) as (H, W) uint8 without palette conversion."""
    im = read_image(path, mode=None)
    if im.mode not in ("L", "P"):
        raise DatasetError(f"{path}: expected a single-channel label map (PNG mode L or P), got mode {im.mode}")
    return np.asarray(im)


def _decode_normals(rgb: np.ndarray) -> np.ndarray:
    """Normals stored as 8-bit RGB, ``round((n + 1) * 127.5)``, black = invalid -> (H, W, 3) float32."""
    n = rgb.astype(np.float32) / 127.5 - 1.0
    return np.where((rgb == 0).all(-1, keepdims=True), 0.0, n).astype(np.float32)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals (zero = invalid) -> 8-bit RGB for the training layout's ``normals/``."""
    rgb = np.clip(np.round((normals + 1.0) * 127.5), 1, 255).astype(np.uint8)
    return np.where((normals == 0).all(-1, keepdims=True), 0, rgb).astype(np.uint8)


def read_depth_png(path: Path) -> np.ndarray:
    """A 16-bit depth PNG of the training layout -> metres, float32 (0 = invalid)."""
    im = read_image(path, mode=None)
    if im.mode not in ("I;16", "I;16B", "I"):
        raise DatasetError(f"{path}: expected a 16-bit depth PNG (metres x {DEPTH_PNG_SCALE:g}), got mode {im.mode}")
    return np.asarray(im).astype(np.float32) / DEPTH_PNG_SCALE


class PairDataset(Dataset):
    """The shared geometry and condition encoding; readers provide ``items`` and :meth:`load_raw`."""

    tasks: tuple[str, ...] = tuple(TASK_CHANNELS)
    layout: str = ""  # shown when the folder is empty or malformed

    def __init__(
        self,
        task: str,
        image_size: int = 64,
        cond_size: int = 256,
        resize: str = "crop",
        flip: bool = True,
        palette=None,
        mask_encoding: str = "color",
        snap: bool = False,
    ):
        if task not in self.tasks:
            raise ConfigError(f"{type(self).__name__} supports tasks {list(self.tasks)}, not {task!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if mask_encoding not in ("color", "onehot"):
            raise ConfigError(f"mask_encoding must be 'color' or 'onehot', got {mask_encoding!r}")
        self.task, self.image_size, self.cond_size = task, int(image_size), int(cond_size)
        self.resize, self.flip, self.mask_encoding, self.snap = resize, flip, mask_encoding, snap
        self.palette = palette
        self.items: list[Item] = []
        self.has_captions = False

    # -- readers override these
    def load_raw(self, index: int) -> RawPair:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    @property
    def cond_channels(self) -> int:
        if self.task == "mask" and self.mask_encoding == "onehot":
            return len(get_palette(self.palette))
        return TASK_CHANNELS[self.task]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.encode(self.load_raw(index))

    # -- geometry
    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Source region (x0, y0, x1, y1) that becomes the square output."""
        if self.resize == "squash":
            return 0, 0, width, height
        side = min(width, height)
        if self.resize == "center":
            dx, dy = (width - side) // 2, (height - side) // 2
        else:
            dx = int(torch.randint(width - side + 1, ()).item())
            dy = int(torch.randint(height - side + 1, ()).item())
        return dx, dy, dx + side, dy + side

    def encode(self, raw: RawPair) -> dict:
        """Geometry, flip and encoding of one raw pair into the model's tensors."""
        width, height = raw.image.size
        cond_shape = raw.cond[0].shape if raw.kind == "depth" else (None if raw.kind == "photo" else raw.cond.shape)
        if cond_shape is not None and tuple(cond_shape[:2]) != (height, width):
            raise DatasetError(
                f"image and condition sizes differ: {raw.path} is {width}x{height}, "
                f"{raw.cond_path} is {cond_shape[1]}x{cond_shape[0]}"
            )
        box = self._box(width, height)
        work = max(self.image_size, self.cond_size)
        image = raw.image.resize((work, work), Image.BICUBIC, box=box)
        cs = (self.cond_size, self.cond_size)
        try:
            if raw.kind == "labels":
                labels = resize_nearest(raw.cond, cs, box)
                if self.mask_encoding == "onehot":
                    cond = one_hot(labels, len(get_palette(self.palette))) * 2.0 - 1.0
                else:
                    cond = to_unit(labels_to_colors(labels, self.palette))
            elif raw.kind == "sketch":
                x0, y0, x1, y1 = box
                cond = sketch_to_distance(resize_sketch(raw.cond[y0:y1, x0:x1], cs))
            elif raw.kind == "photo":
                photo = image if work == self.cond_size else image.resize(cs, Image.BICUBIC)
                cond = sketch_to_distance(extract_sketch(photo))
            else:
                depth, valid, normals = raw.cond
                normals = None if normals is None else resize_nearest(normals, cs, box)
                cond = depth_to_condition(resize_nearest(depth, cs, box), resize_nearest(valid, cs, box), normals)
        except ConditionError as e:
            raise DatasetError(f"{raw.cond_path}: {e}") from e
        if self.image_size != work:
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        image_t = torch.from_numpy(to_unit(np.asarray(image)))
        cond_t = torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32))
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        if flipped:  # the same horizontal flip for both
            image_t, cond_t = image_t.flip(-1), cond_t.flip(-1)
        out = {"image": image_t, "cond": cond_t, "path": raw.path}
        if raw.labels is not None:
            labels_t = torch.from_numpy(resize_nearest(raw.labels, (self.image_size,) * 2, box).astype(np.int64))
            out["labels"] = labels_t.flip(-1) if flipped else labels_t
        if self.has_captions:
            out["caption"] = raw.caption or ""
        return out

    def _require_items(self, folder: Path) -> None:
        if not self.items:
            raise DatasetError(
                f"no images found in {folder}; expected the {type(self).__name__} layout:\n{self.layout}"
            )


def _check_root(root, layout: str, cls: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; expected the {cls} layout:\n{layout}")
    return root


def _unmatched(kind_a: str, names_a, kind_b: str, folder_b: Path) -> DatasetError:
    """An error listing (the first five of) the files of one side that lack a partner."""
    shown = ", ".join(sorted(names_a)[:5]) + (", ..." if len(names_a) > 5 else "")
    return DatasetError(f"{len(names_a)} {kind_a} without a matching {kind_b} in {folder_b}: {shown}")


# --------------------------------------------------------------------------- ADE20K


class ADE20KDataset(PairDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``), 150 classes; annotation 0 ("other") becomes 255."""

    tasks = ("mask", "sketch")
    layout = (
        "  ROOT/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg\n"
        "  ROOT/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png  (uint8, 0 = other, 1..150)\n"
        "  (ROOT may also be the ADEChallengeData2016 folder itself)"
    )

    def __init__(self, root, split: str = "training", task: str = "mask", **kwargs):
        kwargs.setdefault("palette", "ade20k")
        super().__init__(task, **kwargs)
        split = {"train": "training", "val": "validation"}.get(split, split)
        root = _check_root(root, self.layout, "ADE20K")
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        img_dir, ann_dir = base / "images" / split, base / "annotations" / split
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir} not found; expected the ADE20K layout:\n{self.layout}")
        images = _sorted_images(img_dir)
        if task == "mask":
            missing = [p.name for p in images if not (ann_dir / f"{p.stem}.png").is_file()]
            if missing:
                raise _unmatched("image(s)", missing, "annotation", ann_dir)
        self.items = [Item(p, {"labels": ann_dir / f"{p.stem}.png"}) for p in images]
        self._require_items(img_dir)

    def load_raw(self, index: int) -> RawPair:
        item = self.items[index]
        image = read_image(item.image)
        if self.task != "mask":
            return RawPair(image, "photo", None, str(item.image), str(item.image))
        raw = _read_labels_png(item.cond["labels"])
        labels = np.where(raw == 0, UNLABELLED, raw.astype(np.int16) - 1).astype(np.uint8)
        if raw.max() > 150:
            raise DatasetError(f"{item.cond['labels']}: ADE20K annotations hold 0..150, found {int(raw.max())}")
        return RawPair(image, "labels", labels, str(item.image), str(item.cond["labels"]))


# --------------------------------------------------------------------------- COCO-Stuff


class COCOStuffDataset(PairDataset):
    """COCO-Stuff 164k: 182 classes (``stuffthingmaps``, 255 = unlabelled), captions when the COCO file is there."""

    tasks = ("mask", "sketch")
    layout = (
        "  ROOT/{train2017,val2017}/000000xxxxxx.jpg\n"
        "  ROOT/stuffthingmaps_trainval2017/{train2017,val2017}/000000xxxxxx.png  (uint8, 0..181, 255 = unlabelled)\n"
        "  ROOT/annotations/captions_{train2017,val2017}.json  (optional: captions)"
    )

    def __init__(self, root, split: str = "train", task: str = "mask", **kwargs):
        kwargs.setdefault("palette", "coco-stuff")
        super().__init__(task, **kwargs)
        split = {"training": "train", "validation": "val"}.get(split, split)
        root = _check_root(root, self.layout, "COCO-Stuff")
        img_dir = root / f"{split}2017"
        lab_dir = root / "stuffthingmaps_trainval2017" / f"{split}2017"
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir} not found; expected the COCO-Stuff layout:\n{self.layout}")
        images = _sorted_images(img_dir)
        if task == "mask":
            missing = [p.name for p in images if not (lab_dir / f"{p.stem}.png").is_file()]
            if missing:
                raise _unmatched("image(s)", missing, "stuffthingmap", lab_dir)
        captions = self._captions(root / "annotations" / f"captions_{split}2017.json")
        self.has_captions = captions is not None
        self.items = [Item(p, {"labels": lab_dir / f"{p.stem}.png"}, (captions or {}).get(p.stem)) for p in images]
        self._require_items(img_dir)

    @staticmethod
    def _captions(path: Path) -> dict[str, str] | None:
        """First caption (lowest annotation id) per image stem, or None without the file."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            names = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
            out: dict[str, str] = {}
            for ann in sorted(data["annotations"], key=lambda a: a["id"]):
                out.setdefault(names[ann["image_id"]], ann["caption"].strip())
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: not a COCO captions file ({type(e).__name__}: {e})") from e
        return out

    def load_raw(self, index: int) -> RawPair:
        item = self.items[index]
        image = read_image(item.image)
        if self.task != "mask":
            return RawPair(image, "photo", None, str(item.image), str(item.image), item.caption)
        labels = _read_labels_png(item.cond["labels"])
        return RawPair(image, "labels", labels, str(item.image), str(item.cond["labels"]), item.caption)


# --------------------------------------------------------------------------- DIODE


class DIODEDataset(PairDataset):
    """DIODE depth: ``NAME.png`` with ``NAME_depth.npy``, ``NAME_depth_mask.npy`` (and ``NAME_normal.npy``
    if present)."""

    tasks = ("depth", "sketch")
    layout = (
        "  ROOT/{train,val}/{indoors,outdoor}/scene_*/scan_*/NAME.png\n"
        "  ... NAME_depth.npy (H, W, 1) metres, NAME_depth_mask.npy (H, W), NAME_normal.npy (optional)\n"
        "  (any folder depth below ROOT/SPLIT, or below ROOT when it has no SPLIT folder)"
    )

    def __init__(self, root, split: str = "val", task: str = "depth", **kwargs):
        super().__init__(task, **kwargs)
        root = _check_root(root, self.layout, "DIODE")
        base = root / split if (root / split).is_dir() else root
        images = sorted(p for p in base.rglob("*.png") if not p.stem.endswith(("_depth", "_normal", "_depth_mask")))
        items = []
        for p in images:
            files = {k: p.with_name(f"{p.stem}_{k}.npy") for k in ("depth", "depth_mask", "normal")}
            if task == "depth" and not files["depth"].is_file():
                raise DatasetError(f"{p}: no matching depth file {files['depth'].name} next to it")
            if not files["normal"].is_file():
                del files["normal"]
            items.append(Item(p, files))
        self.items = items
        self._require_items(base)

    def load_raw(self, index: int) -> RawPair:
        item = self.items[index]
        image = read_image(item.image)
        if self.task != "depth":
            return RawPair(image, "photo", None, str(item.image), str(item.image))
        depth = read_array(item.cond["depth"]).astype(np.float32)
        depth = depth[..., 0] if depth.ndim == 3 else depth
        valid = depth > 0
        if item.cond["depth_mask"].is_file():
            mask = read_array(item.cond["depth_mask"])
            if mask.shape[:2] != depth.shape:
                raise DatasetError(
                    f"depth and mask sizes differ: {item.cond['depth']} is {depth.shape}, "
                    f"{item.cond['depth_mask']} is {mask.shape}"
                )
            valid = valid & (mask.reshape(depth.shape) > 0)
        normals = None
        if "normal" in item.cond:
            normals = read_array(item.cond["normal"]).astype(np.float32)
            if normals.shape != depth.shape + (3,):
                raise DatasetError(
                    f"{item.cond['normal']}: expected normals of shape {depth.shape + (3,)}, got {normals.shape}"
                )
        return RawPair(image, "depth", (depth, valid, normals), str(item.image), str(item.cond["depth"]))


# --------------------------------------------------------------------------- paired folder


def _read_captions(path: Path) -> dict[str, str] | None:
    """``captions.jsonl``: one ``{"file": ..., "caption": ...}`` per line -> {stem: caption}."""
    if not path.is_file():
        return None
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            out[Path(entry["file"]).stem] = str(entry["caption"])
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f'{path}, line {n}: expected {{"file": ..., "caption": ...}} ({e})') from e
    return out


def _read_classes(path: Path) -> np.ndarray:
    """``classes.json`` (a list of ``{"id", "name", "color"}``) -> (n, 3) uint8 palette."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        colors = np.zeros((len(entries), 3), np.int64)
        for e in entries:
            colors[int(e["id"])] = e["color"]
        return get_palette(colors)
    except (ValueError, KeyError, TypeError, IndexError, ConfigError) as e:
        raise DatasetError(f'{path}: expected a list of {{"id", "name", "color": [r, g, b]}} ({e})') from e


class FolderDataset(PairDataset):
    """Custom data: ``images/STEM.*`` paired with ``conditions/STEM.*`` (same stem).

    Conditions per task: mask, a colour map in ``palette`` (or a grey label-index
    PNG); sketch, white lines on black (or dark on white); depth, ``STEM.npy``
    metres or a 16-bit PNG (metres x 256). ``palette=None`` takes ``classes.json``
    from the folder if there is one, else COCO-Stuff.
    """

    layout = (
        "  ROOT/images/STEM.{png,jpg,...}\n"
        "  ROOT/conditions/STEM.{png,...}  (depth: STEM.npy metres or 16-bit PNG)\n"
        "  ROOT/captions.jsonl, ROOT/classes.json  (optional)"
    )

    def __init__(self, root, task: str = "mask", **kwargs):
        root = _check_root(root, self.layout, "folder")
        if kwargs.get("palette") is None:
            kwargs["palette"] = (
                _read_classes(root / "classes.json") if (root / "classes.json").is_file() else "coco-stuff"
            )
        super().__init__(task, **kwargs)
        img_dir, cond_dir = root / "images", root / "conditions"
        for d in (img_dir, cond_dir):
            if not d.is_dir():
                raise DatasetError(f"{d} not found; expected the folder layout:\n{self.layout}")
        images = {p.stem: p for p in _sorted_images(img_dir)}
        conds = {
            p.stem: p
            for p in sorted(cond_dir.iterdir())
            if p.is_file() and (is_image_file(p) or p.suffix == ".npy") and not p.name.startswith(".")
        }
        if not images:
            self._require_items(img_dir)
        lonely_images = [images[s].name for s in sorted(set(images) - set(conds))]
        lonely_conds = [conds[s].name for s in sorted(set(conds) - set(images))]
        if lonely_images or lonely_conds:
            problems = []
            if lonely_images:
                problems.append(str(_unmatched("image(s)", lonely_images, "condition (same stem)", cond_dir)))
            if lonely_conds:
                problems.append(str(_unmatched("condition(s)", lonely_conds, "image (same stem)", img_dir)))
            raise DatasetError("; ".join(problems))
        captions = _read_captions(root / "captions.jsonl")
        self.has_captions = captions is not None
        self.items = [Item(images[s], {"cond": conds[s]}, (captions or {}).get(s)) for s in sorted(images)]

    def load_raw(self, index: int) -> RawPair:
        item = self.items[index]
        image, path = read_image(item.image), item.cond["cond"]
        if self.task == "depth":
            depth = read_array(path).astype(np.float32) if path.suffix == ".npy" else read_depth_png(path)
            depth = depth[..., 0] if depth.ndim == 3 else depth
            cond = (depth, np.isfinite(depth) & (depth > 0), None)
            return RawPair(image, "depth", cond, str(item.image), str(path), item.caption)
        pic = read_image(path, mode=None)
        if self.task == "mask":
            try:
                labels = picture_to_labels(pic, self.palette, self.snap, str(path))
            except ConditionError as e:
                raise DatasetError(str(e)) from e
            return RawPair(image, "labels", labels, str(item.image), str(path), item.caption)
        return RawPair(image, "sketch", binarize_sketch(pic), str(item.image), str(path), item.caption)


# --------------------------------------------------------------------------- the training layout


class PreparedDataset(PairDataset):
    """The training layout written by ``piti prepare`` and ``piti synth``.

    ``images/`` plus, per task: ``labels/`` (uint8 class indices; else ``colors/``,
    checked against ``classes.json``), ``sketches/``, ``depth/`` (16-bit, metres x 256,
    0 = invalid) with optional ``normals/``; ``captions.jsonl`` and ``classes.json``.
    """

    layout = (
        "  ROOT/images/NAME.png\n"
        "  ROOT/labels/NAME.png (uint8 class indices) and/or ROOT/colors/NAME.png   (mask)\n"
        "  ROOT/sketches/NAME.png (white edges on black)                           (sketch)\n"
        "  ROOT/depth/NAME.png (16-bit, metres x 256, 0 = invalid), ROOT/normals/   (depth)\n"
        "  ROOT/classes.json, ROOT/captions.jsonl"
    )
    folders = {"mask": ("labels", "colors"), "sketch": ("sketches",), "depth": ("depth",)}

    def __init__(self, root, task: str = "mask", **kwargs):
        root = _check_root(root, self.layout, "training")
        if kwargs.get("palette") is None and task == "mask":
            if not (root / "classes.json").is_file():
                raise DatasetError(
                    f"{root / 'classes.json'} not found; a mask dataset needs its classes. Layout:\n{self.layout}"
                )
            kwargs["palette"] = _read_classes(root / "classes.json")
        super().__init__(task, **kwargs)
        img_dir = root / "images"
        if not img_dir.is_dir():
            raise DatasetError(f"{img_dir} not found; expected the training layout:\n{self.layout}")
        folder = next((root / f for f in self.folders[task] if (root / f).is_dir()), None)
        if folder is None:
            raise DatasetError(
                f"{root} has no {' or '.join(self.folders[task])}/ folder for task {task!r}; layout:\n{self.layout}"
            )
        images = _sorted_images(img_dir)
        missing = [p.name for p in images if not (folder / f"{p.stem}.png").is_file()]
        if missing:
            raise _unmatched("image(s)", missing, f"{folder.name}/ file", folder)
        captions = _read_captions(root / "captions.jsonl")
        self.has_captions = captions is not None
        normals = root / "normals"
        self.items = []
        for p in images:
            cond = {folder.name: folder / f"{p.stem}.png"}
            if task == "depth" and (normals / f"{p.stem}.png").is_file():
                cond["normals"] = normals / f"{p.stem}.png"
            self.items.append(Item(p, cond, (captions or {}).get(p.stem)))
        self._require_items(img_dir)

    def load_raw(self, index: int) -> RawPair:
        item = self.items[index]
        image = read_image(item.image)
        (kind, path), *_ = item.cond.items()
        if kind == "labels":
            labels = _read_labels_png(path)
            return RawPair(image, "labels", labels, str(item.image), str(path), item.caption)
        if kind == "colors":
            try:
                labels = picture_to_labels(read_image(path), self.palette, self.snap, str(path))
            except ConditionError as e:
                raise DatasetError(str(e)) from e
            return RawPair(image, "labels", labels, str(item.image), str(path), item.caption)
        if kind == "sketches":
            sketch = binarize_sketch(read_image(path, mode="L"))
            return RawPair(image, "sketch", sketch, str(item.image), str(path), item.caption)
        depth = read_depth_png(path)
        normals = _decode_normals(np.asarray(read_image(item.cond["normals"]))) if "normals" in item.cond else None
        if normals is not None and normals.shape[:2] != depth.shape:
            raise DatasetError(
                f"depth and normals sizes differ: {path} is {depth.shape}, "
                f"{item.cond['normals']} is {normals.shape[:2]}"
            )
        return RawPair(image, "depth", (depth, depth > 0, normals), str(item.image), str(path), item.caption)


# --------------------------------------------------------------------------- the synthetic world, on the fly


class SynthDataset(PairDataset):
    """Scenes drawn on the fly: item ``i`` is ``generate_scene((seed, i))``, no files needed.

    Scenes are drawn at ``max(image_size, cond_size)`` pixels; the sketch is
    re-extracted when the condition is smaller than that. ``flip`` defaults to False,
    so an item depends only on (seed, index). With ``labels``, items also carry the scene's class indices at
    the image size (``labels``, int64), whatever the task: the target of a class-feedback term.
    """

    def __init__(self, length: int = 10000, task: str = "mask", seed: int = 0, labels: bool = False, **kwargs):
        kwargs.setdefault("flip", False)
        kwargs.setdefault("palette", SYNTH_PALETTE)
        kwargs["resize"] = "squash"  # scenes are square already
        super().__init__(task, **kwargs)
        if length < 1:
            raise ConfigError(f"SynthDataset length must be at least 1, got {length}")
        self.length, self.seed, self.labels = int(length), int(seed), bool(labels)
        self.has_captions = True

    def __len__(self) -> int:
        return self.length

    def load_raw(self, index: int) -> RawPair:
        from piti.data.synth import generate_scene

        size = max(self.image_size, self.cond_size)
        scene = generate_scene((self.seed, index), size)
        path = f"synth:{self.seed}/{index}"
        if self.task == "mask":
            kind, cond = "labels", scene.labels
        elif self.task == "sketch":
            kind, cond = ("sketch", scene.sketch) if self.cond_size == size else ("photo", None)
        else:
            kind, cond = "depth", (scene.depth, scene.depth > 0, None)
        labels = scene.labels if self.labels else None
        return RawPair(Image.fromarray(scene.image), kind, cond, path, path, scene.caption, labels)


DATASETS = {
    "ade20k": ADE20KDataset,
    "coco-stuff": COCOStuffDataset,
    "diode": DIODEDataset,
    "folder": FolderDataset,
    "prepared": PreparedDataset,
    "synth": SynthDataset,
}


def make_dataset(name: str, root=None, task: str = "mask", **kwargs) -> PairDataset:
    """Build a dataset by name (``DATASETS``); ``root`` is ignored for ``"synth"``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if name == "synth":
        return SynthDataset(task=task, **kwargs)
    if root is None:
        raise ConfigError(f"dataset {name!r} needs a root folder")
    return DATASETS[name](root, task=task, **kwargs)
