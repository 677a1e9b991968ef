"""The CPU speed path of piti.precision: bf16 GroupNorms without the fp32 copy, and the tuned allocator; the
CPU dropout of piti.nn.layers.

The first two must leave the numbers as they were: the mixed-precision GroupNorm gives what the fp32 round trip
gives, and the bf16 model with it stays as close to fp32 as the bf16 model without it.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from piti import precision
from piti.nn.layers import Dropout, GroupNorm32, set_norm_upcast
from piti.precision import cpu_has_native_bf16, make_policy

from conftest import tiny_model


@pytest.mark.parametrize("swish", [False, True])
@pytest.mark.parametrize("shape", [(2, 64, 32, 32), (1, 32, 8, 8), (2, 96, 16, 16)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mixed_groupnorm_equals_the_fp32_round_trip(shape, swish, channels_last):
    gen = torch.Generator().manual_seed(0)
    norm = GroupNorm32(shape[1], swish=swish)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(shape[1], generator=gen))
        norm.bias.copy_(torch.randn(shape[1], generator=gen))
    x = (3 * torch.randn(shape, generator=gen) + 1).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        norm.upcast = True
        upcast = norm(x)
        norm.upcast = False
        mixed = norm(x)
    assert mixed.dtype == upcast.dtype == torch.bfloat16 and mixed.shape == x.shape
    # the same statistics in fp32; at most one bf16 rounding step apart (2^-7 relative)
    assert torch.allclose(mixed.float(), upcast.float(), rtol=2**-7, atol=2**-7)
    assert (mixed.float() - upcast.float()).abs().mean() < 1e-3
    assert norm(x.float()).dtype == torch.float32  # fp32 inputs stay on the fp32 path


def test_the_default_norm_path_follows_the_cpu():
    norm = GroupNorm32(64)
    big = torch.zeros(2, 64, 32, 32, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    small = torch.zeros(2, 64, 16, 16, dtype=torch.bfloat16)
    assert norm._mixed(big) == norm._mixed(small) == cpu_has_native_bf16()  # mixed where bf16 is native
    assert not norm._mixed(small.contiguous(memory_format=torch.channels_last))  # the slow mixed kernel
    assert not norm._mixed(big.float())  # fp32 computes as GLIDE, everywhere
    model = tiny_model("mask", False)
    set_norm_upcast(model, True)
    assert {m._mixed(big) for m in model.modules() if isinstance(m, GroupNorm32)} == {False}
    assert make_policy("cpu", "fp32").tuned_malloc  # CPU policies tune the allocator


def test_bf16_training_gradients_stay_as_close_to_fp32_as_before(one_thread):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([300.0, 700.0])
    ref = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    weights, grads = tiny_model("mask", False), {}
    for label, name, upcast in (("fp32", "fp32", True), ("before", "bf16", True), ("now", "bf16", False)):
        model = copy.deepcopy(weights).train()
        set_norm_upcast(model, upcast)
        with precision.autocast(name, torch.device("cpu")):
            loss = model(x, t, ref=ref).float().square().mean()
        loss.backward()
        grads[label] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    err = {k: (grads[k] - grads["fp32"]).abs().mean() / grads["fp32"].abs().mean() for k in ("before", "now")}
    assert torch.isfinite(grads["now"]).all()
    assert err["now"] < 0.1 and err["now"] < 1.2 * err["before"]  # measured: both about 0.03


def test_bf16_speed_path_stays_as_close_to_fp32_as_before(one_thread):
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([300.0, 700.0])
    ref = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    fp32 = make_policy("cpu", "fp32")
    bf16 = make_policy("cpu", "bf16")
    torch.manual_seed(0)
    outs, weights = {}, tiny_model("mask", False)
    for label, policy, upcast in (("fp32", fp32, True), ("before", bf16, True), ("now", bf16, False)):
        model = policy.prepare(copy.deepcopy(weights))
        set_norm_upcast(model, upcast)
        with torch.no_grad(), policy.autocast():
            outs[label] = model(policy.input(x), t, ref=policy.input(ref)).float()
    scale = outs["fp32"].abs().mean()
    err_before = (outs["before"] - outs["fp32"]).abs().mean() / scale
    err_now = (outs["now"] - outs["fp32"]).abs().mean() / scale
    assert torch.isfinite(outs["now"]).all()
    assert err_now < 0.05  # bf16 keeps about 3 significant digits
    assert err_now < 1.2 * err_before + 1e-3
    assert (outs["now"] - outs["before"]).abs().mean() / scale < 0.05


def test_tune_malloc_is_idempotent_and_respects_glibc_tunables(monkeypatch):
    first = precision.tune_malloc()
    assert precision.tune_malloc() == first
    assert isinstance(first, bool)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
    assert precision.tune_malloc() is False  # the user's setting wins


def run_benchmark(name: str, *args: str, quick: bool = True) -> tuple[Path, str, list[str]]:
    """Run ``benchmarks/NAME --quick`` (or without ``--quick``) on one thread, fp32: (the script, its output, its
    table's mask fp32 rows). The scripts' plumbing only: speed is never asserted."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / name
    run = subprocess.run(
        [sys.executable, str(script), *(["--quick"] if quick else []), "--threads", "1", "--precisions", "fp32", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return script, run.stdout, [line for line in run.stdout.splitlines() if line.startswith("| mask | fp32 |")]


def test_toy_speed_benchmark_quick_runs():
    extra = ("--no-reward", "--variant", "guidance_tmax=0.5", "--variant", "before:guidance_tmax=0.5", "--samples", "2")
    script, stdout, rows = run_benchmark("toy_speed.py", *extra, "--issue-baseline")
    names = [r.split("|")[3].strip() for r in rows]
    assert names == ["before", "now", "guidance_tmax=0.5", "before:guidance_tmax=0.5", "reward_guidance=0"] + [
        "before, issue 18's settings"
    ]
    assert rows[0].split("|")[-2].strip() == "0.00"  # fp32 before against itself
    assert "projection" not in stdout  # --quick's steps are not the header's: nothing to scale
    assert "load average" in stdout and "native bf16" in stdout and "2 image(s) per call" in stdout
    few = subprocess.run([sys.executable, str(script), "--quick", "--samples", "0"], capture_output=True)
    assert few.returncode == 2 and b"--samples must be at least 1" in few.stderr
    bad = subprocess.run([sys.executable, str(script), "--quick", "--variant", "guidance_tmax=2"], capture_output=True)
    assert bad.returncode == 2 and b"guidance_tmax must be in [0, 1]" in bad.stderr


def test_toy_speed_projects_the_issue_times_by_the_measured_ratio():
    args = ("--tasks", "depth", "--reps", "1", "--warm", "0", "--issue-baseline")
    _, stdout, mask_rows = run_benchmark("toy_speed.py", *args, quick=False)  # the header's settings: scaled
    (issue,) = mask_rows  # the issue's call runs on the mask model, the one it timed, whatever --tasks says
    then = float(issue.split("|")[4])
    (depth_now,) = [r for r in stdout.splitlines() if r.startswith("| depth | fp32 | now |")]
    now, mean = float(depth_now.split("|")[4]), float(depth_now.split("|")[5])
    (line,) = [r for r in stdout.splitlines() if r.startswith("# projection, depth fp32")]
    here, median, projected_mean = re.search(r"([\d.]+) s here;.*median ([\d.]+) s, mean ([\d.]+) s", line).groups()
    assert float(here) == then
    assert abs(float(median) - 1.91 * now / then) < 0.01  # the issue's fp32 time, scaled (rounding)
    assert abs(float(projected_mean) - 1.91 * mean / then) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_p_and_keeps_the_mean(dtype, p):
    drop = Dropout(p).train()
    x = torch.ones(4, 64, 33, 31, dtype=dtype)  # an odd element count: the last 64-bit draw is cut
    torch.manual_seed(0)
    y = drop(x)
    assert y.shape == x.shape and y.dtype == dtype
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 0.01  # 262k elements: the binomial's sd is under 0.001
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2)  # bf16 rounds 1 / 0.9
    assert abs(y.double().mean().item() - 1) < 0.02
    lanes = torch.stack([y.flatten()[i::4] == 0 for i in range(4)]).double().mean(1)  # each 16-bit lane alike
    assert (lanes - p).abs().max() < 0.02


def test_cpu_dropout_follows_the_seed_and_the_gradient_follows_the_mask():
    drop = Dropout(0.3).train()
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    b = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, drop(x))  # the next draw differs
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() / 0.7)
    drop.eval()
    assert drop(x) is x or torch.equal(drop(x), x)  # identity when not training
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_cpu_dropout_replays_under_activation_checkpointing():
    # a checkpointed ResBlock recomputes its forward in the backward pass: the replayed mask must be the same
    from piti.nn.unet import ResBlock

    torch.manual_seed(0)
    plain = ResBlock(32, 16, dropout=0.5).train()
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    grads = []
    for block in (plain, ckpt):
        torch.manual_seed(1)
        block(x, emb).square().sum().backward()
        grads.append(torch.cat([q.grad.flatten() for q in block.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_toy_train_speed_benchmark_quick_runs():
    script, stdout, rows = run_benchmark("toy_train_speed.py")
    assert [r.split("|")[3].strip() for r in rows] == ["before", "now"]
    assert rows[0].split("|")[-2].strip() == "1.00x"
    assert "load average" in stdout and "native bf16" in stdout
    bad = subprocess.run([sys.executable, str(script), "--quick", "--precisions", "fp16"], capture_output=True)
    assert bad.returncode == 2 and b"precisions are fp32, bf16" in bad.stderr
