"""The `piti` command itself: help, info, and user errors printed as one line."""

import subprocess
import sys

import pytest

from piti.cli import build_parser, parse_args


def _piti(*args):
    return subprocess.run([sys.executable, "-m", "piti.cli", *args], capture_output=True, text=True, timeout=120)


def test_info_lists_presets_with_official_sizes():
    r = _piti("info", "--presets")
    assert r.returncode == 0, r.stderr
    assert "piti-base-mask" in r.stdout and "338,015,302" in r.stdout
    assert "toy-piti-base-mask" in r.stdout


def test_no_command_prints_help():
    r = _piti()
    assert r.returncode == 0 and "synth" in r.stdout and "train" in r.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = _piti("train", "--config", str(tmp_path / "missing.yaml"), "--stage", "encoder")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "missing.yaml" in r.stderr


def test_train_overrides_may_follow_options():
    args = parse_args(
        build_parser(),
        [
            "train",
            "--config",
            "configs/toy.yaml",
            "--stage",
            "joint",
            "task=sketch",
            "--from-scratch",
            "lr=1e-3",
            "iterations=5",
        ],
    )
    assert args.overrides == ["task=sketch", "lr=1e-3", "iterations=5"] and args.from_scratch
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["train", "--config", "configs/toy.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["info", "lr=1"])  # only `train` takes overrides
