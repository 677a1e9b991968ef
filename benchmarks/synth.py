"""How fast the synthetic world draws scenes, with and without the dataset's conversions.

    OMP_NUM_THREADS=1 python benchmarks/synth.py

The training loop can draw scenes on the fly when this is well above the training step rate.
"""

import argparse
import os
import platform
import time

from piti.data.datasets import SynthDataset
from piti.data.synth import generate_scene


def rate(fn, n):
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of scenes timed")
    args = p.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'what':52s} {'items/s (wall)':>15s} {'per CPU-second':>15s}")
    for size, n in [(64, 1000), (256, 200)]:
        generate_scene(0, size)  # warm-up
        w, c = rate(lambda i, size=size: generate_scene((1, i), size), int(n * args.scale))
        print(f"{f'generate_scene at {size} px':52s} {w:15.0f} {c:15.0f}")
    for image_size, cond_size, n in [(64, 64, 400), (64, 256, 100)]:
        ds = SynthDataset(10**6, "mask", image_size=image_size, cond_size=cond_size)
        w, c = rate(lambda i, ds=ds: ds[i], int(n * args.scale))
        print(f"{f'SynthDataset mask item, image {image_size} / condition {cond_size}':52s} {w:15.0f} {c:15.0f}")


if __name__ == "__main__":
    main()
