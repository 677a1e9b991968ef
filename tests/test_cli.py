"""The `piti` command itself: help, info, and user errors printed as one line."""

import subprocess
import sys


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
