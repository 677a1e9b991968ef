"""Kill a training process with SIGKILL mid-run, resume it, and get exactly the uninterrupted result.

The upsampler stage is used because it carries the most state: model, EMA, AdamW, the
discriminator and its Adam, degradations and random draws that must all line up after a resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from piti.checkpoints import load_checkpoint
from piti.cli import main
from piti.train.loop import list_states

from conftest import tiny_settings

STEPS = 6


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    # The same thread count in every process keeps CPU float results bit-identical.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG weights: random stand-in
    monkeypatch.delenv("PITI_WEIGHTS_DIR", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _recipe(tmp_path: Path) -> Path:
    section = tiny_settings(tmp_path, "upsampler")
    section.update(iterations=STEPS, save_interval=2, keep_checkpoints=10, schedule_sampler="loss-second-moment")
    for k in ("name", "out_dir"):
        section.pop(k)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"defaults": {}, "stages": {"upsampler": section}}))
    return path


def _load_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same(a, b, where="state"):
    """Recursive bit-for-bit equality of nested dicts / lists of tensors and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path):
    recipe = _recipe(tmp_path)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cmd = [
        sys.executable,
        "-m",
        "piti.cli",
        "train",
        "--config",
        str(recipe),
        "--stage",
        "upsampler",
        f"out_dir={killed}",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill it for real once the step-2 checkpoint is there, somewhere in steps 3-4.
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "state_00000002.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the training subprocess made no checkpoint in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "checkpoints" / f"state_{STEPS:08d}.pt").exists()
    # Whatever the kill interrupted, only complete files remain (atomic writes; temporaries are hidden).
    for state in list_states(killed):
        assert _load_state(state)["step"] in (2, 4)

    assert main(["train", "--resume", str(killed)]) == 0
    assert main(["train", "--config", str(recipe), "--stage", "upsampler", f"out_dir={straight}"]) == 0

    a = _load_state(killed / "checkpoints" / f"state_{STEPS:08d}.pt")
    b = _load_state(straight / "checkpoints" / f"state_{STEPS:08d}.pt")
    for key in ("step", "model", "ema", "optimizer", "timestep_sampler", "stage"):
        _assert_same(a[key], b[key], key)
    assert a["stage"]["discriminator"]  # the discriminator state is part of it
    fa, fb = load_checkpoint(killed / "model.safetensors"), load_checkpoint(straight / "model.safetensors")
    _assert_same(fa.state_dict, fb.state_dict, "model file")
    # The log has each step once, in order, although steps after the last checkpoint ran twice.
    steps = [int(r.split(",")[0]) for r in (killed / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, STEPS + 1))


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 1
    assert "no training checkpoint" in capsys.readouterr().err


def test_time_limit_saves_and_stops_and_resume_goes_on(tmp_path):
    """``time_limit`` (minutes) ends a run early with its state and model file saved; --resume continues."""
    recipe = _recipe(tmp_path)
    run = tmp_path / "limited"
    args = ["train", "--config", str(recipe), "--stage", "upsampler", f"out_dir={run}", "iterations=1000"]
    assert main(args + ["time_limit=0.001"]) == 0  # 60 ms: a step or two of the tiny upsampler
    states = list_states(run)
    assert len(states) == 1 and 1 <= _load_state(states[0])["step"] < 1000
    assert load_checkpoint(run / "model.safetensors").metadata["step"] == _load_state(states[0])["step"]
    assert main(["train", "--resume", str(run), "iterations=8", "time_limit=0"]) == 0  # the limit is kept otherwise
    assert _load_state(list_states(run)[-1])["step"] == 8
