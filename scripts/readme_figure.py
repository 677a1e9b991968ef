"""The README's picture: the first rows of the shipped models' alignment grids, one block per task.

    python scripts/readme_figure.py            # -> docs/images/results.png

The grids (condition / generated at 128 px / real, held-out scenes) are written by eval/toy_alignment.py
into checkpoints/toy/toy_alignment_{mask,sketch,depth}.png; this crops their header and first ROWS rows.
"""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
HEADER, TILE, PAD = 14, 128, 2  # the grid layout of piti.evaluation's save_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "results.png")
    args = p.parse_args()
    blocks = []
    for task in ("mask", "sketch", "depth"):
        grid = Image.open(ROOT / "checkpoints" / "toy" / f"toy_alignment_{task}.png").convert("RGB")
        block = grid.crop((0, 0, grid.width, HEADER + PAD + args.rows * (TILE + PAD)))
        labelled = Image.new("RGB", (block.width, block.height + 16), "white")
        labelled.paste(block, (0, 16))
        ImageDraw.Draw(labelled).text((4, 2), f"{task} to image", fill="black")
        blocks.append(labelled)
    out = Image.new("RGB", (sum(b.width for b in blocks) + 8 * (len(blocks) - 1), blocks[0].height), "white")
    x = 0
    for b in blocks:
        out.paste(b, (x, 0))
        x += b.width + 8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, optimize=True)
    print(f"{args.out} ({out.width}x{out.height})")


if __name__ == "__main__":
    main()
