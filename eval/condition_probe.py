"""Can a PITI model learn to read its condition at all? A memorisation probe.

    python eval/condition_probe.py runs/toy/joint-mask/model.safetensors
    python eval/condition_probe.py MODEL --steps 300 --every 50 --lr 5e-4 --threads 1

A few training scenes (default 8) are shown again and again at large noise levels (t in [600, 1000)),
where x_t says little about the image and only the condition tells the scenes apart. Every ``--every``
steps it prints, on those scenes at t = 900, the error of the clean-image estimate and how much it changes
when each scene gets the next scene's condition (the "other condition" column of eval/x0_error.py). If that
change rises towards the difference between the scenes, gradients do reach the decoder through the
condition path; if it stays ~0, something in that path is shut. It says nothing about generalisation:
identifying 8 scenes is much easier than following a new layout. The model is trained in memory only
(Adam, plain epsilon MSE); nothing is written.
"""

from __future__ import annotations

import argparse
import sys

import torch

from piti.checkpoints import load_model
from piti.data.datasets import SynthDataset
from piti.diffusion import create_diffusion
from piti.errors import PitiError


@torch.no_grad()
def _estimate(model, diffusion, x0, cond_emb, noise, t: int):
    """Clean-image estimate at step t, with the scenes' own and with the next scene's conditions."""
    tt = torch.full((x0.shape[0],), t)
    x_t = diffusion.q_sample(x0, tt, noise)
    out = []
    for emb in (cond_emb, {k: v.roll(1, 0) for k, v in cond_emb.items()}):
        eps = model(x_t, diffusion.model_timesteps(tt), cond_emb=emb)[:, :3]
        out.append(diffusion.predict_x0_from_eps(x_t, tt, eps).clamp(-1, 1))
    return out


def probe(model, steps: int = 300, every: int = 50, lr: float = 5e-4, scenes: int = 8, seed: int = 0):
    """Train ``model`` in place on ``scenes`` fixed scenes; yields ``(step, x0 error, influence)``."""
    cfg = model.config
    if cfg.kind != "piti" or cfg.super_res:
        raise PitiError("the probe takes a PITI base model (64 px, condition image)")
    ds = SynthDataset(length=scenes, task=cfg.task, seed=0, image_size=cfg.image_size, cond_size=cfg.cond_size,
                      flip=False)
    items = [ds[i] for i in range(scenes)]
    x0 = torch.stack([it["image"] for it in items])
    ref = torch.stack([it["cond"] for it in items])
    diffusion = create_diffusion(cfg.noise_schedule, cfg.diffusion_steps, "")
    gen = torch.Generator().manual_seed(seed)
    probe_noise = torch.randn(x0.shape, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps + 1):
        if step % every == 0:
            model.eval()
            own, other = _estimate(model, diffusion, x0, model.encode(ref), probe_noise, 900)
            model.train()
            yield step, float((own - x0).abs().mean()), float((own - other).abs().mean())
        if step == steps:
            break
        t = torch.randint(600, diffusion.num_timesteps, (scenes,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        eps = model(diffusion.q_sample(x0, t, noise), diffusion.model_timesteps(t), ref=ref)[:, :3]
        loss = (eps - noise).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a PITI base model file of this project")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--every", type=int, default=50, help="print every this many steps (default 50)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--scenes", type=int, default=8, help="training scenes shown again and again (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # network dropout
    try:
        model = load_model(args.model).float()
        print(f"{args.model}: {args.scenes} training scenes, t in [600, 1000), lr {args.lr}; measured at t = 900")
        print(f"{'step':>5} {'x0 error':>9} {'x0 change, other condition':>27}")
        for step, err, change in probe(model, args.steps, args.every, args.lr, args.scenes):
            print(f"{step:>5} {err:9.3f} {change:27.3f}", flush=True)
    except PitiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
