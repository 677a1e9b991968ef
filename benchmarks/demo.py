"""Seconds per request of each tab of the Gradio app, on the embedded toy models, at the default settings.

    python benchmarks/demo.py                  # 3 warm requests per tab, 1 thread
    python benchmarks/demo.py --warm 5 --threads 2

The app (demo/app.py) runs in a subprocess, as a user starts it; each request goes through gradio_client,
so the times include the upload of the condition, the queue and the download of the samples. Per tab:
the first request after start (which loads the task's models, lazily) and the median of the warm ones
after it. The settings are the controls' starting values (the checkpoint's recommended settings, one
sample, the upsampler on); the conditions are example scenes of the synthetic world as the app draws them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gradio_client import Client, handle_file

from piti import demo_support as ds
from piti.pipeline import PITIPipeline


def request(task: str, scene: ds.ExampleScene, values: dict) -> tuple:
    """The positional arguments of ``task``'s API endpoint for ``scene``."""
    controls = (
        1,
        0,
        values["guidance"],
        values["guidance_mode"],
        values["sampler"],
        values["steps"],
        values["upsample"],
    )
    editor = {
        "background": handle_file(str(scene.colormap if task == "mask" else scene.sketch)),
        "layers": [],
        "composite": None,
        "id": None,
    }
    return {"mask": (editor, False), "sketch": ("sketch", editor, None), "depth": (handle_file(str(scene.depth)),)}[
        task
    ] + controls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warm", type=int, default=3, help="warm requests per tab after the first (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the app (OMP_NUM_THREADS, default 1)")
    args = p.parse_args(argv)

    load = os.getloadavg()[0]
    scene = ds.write_examples(Path(tempfile.mkdtemp(prefix="piti-bench-")), 1, 128, "synth")[0]
    # the controls' starting values, read as the app reads them
    values = {task: ds.control_values(PITIPipeline.from_checkpoints(task=task)) for task in ("mask", "sketch", "depth")}
    start = time.perf_counter()
    with ds.AppProcess(threads=args.threads) as url:
        started = time.perf_counter() - start
        client = Client(url, verbose=False)
        rows = []
        for task, v in values.items():
            times = []
            for _ in range(1 + args.warm):
                t = time.perf_counter()
                client.predict(*request(task, scene, v), api_name=f"/{task}")
                times.append(time.perf_counter() - t)
            rows.append((task, v, times[0], statistics.median(times[1:]) if args.warm else float("nan")))

    print(
        f"# demo/app.py on the embedded toy models: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load:.1f} at "
        f"start; app up in {started:.1f} s"
    )
    print(f"| tab | settings | first request (s) | warm, median of {args.warm} (s) |")
    print("| --- | --- | ---: | ---: |")
    for task, v, first, warm in rows:
        settings = (
            f"{v['sampler']} {v['steps']} steps, w={v['guidance']:g} {v['guidance_mode']}, "
            f"upsampler {'on' if v['upsample'] else 'off'}, 1 sample"
        )
        print(f"| {task} | {settings} | {first:.2f} | {warm:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
