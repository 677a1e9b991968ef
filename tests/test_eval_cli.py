"""`piti eval generate`, `align`, `diversity` and `table` on tiny random models and tiny folders.

Plumbing: the tiny models are random, so their scores mean nothing; the tests check the layout, resuming,
the judges' wiring, the clear errors on bad input (no partial result files), and that the table builder
renders a known input exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti.cli import main as piti_main
from piti.evaluation import tables
from piti.evaluation.depth_estimator import DepthEstimator, DepthEstimatorConfig, save_depth_estimator
from piti.evaluation.segmenter import Segmenter, SegmenterConfig, save_segmenter

from conftest import tiny_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
FEW = ["--steps", "2", "--upsample-steps", "2", "--no-progress"]


def piti(*args) -> int:
    return piti_main(["eval", *map(str, args)])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {task: tiny_checkpoints(task, folder, sampling={"palette": "synth"}) for task in ("mask", "sketch", "depth")}


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judges")
    torch.manual_seed(0)
    save_segmenter(folder / "seg.safetensors", Segmenter(SegmenterConfig(widths=(4, 8), feature_dim=4)))
    save_depth_estimator(
        folder / "depth.safetensors", DepthEstimator(DepthEstimatorConfig(widths=(4, 8), feature_dim=4))
    )
    return {"mask": folder / "seg.safetensors", "depth": folder / "depth.safetensors"}


@pytest.fixture(scope="module")
def generated(ckpts, tmp_path_factory):
    """Three held-out scenes per task through the tiny models (two samples each for mask)."""
    root = tmp_path_factory.mktemp("gen")
    for task, (base, up) in ckpts.items():
        extra = ["--samples", "2"] if task == "mask" else []
        assert (
            piti(
                "generate",
                "--task",
                task,
                "--synth",
                3,
                "--base",
                base,
                "--upsampler",
                up,
                "--out",
                root / task,
                *extra,
                *FEW,
            )
            == 0
        )
    return root


def test_generate_writes_the_layout_and_resumes(generated, ckpts, capsys):
    mask = generated / "mask"
    names = [f"scene-{i:06d}.png" for i in range(3)]
    for folder in ("fake", "real", "cond", "labels"):
        assert sorted(p.name for p in (mask / folder).iterdir()) == names, folder
    assert Image.open(mask / "fake" / names[0]).size == (64, 64) == Image.open(mask / "real" / names[0]).size
    assert len(list((mask / "samples" / "scene-000000").iterdir())) == 2
    assert (generated / "sketch" / "sketches").is_dir() and (generated / "depth" / "depth").is_dir()
    depth = np.asarray(Image.open(generated / "depth" / "depth" / names[0]))
    assert depth.dtype == np.uint16 and depth.max() > 0
    info = json.loads((mask / "generate.json").read_text())
    assert info["generated"] == 3 and info["samples_per_condition"] == 2 and info["settings"]["steps"] == "2"
    assert info["command"].startswith("piti eval generate")
    # resumed: nothing to do the second time, and the first run's settings are kept
    before = (mask / "fake" / names[0]).read_bytes()
    base, up = ckpts["mask"]
    assert (
        piti(
            "generate",
            "--task",
            "mask",
            "--synth",
            3,
            "--base",
            base,
            "--upsampler",
            up,
            "--out",
            mask,
            "--samples",
            "2",
            *FEW,
        )
        == 0
    )
    assert "0 generated, 3 already there" in capsys.readouterr().out
    assert (mask / "fake" / names[0]).read_bytes() == before
    assert json.loads((mask / "generate.json").read_text())["settings"]["steps"] == "2"


def test_generate_from_a_prepared_dataset_and_a_condition_folder(ckpts, tmp_path):
    from piti.data.synth import write_scenes

    data = write_scenes(tmp_path / "data", 2, size=64, seed=3, progress=False)
    base, up = ckpts["mask"]
    out = tmp_path / "out"
    assert (
        piti("generate", "--task", "mask", "--data", data, "--base", base, "--upsampler", up, "--out", out, *FEW) == 0
    )
    assert len(list((out / "labels").iterdir())) == 2 and len(list((out / "real").iterdir())) == 2
    labels = np.asarray(Image.open(next((out / "labels").iterdir())))
    assert labels.shape == (64, 64) and labels.max() < 10
    conds = tmp_path / "conds"
    conds.mkdir()
    for p in sorted((data / "colors").iterdir()):
        Image.open(p).save(conds / p.name)
    assert (
        piti(
            "generate",
            "--task",
            "mask",
            "--conds",
            conds,
            "--base",
            base,
            "--upsampler",
            up,
            "--out",
            tmp_path / "c",
            *FEW,
        )
        == 0
    )
    assert len(list((tmp_path / "c" / "fake").iterdir())) == 2 and not (tmp_path / "c" / "real").exists()


@pytest.mark.parametrize("task", ["mask", "sketch", "depth"])
def test_align_reports_generated_real_and_ratio(generated, judges, task, tmp_path, capsys):
    out = tmp_path / "align.json"
    judge = ["--judge", judges[task]] if task in judges else []
    assert piti("align", "--task", task, "--dir", generated / task, *judge, "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["num"] == 3 and r["size"] == 64
    key = {"mask": "miou", "sketch": "edge_f1", "depth": "rmse"}[task]
    assert np.isfinite(r[f"{key}_generated"]) and np.isfinite(r[f"{key}_real"])
    if task == "sketch":
        assert r["edges"] == "canny" and r["tolerance_px"] == 2
        assert r["edge_f1_ratio"] == pytest.approx(r["edge_f1_generated"] / r["edge_f1_real"])
    if task == "depth":
        assert r["rmse_ratio"] == pytest.approx(r["rmse_real"] / r["rmse_generated"])
    lo, hi = r["ratio_interval"]  # what another draw of as many images could read
    assert np.isfinite(lo) and lo <= hi
    assert task in capsys.readouterr().out


def test_align_bad_input(generated, judges, tmp_path, capsys):
    import shutil

    out = tmp_path / "a.json"
    # a judge of another task
    assert piti("align", "--task", "depth", "--dir", generated / "depth", "--judge", judges["mask"], "--out", out) == 1
    assert "is a segmenter" in capsys.readouterr().err
    # a missing pair is named
    broken = tmp_path / "mask"
    shutil.copytree(generated / "mask", broken)
    (broken / "fake" / "scene-000001.png").unlink()
    assert piti("align", "--task", "mask", "--dir", broken, "--judge", judges["mask"], "--out", out) == 1
    err = capsys.readouterr().err
    assert "lacks scene-000001" in err and str(broken / "fake") in err
    # no ground truth (a folder of conditions)
    assert piti("align", "--task", "mask", "--dir", tmp_path / "nothing", "--out", out) == 1
    assert "not found" in capsys.readouterr().err
    # HED without its model, precomputed edges without their folders
    assert piti("align", "--task", "sketch", "--dir", generated / "sketch", "--edges", "hed") == 1
    assert "--hed-model" in capsys.readouterr().err
    assert piti("align", "--task", "sketch", "--dir", generated / "sketch", "--edges", "precomputed") == 1
    assert "--fake-edges" in capsys.readouterr().err
    assert not out.exists()


def test_align_with_precomputed_edges_and_a_hed_model(generated, tmp_path):
    from piti.evaluation.alignment import canny_edges

    sk = generated / "sketch"
    for kind in ("fake", "real"):
        (tmp_path / kind).mkdir()
        for p in sorted((sk / kind).iterdir()):
            edges = canny_edges(np.asarray(Image.open(p).convert("RGB"))[None])[0]
            Image.fromarray((edges * 255).astype(np.uint8)).save(tmp_path / kind / p.name)
    out = tmp_path / "pre.json"
    assert (
        piti(
            "align",
            "--task",
            "sketch",
            "--dir",
            sk,
            "--edges",
            "precomputed",
            "--fake-edges",
            tmp_path / "fake",
            "--real-edges",
            tmp_path / "real",
            "--out",
            out,
        )
        == 0
    )
    canny = tmp_path / "canny.json"
    assert piti("align", "--task", "sketch", "--dir", sk, "--out", canny) == 0
    assert json.loads(out.read_text())["edge_f1_generated"] == json.loads(canny.read_text())["edge_f1_generated"]

    class Hed(torch.nn.Module):  # a stand-in HED: edges where the grey level changes
        def forward(self, x):
            g = x.mean(1, keepdim=True) / 255
            return (torch.nn.functional.pad(g[..., :, 1:] - g[..., :, :-1], (0, 1)).abs() > 0.05).float()

    hed = tmp_path / "hed.pt"
    torch.jit.save(torch.jit.script(Hed()), str(hed))
    assert piti("align", "--task", "sketch", "--dir", sk, "--edges", "hed", "--hed-model", hed, "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["edges"] == "hed" and r["hed_model"] == str(hed) and 0 <= r["edge_f1_generated"] <= 1


def test_diversity_pixel_and_lpips(generated, tmp_path, monkeypatch, capsys):
    from piti import weights

    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    monkeypatch.setitem(
        weights.WEIGHTS,
        "alexnet",
        __import__("dataclasses").replace(weights.WEIGHTS["alexnet"], default_dir=lambda: tmp_path),
    )
    out = tmp_path / "div.json"
    assert piti("diversity", "--dir", generated / "mask", "--out", out) == 0  # auto: no LPIPS backbone here
    r = json.loads(out.read_text())
    assert r["conditions"] == 3 and r["samples"] == 6 and r["pixel_l1"] > 0 and r["lpips"] is None
    assert "NOT LPIPS" in r["pixel_l1_note"] and "alexnet-owt-7be5be79.pth" in r["lpips_note"]
    assert "LPIPS not computed" in capsys.readouterr().err
    assert piti("diversity", "--dir", generated / "mask", "--lpips", "yes", "--out", tmp_path / "x.json") == 1
    assert "missing alexnet weights" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    # a stand-in backbone where the real one is looked for: the LPIPS path runs end to end
    from torchvision.models import alexnet

    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in alexnet().features.state_dict().items()}  # all LPIPS reads
    torch.save(features, tmp_path / "alexnet-owt-7be5be79.pth")
    assert piti("diversity", "--dir", generated / "mask", "--lpips", "yes", "--out", out) == 0
    assert json.loads(out.read_text())["lpips"] > 0
    # one sample per condition is not enough
    assert piti("diversity", "--dir", generated / "sketch") == 1
    assert "generate --samples" in capsys.readouterr().err


def test_table_renders_a_known_input_exactly(tmp_path):
    files = []
    for i, (tag, features, value) in enumerate(
        [
            ("table5/ade20k", "inception", 12.34),
            ("table5/ade20k", "clip", 9.87),
            ("table5/diode", "inception", 0.0421),
            ("table3/two-stage", "clip", 7.0),
        ]
    ):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps({"fid": value, "features": features, "tag": tag}))
        files.append(p)
    out = tables.build_tables(files)
    assert out["table5.md"].splitlines()[2:9] == [
        "|  | ADE20K | COCO (mask) | Flickr (mask) | COCO (sketch) | Flickr (sketch) | DIODE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| FID-I (ours) | 12.3 |  |  |  |  | 0.0421 |",
        "| FID-I (paper) |  |  |  |  |  |  |",
        "| FID-C (ours) | 9.9 |  |  |  |  |  |",
        "| FID-C (paper) |  |  |  |  |  |  |",
        "| FID (project page, features not named) | 8.9 | 5.2 | 6.1 | 8.8 | 6.0 | 11.5 |",
    ]
    assert "| finetune | two-stage finetune | 7.0 | 8.9 |" in out["table3.md"]
    assert "| finetune | fixed decoder |  | 12.6 |" in out["table3.md"]
    assert out["table3.csv"].splitlines()[0] == "ablation,setting,FID-C (ours),FID-C (paper)"
    assert "not sourced" in out["table5.md"]
    assert piti("table", *files, "--out", tmp_path / "t") == 0
    assert (tmp_path / "t" / "table5.md").read_text() == out["table5.md"]
    # two results for one cell, or an untagged result, are refused
    assert piti("table", files[0], files[0]) == 1
    (tmp_path / "u.json").write_text(json.dumps({"fid": 1.0, "features": "clip"}))
    assert piti("table", tmp_path / "u.json") == 1
