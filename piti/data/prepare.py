"""``piti prepare``: convert a raw dataset into the training layout.

    piti prepare --dataset coco-stuff --root RAW --out DIR --task mask [--split val] [--size 256]

Writes, per image ``NAME`` (the source file's stem), everything at short side
``--size`` (aspect kept; 0 keeps the source size):

* ``images/NAME.png`` (bicubic)
* mask: ``labels/NAME.png`` (uint8 class indices, 255 = unlabelled) and ``colors/NAME.png``
* sketch: ``sketches/NAME.png`` (white edges on black; extracted from the resized
  image unless the source has sketches)
* depth: ``depth/NAME.png`` (16-bit, metres x 256, 0 = invalid) and, when the
  source has normals (DIODE ``_normal.npy``), ``normals/NAME.png``
* ``classes.json`` (mask) and ``captions.jsonl`` (when the source has captions).

Re-running resumes: an item whose files all exist is skipped, and every file is
written atomically, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from piti.data.conditions import (
    ADE20K_CLASSES,
    COCO_STUFF_CLASSES,
    DEPTH_PNG_SCALE,
    SYNTH_CLASSES,
    TASK_CHANNELS,
    extract_sketch,
    get_palette,
    labels_to_colors,
    resize_nearest,
    resize_sketch,
)
from piti.data.datasets import DATASETS, PairDataset, encode_normals
from piti.data.imageio import save_png, save_text
from piti.errors import ConfigError, DatasetError

SOURCES = ("ade20k", "coco-stuff", "diode", "folder")
CLASS_NAMES = {"ade20k": ADE20K_CLASSES, "coco-stuff": COCO_STUFF_CLASSES, "synth": SYNTH_CLASSES}
DEFAULT_SPLIT = {"ade20k": "training", "coco-stuff": "train", "diode": "val"}


def _outputs(out: Path, task: str, name: str, with_normals: bool) -> list[Path]:
    folders = {"mask": ["labels", "colors"], "sketch": ["sketches"], "depth": ["depth"]}[task]
    if with_normals:
        folders.append("normals")
    return [out / f / f"{name}.png" for f in folders] + [out / "images" / f"{name}.png"]


def _target_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side ``short`` (0: unchanged)."""
    if short <= 0:
        return width, height
    scale = short / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_item(ds: PairDataset, index: int, out: Path, size: int) -> None:
    """Convert item ``index`` of a reader into the training layout's files."""
    raw = ds.load_raw(index)
    name = ds.items[index].image.stem
    width, height = _target_size(*raw.image.size, size)
    image = raw.image if (width, height) == raw.image.size else raw.image.resize((width, height), Image.BICUBIC)
    cond_shape = raw.cond[0].shape if raw.kind == "depth" else (None if raw.kind == "photo" else raw.cond.shape)
    if cond_shape is not None and tuple(cond_shape[:2]) != raw.image.size[::-1]:
        raise DatasetError(
            f"image and condition sizes differ: {raw.path} is {raw.image.size[0]}x{raw.image.size[1]}, "
            f"{raw.cond_path} is {cond_shape[1]}x{cond_shape[0]}"
        )
    hw = (height, width)
    if raw.kind == "labels":
        labels = resize_nearest(raw.cond, hw)
        save_png(out / "labels" / f"{name}.png", labels)
        save_png(out / "colors" / f"{name}.png", labels_to_colors(labels, ds.palette))
    elif raw.kind in ("sketch", "photo"):
        sketch = resize_sketch(raw.cond, hw) if raw.kind == "sketch" else extract_sketch(image)
        save_png(out / "sketches" / f"{name}.png", sketch)
    else:
        depth, valid, normals = raw.cond
        metres = np.where(valid, depth, 0.0)
        stored = np.clip(np.round(resize_nearest(metres, hw) * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
        save_png(out / "depth" / f"{name}.png", stored)
        if normals is not None:
            normals = np.where(valid[..., None], normals, 0.0)
            save_png(out / "normals" / f"{name}.png", encode_normals(resize_nearest(normals, hw)))
    save_png(out / "images" / f"{name}.png", np.asarray(image.convert("RGB")))  # last: marks the item done


def prepare(
    dataset: str,
    root,
    out,
    task: str,
    split: str | None = None,
    size: int = 256,
    palette=None,
    snap: bool = False,
    limit: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Convert ``dataset`` at ``root`` into the training layout at ``out``; returns counts.

    Items whose output files all exist are skipped (resume). With ``skip_bad``,
    unreadable items are listed in ``out/skipped.txt`` instead of stopping the run.
    """
    from tqdm import tqdm

    if dataset not in SOURCES:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {list(SOURCES)}")
    if task not in TASK_CHANNELS:
        raise ConfigError(f"unknown task {task!r}; expected one of {list(TASK_CHANNELS)}")
    kwargs = {"palette": palette, "snap": snap}
    if dataset != "folder":
        kwargs["split"] = split or DEFAULT_SPLIT[dataset]
        if palette is None:
            del kwargs["palette"]
    elif split:
        raise ConfigError("--split does not apply to --dataset folder")
    ds = DATASETS[dataset](root, task=task, **kwargs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    if task == "mask":
        pal = get_palette(ds.palette)
        names = CLASS_NAMES.get(ds.palette) if isinstance(ds.palette, str) else None
        own = Path(root) / "classes.json"
        if names is None and palette is None and own.is_file():  # a folder with its own classes
            names = [e["name"] for e in sorted(json.loads(own.read_text(encoding="utf-8")), key=lambda e: e["id"])]
        classes = [
            {"id": i, "name": names[i] if names else f"class {i}", "color": pal[i].tolist()} for i in range(len(pal))
        ]
        save_text(out / "classes.json", json.dumps(classes, indent=1) + "\n")

    n = len(ds) if limit is None else min(limit, len(ds))
    counts = {"written": 0, "skipped_done": 0, "skipped_bad": 0}
    bad = []
    for i in tqdm(range(n), desc=f"prepare {dataset}", unit="image", disable=not progress):
        item = ds.items[i]
        with_normals = task == "depth" and "normal" in item.cond
        if all(p.is_file() for p in _outputs(out, task, item.image.stem, with_normals)):
            counts["skipped_done"] += 1
            continue
        try:
            prepare_item(ds, i, out, size)
            counts["written"] += 1
        except DatasetError as e:
            if not skip_bad:
                raise
            bad.append(str(e))
            counts["skipped_bad"] += 1
    if bad:
        save_text(out / "skipped.txt", "\n".join(bad) + "\n")
    if ds.has_captions:
        lines = [
            json.dumps({"file": f"{it.image.stem}.png", "caption": it.caption})
            for it in ds.items[:n]
            if it.caption is not None
        ]
        save_text(out / "captions.jsonl", "\n".join(lines) + "\n")
    return counts


def configure_parser(parser) -> None:
    parser.add_argument("--dataset", required=True, choices=SOURCES, help="layout of the raw dataset")
    parser.add_argument("--root", required=True, help="folder of the raw dataset")
    parser.add_argument("--out", required=True, help="output folder (training layout)")
    parser.add_argument("--task", required=True, choices=list(TASK_CHANNELS), help="condition to prepare")
    parser.add_argument(
        "--split", default=None, help="ade20k: training|validation, coco-stuff: train|val, diode: train|val"
    )
    parser.add_argument(
        "--size", type=int, default=256, help="short side of the written files in pixels; 0 keeps the source size"
    )
    parser.add_argument(
        "--palette",
        default=None,
        help="folder + mask: coco-stuff, ade20k or synth (default: ROOT/classes.json, else coco-stuff)",
    )
    parser.add_argument(
        "--snap", action="store_true", help="folder + mask: map colours outside the palette to the nearest class"
    )
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N images")
    parser.add_argument(
        "--skip-bad", action="store_true", help="list unreadable files in OUT/skipped.txt instead of stopping"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    counts = prepare(
        args.dataset,
        args.root,
        args.out,
        args.task,
        split=args.split,
        size=args.size,
        palette=args.palette,
        snap=args.snap,
        limit=args.limit,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    print(
        f"{args.out}: {counts['written']} written, {counts['skipped_done']} already done"
        + (f", {counts['skipped_bad']} unreadable (see skipped.txt)" if counts["skipped_bad"] else "")
    )
    return 0
