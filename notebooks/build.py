"""Build the numbered notebooks from their sources (``notebooks/src/NN_name.py``) and execute them.

    python notebooks/build.py                # every notebook: build, execute (full mode), write notebooks/NN_name.ipynb
    python notebooks/build.py 02 04          # the notebooks whose names start with these
    python notebooks/build.py --fast         # executed with PITI_FAST=1 (fewer steps and samples)
    python notebooks/build.py --no-execute   # cells only, no outputs
    python notebooks/build.py --text-only    # new markdown from the sources, outputs kept (code cells unchanged)

A source is a Python file in the "percent" format: a line ``# %% [markdown]`` starts a markdown cell
(its lines are ``# text`` comments), a line ``# %%`` starts a code cell. The committed notebooks are
built and executed by this script in full mode; it prints each notebook's execution time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
KERNEL = "python3"


def parse_source(text: str) -> list[tuple[str, str]]:
    """``[(kind, source), ...]`` with kind ``"markdown"`` or ``"code"``, from a percent-format file."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError("a notebook source must start with a '# %%' cell marker")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        body = "\n".join(lines).strip("\n")
        if body.strip():
            out.append((kind, body))
    return out


def build_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        for kind, src in cells
    ]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding a notebook changes only what changed
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, fast: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom on a fresh kernel in ``cwd`` (PITI_FAST set or cleared); raises on an error."""
    from nbclient import NotebookClient

    old = os.environ.get("PITI_FAST")
    os.environ["PITI_FAST"] = "1" if fast else "0"
    try:
        NotebookClient(
            nb, timeout=timeout, kernel_name=KERNEL, record_timing=False, resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        if old is None:
            os.environ.pop("PITI_FAST", None)
        else:
            os.environ["PITI_FAST"] = old
    return nb


def keep_outputs(nb: nbformat.NotebookNode, old: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with the outputs of ``old``'s code cells, which must have exactly the same code."""
    new_code = [c for c in nb.cells if c.cell_type == "code"]
    old_code = [c for c in old.cells if c.cell_type == "code"]
    if [c.source for c in new_code] != [c.source for c in old_code]:
        raise ValueError("the code cells changed: execute the notebook instead of --text-only")
    for new, prev in zip(new_code, old_code):
        new.outputs, new.execution_count = prev.outputs, prev.execution_count
    nb.metadata = old.metadata
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="prefixes of the notebooks to build (default: all)")
    parser.add_argument("--fast", action="store_true", help="execute with PITI_FAST=1")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="take the markdown from the sources and keep the committed outputs (code unchanged)",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the .ipynb files (default: notebooks/)")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if args.names:
        sources = [s for s in sources if any(s.stem.startswith(n) for n in args.names)]
    if not sources:
        print(f"no notebook source matches {args.names} in {SOURCES}", file=sys.stderr)
        return 2
    for src in sources:
        nb = build_notebook(parse_source(src.read_text()))
        start = time.perf_counter()
        path = args.out / f"{src.stem}.ipynb"
        if args.text_only:
            nb = keep_outputs(nb, nbformat.read(path, as_version=4))
        elif not args.no_execute:
            execute(nb, HERE, args.fast)
        seconds = time.perf_counter() - start
        nbformat.write(nb, path)
        print(
            f"{path.name}: {seconds:.0f} s{' (fast)' if args.fast else ''}, {path.stat().st_size / 1e6:.2f} MB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
