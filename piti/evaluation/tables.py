"""``piti eval table``: the paper's Table 5 and Table 3 in its layout, measured numbers beside the published ones.

Measured numbers come from the JSON files ``piti eval fid`` writes; each carries a ``tag`` naming its cell:
``table5/<task>`` (``ade20k``, ``coco-mask``, ``flickr-mask``, ``coco-sketch``, ``flickr-sketch``, ``diode``) with
``features`` inception (FID-I) or clip (FID-C), and ``table3/<row>`` (``fixed-decoder``, ``one-stage``,
``two-stage``, ``variant-1`` .. ``variant-4``) with clip features. Published numbers live in one data file,
``piti/evaluation/data/published.json``, with their sources; a number we could not source is blank.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from piti.errors import DatasetError

PUBLISHED = Path(__file__).resolve().parent / "data" / "published.json"
METRIC = {"inception": "FID-I", "clip": "FID-C"}


def published() -> dict:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


def read_results(paths) -> dict:
    """``{(tag, features): value}`` of result JSONs; an error names a file that is not a tagged FID result or
    two results for one cell."""
    cells, sources = {}, {}
    for p in paths:
        try:
            r = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"{p}: not a readable result JSON ({e})") from None
        if not isinstance(r, dict) or "fid" not in r or "features" not in r:
            raise DatasetError(f"{p}: not a `piti eval fid` result (no fid / features)")
        if not r.get("tag"):
            raise DatasetError(f"{p}: has no tag (run `piti eval fid` with --tag table5/TASK or table3/ROW)")
        key = (r["tag"], r["features"])
        if key in cells:
            raise DatasetError(f"two results for {key[0]} with {key[1]} features: {sources[key]} and {p}")
        cells[key], sources[key] = float(r["fid"]), str(p)
    return cells


def _fmt(v) -> str:
    """A blank for a missing number; one decimal as the paper prints (three significant digits below 1)."""
    if v is None:
        return ""
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


def table5_rows(cells: dict) -> tuple[list[str], list[list[str]]]:
    pub = published()["table5"]
    cols = pub["columns"]
    header = ["", *cols.values()]
    rows = []
    for features, metric in METRIC.items():
        rows.append([f"{metric} (ours)", *[_fmt(cells.get((f"table5/{k}", features))) for k in cols]])
        rows.append([f"{metric} (paper)", *[_fmt(pub[metric.lower().replace("-", "_")][k]) for k in cols]])
    rows.append(["FID (project page, features not named)", *[_fmt(pub["project_page_fid"]["values"][k]) for k in cols]])
    return header, rows


def table3_rows(cells: dict) -> tuple[list[str], list[list[str]]]:
    pub = published()["table3"]
    header = ["ablation", "setting", "FID-C (ours)", "FID-C (paper)"]
    rows = []
    for group in ("finetune", "upsampler"):
        for key, label in pub[group]["rows"].items():
            rows.append([group, label, _fmt(cells.get((f"table3/{key}", "clip"))), _fmt(pub[group]["values"][key])])
    return header, rows


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def build_tables(result_files) -> dict:
    """``{"table5.md", "table5.csv", "table3.md", "table3.csv"}``: file name -> text."""
    cells = read_results(result_files)
    pub = published()
    out = {}
    for name, (header, rows), title, source in (
        (
            "table5",
            table5_rows(cells),
            pub["table5"]["title"],
            pub["table5"]["source"] + "; project page FID: " + pub["table5"]["project_page_fid"]["source"],
        ),
        (
            "table3",
            table3_rows(cells),
            pub["table3"]["title"],
            pub["table3"]["source"] + "; " + pub["table3"]["upsampler"]["note"],
        ),
    ):
        out[f"{name}.md"] = f"**{title}**\n\n{markdown(header, rows)}\n\nPublished numbers: {source}.\n"
        out[f"{name}.csv"] = to_csv(header, rows)
    return out
