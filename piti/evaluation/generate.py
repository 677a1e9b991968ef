"""``piti eval generate``: one sample per condition, with the ground truth beside it, in the evaluation layout.

The layout (read by ``piti eval fid``, ``align`` and ``diversity``)::

    OUT/fake/NAME.png          the sample of condition NAME (seed + index), the final (upsampled) size
    OUT/samples/NAME/K.png     with --samples K > 1: every sample of NAME (fake/NAME.png is sample 0)
    OUT/real/NAME.png          the ground-truth photo at the same size (when the source has one)
    OUT/cond/NAME.png          the condition as a picture (colour map, sketch, depth visualisation)
    OUT/labels/NAME.png        mask: class indices (uint8, 255 = unlabelled) at the final size
    OUT/sketches/NAME.png      sketch: the input sketch, white edges on black, at the final size
    OUT/depth/NAME.png         depth: metres x 256 (16-bit, 0 = no depth) at the final size
    OUT/generate.json          task, models, settings, sources, seeds, command

Sources: held-out synthetic scenes (``synth``), a prepared dataset (``piti prepare``'s layout, squashed to a
square as the official evaluation does, or centre-cropped), or a folder of condition pictures (no ground truth).
Resumable: a condition whose files exist is skipped, every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from piti.errors import ConfigError, DatasetError
from piti.evaluation.images import condition_picture, list_images, unit_to_uint8

GT_FOLDER = {"mask": "labels", "sketch": "sketches", "depth": "depth"}


@dataclass
class Example:
    """One condition to translate, and what is known about it."""

    name: str
    cond: object  # a (C, S, S) tensor in [-1, 1], or a file path (folder source)
    real: np.ndarray | None = None  # uint8 (S, S, 3)
    truth: np.ndarray | None = None  # labels uint8 / sketch uint8 (white edges) / depth float32 metres, (S, S)
    picture: np.ndarray | None = None  # the condition as a picture


def synth_examples(task: str, num: int, start: int, size: int, cond_size: int):
    """Held-out synthetic scenes (HELDOUT_STREAM, start + i) as the training data makes them."""
    from piti.data.conditions import resize_sketch
    from piti.evaluation.scenes import heldout_examples

    data = heldout_examples(task, num, start, size, cond_size, depth=task == "depth")
    for i in range(num):
        picture = condition_picture(task, data["cond"][i])
        if task == "mask":
            truth = data["labels"][i]
        elif task == "sketch":
            truth = picture[..., 0] if picture.shape[0] == size else resize_sketch(picture[..., 0], (size, size))
        else:
            truth = data["depth"][i]
        yield Example(f"scene-{start + i:06d}", data["cond"][i], data["real"][i], truth, picture)


def dataset_examples(task: str, root, size: int, cond_size: int, resize: str = "squash", limit: int | None = None):
    """Items of a prepared dataset (``piti prepare``'s layout): condition, photo and ground truth at ``size``."""
    from piti.data.conditions import resize_nearest, resize_sketch
    from piti.data.datasets import PreparedDataset

    ds = PreparedDataset(root, task=task, image_size=size, cond_size=cond_size, resize=resize, flip=False)
    count = len(ds) if limit is None else min(limit, len(ds))
    for i in range(count):
        item, raw = ds[i], ds.load_raw(i)
        w, h = raw.image.size
        box = ds._box(w, h)  # the region the dataset cut (the whole picture when squashing)
        if raw.kind == "labels":
            truth = resize_nearest(raw.cond, (size, size), box)
        elif raw.kind == "sketch":
            x0, y0, x1, y1 = box
            truth = resize_sketch(raw.cond[y0:y1, x0:x1], (size, size))
        else:
            truth = resize_nearest(np.where(raw.cond[1], raw.cond[0], 0.0), (size, size), box).astype(np.float32)
        cond = item["cond"]
        yield Example(
            ds.items[i].image.stem,
            cond,
            unit_to_uint8(item["image"]).permute(1, 2, 0).numpy(),
            truth,
            condition_picture(task, cond),
        )


def folder_examples(folder, limit: int | None = None):
    """Condition pictures of a folder (no ground truth)."""
    files = list_images(folder, "conditions")
    for p in files[:limit]:
        yield Example(p.stem, p)


def write_example_truth(out: Path, task: str, ex: Example) -> None:
    """real/, cond/ and the task's ground truth of one example (atomic writes)."""
    from piti.data.conditions import DEPTH_PNG_SCALE
    from piti.data.imageio import save_png

    if ex.real is not None:
        save_png(out / "real" / f"{ex.name}.png", ex.real)
    if ex.picture is not None:
        save_png(out / "cond" / f"{ex.name}.png", ex.picture)
    if ex.truth is not None:
        truth = ex.truth
        if task == "depth":
            truth = np.clip(np.round(truth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
        save_png(out / GT_FOLDER[task] / f"{ex.name}.png", truth)


def generate(
    pipe,
    task: str,
    examples,
    out,
    *,
    samples: int = 1,
    seed: int = 0,
    upsample: bool = True,
    settings: dict | None = None,
    progress: bool = True,
    record: dict | None = None,
) -> dict:
    """Translate every example (seed ``seed + index``, ``samples`` pictures per call) into ``out``'s layout;
    returns the run's record (also written to ``out/generate.json``). Examples already done are skipped."""
    from tqdm import tqdm

    from piti.data.imageio import save_png, save_text

    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    out = Path(out)
    examples = list(examples)
    if not examples:
        raise DatasetError("no conditions to translate")
    names = [ex.name for ex in examples]
    if len(set(names)) != len(names):
        raise DatasetError(
            "two conditions share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1}))
        )
    done = skipped = 0
    used = None
    for index, ex in enumerate(tqdm(examples, desc=f"generate {task}", disable=not progress)):
        fake = out / "fake" / f"{ex.name}.png"
        wanted = [fake] + [out / "samples" / ex.name / f"{k:03d}.png" for k in range(samples if samples > 1 else 0)]
        if all(p.is_file() for p in wanted):
            skipped += 1
            continue
        result = pipe(
            ex.cond,
            num_samples=samples,
            seed=seed + index,
            upsample=upsample,
            progress=False,
            source=ex.name,
            **(settings or {}),
        )
        used = used or result.settings
        write_example_truth(out, task, ex)
        if samples > 1:
            for k, image in enumerate(result.images):
                save_png(out / "samples" / ex.name / f"{k:03d}.png", np.asarray(image))
        save_png(fake, np.asarray(result.images[0]))  # last: marks the example done
        done += 1
    info = dict(record or {})
    info.update(
        task=task,
        count=len(examples),
        generated=done,
        skipped=skipped,
        samples_per_condition=samples,
        seeds=f"condition i (sorted order) uses seed {seed} + i",
        upsample=upsample,
        settings=used,
        ground_truth=GT_FOLDER[task] if (out / GT_FOLDER[task]).is_dir() else None,
    )
    previous = out / "generate.json"
    if used is None and previous.is_file():  # nothing new: keep the settings of the run that made the files
        info["settings"] = json.loads(previous.read_text()).get("settings")
    save_text(previous, json.dumps(info, indent=2, default=str) + "\n")
    return info
