"""The numbered notebooks run top to bottom on a fresh kernel, in fast mode (PITI_FAST=1).

Each committed notebook is copied to a temporary folder and executed there with nbclient (the committed
files are never rewritten); a test fails on any cell error and checks that the notebook drew at least one
image. Their sources (notebooks/src/) must build into exactly the committed cells.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images_of(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def test_the_six_notebooks_are_there():
    assert [n[:2] for n in NAMES] == ["00", "01", "02", "03", "04", "05"], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source_and_is_small(name):
    build = _build_module()
    source = NOTEBOOKS / "src" / name.replace(".ipynb", ".py")
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = [(c.cell_type, c.source) for c in committed.cells]
    assert cells == build.parse_source(source.read_text()), f"rebuild {name}: python notebooks/build.py {name[:2]}"
    assert (NOTEBOOKS / name).stat().st_size < 2_000_000
    assert images_of(committed) >= 1, f"{name} was committed without its outputs"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fast_mode(name, tmp_path, monkeypatch):
    build = _build_module()
    copy = tmp_path / name
    shutil.copy(NOTEBOOKS / name, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    build.execute(nb, tmp_path, fast=True, timeout=600)  # raises CellExecutionError on any error
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert images_of(nb) >= 1, f"{name} drew no image"
