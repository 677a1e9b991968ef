"""Sampling speed and memory: the official-equivalent path next to the project's fast path.

    python benchmarks/sampling.py                 # CPU (CUDA when present), both malloc settings
    python benchmarks/sampling.py --malloc tuned  # one setting only (about half the time)

Both paths run the FULL-SIZE networks (``piti-base-mask``, 338M parameters, and ``piti-upsample-mask``,
351M) with random weights: speed does not depend on the weights.

* official-equivalent: fp32, the condition encoder re-run inside every network call (as the official
  code does), ancestral DDPM with 250 guided base steps and 27 (``fast27``) upsampler steps. Its whole
  image is EXTRAPOLATED from the measured per-step times (250 x base step + 27 x upsampler step), since
  running it takes about ten minutes on a 2-core CPU.
* fast: the pipeline's defaults, i.e. ``precision="auto"`` (bf16 where the hardware computes it, fp32
  otherwise), channels-last, the encoder run once per image, DPM-Solver++(2M) with 20 base and 10
  upsampler steps. Its whole 256-px image is RUN end to end through ``PITIPipeline`` (condition
  conversion, encoding, both samplers, 8-bit images).

Each path runs in its own child process, so peak memory (RSS on CPU, ``max_memory_allocated`` on CUDA) is
per path. ``--malloc both`` runs everything twice: with the default glibc malloc and with
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736`` (keeps freed memory
mapped, so the large activations of each step do not go back to the kernel and fault in again), which
must be set before a process starts; the children get it in their environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from piti.tasks import TASKS

TUNED_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
OFFICIAL = dict(base_steps=250, upsample_steps=27)


# --------------------------------------------------------------------------------------------------
# Measurements (run in a child process)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def _condition_picture(size=256):
    """A COCO-Stuff colour map: sky, grass and a building (the benchmark does not depend on it)."""
    import numpy as np
    from PIL import Image

    from piti.data.conditions import labels_to_colors

    labels = np.full((size, size), 156, np.uint8)  # sky
    labels[size // 2 :] = 123  # grass
    labels[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 95  # a building
    return Image.fromarray(labels_to_colors(labels, "coco-stuff"))


def run_path(path: str, args) -> dict:
    """Time one path; returns a JSON-ready dict."""
    import torch

    from piti.data.conditions import condition_tensor
    from piti.pipeline import PITIPipeline
    from piti.presets import create_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = path == "official"
    build = time.perf_counter()
    prefix = "toy-piti" if args.toy else "piti"
    base, up = create_model(f"{prefix}-base-{args.task}"), create_model(f"{prefix}-upsample-{args.task}")
    policy = (
        dict(precision="fp32", channels_last=False)
        if official
        else dict(
            precision=args.precision,
            channels_last={"on": True, "off": False, "auto": None}[args.channels_last],
            compile=args.compile,
        )
    )
    pipe = PITIPipeline(base, up, device=args.device, profile="official" if official else "fast", **policy)
    build = time.perf_counter() - build
    dev = pipe.policy.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    encode_once = not official
    settings = pipe.resolve_settings(guidance=0.3)  # guided: the base batch is doubled
    base_size, up_size = base.config.image_size, up.config.image_size

    ref = condition_tensor(args.task, _condition_picture(), base.config.cond_size)[0][None]
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 3, base_size, base_size, generator=gen, device=dev)
    t = torch.full((1,), 500.0, device=dev)
    denoise = pipe.base_denoiser(ref, 1, settings, encode_once=encode_once)
    with torch.no_grad():
        base_step = _time_calls(lambda: denoise(x, t), dev, args.repeats)
        low_res = x.clamp(-1, 1)
        x_up = torch.randn(1, 3, up_size, up_size, generator=gen, device=dev)
        up_denoise = pipe.upsampler_denoiser(ref, low_res, encode_once=encode_once)
        up_step = _time_calls(lambda: up_denoise(x_up, t), dev, args.repeats)

    result = dict(
        path=path,
        threads=torch.get_num_threads(),
        **pipe.policy.to_dict(),
        encoder="every step" if official else "once per image",
        build_s=build,
        base_step_s=base_step,
        upsample_step_s=up_step,
    )
    if official:
        result.update(
            sampler="ddpm",
            **OFFICIAL,
            image_s=OFFICIAL["base_steps"] * base_step + OFFICIAL["upsample_steps"] * up_step,
            image_how="extrapolated from the per-step times",
        )
    else:
        start = time.perf_counter()
        out = pipe(
            _condition_picture(),
            num_samples=1,
            seed=0,
            progress=False,
            guidance=0.3,
            steps=args.base_steps,
            upsample_steps=args.upsample_steps,
        )
        _sync(dev)
        result.update(
            sampler=out.settings["sampler"],
            base_steps=args.base_steps,
            upsample_steps=args.upsample_steps,
            image_s=time.perf_counter() - start,
            image_how="measured end to end",
            image_size=out.images[0].size[0],
            image_timings=out.settings["timings"],
        )
    result.update(_peak_memory(dev))
    return result


# --------------------------------------------------------------------------------------------------
# The parent: run the paths in children, print the table


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(device: str, threads: int) -> str:
    import torch

    from piti.precision import cpu_has_native_bf16, resolve_device

    dev = resolve_device(device)
    cpu = (
        f"{_cpu_name()}, {os.cpu_count()} logical cores, torch threads {threads or torch.get_num_threads()}, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
    )
    gpu = f"; GPU {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    load = os.getloadavg()
    return (
        f"{cpu}{gpu}\ntorch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}\n"
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def _child(path: str, malloc: str, argv: list) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if malloc == "tuned":
        env["GLIBC_TUNABLES"] = TUNED_MALLOC
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, *argv, "--worker", path, "--result", str(out)]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark: the {path} path failed (malloc {malloc}, exit status {proc.returncode})")
        return json.loads(out.read_text())


def _fmt_mem(r: dict) -> str:
    return f"{r['peak_gpu_gb']:.2f} GiB GPU" if "peak_gpu_gb" in r else f"{r['peak_rss_gb']:.2f} GiB RSS"


def report(official: dict, fast: dict, malloc: str) -> str:
    rows = [
        ("precision", official["precision"], fast["precision"], ""),
        ("channels-last", str(official["channels_last"]), str(fast["channels_last"]), ""),
        ("condition encoder", official["encoder"], fast["encoder"], ""),
        (
            "base step (guided, batch 2)",
            f"{official['base_step_s']:.2f} s",
            f"{fast['base_step_s']:.2f} s",
            f"{official['base_step_s'] / fast['base_step_s']:.2f}x",
        ),
        (
            "upsampler step (batch 1)",
            f"{official['upsample_step_s']:.2f} s",
            f"{fast['upsample_step_s']:.2f} s",
            f"{official['upsample_step_s'] / fast['upsample_step_s']:.2f}x",
        ),
        (
            "sampler and steps",
            f"ddpm {official['base_steps']} + {official['upsample_steps']} (fast27)",
            f"{fast['sampler']} {fast['base_steps']} + {fast['upsample_steps']}",
            "",
        ),
        (
            f"whole {fast['image_size']}-px image",
            f"{official['image_s']:.0f} s",
            f"{fast['image_s']:.1f} s",
            f"{official['image_s'] / fast['image_s']:.1f}x",
        ),
        ("  how", official["image_how"], fast["image_how"], ""),
        ("peak memory", _fmt_mem(official), _fmt_mem(fast), ""),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("", "official-equivalent", "fast (project)", "speed-up")
    width = [max(w, len(h)) for w, h in zip(width, head)]
    lines = [f"malloc: {'GLIBC_TUNABLES=' + TUNED_MALLOC if malloc == 'tuned' else 'glibc default'}"]
    for r in (head, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: CUDA when present)")
    parser.add_argument("--task", default="mask", choices=TASKS)
    parser.add_argument("--base-steps", type=int, default=20, help="fast path: base steps (default 20)")
    parser.add_argument("--upsample-steps", type=int, default=10, help="fast path: upsampler steps (default 10)")
    parser.add_argument("--precision", default="auto", help="fast path precision (default auto)")
    parser.add_argument(
        "--channels-last", default="auto", choices=["auto", "on", "off"], help="fast path memory format"
    )
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile the networks")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default: torch's choice, one per core); 1 gives stable figures while "
        "another process holds a core",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per step measurement (after a warm-up)")
    parser.add_argument("--malloc", default="both", choices=["both", "default", "tuned"])
    parser.add_argument(
        "--toy", action="store_true", help="toy presets (64 -> 128 px): a quick check of this script only"
    )
    parser.add_argument("--worker", choices=["official", "fast"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # child process: one path, result to a JSON file
        Path(args.result).write_text(json.dumps(run_path(args.worker, args)))
        return 0

    raw = sys.argv[1:] if argv is None else list(argv)
    print(f"command: python benchmarks/sampling.py {' '.join(raw)}".rstrip())
    print(machine_description(args.device, args.threads))
    start = time.perf_counter()
    results = {}
    for malloc in ["default", "tuned"] if args.malloc == "both" else [args.malloc]:
        official, fast = _child("official", malloc, raw), _child("fast", malloc, raw)
        results[malloc] = (official, fast)
        print("\n" + report(official, fast, malloc), flush=True)
    best = min((f["image_s"], m) for m, (_, f) in results.items())
    official, fast = results[best[1]]
    print(
        f"\nfast path: a {'TOY' if args.toy else 'full-size'} {fast['image_size']}-px image in {fast['image_s']:.1f} s "
        f"({official['image_s'] / fast['image_s']:.1f}x faster than the official-equivalent path, same malloc); "
        f"goal on a 2-core CPU: < 60 s and >= 8x"
    )
    print(f"benchmark wall time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    sys.exit(main())
