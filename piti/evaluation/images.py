"""Images for evaluation: conversions, image folders (checked before any work), and grids.

* :func:`images_to_tensor` / :func:`unit_to_uint8`: between uint8 pictures and the models' [-1, 1] tensors;
* :func:`list_images` / :func:`read_images`: the image files of a folder, every file opened and checked
  first, so that an unreadable file is named before anything is computed;
* :func:`condition_picture`: a condition tensor as a picture; :func:`save_grid`: columns of pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from piti.errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def images_to_tensor(images) -> torch.Tensor:
    """Images as a float32 (N, 3, H, W) tensor in [-1, 1].

    Accepts uint8 arrays (H, W, 3) or (N, H, W, 3) in 0..255, a PIL image or a list
    of them (or of uint8 arrays), or a float tensor (N, 3, H, W) / (3, H, W) in
    [-1, 1] (what the samplers return).
    """
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point():
            raise ConfigError(f"image tensors must be float in [-1, 1] (N, 3, H, W), got dtype {images.dtype}")
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"image tensors must be (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
        return x.detach().float().cpu()
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ConfigError("no images given")
        arrays = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ConfigError(f"images of one call must share a size, got {sorted({a.shape for a in arrays})}")
        images = np.stack(arrays)
    if not isinstance(images, np.ndarray):
        raise ConfigError(f"expected uint8 arrays, PIL images or a float tensor, got {type(images).__name__}")
    a = images[None] if images.ndim == 3 else images
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ConfigError(f"image arrays must be uint8 (H, W, 3) or (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The exact inverse of the datasets' ``x / 127.5 - 1`` (rounded; truncation would lose a level)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------ folders


def list_images(folder, what: str = "images") -> list[Path]:
    """The image files directly in ``folder``, sorted by name; an error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{what}: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(f"{what}: no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def check_readable(files, what: str = "images") -> list[tuple[int, int]]:
    """Open every file (header and pixels) and return their (width, height); an error names every
    unreadable file, before any work is done."""
    sizes, bad = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                sizes.append(im.size)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append(f"{p} ({type(e).__name__}: {e})")
    if bad:
        raise DatasetError(
            f"{what}: {len(bad)} unreadable file(s):\n  "
            + "\n  ".join(bad[:20])
            + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        )
    return sizes


def paired_files(folders: dict[str, Path]) -> dict[str, list[Path]]:
    """Files of several folders paired by name (the stem): ``{folder key: [files in one order]}``.

    Every folder must hold the same names; the error lists the names missing from each folder."""
    listed = {key: {p.stem: p for p in list_images(folder, key)} for key, folder in folders.items()}
    names = sorted(set().union(*(set(v) for v in listed.values())))
    problems = []
    for key, files in listed.items():
        missing = [n for n in names if n not in files]
        if missing:
            shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
            problems.append(f"{folders[key]} ({key}) lacks {shown}")
    if problems:
        raise DatasetError("the folders do not hold the same images; " + "; ".join(problems))
    return {key: [files[n] for n in names] for key, files in listed.items()}


def read_rgb(path, size: int | None = None) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3); with ``size``, resized to size x size (PIL bicubic) when it differs."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im)


# ------------------------------------------------------------------------------------------ pictures


def condition_picture(task: str, cond: torch.Tensor) -> np.ndarray:
    """A condition tensor (C, S, S) in [-1, 1] as an RGB picture (S, S, 3) uint8: the colour map (mask),
    the sketch's lines (distance 0 in its distance coding) white on black (sketch), or the depth
    visualisation, channels 3..5 (depth)."""
    x = unit_to_uint8(cond).permute(1, 2, 0).numpy()
    if task == "sketch":
        return np.repeat(np.where(x == 0, 255, 0).astype(np.uint8), 3, axis=2)
    return x[..., 3:6] if task == "depth" else x


def save_grid(path, columns: dict, rows: int) -> None:
    """A PNG grid: one column per entry of ``columns`` (name -> uint8 (N, S, S, 3)), ``rows`` scenes."""
    size, pad, head = max(c.shape[1] for c in columns.values()), 2, 14
    grid = Image.new("RGB", (len(columns) * (size + pad) + pad, head + rows * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, (name, pics) in enumerate(columns.items()):
        x = pad + j * (size + pad)
        draw.text((x + 2, 1), name, fill="black")
        for i in range(rows):
            tile = Image.fromarray(pics[i]).resize((size, size), Image.NEAREST)
            grid.paste(tile, (x, head + pad + i * (size + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
