"""The toy-scale reproduction harness (eval/reproduce_toy.py over piti.evaluation.reproduce): arms, lanes,
the --quick plumbing on the embedded toy models, resumption, and the small judges it adds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from piti.evaluation import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]
FULL, QUICK = rp.BUDGETS["full"], rp.BUDGETS["quick"]


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_toy", ROOT / "eval" / "reproduce_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_models_present() -> bool:
    from piti.pipeline import toy_checkpoint_paths

    files = [*toy_checkpoint_paths("mask"), ROOT / "checkpoints/toy/segmenter.safetensors"]
    return all(p.is_file() for p in files)


needs_toy = pytest.mark.skipif(not _toy_models_present(), reason="the embedded toy mask models are not in checkpoints/")


# ------------------------------------------------------------------------------------------ arms and lanes


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_cover_every_arm_exactly_once(lanes):
    arms = rp.all_arms(rp.EXPERIMENTS, FULL)
    split = [rp.lane_arms(arms, lane, lanes, FULL) for lane in range(lanes)]
    keys = [a.key for part in split for a in part]
    assert sorted(keys) == sorted(a.key for a in arms)
    assert len(keys) == len(set(keys))
    if lanes > 1:
        assert all(split), "every lane gets work"


def test_arms_sharing_a_training_run_share_a_lane():
    arms = rp.all_arms(rp.EXPERIMENTS, FULL)
    two_stage = next(a for a in arms if a.key == "finetune/two-stage")
    pretrained = next(a for a in arms if a.key == "pretraining/mask-pretrained")
    assert rp.run_keys(two_stage, FULL) == rp.run_keys(pretrained, FULL)
    for lanes in (2, 3):
        lane_of = {a.key: lane for lane in range(lanes) for a in rp.lane_arms(arms, lane, lanes, FULL)}
        assert lane_of["finetune/two-stage"] == lane_of["pretraining/mask-pretrained"]
    with pytest.raises(rp.ConfigError):
        rp.lane_arms(arms, 2, 2, FULL)


def test_comparisons_have_equal_budgets():
    for experiment in ("finetune", "pretraining"):
        arms = rp.experiment_arms(experiment, FULL)
        assert {sum(r.steps for r in a.runs) for a in arms} == {FULL.train_steps}
    assert {sum(r.steps for r in a.runs) for a in rp.experiment_arms("upsampler", FULL)} == {FULL.upsampler_steps}
    fixed, one, two = rp.experiment_arms("finetune", FULL)
    assert [r.section for r in fixed.runs] == ["encoder"]
    assert [(r.section, r.init) for r in one.runs] == [("joint", "glide-base")]
    assert [(r.section, r.init) for r in two.runs] == [("encoder", "glide-base"), ("joint", "previous")]
    keys = rp.run_keys(two, FULL)
    assert len(set(keys)) == 2 and keys[0] != rp.run_keys(fixed, FULL)[0]  # half the steps: another run


def test_guidance_and_steps_arms():
    names = [a.name for a in rp.experiment_arms("guidance", FULL)]
    assert names.count("none-w0") == 1 and "plain-w10" in names and "normalized-w10" in names
    assert {"trace-plain-w5", "trace-normalized-w5"} <= set(names)
    steps = {a.name for a in rp.experiment_arms("steps", FULL)}
    assert {f"{s}-{k}" for s in ("ddpm", "ddim", "dpmpp") for k in FULL.step_counts} <= steps


# ------------------------------------------------------------------------------------------ judges and tables


def test_sketch_targets_reduce_distance_encoding():
    cond = torch.ones(1, 1, 8, 8)
    cond[0, 0, 2, 5] = -1.0  # one edge pixel (distance 0)
    edges = rp.sketch_targets(cond, 4)
    assert edges.shape == (1, 4, 4) and edges.sum() == 1 and edges[0, 1, 2]
    with pytest.raises(rp.ConfigError):
        rp.sketch_targets(cond, 3)


def test_sharpness_ranks_sharp_above_blurred():
    rng = np.random.default_rng(0)
    sharp = (rng.random((2, 32, 32, 3)) > 0.5).astype(np.uint8) * 255
    blurred = np.repeat(np.repeat(sharp[:, ::4, ::4], 4, axis=1), 4, axis=2)
    assert rp.sharpness(sharp) > rp.sharpness(blurred) > 0


def test_fewest_steps_within_tolerance():
    def result(sampler, k, fid, ratio):
        return {"upsample": False, "settings": {"sampler": sampler, "steps": str(k)}, "fid_t": fid, "miou_ratio": ratio}

    results = {
        f"ddpm-{k}": result("ddpm", k, fid, r)
        for k, fid, r in [(5, 3.0, 0.5), (10, 1.015, 0.60), (25, 1.0, 0.70), (50, 1.01, 0.71)]
    }
    best = rp.fewest_steps(results)["ddpm"]
    assert best["fewest_steps_fid_t"] == 10  # 1.015 <= 1.02 * 1.0
    assert best["fewest_steps_both"] == 25  # 0.60 < 0.98 * 0.71


# ------------------------------------------------------------------------------------------ the --quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run of the guidance, steps and finetune experiments (training arms of two steps)."""
    if not _toy_models_present():
        pytest.skip("the embedded toy mask models are not in checkpoints/toy")
    tmp = tmp_path_factory.mktemp("reproduce")
    out, runs = tmp / "out", tmp / "runs"
    base = ["--quick", "--out", str(out), "--runs", str(runs), "--threads", "1"]
    argv = base + ["--experiments", "guidance", "steps", "finetune", "floor"]
    assert _script().main(argv) == 0
    return out, runs, argv


@needs_toy
def test_quick_writes_results_tables_plots(quick_run):
    out, runs, _ = quick_run
    arms = rp.all_arms(("guidance", "steps", "finetune", "floor"), QUICK)
    for arm in arms:
        assert rp.result_path(out, arm).is_file(), arm.key
    r = json.loads(rp.result_path(out, arms[0]).read_text())
    assert 0 <= r["miou_ratio"] and r["fid_t"] >= 0 and r["scenes"] == QUICK.scenes
    assert r["command"].startswith("python eval/reproduce_toy.py --quick")
    two_stage = json.loads((out / "arms/finetune/two-stage.json").read_text())
    assert [x["steps"] for x in two_stage["runs"]] == [1, 1] and two_stage["train_seconds"] > 0
    for key in two_stage["run_folders"]:
        assert (runs / "train" / key / "reproduce_done.json").is_file()
    trace = json.loads((out / "arms/guidance/trace-plain-w5.json").read_text())["trace"]
    assert len(trace["t"]) == int(QUICK.eval_steps) and len(trace["cond_std"]) == len(trace["t"])
    summary = (out / "summary.md").read_text()
    assert "## pending" in summary  # the pretraining and upsampler experiments
    if rp.PUBLISHED.is_file():
        assert "| fixed-decoder | mask | 12.6 |" in summary
    assert (out / "finetune.csv").read_text().splitlines()[0].startswith("arm,task,paper FID,FID-T")
    for plot in ("guidance_curves.png", "guidance_eps_stats.png", "steps_curves.png", "training_arms.png"):
        assert (out / "plots" / plot).stat().st_size > 1000
    assert (out / "grids/finetune/two-stage.png").is_file()
    from PIL import Image

    # the side-by-side grid: condition, the three arms, real; as many rows as scenes
    assert Image.open(out / "grids/finetune-mask.png").size == (5 * 130 + 2, 14 + QUICK.scenes * 130 + 2)
    floor = json.loads((out / "arms/floor/real-64.json").read_text())
    assert floor["size"] == 64 and floor["fid_t"] >= 0 and "| real set |" in (out / "floor.md").read_text()
    assert "--quick" in (out / "commands.txt").read_text()


@needs_toy
def test_quick_second_run_skips_finished_arms(quick_run, capsys):
    out, runs, argv = quick_run
    before = {p: p.stat().st_mtime_ns for p in (out / "arms").glob("*/*.json")}
    assert _script().main(argv) == 0
    text = capsys.readouterr().out
    assert f"done 0, skipped (already done) {len(before)}" in text
    assert {p: p.stat().st_mtime_ns for p in (out / "arms").glob("*/*.json")} == before


@needs_toy
def test_quick_rerun_of_an_arm_reuses_its_finished_training(quick_run, capsys):
    out, runs, argv = quick_run
    path = out / "arms/finetune/one-stage.json"
    path.unlink()
    assert _script().main(argv + ["--arms", "one-stage"]) == 0
    text = capsys.readouterr().out
    assert "done 1, skipped" in text and "training " not in text
    assert path.is_file()


@needs_toy
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_quick_training_arm_in_each_precision(tmp_path, precision):
    argv = [
        "--quick",
        "--out",
        str(tmp_path / "out"),
        "--runs",
        str(tmp_path / "runs"),
        "--threads",
        "1",
        "--experiments",
        "finetune",
        "--arms",
        "fixed-decoder",
        "--precision",
        precision,
        "--train-precision",
        precision,
    ]
    assert _script().main(argv) == 0
    r = json.loads((tmp_path / "out/arms/finetune/fixed-decoder.json").read_text())
    assert r["settings"]["precision"] == precision and np.isfinite(r["fid_t"])
    done = next((tmp_path / "runs/train").glob("*/reproduce_done.json"))
    assert json.loads(done.read_text())["precision"] == precision


@needs_toy
def test_second_seed_takes_other_scenes(tmp_path):
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--experiments", "guidance", "--arms", "none-w0"]
    script = _script()
    assert script.main(argv) == 0 and script.main(argv + ["--seed", "1"]) == 0
    a, b = (json.loads((tmp_path / f"arms/guidance/{n}.json").read_text()) for n in ("none-w0", "none-w0@seed1"))
    assert a["heldout"] != b["heldout"] and b["seed"] == 1
    assert "none-w0" in (tmp_path / "spread.md").read_text()


@needs_toy
def test_an_arm_with_the_same_model_and_settings_takes_the_result(quick_run, capsys):
    out, runs, argv = quick_run
    assert _script().main(argv[:-5] + ["--experiments", "pretraining", "--arms", "mask-pretrained"]) == 0
    assert "training " not in capsys.readouterr().out
    r = json.loads((out / "arms/pretraining/mask-pretrained.json").read_text())
    assert r["same_as"] == "finetune/two-stage" and r["arm"] == "mask-pretrained"


def test_training_lock_keeps_two_lanes_off_one_run(tmp_path):
    import os

    run = tmp_path / "run"
    lock = rp._lock(run)
    assert lock is not None and lock.read_text() == str(os.getpid())
    assert rp._lock(run) is None  # held by a live process (this one)
    lock.write_text("999999999")  # a process that does not exist: a stale lock is taken over
    assert rp._lock(run) == lock and lock.read_text() == str(os.getpid())


def test_train_seed_makes_other_runs_and_files():
    import dataclasses

    seeded = dataclasses.replace(FULL, train_seed=1)
    for arm in rp.experiment_arms("finetune", FULL):
        assert not set(rp.run_keys(arm, FULL)) & set(rp.run_keys(arm, seeded))
    arm = rp.experiment_arms("finetune", FULL)[0]
    assert rp.result_path(Path("o"), arm, 0, 1).name == "fixed-decoder@train1.json"
    assert rp.result_path(Path("o"), arm, 1, 0).name == "fixed-decoder@seed1.json"
    assert rp.result_path(Path("o"), arm).name == "fixed-decoder.json"


def test_a_result_of_another_budget_is_refused_not_skipped(tmp_path):
    import dataclasses

    from piti.errors import ConfigError

    arm = rp.experiment_arms("finetune", FULL)[0]
    assert not rp.is_done(tmp_path, arm, FULL)
    path = rp.result_path(tmp_path, arm)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_folders": rp.run_keys(arm, FULL)}))
    assert rp.is_done(tmp_path, arm, FULL)
    short = dataclasses.replace(FULL, train_steps=200)
    with pytest.raises(ConfigError, match="own --out"):
        rp.is_done(tmp_path, rp.experiment_arms("finetune", short)[0], short)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        rp.is_done(tmp_path, arm, FULL)


def test_training_arms_plot_keeps_the_papers_order_and_a_minimum_span(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    for arm, tag, fid in (("adversarial", "", 1.40), ("no-degradation", "", 1.41), ("no-degradation", "@train1", 1.42)):
        path = tmp_path / "arms" / "upsampler" / f"{arm}{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fid_t": fid, "controllability": 0.78}))
    captured = {}
    monkeypatch.setattr(rp, "_save", lambda fig, path: captured.setdefault("fig", fig) and path)
    rp.plot_training_arms(tmp_path, ["upsampler"], tmp_path / "p.png")
    fid_ax, control_ax = captured["fig"].axes[:2]
    assert [t.get_text() for t in fid_ax.get_xticklabels()] == ["no-degradation", "adversarial"]
    lo, hi = fid_ax.get_ylim()
    assert hi - lo >= 1.0 - 1e-9 and lo < 1.40 and hi > 1.42  # a 0.02 gap is drawn small, not axis-filling
    assert control_ax.get_ylim()[1] - control_ax.get_ylim()[0] >= 0.1 - 1e-9
