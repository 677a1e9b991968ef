"""Stage 1 (encoder training) with a truly frozen decoder vs the official way, side by side.

* ``official``: the decoder keeps ``requires_grad=True`` and is only left out of the optimizer, as in
  PITI's ``train_util.py`` (``optimize_model = model.encoder``): its gradients are computed every step
  and never used (they accumulate in ``.grad``; the official loop zeroes only the encoder's).
* ``frozen`` (this project, ``piti train --stage encoder``): ``decoder.requires_grad_(False)``: no weight
  gradients, no ``.grad`` buffers, no optimizer state for the decoder.

Both run the same step: a PITI forward on random ``x_t``, ``t`` and condition, the official diffusion
loss (``training_losses``), backward, AdamW on the encoder. Each variant runs in its own process so
that peak memory is its own: CUDA ``max_memory_allocated``, or on CPU the process's peak RSS. The
bytes of gradient buffers plus optimizer state are also counted exactly.

    python benchmarks/train_frozen.py                               # toy preset, CPU or GPU
    python benchmarks/train_frozen.py --presets toy-piti-base-mask piti-base-mask --batch 1 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _worker(args) -> dict:
    import torch

    from piti.diffusion import create_diffusion
    from piti.precision import resolve_device
    from piti.presets import create_model

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_model(args.preset).to(device).train()
    mc = model.config
    if args.variant == "frozen":
        model.decoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.encoder.parameters(), lr=1e-5)
    diffusion = create_diffusion(mc.noise_schedule, mc.diffusion_steps)
    b = args.batch
    x_start = torch.rand(b, 3, mc.image_size, mc.image_size, device=device) * 2 - 1
    ref = torch.rand(b, mc.cond_channels, mc.cond_size, mc.cond_size, device=device) * 2 - 1
    low_res = torch.rand(b, 3, 64, 64, device=device) * 2 - 1 if mc.super_res else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (b,), device=device)
        noise = torch.randn_like(x_start)
        x_t = diffusion.q_sample(x_start, t, noise)
        with autocast:
            out = model(x_t, diffusion.model_timesteps(t), ref=ref, low_res=low_res)
        loss = diffusion.training_losses(out.float(), x_start, x_t, t, noise)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)  # the encoder's only, as officially
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()  # warm-up (allocations, optimizer state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt_bytes = sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "preset": args.preset,
        "variant": args.variant,
        "device": str(device),
        "sec_per_step": seconds,
        "peak_bytes": peak,
        "grad_bytes": grad_bytes,
        "optimizer_bytes": opt_bytes,
        "params": sum(p.numel() for p in model.parameters()),
        "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["toy-piti-base-mask"], help="PITI presets to measure")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternate the two variants this many times, keep each one's fastest run (noisy machines)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--variant", choices=("official", "frozen"), help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--preset", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(_worker(args)))
        return 0

    rows = []
    for preset in args.presets:
        best = {}
        for _ in range(args.repeats):
            for variant in ("official", "frozen"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--preset",
                    preset,
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--device",
                    args.device,
                    "--precision",
                    args.precision,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr, file=sys.stderr)
                    return out.returncode
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if variant not in best or r["sec_per_step"] < best[variant]["sec_per_step"]:
                    best[variant] = r
        rows += [best["official"], best["frozen"]]

    mib = 2**20
    peak_name = "peak GPU MiB" if rows[0]["device"].startswith("cuda") else "peak RSS MiB"
    print(
        f"stage 1 (encoder), batch {args.batch}, {args.precision}, {rows[0]['device']}, "
        f"mean of {args.steps} steps after a warm-up, best of {args.repeats} alternating runs"
    )
    print(f"| preset | variant | s/step | {peak_name} | grad MiB | optimizer MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['variant']} | {r['sec_per_step']:.3f} | {r['peak_bytes'] / mib:.0f} | "
            f"{r['grad_bytes'] / mib:.1f} | {r['optimizer_bytes'] / mib:.1f} |"
        )
    for official, frozen in zip(rows[::2], rows[1::2]):
        print(
            f"{official['preset']}: frozen decoder is {official['sec_per_step'] / frozen['sec_per_step']:.2f}x "
            f"as fast and needs {(official['peak_bytes'] - frozen['peak_bytes']) / mib:.0f} MiB less at peak "
            f"({frozen['decoder_params'] / 1e6:.1f}M decoder parameters get no gradient)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
