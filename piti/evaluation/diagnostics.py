"""Diagnostics of young models: how well they predict the clean image, and whether they read their condition.

* :func:`x0_errors`: per noise step t, the error of the implied clean-image estimate of held-out scenes, the
  epsilon MSE that training minimises, and how much the estimate changes when the same x_t gets the next
  scene's condition (``eval/x0_error.py``);
* :func:`learned_variance`: the sampler's noise per respaced step, next to the posterior's (``eval/x0_error.py
  --variance``);
* :func:`probe`: a memorisation probe that trains a model in memory on a few scenes at large noise and reports
  whether the condition's influence grows (``eval/condition_probe.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from piti.errors import PitiError
from piti.evaluation.scenes import HELDOUT_STREAM


@torch.no_grad()
def x0_errors(model, steps, num: int = 4, seed: int = 0, tokenizer=None) -> dict:
    """``{t: (x0 mean abs error, eps MSE, x0 change with another scene's condition)}``, ``"scenes"``: how much
    the scenes differ from the next one, and, for an upsampler, ``"bicubic"``: its input's error.

    A PITI model's condition is the scene's condition image; a GLIDE model's is the scene's caption,
    tokenized by ``tokenizer`` (the one stored in its file). The network runs under the precision policy's
    autocast for the dtype of its weights (a pipeline may have cast it to bf16); outputs are read in float32."""
    with _own_autocast(model):
        return _x0_errors(model, model.config, steps, num, seed, tokenizer)


def _own_autocast(model):
    """The precision policy's autocast for the dtype of ``model``'s weights (a pipeline may have cast it to bf16)."""
    from piti.precision import autocast

    weight = next(model.parameters())
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(weight.dtype, "fp32")
    return autocast(precision, weight.device)


def _heldout_batch(model, cfg, num, tokenizer):
    """``(x0, cond_emb, low_res, enlarged)`` of ``num`` held-out scenes for ``model`` (the last two None
    unless it is an upsampler: its 64-px input and that input's bicubic enlargement)."""
    if cfg.kind == "glide" and tokenizer is None:
        raise PitiError(f"{cfg.name or 'this GLIDE model'} needs the tokenizer it was trained with")
    task = cfg.task if cfg.kind == "piti" else "mask"  # a GLIDE model reads captions; any task has them
    from piti.data.datasets import SynthDataset

    ds = SynthDataset(
        length=num,
        task=task,
        seed=HELDOUT_STREAM,
        image_size=cfg.image_size,
        cond_size=cfg.cond_size if cfg.kind == "piti" else 64,
        flip=False,
    )
    items = [ds[i] for i in range(num)]
    x0 = torch.stack([it["image"] for it in items])
    if cfg.kind == "piti":
        cond_emb = model.encode(torch.stack([it["cond"] for it in items]))
    else:
        cond_emb = model.encode_text(*tokenizer.batch([it["caption"] for it in items], cfg.text_ctx))
    low_res = enlarged = None
    if cfg.super_res:
        low_res = F.interpolate(x0, size=64, mode="bicubic", antialias=True).clamp(-1, 1)
        enlarged = F.interpolate(low_res, size=cfg.image_size, mode="bicubic").clamp(-1, 1)
    return x0, cond_emb, low_res, enlarged


def _x0_errors(model, cfg, steps, num, seed, tokenizer) -> dict:
    from piti.diffusion import create_diffusion

    x0, cond_emb, low_res, enlarged = _heldout_batch(model, cfg, num, tokenizer)
    diffusion = create_diffusion(cfg.noise_schedule, cfg.diffusion_steps, "")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for t in steps:
        tt = torch.full((num,), int(t))
        x_t = diffusion.q_sample(x0, tt, noise)
        eps = model(x_t, diffusion.model_timesteps(tt), cond_emb=cond_emb, low_res=low_res)[:, :3].float()
        x0_pred = diffusion.predict_x0_from_eps(x_t, tt, eps).clamp(-1, 1)
        # the same x_t with the next scene's condition: how much does the prediction follow the condition?
        other = {k: v.roll(1, 0) for k, v in cond_emb.items()}
        eps_other = model(x_t, diffusion.model_timesteps(tt), cond_emb=other, low_res=low_res)[:, :3].float()
        x0_other = diffusion.predict_x0_from_eps(x_t, tt, eps_other).clamp(-1, 1)
        out[int(t)] = (
            float((x0_pred - x0).abs().mean()),
            float((eps - noise).pow(2).mean()),
            float((x0_pred - x0_other).abs().mean()),
        )
    if enlarged is not None:
        out["bicubic"] = float((enlarged - x0).abs().mean())
    out["scenes"] = float((x0 - x0.roll(1, 0)).abs().mean())  # what following the condition fully would give
    return out


@torch.no_grad()
def learned_variance(model, respacing: str = "25", num: int = 4, seed: int = 0, tokenizer=None) -> list[dict]:
    """The sampler's noise of ``model`` at each step of ``respacing``, on held-out scenes noised to that step.

    One row per respaced step, noisiest first: ``t`` (the trained step), ``frac`` (the mean interpolation
    weight (v + 1) / 2 between log beta~_t and log beta_t, Nichol & Dhariwal Eq. 15), ``sigma_ratio`` (the
    learned standard deviation over the posterior's, sqrt(beta~_t): 1 at the lower bound, averaged over pixels
    in log space) and ``upper_ratio`` (sqrt(beta_t / beta~_t), the most it could be). Where ``upper_ratio`` is
    ~1 the schedule fixes the noise whatever the network learned."""
    from piti.diffusion import create_diffusion

    cfg = model.config
    with _own_autocast(model):
        x0, cond_emb, low_res, _ = _heldout_batch(model, cfg, num, tokenizer)
        diffusion = create_diffusion(cfg.noise_schedule, cfg.diffusion_steps, str(respacing))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        rows = []
        for index in range(diffusion.num_timesteps - 1, -1, -1):
            tt = torch.full((num,), index)
            x_t = diffusion.q_sample(x0, tt, noise)
            out = model(x_t, diffusion.model_timesteps(tt), cond_emb=cond_emb, low_res=low_res).float()
            rows.append(variance_row(diffusion, out, x_t, index))
    return rows


def variance_row(diffusion, model_output: torch.Tensor, x_t: torch.Tensor, index: int) -> dict:
    """:func:`learned_variance`'s row for one network output at process index ``index``."""
    tt = torch.full((x_t.shape[0],), index)
    _, v = diffusion.split_model_output(model_output, x_t)
    if v is None:
        raise PitiError("the model predicts epsilon only (a fixed variance): there is no learned variance to read")
    log_var = diffusion.p_mean_variance(model_output, x_t, tt)["log_variance"]
    log_min = float(diffusion.posterior_log_variance_clipped[index])
    log_max = float(diffusion.log_betas[index])
    return {
        "t": int(diffusion.timestep_map[index]),
        "frac": float(((v + 1) / 2).mean()),
        "sigma_ratio": float(torch.exp((log_var.mean() - log_min) / 2)),
        "upper_ratio": math.exp((log_max - log_min) / 2),
    }


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
    from piti.data.datasets import SynthDataset
    from piti.diffusion import create_diffusion

    ds = SynthDataset(
        length=scenes, task=cfg.task, seed=0, image_size=cfg.image_size, cond_size=cfg.cond_size, flip=False
    )
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
