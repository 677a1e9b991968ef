"""Reading and writing the files of a dataset, with errors that name the file.

Every reader in ``piti.data`` goes through these helpers, so a missing,
truncated or non-image file always gives a :class:`~piti.errors.DatasetError`
that says which file and what was wrong, never a bare PIL or NumPy traceback.
Writers are atomic (write a temporary file, then rename), so an interrupted
``piti prepare`` or ``piti synth`` never leaves a half-written file behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from piti.errors import DatasetError
from piti.fileio import atomic_write

# file endings accepted as images everywhere in piti.data
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends like an image we can read."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Open an image file fully (decoding it now, not lazily) and convert it to ``mode``.

    ``mode=None`` keeps the file's own mode (e.g. ``"I;16"`` for 16-bit depth PNGs).
    Raises DatasetError naming ``path`` if the file is missing, not an image,
    truncated, or too large to decode safely.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode is not None and im.mode != mode else im.copy()
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises UnidentifiedImageError (an OSError) for non-images and
        # OSError("image file is truncated") for cut-off files
        raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def read_array(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` array (no pickles), naming ``path`` in any error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H,W) / (H,W,3) or uint16 (H,W) array as a PNG, atomically.

    PNGs are written without timestamps or other metadata, so equal arrays give
    byte-identical files.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError(f"16-bit PNGs must be single-channel, got shape {array.shape}")
        image = Image.fromarray(array)  # Pillow >= 10 stores uint16 2-D arrays as 16-bit PNGs
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"save_png expects uint8 or uint16, got {array.dtype}")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=6))


def save_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
