"""Seconds per 128-px image of the embedded toy models on the CPU, fp32 and bf16, before and after the CPU fixes.

    python benchmarks/toy_speed.py                     # three tasks, median of 5 calls each, all CPU threads
    python benchmarks/toy_speed.py --tasks mask --reps 9 --threads 2
    python benchmarks/toy_speed.py --quick             # one task, 2 + 2 steps, one call: checks the script
    python benchmarks/toy_speed.py --tasks mask --reps 3 --profile   # and torch.profiler's top operators
    python benchmarks/toy_speed.py --tasks depth --no-reward         # and "now" without the header's reward guidance
    python benchmarks/toy_speed.py --variant guidance_tmax=1          # and "now" at other settings (repeatable)
    python benchmarks/toy_speed.py --tasks depth --variant cache_interval=1   # and without depth's feature caching
    python benchmarks/toy_speed.py --tasks depth --samples 4 --variant particle_guidance=0   # 4 images per call
    python benchmarks/toy_speed.py --tasks mask --issue-baseline      # and "before" at the settings issue 18 timed

One image per call (base + upsampler), as a user runs it (``--samples N``: N per call, the times given per image):
``PITIPipeline.from_checkpoints(task=...)`` with the checkpoint's recommended settings
(``--steps``/``--upsample-steps`` override them). The time of the whole call is given with its split into the base
model (guided, batch 2) and the upsampler, median (and the image's mean) over ``--reps`` calls after ``--warm``
warm-up calls. Two worker processes hold the pipelines: ``now`` runs the code as it is; ``before`` the path before the
CPU fixes of ``piti.precision`` (GroupNorms through an fp32 copy, glibc's default allocator, the reward and class
models in fp32); each ``--variant K=V,K=V`` adds a worker that runs ``now`` at those sampling settings, named by them
(``--variant before:K=V`` runs ``before`` at them; ``--no-reward`` is ``--variant reward_guidance=0``: the cost of the
headers' reward guidance; ``--issue-baseline`` is ``before`` at the settings of the files that issue 18 timed on a
2-core AMX Xeon, on the mask model it timed whatever ``--tasks`` says, so that its times can be scaled by the ratio
measured here: each task's median and mean call). Call i uses seed i,
and each variant's images are compared with fp32 before's of the same seeds (mean absolute difference of the 8-bit
pixels). The calls go round-robin over tasks, precisions and workers, so a busy machine slows every variant alike;
the load average is printed at start and end. bf16 runs only where the CPU computes it natively (AVX512-BF16 or AMX)
unless ``--precisions`` asks.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from piti.errors import ConfigError
from piti.precision import cpu_has_native_bf16

WORKERS = ("before", "now")
# the toy files' recommended settings when issue 18 timed them (1.91 s fp32, 1.36 s bf16 per mask image on a 2-core
# AMX Xeon): DDPM 25 base steps guided at every step from t = T, 10 upsampler steps from 0.1 T, no reward guidance;
# the settings added since, off. Run on the mask model, the one the issue timed, whatever --tasks says.
ISSUE_SECONDS = {"fp32": 1.91, "bf16": 1.36}
ISSUE_SETTINGS = (
    "steps=25,upsample_steps=10,upsample_start=0.1,guidance=5,noise_scale=0.7,noise_scale_tmax=1,guidance_tmax=1,"
    "skip_terminal=false,reward_guidance=0,upsample_reward_guidance=0,particle_guidance=0,cache_interval=1,"
    "redraw_threshold=0,redraw_colour_threshold=0,antithetic_noise=false"
)
ISSUE = f"before:{ISSUE_SETTINGS}"
ISSUE_TASK = "mask"  # the model the issue timed


def split_variant(name: str) -> tuple[str, str]:
    """A worker's name -> (its code path, the sampling settings it names): ``"now"`` -> ("now", ""),
    ``"guidance_tmax=1"`` -> ("now", "guidance_tmax=1"), ``"before:steps=25"`` -> ("before", "steps=25")."""
    if name in WORKERS:
        return name, ""
    path, sep, text = name.partition(":")
    return (path, text) if sep and path in WORKERS else ("now", name)


def parse_variant(text: str) -> dict:
    """``"guidance_tmax=1,steps=20"`` -> the sampling settings it names, each checked by its declaration."""
    from piti.settings import setting_specs

    specs, out = setting_specs(), {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in specs:
            raise ConfigError(f"--variant takes NAME=VALUE pairs of sampling settings, got {item!r}")
        out[name.strip()] = specs[name.strip()].check(value.strip())
    if not out:
        raise ConfigError("--variant names no setting")
    return out


def _fp32(forward):
    """``forward`` outside autocast, in fp32: the reward and class models as before they ran in the policy's
    precision."""

    def run(x, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float(), *args, **kwargs)

    return run


def _worker(
    conn, name: str, tasks: list, precisions: list, threads: int, overrides: dict, folder: str, samples: int = 1
) -> None:
    """Hold one pipeline per (task, precision); answer ("run", task, precision) with its timings, and
    ("profile", task, precision) with torch.profiler's table of the operators of one call."""
    from piti import demo_support as ds
    from piti import precision as pol
    from piti.nn.layers import set_norm_upcast
    from piti.pipeline import PITIPipeline

    torch.set_num_threads(threads)
    path, settings = split_variant(name)
    if path == "before":
        pol.tune_malloc = lambda: False  # glibc's default allocator, as before
    if settings:  # a variant: the path at the settings its name lists (--steps, --upsample-steps, --quick win)
        overrides = {**parse_variant(settings), **overrides}
    scene = ds.write_examples(folder, 1, 128, "synth")[0]
    conditions = {"mask": scene.colormap, "sketch": scene.sketch, "depth": scene.depth}
    pipes = {}
    for task in tasks:
        for precision in precisions:
            pipe = PITIPipeline.from_checkpoints(task=task, precision=precision)
            if path == "before":
                for model in (pipe.base_model, pipe.upsampler_model):
                    set_norm_upcast(model, True)
                for model in filter(None, (pipe.reward_model, pipe.class_model)):
                    model.forward = _fp32(model.forward)
            pipes[task, precision] = pipe
    conn.send("ready")
    for what, task, precision, seed in iter(conn.recv, None):
        if what == "profile":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                pipes[task, precision](str(conditions[task]), seed=seed, progress=False, **overrides)
            conn.send(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            continue
        start = time.perf_counter()
        out = pipes[task, precision](str(conditions[task]), seed=seed, num_samples=samples, progress=False, **overrides)
        timings = out.settings["timings"]
        image = np.asarray(out.images[0], dtype=np.float64)
        seconds = (time.perf_counter() - start, timings["base_s"], timings["upsample_s"])
        conn.send((*(t / samples for t in seconds), image))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="mask,sketch,depth", help="comma-separated (default: all three)")
    p.add_argument("--precisions", default=None, help="comma-separated (default: fp32,bf16; fp32 without native bf16)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per variant; the median is reported (default 5)")
    p.add_argument("--warm", type=int, default=1, help="warm-up calls per variant (default 1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    p.add_argument("--steps", default=None, help="base steps (default: the checkpoint's)")
    p.add_argument("--upsample-steps", default=None, help="upsampler steps (default: the checkpoint's)")
    p.add_argument("--samples", type=int, default=1, help="images per call; times are per image (default 1)")
    p.add_argument("--quick", action="store_true", help="mask only, 2 + 2 steps, one call: checks the script")
    p.add_argument("--profile", action="store_true", help="then profile one call of the first task, each variant")
    p.add_argument("--no-reward", action="store_true", help="also run 'now' without reward guidance (its cost)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also run 'now' at these settings, e.g. guidance_tmax=0.8,steps=20 ('before:...' runs 'before' at them)",
    )
    p.add_argument(
        "--issue-baseline",
        action="store_true",
        help="also run 'before' at the settings issue 18 timed on an AMX Xeon, and scale its times by the ratio",
    )
    args = p.parse_args(argv)
    native = cpu_has_native_bf16()
    precisions = (args.precisions or ("fp32,bf16" if native else "fp32")).split(",")
    tasks = args.tasks.split(",")
    overrides = {"steps": args.steps, "upsample_steps": args.upsample_steps}
    if args.quick:
        tasks, args.reps, args.warm, overrides = tasks[:1], 1, 0, {"steps": "2", "upsample_steps": "2"}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    variants = args.variant + (["reward_guidance=0"] if args.no_reward else [])
    variants += [ISSUE] if args.issue_baseline else []
    try:
        for variant in variants:
            parse_variant(split_variant(variant)[1])  # checked before the workers start
    except ConfigError as err:
        p.error(str(err))
    if args.samples < 1:
        p.error(f"--samples must be at least 1, got {args.samples}")
    if not set(tasks) <= {"mask", "sketch", "depth"} or not set(precisions) <= {"fp32", "bf16"}:
        p.error("tasks are mask, sketch, depth; precisions fp32, bf16")

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, native bf16: "
        f"{'yes' if native else 'no (bf16 is emulated there, far slower)'}, torch {torch.__version__}, "
        f"{args.threads} thread(s), GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    ctx, workers = mp.get_context("spawn"), {}
    with tempfile.TemporaryDirectory(prefix="piti-toy-speed-") as folder:
        for name in WORKERS + tuple(variants):
            conn, child = ctx.Pipe()
            own = [ISSUE_TASK] if name == ISSUE else tasks
            worker_args = (child, name, own, precisions, args.threads, overrides, folder, args.samples)
            proc = ctx.Process(target=_worker, args=worker_args)
            proc.start()
            workers[name] = (conn, proc)
        for conn, _ in workers.values():
            conn.recv()  # loaded
        times, images = {}, {}
        headers = [name for name in workers if name != ISSUE]  # the issue's call runs once a round, on ISSUE_TASK
        calls = [(task, precision, name) for task in tasks for precision in precisions for name in headers]
        calls += [(ISSUE_TASK, precision, ISSUE) for precision in precisions if ISSUE in workers]
        for rep in range(args.warm + args.reps):
            for task, precision, name in calls:
                conn = workers[name][0]
                conn.send(("run", task, precision, rep))  # seed = round: the timed images span seeds
                *row, image = conn.recv()
                if rep >= args.warm:
                    times.setdefault((task, precision, name), []).append(row)
                    images.setdefault((task, precision, name), []).append(image)
            print(f"round {rep + 1}/{args.warm + args.reps}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        profiles = {}
        for precision in precisions if args.profile else []:
            for name, (conn, _) in workers.items():
                conn.send(("profile", ISSUE_TASK if name == ISSUE else tasks[0], precision, 0))
                profiles[precision, name] = conn.recv()
        for conn, proc in workers.values():
            conn.send(None)
            proc.join()
    load_end = os.getloadavg()[0]

    print(
        "\n| task | precision | path | image (s) | image, mean (s) | base (s) | upsampler (s) "
        "| speed-up vs fp32 before | mean abs diff vs fp32 before (0-255) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (task, precision, name), rows in times.items():
        image, base, up = (statistics.median(col) for col in zip(*rows))
        mean = statistics.mean(r[0] for r in rows)  # a rare redraw (redraw_threshold) shows here, not in the median
        key, speedup, diff = (task, "fp32", "before"), "-", "-"  # without fp32 before, nothing to compare with
        if key in times:
            speedup = f"{statistics.median(r[0] for r in times[key]) / image:.2f}x"
            diff = f"{np.mean([np.abs(a - b).mean() for a, b in zip(images[task, precision, name], images[key])]):.2f}"
        label = "before, issue 18's settings" if name == ISSUE else name
        print(
            f"| {task} | {precision} | {label} | {image:.2f} | {mean:.2f} | {base:.2f} | {up:.2f} | {speedup} "
            f"| {diff} |"
        )
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the checkpoints' recommended settings"
    print(
        f"\n# {settings}; {args.samples} image(s) per call; median of {args.reps} call(s) after {args.warm} warm-up, "
        f"seeds {args.warm}.."
        f"{args.warm + args.reps - 1}; load average {load_end:.1f} at end"
    )
    scaled = args.issue_baseline and not overrides and args.samples == 1  # the headers' calls, one image each
    for precision in [p for p in precisions if p in ISSUE_SECONDS] if scaled else ():
        then = statistics.median(r[0] for r in times[ISSUE_TASK, precision, ISSUE])
        scale = ISSUE_SECONDS[precision] / then
        for task in tasks:
            seconds = [r[0] for r in times[task, precision, "now"]]
            now, mean = statistics.median(seconds), statistics.mean(seconds)
            print(
                f"# projection, {task} {precision}: issue 18's AMX Xeon read {ISSUE_SECONDS[precision]:.2f} s per mask "
                f"image at its settings, {then:.2f} s here; the header's call there, median {now * scale:.2f} s, "
                f"mean {mean * scale:.2f} s (assumes that machine speeds both calls alike)"
            )
    for (precision, name), table in profiles.items():
        print(f"\n# torch.profiler, one {tasks[0]} call, {precision} {name}:\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
