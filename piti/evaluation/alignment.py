"""Controllability: do generated images follow their conditions? The judges and the toy alignment check.

Per task, a judge scores the generated images against the input condition, and the same judge scores the
real images of the same conditions; the ratio generated / real says how much of the judge's score the
generated images keep (for errors, where lower is better, the ratio is real / generated, so that 1 is
"as good as the real images" for every task):

* mask: mIoU of a segmenter's prediction on the image against the input label map;
* sketch: edge F1 between the image's edges (Canny by default, or a HED model) and the input sketch,
  within :data:`EDGE_TOLERANCE` pixels;
* depth: RMSE and AbsRel of a depth estimator's prediction on the image against the input depth.

:func:`evaluate_toy_task` is the toy-scale check (``eval/toy_alignment.py``): it samples held-out synthetic
scenes with a pipeline and judges them by the task's own measure (:func:`toy_control`: mIoU, edge F1 or depth
RMSE, as a ratio to the real images), and by the toy segmenter for every task (mIoU, FID-T).
"""

from __future__ import annotations

import time

import numpy as np

from piti.errors import ConfigError, DatasetError
from piti.evaluation.fid import fid_t
from piti.evaluation.images import condition_picture, save_grid, unit_to_uint8
from piti.evaluation.metrics import (
    bootstrap_interval,
    class_overlaps,
    confusion_matrix,
    depth_error_shares,
    depth_errors,
    depth_errors_by_range,
    depth_squared_errors,
    edge_counts,
    f1_from_counts,
    iou_from_confusion,
    miou_from_overlaps,
)
from piti.evaluation.scenes import heldout_examples

EDGE_TOLERANCE = 2  # pixels: an edge pixel counts when the other map has one within this distance
SETTING_KEYS = (
    "guidance",
    "guidance_convention",
    "guidance_mode",
    "guidance_w",
    "guidance_stats",
    "guidance_tmin",
    "guidance_tmax",
    "sampler",
    "steps",
    "skip_terminal",
    "upsample_sampler",
    "upsample_steps",
    "upsample_start",
    "noise_scale",
    "noise_scale_tmax",
    "antithetic_noise",
    "cache_interval",
    "cache_branch",
    "cache_tmax",
    "cond_noise",
    "cond_noise_tmin",
    "cond_noise_tmax",
    "reward_guidance",
    "reward_guidance_tmin",
    "reward_guidance_tmax",
    "redraw_threshold",
    "redraw_colour_threshold",
    "redraw_early_t",
    "upsample_noise_scale",
    "upsample_reward_guidance",
    "particle_guidance",
    "particle_features",
    "particle_guidance_tmin",
    "particle_guidance_tmax",
    "precision",
    "device",
)


def class_names(num_classes: int) -> list[str]:
    from piti.data.synth import CLASSES

    return list(CLASSES) if len(CLASSES) == num_classes else [str(c) for c in range(num_classes)]


def judge(segmenter, generated: np.ndarray, real: np.ndarray, labels: np.ndarray, with_fid_t: bool = True) -> dict:
    """mIoU of generated and real images against ``labels``, their ratio, FID-T, and the IoU of each class
    (``iou_per_class``: class name -> [generated, real], None where a class is absent) (inputs uint8 (N, S, S, ...))."""
    k = segmenter.config.num_classes
    m_gen, iou_gen = iou_from_confusion(confusion_matrix(segmenter.predict(generated), labels, k))
    m_real, iou_real = iou_from_confusion(confusion_matrix(segmenter.predict(real), labels, k))
    per_class = {
        name: [None if np.isnan(g) else float(g), None if np.isnan(r) else float(r)]
        for name, g, r in zip(class_names(k), iou_gen, iou_real)
    }
    out = {
        "size": int(labels.shape[-1]),
        "miou_generated": m_gen,
        "miou_real": m_real,
        "miou_ratio": m_gen / m_real if m_real > 0 else float("nan"),
    }
    if with_fid_t:
        out["fid_t"] = fid_t(real, generated, segmenter)
    out["iou_per_class"] = per_class
    return out


# ------------------------------------------------------------------------------------------ sketch


def canny_edges(images: np.ndarray) -> np.ndarray:
    """Canny edges (N, H, W) bool of uint8 images (N, H, W, 3): the project's sketch extraction
    (:func:`piti.data.conditions.extract_sketch`, the weights-free default)."""
    from piti.data.conditions import extract_sketch

    return np.stack([extract_sketch(im) > 0 for im in images])


def hed_edges(images: np.ndarray, model, threshold: float = 0.6, batch_size: int = 16) -> np.ndarray:
    """Edges (N, H, W) bool from a user-supplied HED network: a TorchScript module mapping float images
    (N, 3, H, W) in [0, 255] (RGB) to an edge probability map (N, 1, H, W) in [0, 1], thresholded at
    ``threshold`` (0.6, as the official PITI sketches)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).float()
            p = model(x)
            p = p[0] if isinstance(p, (list, tuple)) else p
            if p.dim() != 4 or p.shape[1] != 1 or p.shape[-2:] != x.shape[-2:]:
                raise ConfigError(
                    f"the HED model must return (N, 1, H, W) edge maps at the input size, "
                    f"got {tuple(p.shape)} for input {tuple(x.shape)}"
                )
            out.append((p[:, 0] >= threshold).cpu().numpy())
    return np.concatenate(out)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _f1_ratio(gen_counts: np.ndarray, real_counts: np.ndarray) -> float:
    """Edge-F1 ratio generated / real of per-image :func:`~piti.evaluation.metrics.edge_counts`."""
    return _ratio(f1_from_counts(gen_counts.sum(0))["f1"], f1_from_counts(real_counts.sum(0))["f1"])


def judge_sketch(
    fake_edges: np.ndarray, real_edges: np.ndarray, sketches: np.ndarray, tolerance: int = EDGE_TOLERANCE
) -> dict:
    """Edge F1 of the generated and of the real images' edges against the input ``sketches``, their ratio, and
    the ratio's 90% bootstrap interval over the images (``ratio_interval``, :func:`bootstrap_interval`)."""
    counts = {k: edge_counts(e, sketches, tolerance) for k, e in (("generated", fake_edges), ("real", real_edges))}
    gen, real = f1_from_counts(counts["generated"].sum(0)), f1_from_counts(counts["real"].sum(0))
    return {
        "edge_f1_generated": gen["f1"],
        "edge_f1_real": real["f1"],
        "edge_f1_ratio": _ratio(gen["f1"], real["f1"]),
        "ratio_interval": _interval(_f1_ratio, counts["generated"], counts["real"]),
        "precision_generated": gen["precision"],
        "recall_generated": gen["recall"],
        "precision_real": real["precision"],
        "recall_real": real["recall"],
        "tolerance_px": tolerance,
    }


def _interval(stat, *items) -> list[float] | None:
    """:func:`bootstrap_interval` as a JSON-ready pair; None for fewer than 2 images."""
    return list(bootstrap_interval(stat, *items)) if len(items[0]) >= 2 else None


def interval_text(interval) -> str:
    """A ratio's interval as printed: ``0.79-0.91``; ``-`` where there is none (one image, or older results)."""
    return "-" if not interval else f"{interval[0]:.2f}-{interval[1]:.2f}"


# ------------------------------------------------------------------------------------------ depth


def _rmse_ratio(gen_sq: np.ndarray, real_sq: np.ndarray) -> float:
    """RMSE ratio real / generated of per-image :func:`~piti.evaluation.metrics.depth_squared_errors`."""
    return _ratio(np.sqrt(real_sq[:, 0].sum() / real_sq[:, 1].sum()), np.sqrt(gen_sq[:, 0].sum() / gen_sq[:, 1].sum()))


WORST_SCENES = 5  # judge_depth lists this many images with the largest share of the squared error


def judge_depth(estimator, generated: np.ndarray, real: np.ndarray, depth: np.ndarray) -> dict:
    """RMSE and AbsRel of ``estimator`` (``predict(images) -> metres (N, H, W)``) on generated and real images
    against the input ``depth`` (metres, 0 = no depth), the ratios real / generated, the RMSE by distance
    (``by_distance``: :func:`~piti.evaluation.metrics.depth_errors_by_range` of each), the images holding most of
    the generated images' squared error (``worst_scenes``: index in the batch, its share, the real image's share),
    the RMSE ratio's 90% bootstrap interval over the images (``ratio_interval``), each image's RMSE (``scene_rmse``:
    [generated, real] pairs) and the median over the images of their own ratio (``scene_ratio_median``), which one
    catastrophic image cannot move as it moves the pooled ratio."""
    pred_gen, pred_real = estimator.predict(generated), estimator.predict(real)
    gen, real_err = depth_errors(pred_gen, depth), depth_errors(pred_real, depth)
    share_gen, share_real = depth_error_shares(pred_gen, depth), depth_error_shares(pred_real, depth)
    per_image = [depth_squared_errors(p, depth) for p in (pred_gen, pred_real)]
    worst = np.argsort(-share_gen, kind="stable")[:WORST_SCENES]
    scene_rmse = np.sqrt(np.stack([e[:, 0] / e[:, 1] for e in per_image], 1))  # (N, 2): generated, real
    return {
        "scene_rmse": scene_rmse.tolist(),
        "scene_ratio_median": float(np.median(scene_rmse[:, 1] / np.maximum(scene_rmse[:, 0], 1e-12))),
        "worst_scenes": [
            {"index": int(i), "error_share": float(share_gen[i]), "error_share_real": float(share_real[i])}
            for i in worst
        ],
        "by_distance": {
            "generated": depth_errors_by_range(pred_gen, depth),
            "real": depth_errors_by_range(pred_real, depth),
        },
        "rmse_generated": gen["rmse"],
        "rmse_real": real_err["rmse"],
        "rmse_ratio": real_err["rmse"] / gen["rmse"] if gen["rmse"] > 0 else float("nan"),
        "ratio_interval": _interval(_rmse_ratio, *per_image),
        "absrel_generated": gen["absrel"],
        "absrel_real": real_err["absrel"],
        "absrel_ratio": real_err["absrel"] / gen["absrel"] if gen["absrel"] > 0 else float("nan"),
        "pixels": gen["pixels"],
    }


# ------------------------------------------------------------------------------------------ toy check


def sample_heldout(
    pipe,
    task: str,
    num: int,
    start: int = 0,
    seed: int = 0,
    upsample: bool = True,
    settings: dict | None = None,
    depth: bool = False,
    samples_per_call: int = 1,
) -> dict:
    """One sample per held-out scene of ``task`` (scene i sampled with seed ``seed + i``, one call per image,
    as a user runs it). ``samples_per_call`` K > 1: scene i's picture is sample i mod K of a call of K samples, so
    settings that act between the samples of a call (particle guidance) are judged as they draw; the time is the
    call's / K. Returns :func:`heldout_examples`'s data plus ``generated`` and ``base_images`` (uint8 stacks),
    ``seconds`` and ``timings`` per image, ``redraws`` (every sample's, all K of each call; ``redraw_threshold``),
    ``early_redraws`` (the calls' draws restarted midway, in all; ``redraw_early_t``) and ``settings`` (the first
    call's record)."""
    if not isinstance(samples_per_call, int) or samples_per_call < 1:
        raise ConfigError(f"samples_per_call must be a positive integer, got {samples_per_call!r}")
    settings = settings or {}
    upsample = upsample and pipe.upsampler_model is not None
    base_cfg = pipe.base_model.config
    size = pipe.upsampler_model.config.image_size if upsample else base_cfg.image_size
    data = heldout_examples(
        task, num, start, size, base_cfg.cond_size, base_cfg.image_size if upsample else None, depth=depth
    )
    generated, base_images, seconds, timings, redraws, early, used = [], [], [], [], [], 0, None
    for i, cond in enumerate(data["cond"]):
        t0 = time.perf_counter()
        k = samples_per_call
        out = pipe(cond, num_samples=k, seed=seed + i, upsample=upsample, progress=False, **settings)
        seconds.append((time.perf_counter() - t0) / k)
        generated.append(np.asarray(out.images[i % k]))
        base_images.append(np.asarray(out.base_images[i % k]))
        timings.append({name: v / k for name, v in out.settings["timings"].items()})
        redraws += out.settings["redraws"]
        early += out.settings["early_redraws"]
        used = used or out.settings
    data.update(
        generated=np.stack(generated),
        base_images=np.stack(base_images),
        seconds=seconds,
        timings=timings,
        redraws=redraws,
        early_redraws=early,
        settings=used,
        upsample=upsample,
    )
    return data


CONTROL_MEASURES = {"mask": "mIoU", "sketch": "edge F1", "depth": "depth RMSE"}  # each task's own judge


def _miou_ratio(gen: np.ndarray, real: np.ndarray) -> float:
    """mIoU ratio generated / real of per-image :func:`~piti.evaluation.metrics.class_overlaps`."""
    return _ratio(miou_from_overlaps(gen), miou_from_overlaps(real))


def toy_control(task: str, data: dict, segmenter=None, depth_estimator=None) -> dict:
    """The task's own controllability of :func:`sample_heldout`'s images at their final size: ``measure``, the
    ``generated`` and ``real`` scores and their ``ratio`` (1 = as faithful as the real images), plus the judge's
    details. mask: the segmenter's mIoU; sketch: Canny edge F1 against the input sketch; depth: the depth
    estimator's RMSE (metres; ratio real / generated). ``ratio_interval``: the ratio's 90% bootstrap interval over
    the scenes (:func:`~piti.evaluation.metrics.bootstrap_interval`), what another draw of as many scenes could read."""
    generated, real = data["generated"], data["real"]
    size = generated.shape[1]
    if task == "mask":
        k = segmenter.config.num_classes
        per = [class_overlaps(segmenter.predict(x), data["labels"], k) for x in (generated, real)]
        m_gen, m_real = (miou_from_overlaps(o) for o in per)
        return {
            "measure": "mIoU",
            "generated": m_gen,
            "real": m_real,
            "ratio": _ratio(m_gen, m_real),
            "ratio_interval": _interval(_miou_ratio, *per),
        }
    if task == "sketch":
        from piti.data.conditions import resize_sketch

        sketches = np.stack([resize_sketch(condition_picture(task, c)[..., 0], (size, size)) for c in data["cond"]])
        r = judge_sketch(canny_edges(generated), canny_edges(real), sketches > 127)
        return {
            "measure": "edge F1",
            "generated": r["edge_f1_generated"],
            "real": r["edge_f1_real"],
            "ratio": r["edge_f1_ratio"],
            **{k: r[k] for k in ("ratio_interval", "precision_generated", "recall_generated", "tolerance_px")},
        }
    if task == "depth":
        if depth_estimator is None:
            from piti.evaluation.depth_estimator import load_depth_estimator

            depth_estimator = load_depth_estimator()
        r = judge_depth(depth_estimator, generated, real, data["depth"])
        return {
            "measure": "depth RMSE",
            "generated": r["rmse_generated"],
            "real": r["rmse_real"],
            "ratio": r["rmse_ratio"],
            **{k: r[k] for k in ("ratio_interval", "absrel_generated", "absrel_real", "absrel_ratio")},
            **{k: r[k] for k in ("by_distance", "worst_scenes", "scene_ratio_median", "scene_rmse")},
        }
    raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(CONTROL_MEASURES)}")


def evaluate_toy_task(
    task: str,
    pipe,
    segmenter,
    num: int,
    start: int = 0,
    seed: int = 0,
    upsample: bool = True,
    settings: dict | None = None,
    grid=None,
    grid_rows: int = 8,
    depth_estimator=None,
    samples_per_call: int = 1,
) -> dict:
    """The toy alignment check of one task: sample held-out scenes, judge them by the task's own measure
    (``control``, :func:`toy_control`) and with the segmenter (mIoU against the scenes' label maps, FID-T), at the
    final size and, with an upsampler, the segmenter also at the base size; time them; and write a grid
    (condition / generated / real) to ``grid`` when given. ``samples_per_call``: see :func:`sample_heldout`."""
    data = sample_heldout(
        pipe, task, num, start, seed, upsample, settings, depth=task == "depth", samples_per_call=samples_per_call
    )
    upsample, timings, used = data["upsample"], data["timings"], data["settings"]
    result = {
        "base": pipe.sources["base"],
        "upsampler": pipe.sources["upsampler"] if upsample else None,
        "control": toy_control(task, data, segmenter, depth_estimator),
        **judge(segmenter, data["generated"], data["real"], data["labels"]),
        "seconds_per_image": float(np.mean(data["seconds"])),
        "seconds_per_image_max": float(np.max(data["seconds"])),
        "redraws_per_sample": float(np.mean(data["redraws"])),  # base samples drawn again (redraw_threshold)
        "early_redraws_per_sample": data["early_redraws"] / len(data["redraws"]),  # draws restarted midway
        "samples_per_call": samples_per_call,
        "base_seconds_per_image": float(np.mean([t["base_s"] for t in timings])),
        "upsample_seconds_per_image": float(np.mean([t["upsample_s"] for t in timings])) if upsample else None,
        "settings": {k: used[k] for k in SETTING_KEYS if k in used},
    }
    if upsample:
        result["at_base_size"] = judge(segmenter, data["base_images"], data["real_base"], data["labels_base"])
    if grid is not None:
        rows = min(grid_rows, num)
        conds = np.stack([condition_picture(task, c) for c in data["cond"][:rows]])
        save_grid(grid, {"condition": conds, "generated": data["generated"][:rows], "real": data["real"][:rows]}, rows)
        result["grid"] = str(grid)
    return result


# the variety check's reference: the official ancestral sampler's noise, guidance at every step, the condition as it
# is (no annealing), no reward or particle guidance, no redraws, independent draws, every network call whole
OFFICIAL_NOISE = {
    "sampler": "ddpm",
    "guidance_tmin": 0.0,
    "guidance_tmax": 1.0,
    "noise_scale": 1.0,
    "noise_scale_tmax": 1.0,
    "skip_terminal": False,
    "cond_noise": 0.0,
    "reward_guidance": 0.0,
    "upsample_reward_guidance": 0.0,
    "redraw_threshold": 0.0,
    "redraw_colour_threshold": 0.0,
    "particle_guidance": 0.0,
    "antithetic_noise": False,
    "cache_interval": 1,
}


def evaluate_toy_diversity(
    task: str,
    pipe,
    segmenter,
    num: int,
    samples: int = 4,
    start: int = 0,
    seed: int = 0,
    upsample: bool = True,
    settings: dict | None = None,
) -> dict:
    """Variety: ``samples`` images of each of ``num`` held-out conditions, drawn in one call per condition, at
    ``settings`` (the recommended ones when empty) and at the same settings with the official ancestral sampler's
    noise (:data:`OFFICIAL_NOISE`: DDPM, the full noise and guidance at every step, the step at t = T kept, no
    condition annealing, no reward or particle guidance, independent draws). Returns each run's toy feature and
    pixel diversity (:mod:`piti.evaluation.diversity`) and the ratios recommended / official noise (the variety
    kept), with the feature ratio's 90% bootstrap interval over the conditions (``features_ratio_interval``)."""
    from piti.evaluation.diversity import feature_distances, pixel_l1_diversity

    if samples < 2:
        raise ConfigError(f"diversity needs at least 2 samples per condition, got {samples}")
    settings = settings or {}
    upsample = upsample and pipe.upsampler_model is not None
    cfg = pipe.base_model.config
    size = pipe.upsampler_model.config.image_size if upsample else cfg.image_size
    conds = heldout_examples(task, num, start, size, cfg.cond_size)["cond"]
    runs, per_condition = {}, {}
    for name, extra in (("recommended", {}), ("official_noise", OFFICIAL_NOISE)):
        kwargs = dict(num_samples=samples, upsample=upsample, progress=False, **{**settings, **extra})
        outs = [pipe(c, seed=seed + i, **kwargs) for i, c in enumerate(conds)]
        groups = [np.stack([np.asarray(im) for im in out.images]) for out in outs]
        per_condition[name] = feature_distances(groups, segmenter)
        runs[name] = {
            "features": float(per_condition[name].mean()),
            "features_per_condition": per_condition[name].tolist(),
            "pixel_l1": pixel_l1_diversity(groups),
        }
    return {
        "num": num,
        "samples": samples,
        "size": size,
        **runs,
        "features_ratio": runs["recommended"]["features"] / runs["official_noise"]["features"],
        "features_ratio_interval": _interval(_mean_ratio, *per_condition.values()),
        "pixel_l1_ratio": runs["recommended"]["pixel_l1"] / runs["official_noise"]["pixel_l1"],
    }


def _mean_ratio(a: np.ndarray, b: np.ndarray) -> float:
    return _ratio(float(a.mean()), float(b.mean()))


def evaluate_upsampler_ceiling(
    task: str, pipe, num: int, start: int = 0, seed: int = 0, settings: dict | None = None, segmenter=None
) -> dict:
    """The upsampler on perfect inputs: the real base-size images of ``num`` held-out scenes, enlarged bicubically
    and through the pipeline's upsampler at ``settings`` (seed ``seed + i`` for scene i), each judged by the task's
    own measure (:func:`toy_control`) against the real final-size images. Where the base image is perfect, the
    two ``control`` ratios say what the upsampler adds to or loses against plain enlargement."""
    import torch
    import torch.nn.functional as F

    if pipe.upsampler_model is None:
        raise ConfigError("the upsampler check needs a pipeline with an upsampler")
    ucfg = pipe.upsampler_model.config
    data = heldout_examples(
        task, num, start, ucfg.image_size, ucfg.cond_size, pipe.base_model.config.image_size, depth=task == "depth"
    )
    low = torch.from_numpy(data["real_base"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    s = pipe.resolve_settings(**(settings or {}))
    upsampled = [
        pipe.sample_upsampler(
            data["cond"][i : i + 1].to(pipe.policy.device),
            low[i : i + 1].to(pipe.policy.device),
            s,
            torch.Generator(device=pipe.policy.device).manual_seed(seed + i),
            progress=False,
            encode_once=True,
        ).float()
        for i in range(num)
    ]
    enlarged = F.interpolate(low, size=(ucfg.image_size,) * 2, mode="bicubic", align_corners=False)
    estimator = None
    if task == "depth":
        from piti.evaluation.depth_estimator import load_depth_estimator

        estimator = load_depth_estimator()  # once for both judgements
    judged = {
        name: toy_control(
            task, {**data, "generated": unit_to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()}, segmenter, estimator
        )
        for name, images in (("bicubic", enlarged), ("upsampler", torch.cat(upsampled)))
    }
    return {"num": num, "size": ucfg.image_size, "base_size": pipe.base_model.config.image_size, **judged}


# ------------------------------------------------------------------------------------------ folders


def load_judge(task: str, path=None):
    """The judge of ``task``: the toy segmenter (mask) or depth estimator (depth), from ``path`` or the shipped
    file; a TorchScript file is a user-supplied judge (see docs/evaluation.md). An error when the file judges
    another task."""
    from pathlib import Path

    from piti.errors import CheckpointError, MissingWeightsError

    if task == "sketch":
        raise ConfigError("the sketch task is judged by edge F1 (--edges canny, hed or precomputed), not by --judge")
    if path is not None and not Path(path).is_file():
        raise MissingWeightsError(f"judge file not found: {path}")
    if path is not None and Path(path).suffix in (".pt", ".pth", ".jit", ".ts"):
        return TorchScriptJudge(path, task)
    from piti.checkpoints import load_checkpoint

    if path is not None:
        kind = (load_checkpoint(path).config or {}).get("kind")
        want = {"mask": "segmenter", "depth": "depth-estimator"}[task]
        if kind != want:
            names = {
                "segmenter": "a segmenter (the mask task's judge)",
                "depth-estimator": "a depth estimator (the depth task's judge)",
            }
            raise CheckpointError(
                f"{path} is {names.get(kind, f'not a judge (its kind is {kind!r})')}; "
                f"--task {task} needs {names[want].split(' (')[0]}"
            )
    if task == "mask":
        from piti.evaluation.segmenter import load_segmenter

        return load_segmenter(path)
    from piti.evaluation.depth_estimator import load_depth_estimator

    return load_depth_estimator(path)


class TorchScriptJudge:
    """A user-supplied judge saved with ``torch.jit.save``: RGB images (N, 3, H, W) float in [0, 255] ->
    class logits (N, K, H, W) (mask; K classes of the dataset's label indices) or depth in metres
    (N, 1, H, W) (depth)."""

    def __init__(self, path, task: str):
        import torch

        from piti.errors import CheckpointError

        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise CheckpointError(f"{path} is not a TorchScript judge ({e})") from None
        self.task, self.path = task, str(path)

    def _run(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
            y = self.model(x)
        if y.dim() != 4 or y.shape[-2:] != x.shape[-2:]:
            raise ConfigError(
                f"the judge {self.path} returned {tuple(y.shape)} for images {tuple(x.shape)}; "
                "expected (N, C, H, W) at the input size"
            )
        return y.float().numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        y = self._run(images)
        return y.argmax(1).astype(np.uint8) if self.task == "mask" else y[:, 0].astype(np.float32)

    @property
    def config(self):
        return None


def _read_truth(task: str, path) -> np.ndarray:
    from piti.data.datasets import read_depth_png
    from piti.data.imageio import read_image

    if task == "depth":
        return read_depth_png(path)
    return np.asarray(read_image(path, mode="L"))


def align_folder(
    root,
    task: str,
    judge_path=None,
    edges: str = "canny",
    hed_model=None,
    fake_edges=None,
    real_edges=None,
    tolerance: int = EDGE_TOLERANCE,
    ignore_index: int = 255,
) -> dict:
    """Controllability of the generated images in ``root`` (``piti eval generate``'s layout: fake/, real/ and
    the task's ground truth folder). Every file is paired and checked before any judge runs; images whose size
    differs from the ground truth's are resized to it (PIL bicubic)."""
    from pathlib import Path

    from piti.evaluation.generate import GT_FOLDER
    from piti.evaluation.images import check_readable, paired_files, read_rgb

    root = Path(root)
    if task not in GT_FOLDER:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(GT_FOLDER)}")
    folders = {"fake": root / "fake", "real": root / "real", "truth": root / GT_FOLDER[task]}
    for folder in folders.values():
        if not folder.is_dir():
            raise ConfigError(
                f"{folder} not found: `piti eval align` reads {root}/fake, {root}/real and "
                f"{root}/{GT_FOLDER[task]} (`piti eval generate` writes them; a folder of conditions "
                "without ground truth cannot be judged)"
            )
    if task == "sketch" and edges == "precomputed":
        if fake_edges is None or real_edges is None:
            raise ConfigError("--edges precomputed needs --fake-edges DIR and --real-edges DIR")
        folders.update(fake_edges=Path(fake_edges), real_edges=Path(real_edges))
    files = paired_files(folders)
    for key, fs in files.items():
        check_readable(fs, key)
    judge_model = hed = None
    if task == "sketch" and edges == "hed":
        if hed_model is None:
            raise ConfigError("--edges hed needs --hed-model PATH (a TorchScript HED network; none is downloaded)")
        hed = TorchScriptJudge(hed_model, "sketch").model
    elif task != "sketch":
        judge_model = load_judge(task, judge_path)
    elif edges not in ("canny", "precomputed"):
        raise ConfigError(f"unknown --edges {edges!r}; expected canny, hed or precomputed")

    truth = np.stack([_read_truth(task, p) for p in files["truth"]])
    if len({t.shape for t in truth}) > 1:
        raise DatasetError("the ground-truth maps differ in size")
    size = truth.shape[1]
    if truth.shape[1] != truth.shape[2]:
        raise DatasetError(f"ground-truth maps must be square, got {truth.shape[1:]}")
    fake = np.stack([read_rgb(p, size) for p in files["fake"]])
    real = np.stack([read_rgb(p, size) for p in files["real"]])
    out = {"task": task, "num": len(fake), "size": size}
    if task == "mask":
        k = (
            getattr(getattr(judge_model, "config", None), "num_classes", None)
            or int(truth[truth != ignore_index].max()) + 1
        )
        pred_gen, pred_real = judge_model.predict(fake), judge_model.predict(real)
        k = max(k, int(pred_gen.max()) + 1, int(pred_real.max()) + 1)
        per = [class_overlaps(p, truth, k, ignore_index) for p in (pred_gen, pred_real)]  # per image, for the interval
        m_gen, m_real = (miou_from_overlaps(o) for o in per)
        if np.isnan(m_real):  # the truth holds no counted pixel
            raise ConfigError("mIoU is undefined: no pixel was counted (every ground-truth pixel is ignored)")
        out.update(
            judge=str(judge_path or "checkpoints/toy/segmenter.safetensors"),
            miou_generated=m_gen,
            miou_real=m_real,
            miou_ratio=_ratio(m_gen, m_real),
            ratio_interval=_interval(_miou_ratio, *per),
        )
    elif task == "depth":
        out.update(
            judge=str(judge_path or "checkpoints/toy/depth_estimator.safetensors"),
            **judge_depth(judge_model, fake, real, truth),
        )
    else:
        if edges == "precomputed":
            from piti.data.imageio import read_image

            fake_e = np.stack(
                [np.asarray(read_image(p, mode="L").resize((size, size))) > 127 for p in files["fake_edges"]]
            )
            real_e = np.stack(
                [np.asarray(read_image(p, mode="L").resize((size, size))) > 127 for p in files["real_edges"]]
            )
        elif edges == "hed":
            fake_e, real_e = hed_edges(fake, hed), hed_edges(real, hed)
        else:
            fake_e, real_e = canny_edges(fake), canny_edges(real)
        out.update(
            edges=edges,
            hed_model=str(hed_model) if hed_model else None,
            **judge_sketch(fake_e, real_e, truth > 127, tolerance),
        )
    return out
