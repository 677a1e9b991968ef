"""The paper's claims re-run at toy scale: named experiments made of arms, resumable, split into lanes.

Each experiment compares arms under equal conditions (same held-out scenes, same sampling seeds, and for the
training arms the same recipe, data, seed and total step budget):

* ``finetune`` (Table 3a): fixed decoder (stage 1 only) / one-stage (joint from the pretrained toy GLIDE) /
  two-stage (stage 1, then joint), mask task;
* ``pretraining`` (the pretrained and from-scratch rows): two-stage from the toy GLIDE against the same
  architecture trained jointly from random weights, for mask, sketch and depth;
* ``upsampler`` (Table 3b): no degradation / degradations / + perceptual / + adversarial, judged at 128 px;
* ``guidance``: plain against normalized classifier-free guidance across w, and the per-step statistics of
  the guided epsilon against the conditional one;
* ``steps``: DDPM, DDIM and DPM-Solver++ across base steps, and upsampler steps;
* ``floor``: FID-T of real scenes against other real scenes (what a perfect model would score).

An arm is an optional chain of training runs (sections of ``configs/toy.yaml`` with overrides; each run is a
run folder under ``runs/reproduce-toy/train`` that the trainer resumes) and one evaluation on held-out
synthetic scenes whose result is a JSON file. An arm whose JSON exists is skipped; arms that share a training
run fall in the same lane. :func:`summarize` turns whatever JSON files exist into CSV and markdown tables
beside the paper's numbers, plots and the list of pending arms.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from piti.errors import ConfigError, MissingWeightsError

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "eval" / "results" / "toy"
RUNS_DIR = REPO / "runs" / "reproduce-toy"
RECIPE = REPO / "configs" / "toy.yaml"
# The toy GLIDE pretraining files (base 2,000 steps, upsampler 500) live in git history at this commit.
PRETRAIN_COMMIT = "acbe9aa"
PRETRAIN_FILES = {
    "base": "checkpoints/toy/intermediate/toy-glide-base-pretrain.safetensors",
    "upsample": "checkpoints/toy/intermediate/toy-glide-upsample-pretrain.safetensors",
}
EXPERIMENTS = ("guidance", "steps", "finetune", "pretraining", "upsampler", "floor")
TASKS = ("mask", "sketch", "depth")
GRID_ROWS = 6

PUBLISHED = Path(__file__).resolve().parent / "data" / "published.json"  # the paper's numbers (evaluation data)
# The from-scratch row of the project page's FID table (shared/research/piti_official.md, section 7), which the
# evaluation data file does not hold: COCO mask, COCO sketch, DIODE.
SCRATCH_FID = {"mask": 13.0, "sketch": 13.0, "depth": 13.9}
PRETRAINED_COLUMNS = {"mask": "coco-mask", "sketch": "coco-sketch", "depth": "diode"}


def paper_numbers() -> dict:
    """{experiment: {"source", "fid": {arm: value}}}: Table 3's ablations (in the paper's row order) and the
    pretrained / from-scratch FIDs, read from the evaluation's data file of published numbers."""
    if not PUBLISHED.is_file():
        return {}
    pub = json.loads(PUBLISHED.read_text())
    t3, page = pub["table3"], pub["table5"]["project_page_fid"]
    up = list(t3["upsampler"]["values"].values())
    return {
        "finetune": {"source": f"{t3['title']} ({t3['source']})", "fid": dict(t3["finetune"]["values"])},
        "upsampler": {
            "source": f"{t3['title']}, rows in the paper's order ({t3['upsampler']['note']})",
            "fid": dict(zip(UPSAMPLER_ARMS, up)),
        },
        "pretraining": {
            "source": f"FID of 'PITI' and 'Ours (from scratch)', COCO mask, COCO sketch and DIODE ({page['source']})",
            "fid": {
                **{f"{t}-pretrained": page["values"][c] for t, c in PRETRAINED_COLUMNS.items()},
                **{f"{t}-scratch": v for t, v in SCRATCH_FID.items()},
            },
        },
    }


# ---------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """The sizes of one mode of the reproduction."""

    scenes: int  # held-out scenes per evaluation (sampling seed of scene i: seed + i)
    trace_scenes: int  # scenes sampled per guidance-statistics trace
    guidance_ws: tuple  # guidance strengths w of the guidance sweep
    trace_ws: tuple  # w of the epsilon-statistics traces
    step_counts: tuple  # base steps of the samplers sweep
    upsample_step_counts: tuple  # upsampler steps of the samplers sweep
    train_steps: int  # steps of every base-model training arm (split between the stages of a chain)
    upsampler_steps: int  # steps of every upsampler training arm
    batch_size: int  # training batch (the recipe's is 8)
    upsampler_batch_size: int  # upsampler training batch (the recipe's is 4)
    eval_steps: str | None = None  # base steps of every evaluation but the steps sweep (None: the recipe's 25)
    train_seed: int = 0  # seed of every training run (data order, noise, timesteps); results ARM@trainT.json


BUDGETS = {
    # plumbing only: a couple of scenes, a few steps, two training steps per arm
    "quick": Budget(
        scenes=2,
        trace_scenes=1,
        guidance_ws=(0.0, 5.0),
        trace_ws=(5.0,),
        step_counts=(5,),
        upsample_step_counts=(2,),
        train_steps=2,
        upsampler_steps=2,
        batch_size=2,
        upsampler_batch_size=2,
        eval_steps="5",
    ),
    # about 7 hours of one thread, 3.5 hours of the 2-core machine in two lanes (eval/results/toy/README.md)
    "full": Budget(
        scenes=32,
        trace_scenes=4,
        guidance_ws=(0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0),
        trace_ws=(5.0, 10.0),
        step_counts=(5, 10, 15, 25, 50),
        upsample_step_counts=(2, 5, 10, 20),
        train_steps=1000,
        upsampler_steps=400,
        batch_size=8,
        upsampler_batch_size=4,
    ),
}


# ---------------------------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class Run:
    """One training run: a section of configs/toy.yaml, its overrides, and where it starts from
    (``init``: "glide-base", "glide-upsample", "scratch" or the key of the run before it in the chain)."""

    section: str
    steps: int
    init: str
    overrides: tuple = ()  # (key, value) pairs on top of the section

    def key(self, task: str, batch: int, seed: int = 0) -> str:
        """The run folder's name: readable, plus a hash of everything that defines the run."""
        spec = json.dumps(
            [self.section, self.steps, self.init, sorted(self.overrides), task, batch] + ([seed] if seed else [])
        )
        return f"{task}-{self.section}-{self.steps}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Arm:
    """One arm: training runs in order (may be empty), then one evaluation."""

    experiment: str
    name: str
    task: str = "mask"
    runs: tuple = ()  # Run, in order
    kind: str = "sample"  # "sample" (held-out scenes, judged) or "trace" (guidance statistics)
    settings: dict = field(default_factory=dict)  # sampling settings on top of the toy recipe
    upsample: bool = False  # judge the upsampled 128-px images (else the 64-px base ones)
    upsampler_arm: bool = False  # the trained model is an upsampler (paired with the shipped base)
    grid: bool = False  # write a sample grid

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.name}"


def _w_name(w: float) -> str:
    return f"{w:g}".replace(".", "p")


def base_chain(kind: str, n: int) -> tuple:
    """The training runs of a base-model arm of ``n`` steps in all.

    ``fixed``: stage 1 (frozen decoder, new encoder, condition dropout 0.2 so that guidance works) for n steps;
    ``one-stage``: joint from the toy GLIDE for n steps; ``two-stage``: n/2 of stage 1, then n/2 joint;
    ``scratch``: joint from random weights for n steps."""
    stage1 = ("encoder", (("uncond_p", 0.2),))
    if kind == "fixed":
        return (Run(stage1[0], n, "glide-base", stage1[1]),)
    if kind == "one-stage":
        return (Run("joint", n, "glide-base"),)
    if kind == "two-stage":
        first = Run(stage1[0], n // 2, "glide-base", stage1[1])
        return (first, Run("joint", n - n // 2, "previous"))
    if kind == "scratch":
        return (Run("joint", n, "scratch"),)
    raise ConfigError(f"unknown base training chain {kind!r}")


UPSAMPLER_ARMS = {  # Table 3 (b): each row adds to the one before
    "no-degradation": (("degrade_low_res", False), ("perceptual_weight", 0.0), ("adv_weight", 0.0)),
    "degradation": (("degrade_low_res", True), ("perceptual_weight", 0.0), ("adv_weight", 0.0)),
    "perceptual": (("degrade_low_res", True), ("perceptual_weight", 0.004), ("adv_weight", 0.0)),
    "adversarial": (("degrade_low_res", True), ("perceptual_weight", 0.004), ("adv_weight", 0.01)),
}


def experiment_arms(experiment: str, budget: Budget) -> list[Arm]:
    """The arms of ``experiment`` at ``budget``."""
    n = budget.train_steps
    if experiment == "guidance":
        arms = [Arm("guidance", "none-w0", settings={"guidance": 0.0}, grid=True)]
        for w in budget.guidance_ws:
            if w > 0:
                arms += [
                    Arm(
                        "guidance",
                        f"{mode}-w{_w_name(w)}",
                        settings={"guidance": w, "guidance_mode": mode},
                        grid=w in (3.0, 10.0),
                    )
                    for mode in ("plain", "normalized")
                ]
        arms += [
            Arm(
                "guidance", f"trace-{mode}-w{_w_name(w)}", kind="trace", settings={"guidance": w, "guidance_mode": mode}
            )
            for w in budget.trace_ws
            for mode in ("plain", "normalized")
        ]
        return arms
    if experiment == "steps":
        arms = [
            Arm(
                "steps",
                f"{sampler}-{k}",
                settings={"sampler": sampler, "steps": str(k)},
                grid=k in (min(budget.step_counts), max(budget.step_counts)),
            )
            for sampler in ("ddpm", "ddim", "dpmpp")
            for k in budget.step_counts
        ]
        arms += [
            Arm(
                "steps",
                f"upsampler-ddpm-{k}",
                settings={"upsample_sampler": "ddpm", "upsample_steps": str(k)},
                upsample=True,
            )
            for k in budget.upsample_step_counts
        ]
        return arms
    if experiment == "finetune":
        return [
            Arm("finetune", name, runs=base_chain(kind, n), grid=True)
            for name, kind in (("fixed-decoder", "fixed"), ("one-stage", "one-stage"), ("two-stage", "two-stage"))
        ]
    if experiment == "pretraining":
        return [
            Arm("pretraining", f"{task}-{name}", task=task, runs=base_chain(kind, n), grid=True)
            for task in TASKS
            for name, kind in (("pretrained", "two-stage"), ("scratch", "scratch"))
        ]
    if experiment == "upsampler":
        return [
            Arm(
                "upsampler",
                name,
                runs=(Run("upsampler", budget.upsampler_steps, "glide-upsample", ov),),
                upsample=True,
                upsampler_arm=True,
                grid=True,
            )
            for name, ov in UPSAMPLER_ARMS.items()
        ]
    if experiment == "floor":  # FID-T between two disjoint sets of real scenes: the value of a perfect model
        return [Arm("floor", "real-64", kind="floor"), Arm("floor", "real-128", kind="floor", upsample=True)]
    raise ConfigError(f"unknown experiment {experiment!r}; expected one of {', '.join(EXPERIMENTS)}")


def all_arms(experiments, budget: Budget) -> list[Arm]:
    return [arm for e in experiments for arm in experiment_arms(e, budget)]


def lane_arms(arms: list[Arm], lane: int, lanes: int, budget: Budget) -> list[Arm]:
    """The arms of ``lane`` out of ``lanes``: arms that share a training run stay together (one lane trains it),
    groups are dealt round-robin in the given order."""
    if not 0 <= lane < lanes:
        raise ConfigError(f"--lane must be in 0..{lanes - 1}, got {lane}")
    groups: dict[str, list[Arm]] = {}
    for arm in arms:
        keys = run_keys(arm, budget)
        groups.setdefault(keys[0] if keys else arm.key, []).append(arm)
    return [arm for i, group in enumerate(groups.values()) if i % lanes == lane for arm in group]


def run_keys(arm: Arm, budget: Budget) -> list[str]:
    """The run-folder names of ``arm``'s training chain (each key covers the runs before it)."""
    keys, previous = [], ""
    batch = budget.upsampler_batch_size if arm.upsampler_arm else budget.batch_size
    for run in arm.runs:
        r = replace(run, init=previous) if run.init == "previous" else run
        previous = r.key(arm.task, batch, budget.train_seed)
        keys.append(previous)
    return keys


# ---------------------------------------------------------------------------------------------- training


def pretrained_file(kind: str) -> Path:
    """The toy GLIDE pretraining file (``kind`` "base" or "upsample"): runs/reproduce-toy/init/, extracted from
    git history (commit PRETRAIN_COMMIT) the first time."""
    path = RUNS_DIR / "init" / Path(PRETRAIN_FILES[kind]).name
    if path.is_file():
        return path
    try:
        blob = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{PRETRAIN_COMMIT}:{PRETRAIN_FILES[kind]}"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        raise MissingWeightsError(
            f"the toy GLIDE pretraining file is missing: put {PRETRAIN_FILES[kind]} of "
            f"commit {PRETRAIN_COMMIT} at {path} (git show {PRETRAIN_COMMIT}:"
            f"{PRETRAIN_FILES[kind]} > {path}), or train it with `piti train --config "
            "configs/toy.yaml --stage pretrain`"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def _run_config(run: Run, arm: Arm, init, out_dir: Path, budget: Budget, precision: str, device: str):
    from piti.train.config import load_recipe

    overrides = {
        "task": arm.task,
        "iterations": run.steps,
        "out_dir": str(out_dir),
        "precision": precision,
        "device": device,
        "num_workers": 0,
        "sample_interval": 0,
        "seed": budget.train_seed,
        "batch_size": budget.upsampler_batch_size if arm.upsampler_arm else budget.batch_size,
        "save_interval": max(1, min(50, run.steps)),
        "log_interval": max(1, min(10, run.steps)),
        "keep_checkpoints": 1,
        "warmup_steps": min(100, run.steps // 4),
    }
    if arm.upsampler_arm:
        overrides["adv_start"] = min(50, run.steps // 4)
        overrides["perceptual_start"] = min(50, run.steps // 4)
    if init is None:
        overrides.update(init=None, from_scratch=True)
    else:
        overrides["init"] = str(init)
    overrides.update(dict(run.overrides))
    if dict(run.overrides).get("perceptual_weight", 0) > 0:
        from piti.weights import find_weights

        # The official perceptual net is ImageNet VGG19; without its file, a VGG19 of fixed random weights stands
        # in (random conv features still measure local structure). Never the segmenter that judges the models.
        try:
            find_weights("vgg19")
        except MissingWeightsError:
            overrides["allow_random_perceptual"] = True
    return load_recipe(RECIPE, run.section, overrides)


def train_arm(
    arm: Arm, budget: Budget, precision: str, device: str, deadline: float | None, log=print, runs_dir: Path = RUNS_DIR
):
    """Train ``arm``'s chain in ``runs_dir``/train (resuming unfinished runs); returns (model file, seconds) or
    None when the deadline (a ``time.time()``) stopped it first."""
    from piti.precision import auto_precision, resolve_device
    from piti.train.loop import Trainer, find_state

    precision = auto_precision(resolve_device(device)) if precision == "auto" else precision
    init_file, total, keys = None, 0.0, run_keys(arm, budget)
    for run, key in zip(arm.runs, keys):
        out_dir = runs_dir / "train" / key
        done = out_dir / "reproduce_done.json"
        if done.is_file():
            info = json.loads(done.read_text())
            init_file, total = Path(info["model"]), total + info["seconds"]
            continue
        if run.init in ("glide-base", "glide-upsample"):
            init = pretrained_file(run.init.removeprefix("glide-"))
        else:
            init = None if run.init == "scratch" else init_file
        config = _run_config(run, arm, init, out_dir, budget, precision, device)
        minutes = None if deadline is None else (deadline - time.time()) / 60
        if minutes is not None and minutes < 0.5:
            return None
        config.time_limit = minutes or 0.0
        try:
            resume = str(find_state(out_dir))
        except Exception:  # no checkpoint yet: a fresh run
            resume = None
        lock = _lock(out_dir)
        if lock is None:
            log(f"  {key} is being trained by another process; this arm is left for later")
            return None
        log(f"  training {key} ({run.section}, {run.steps} steps, {precision}{', resumed' if resume else ''})")
        spent = _seconds_so_far(out_dir)
        start = time.perf_counter()
        try:
            trainer = Trainer(config, resume)
            model = trainer.train()
        finally:
            lock.unlink(missing_ok=True)
        spent += time.perf_counter() - start
        (out_dir / "reproduce_seconds.json").write_text(json.dumps({"seconds": spent}))
        if trainer.step < run.steps:
            return None
        done.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "seconds": spent,
                    "steps": trainer.step,
                    "precision": precision,
                    "config": config.to_dict(),
                },
                indent=1,
            )
        )
        init_file, total = model, total + spent
    return init_file, total


def _lock(out_dir: Path) -> Path | None:
    """Take ``out_dir``'s training lock (a file holding the process id); None while a live process holds it."""
    import os

    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / "reproduce.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return None  # its owner is alive
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # a stale lock of a process that died
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    return None


def _seconds_so_far(out_dir: Path) -> float:
    f = out_dir / "reproduce_seconds.json"
    return json.loads(f.read_text())["seconds"] if f.is_file() else 0.0


def step_seconds(
    section: str, precision: str, steps: int = 4, task: str = "mask", batch_size: int = 8, device: str = "cpu"
) -> float:
    """Mean wall seconds of one training step of ``section`` (after one warm-up step), at ``batch_size``, started
    from the toy GLIDE: what the step budgets of the full mode are sized from."""
    import tempfile

    from piti.train.config import load_recipe
    from piti.train.loop import Trainer

    init = pretrained_file("upsample" if section == "upsampler" else "base")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_recipe(
            RECIPE,
            section,
            {
                "task": task,
                "init": str(init),
                "out_dir": tmp,
                "precision": precision,
                "device": device,
                "batch_size": batch_size,
                "num_workers": 0,
                "iterations": steps + 1,
                "sample_interval": 0,
            },
        )
        trainer = Trainer(config)
        data = trainer.data_iterator()
        trainer.train_step(next(data))
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(data))
        return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------------------------------------- judging


def sharpness(images: np.ndarray) -> float:
    """Mean variance of the Laplacian of the grey images (uint8 (N, H, W, 3)): higher is sharper."""
    from scipy import ndimage

    grey = images.astype(np.float64).mean(-1)
    return float(np.mean([ndimage.laplace(g).var() for g in grey]))


def sketch_targets(cond, size: int) -> np.ndarray:
    """The input sketches' edge pixels (N, size, size) bool from their distance-transform encoding (edges are
    the pixels at distance 0, i.e. -1), reduced to ``size`` by "any edge in the block"."""
    edges = (cond[:, 0] <= -1 + 1e-3).numpy()
    n, s = edges.shape[0], edges.shape[-1]
    if s % size:
        raise ConfigError(f"the sketch size {s} is not a multiple of the image size {size}")
    f = s // size
    return edges.reshape(n, size, f, size, f).any(axis=(2, 4))


def depth_judge():
    """The shipped toy depth estimator, or None when its file is absent (depth is then judged by FID-T only)."""
    from piti.evaluation.depth_estimator import load_depth_estimator

    try:
        return load_depth_estimator()
    except MissingWeightsError:
        return None


def judge_arm(task: str, data: dict, segmenter, upsample: bool) -> dict:
    """FID-T and the task's controllability (mask mIoU, sketch edge F1, depth RMSE) of the sampled images."""
    from piti.evaluation.alignment import canny_edges, judge, judge_depth, judge_sketch

    gen, real = data["generated"], data["real"]
    out = judge(segmenter, gen, real, data["labels"])
    out.pop("iou_per_class")
    out["sharpness_generated"], out["sharpness_real"] = sharpness(gen), sharpness(real)
    out["sharpness_ratio"] = out["sharpness_generated"] / out["sharpness_real"]
    out["controllability"] = out["miou_ratio"] if task == "mask" else None
    out["controllability_metric"] = "mIoU ratio" if task == "mask" else None
    if task == "sketch":
        s = judge_sketch(canny_edges(gen), canny_edges(real), sketch_targets(data["cond"], gen.shape[1]))
        out.update(s, controllability=s["edge_f1_ratio"], controllability_metric="edge F1 ratio (Canny)")
    if task == "depth":
        estimator = depth_judge()
        if estimator is not None and "depth" in data:
            d = judge_depth(estimator, gen, real, data["depth"])
            out.update(d, controllability=d["rmse_ratio"], controllability_metric="depth RMSE ratio (real/gen)")
        else:
            out["controllability_metric"] = "pending: no toy depth estimator file (checkpoints/toy/)"
    return out


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Context:
    """What every arm of one invocation shares."""

    budget: Budget
    out: Path
    precision: str = "auto"  # sampling precision
    train_precision: str = "auto"  # training precision (auto: bf16 where the CPU computes it natively)
    device: str = "cpu"
    seed: int = 0  # scenes seed*scenes.. sampled with seeds seed*1000 + i; files ARM@seedS.json
    runs_dir: Path = RUNS_DIR  # training run folders go in runs_dir/train
    deadline: float | None = None  # time.time() after which nothing new starts and training stops
    command: str = ""
    log: object = print
    _segmenter: object = None

    @property
    def segmenter(self):
        if self._segmenter is None:
            from piti.evaluation.segmenter import load_segmenter

            self._segmenter = load_segmenter()
        return self._segmenter


def result_path(out: Path, arm: Arm, seed: int = 0, train_seed: int = 0) -> Path:
    """``out``/arms/EXPERIMENT/ARM[@seedS][@trainT].json."""
    tags = (f"@seed{seed}" if seed else "") + (f"@train{train_seed}" if train_seed else "")
    return out / "arms" / arm.experiment / f"{arm.name}{tags}.json"


def is_done(out: Path, arm: Arm, budget: Budget, seed: int = 0) -> bool:
    """Whether ``arm``'s result exists in ``out``; raises ConfigError when it came from other training runs
    (another step budget), so that a folder of short-budget results is never taken for this budget's."""
    path = result_path(out, arm, seed, budget.train_seed)
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text()).get("run_folders")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); delete it to run the arm again") from None
    expected = run_keys(arm, budget)
    if recorded is not None and recorded != expected:
        raise ConfigError(
            f"{path} came from the training runs {recorded}, not this budget's {expected}: "
            "give this budget its own --out folder"
        )
    return True


def scene_range(ctx: Context) -> tuple[int, int]:
    """(first held-out scene, first sampling seed) of ``ctx.seed``: seed 0 is scenes 0.. with seeds 0..; seed S
    takes the next disjoint block of scenes and seeds S*1000 + i."""
    return ctx.seed * ctx.budget.scenes, ctx.seed * 1000


def recipe_settings(budget: Budget, overrides: dict) -> dict:
    """The toy recipe's sampling settings, the budget's base steps, then ``overrides``."""
    from piti.settings import TOY_RECIPE

    s = TOY_RECIPE.to_dict()
    if budget.eval_steps:
        s["steps"] = budget.eval_steps
    s.update(overrides)
    return s


def _pipeline(arm: Arm, ctx: Context, trained: Path | None):
    from piti.pipeline import PITIPipeline, toy_checkpoint_paths

    base, up = toy_checkpoint_paths(arm.task)
    if trained is not None:
        base, up = (base, trained) if arm.upsampler_arm else (trained, up)
    return PITIPipeline.from_checkpoints(
        base, up if arm.upsample else None, task=arm.task, device=ctx.device, precision=ctx.precision
    )


def evaluate_arm(arm: Arm, ctx: Context, trained: Path | None) -> dict:
    """Sample and judge ``arm`` (or trace its guidance statistics); the JSON-ready result."""
    from piti.evaluation.alignment import sample_heldout

    if arm.kind == "floor":
        return floor_arm(arm, ctx)
    pipe = _pipeline(arm, ctx, trained)
    settings = recipe_settings(ctx.budget, arm.settings)
    if arm.kind == "trace":
        return trace_arm(arm, pipe, ctx, settings)
    start, seed = scene_range(ctx)
    data = sample_heldout(
        pipe,
        arm.task,
        ctx.budget.scenes,
        start=start,
        seed=seed,
        upsample=arm.upsample,
        settings=settings,
        depth=arm.task == "depth",
    )
    result = judge_arm(arm.task, data, ctx.segmenter, arm.upsample)
    result.update(
        seconds_per_image=float(np.mean(data["seconds"])),
        base_seconds_per_image=float(np.mean([t["base_s"] for t in data["timings"]])),
        settings={k: v for k, v in data["settings"].items() if k != "timings"},
    )
    if arm.grid:
        from piti.evaluation.images import condition_picture, save_grid

        rows = min(GRID_ROWS, ctx.budget.scenes)
        name = result_path(ctx.out, arm, ctx.seed, ctx.budget.train_seed).with_suffix(".png").name
        grid = ctx.out / "grids" / arm.experiment / name
        grid.parent.mkdir(parents=True, exist_ok=True)
        conds = np.stack([condition_picture(arm.task, c) for c in data["cond"][:rows]])
        save_grid(grid, {"condition": conds, "generated": data["generated"][:rows], "real": data["real"][:rows]}, rows)
        result["grid"] = str(grid.relative_to(ctx.out))
    return result


def floor_arm(arm: Arm, ctx: Context) -> dict:
    """FID-T of the real images of the arm's held-out scenes against the next ``scenes`` real scenes."""
    from piti.evaluation.fid import fid_t
    from piti.evaluation.scenes import heldout_examples

    n, (start, _) = ctx.budget.scenes, scene_range(ctx)
    size = 128 if arm.upsample else 64
    real = heldout_examples(arm.task, 2 * n, start, size, 128)["real"]
    return {
        "fid_t": fid_t(real[:n], real[n:], ctx.segmenter),
        "size": size,
        "against": f"held-out scenes {start + n}..{start + 2 * n - 1}",
    }


def trace_arm(arm: Arm, pipe, ctx: Context, settings: dict) -> dict:
    """Mean and std of the conditional, null, plain-guided and normalized-guided epsilon at every step, averaged
    over ``trace_scenes`` held-out scenes, sampling guided by the arm's mode."""
    from piti.evaluation.scenes import heldout_examples
    from piti.plotting import guidance_trace

    cfg = pipe.base_model.config
    start, seed = scene_range(ctx)
    data = heldout_examples(arm.task, ctx.budget.trace_scenes, start, cfg.image_size, cfg.cond_size)
    traces = [
        guidance_trace(
            pipe,
            cond,
            guidance=settings["guidance"],
            guidance_mode=settings["guidance_mode"],
            guidance_sigma=settings["guidance_sigma"],
            steps=settings["steps"],
            sampler=settings["sampler"],
            seed=seed + i,
            noise_scale=settings["noise_scale"],
        )[1]
        for i, cond in enumerate(data["cond"])
    ]
    mean = {k: np.mean([t[k] for t in traces], axis=0).tolist() for k in traces[0]}
    return {"trace": mean, "scenes": len(traces), "settings": settings}


def eval_key(arm: Arm, ctx: Context) -> str:
    """What defines an arm's evaluation: two arms with the same key (e.g. the two-stage mask model of the finetune
    and pretraining experiments) have the same result."""
    spec = [
        arm.task,
        run_keys(arm, ctx.budget),
        sorted(recipe_settings(ctx.budget, arm.settings).items()),
        arm.kind,
        arm.upsample,
        arm.upsampler_arm,
        ctx.seed,
        ctx.budget.scenes,
        ctx.budget.trace_scenes,
        ctx.precision,
    ]
    return hashlib.sha1(json.dumps(spec, default=str).encode()).hexdigest()[:12]


def _twin(ctx: Context, key: str) -> dict | None:
    for f in sorted((ctx.out / "arms").glob("*/*.json")):
        r = json.loads(f.read_text())
        if r.get("eval_key") == key:
            return r
    return None


def run_arm(arm: Arm, ctx: Context) -> dict | None:
    """Train and evaluate one arm and write its JSON (an arm whose evaluation another arm already made takes its
    result); None when the deadline came first."""
    path = result_path(ctx.out, arm, ctx.seed, ctx.budget.train_seed)
    key = eval_key(arm, ctx)
    twin = _twin(ctx, key)
    if twin is not None:
        result = dict(twin, experiment=arm.experiment, arm=arm.name, same_as=f"{twin['experiment']}/{twin['arm']}")
        _write_json(path, result)
        return result
    trained, train_seconds = None, 0.0
    if arm.runs:
        got = train_arm(arm, ctx.budget, ctx.train_precision, ctx.device, ctx.deadline, ctx.log, ctx.runs_dir)
        if got is None:
            return None
        trained, train_seconds = got
    if ctx.deadline is not None and time.time() > ctx.deadline:
        return None
    start = time.perf_counter()
    result = evaluate_arm(arm, ctx, trained)
    first, seed = scene_range(ctx)
    result.update(
        experiment=arm.experiment,
        arm=arm.name,
        task=arm.task,
        scenes=ctx.budget.scenes,
        seed=ctx.seed,
        heldout=f"(HELDOUT_STREAM, i), i = {first}..{first + ctx.budget.scenes - 1}",
        sampling_seeds=f"{seed} + (i - {first})",
        upsample=arm.upsample,
        runs=[
            {"section": r.section, "steps": r.steps, "init": r.init, "overrides": dict(r.overrides)} for r in arm.runs
        ],
        run_folders=run_keys(arm, ctx.budget),
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - start,
        command=ctx.command,
        eval_key=key,
    )
    _write_json(path, result)
    return result


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def run(arms: list[Arm], ctx: Context) -> dict:
    """Run every arm not done yet, in order; returns {"done": [...], "skipped": [...], "stopped": [...]}."""
    status = {"done": [], "skipped": [], "stopped": []}
    for arm in arms:
        if is_done(ctx.out, arm, ctx.budget, ctx.seed):
            status["skipped"].append(arm.key)
            continue
        if ctx.deadline is not None and time.time() > ctx.deadline:
            status["stopped"].append(arm.key)
            continue
        ctx.log(f"{arm.key} ...")
        start = time.perf_counter()
        result = run_arm(arm, ctx)
        (status["done"] if result is not None else status["stopped"]).append(arm.key)
        ctx.log(
            f"{arm.key}: {'done' if result is not None else 'stopped by the time limit'} "
            f"({time.perf_counter() - start:.0f} s){_brief(result)}"
        )
    return status


def _brief(result: dict | None) -> str:
    if not result or "fid_t" not in result:
        return ""
    c = result.get("controllability")
    return f"; FID-T {result['fid_t']:.3f}" + (f", {result['controllability_metric']} {c:.3f}" if c is not None else "")


# ---------------------------------------------------------------------------------------------- tables


def load_results(out: Path, seeds: bool = False) -> dict:
    """{experiment: {arm: result}} of the seed-0 arm JSON files under ``out``; with ``seeds``, of every seed's
    files, keyed ``(arm, seed)``."""
    results: dict = {}
    for f in sorted((out / "arms").glob("*/*.json")):
        name, *tags = f.stem.split("@")
        if seeds or not tags:
            key = (name, "@".join(tags) or "seed0") if seeds else name
            results.setdefault(f.parent.name, {})[key] = json.loads(f.read_text())
    return results


def compute_rows(out: Path) -> list[list]:
    """Per experiment (and in all): arm files, training and evaluation seconds; an arm that took another arm's
    result (``same_as``) counts nothing, a training run shared by two arms counts once."""
    rows, seen, total = [], set(), [0, 0.0, 0.0]
    for experiment, rs in load_results(out, seeds=True).items():
        train = evaluate = 0.0
        for r in rs.values():
            if r.get("same_as"):
                continue
            evaluate += r.get("eval_seconds", 0.0)
            folders = tuple(r.get("run_folders", ()))
            if folders and folders not in seen:
                seen.add(folders)
                train += r.get("train_seconds", 0.0)
        rows.append([experiment, len(rs), train, evaluate, (train + evaluate) / 3600])
        total = [total[0] + len(rs), total[1] + train, total[2] + evaluate]
    if rows:
        rows.append(["all", total[0], total[1], total[2], (total[1] + total[2]) / 3600])
    return rows


def spread_rows(out: Path) -> list[list]:
    """Arms repeated on other scenes and sampling seeds (``@seedS``) or with another training seed (``@trainT``):
    FID-T and controllability of the first run and of the repeat, and their differences."""
    rows = []
    for experiment, rs in load_results(out, seeds=True).items():
        for (name, tag), r in sorted(rs.items()):
            first = rs.get((name, "seed0"))
            if tag == "seed0" or first is None or "fid_t" not in r:
                continue
            c0, c1 = first.get("controllability"), r.get("controllability")
            rows.append(
                [
                    f"{experiment}/{name}",
                    tag,
                    first["fid_t"],
                    r["fid_t"],
                    r["fid_t"] - first["fid_t"],
                    c0,
                    c1,
                    c1 - c0 if c0 is not None and c1 is not None else None,
                ]
            )
    return rows


def _fmt(v, digits=3) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def table_rows(experiment: str, results: dict) -> tuple[list[str], list[list]]:
    """Header and rows of one experiment's table (values, not strings)."""
    rows = []
    paper = paper_numbers().get(experiment, {}).get("fid", {})
    if experiment == "guidance":
        header = ["mode", "w", "FID-T", "mIoU gen", "mIoU ratio", "s/image"]
        for r in results.values():
            if "fid_t" in r:
                rows.append(
                    [
                        r["settings"]["guidance_mode"] if r["settings"]["guidance"] else "none",
                        r["settings"]["guidance"],
                        r["fid_t"],
                        r["miou_generated"],
                        r["miou_ratio"],
                        r["seconds_per_image"],
                    ]
                )
        rows.sort(key=lambda x: (x[0], x[1]))
    elif experiment == "floor":
        header = ["real set", "against", "size", "FID-T"]
        rows = [
            [f"held-out scenes 0..{r['scenes'] - 1}", r["against"], r["size"], r["fid_t"]] for r in results.values()
        ]
    elif experiment == "steps":
        header = ["sampler", "steps", "upsampler steps", "size", "FID-T", "mIoU ratio", "s/image"]
        for r in results.values():
            s = r["settings"]
            rows.append(
                [
                    s["sampler"],
                    int(s["steps"]),
                    int(s["upsample_steps"]) if r["upsample"] else None,
                    r["size"],
                    r["fid_t"],
                    r["miou_ratio"],
                    r["seconds_per_image"],
                ]
            )
        rows.sort(key=lambda x: (x[2] is not None, x[0], x[1], x[2] or 0))
    else:
        header = [
            "arm",
            "task",
            "paper FID",
            "FID-T",
            "controllability",
            "metric",
            "mIoU ratio",
            "sharpness ratio",
            "train steps",
            "train s",
            "eval s",
        ]
        order = [a.name for a in experiment_arms(experiment, BUDGETS["full"])]
        for name in sorted(results, key=lambda n: order.index(n) if n in order else len(order)):
            r = results[name]
            rows.append(
                [
                    name,
                    r["task"],
                    f"{paper[name]:.1f}" if name in paper else None,
                    r["fid_t"],
                    r.get("controllability"),
                    r.get("controllability_metric"),
                    r.get("miou_ratio"),
                    r.get("sharpness_ratio"),
                    sum(x["steps"] for x in r["runs"]),
                    r["train_seconds"],
                    r["eval_seconds"],
                ]
            )
    return header, rows


def markdown_table(header, rows) -> str:
    def cell(v):
        if isinstance(v, float):
            return _fmt(v, 2 if abs(v) >= 100 else 3)
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eps_table(results: dict) -> str:
    """The guidance traces in numbers: std of each guided epsilon over the conditional one's, mean and max over
    the steps, and the largest shift of its mean (per-sample statistics averaged over the scenes)."""
    rows = []
    for name, r in sorted(results.items()):
        if "trace" not in r:
            continue
        t = r["trace"]
        for series in ("plain", "normalized", "normalized_analytic", "uncond"):
            if f"{series}_std" in t:
                ratio = np.array(t[f"{series}_std"]) / np.array(t["cond_std"])
                shift = np.abs(np.array(t[f"{series}_mean"]) - np.array(t["cond_mean"])).max()
                rows.append([name.removeprefix("trace-"), series, ratio.mean(), ratio.max(), float(shift)])
    if not rows:
        return ""
    return (
        "\nEpsilon statistics along the sampling (traces; the run is guided by the mode in its name, the other "
        "epsilons are computed alongside from the same eps_c and eps_u):\n\n"
        + markdown_table(["trace", "epsilon", "std / std(eps_c), mean", "max", "max |mean - mean(eps_c)|"], rows)
        + "\n"
    )


def fewest_steps(results: dict, tolerance: float = 0.02) -> dict:
    """Per base sampler: the fewest steps whose FID-T is within ``tolerance`` of the sampler's best and whose
    mIoU ratio is within ``tolerance`` of its best."""
    out = {}
    for sampler in ("ddpm", "ddim", "dpmpp"):
        rs = [r for r in results.values() if not r["upsample"] and r["settings"]["sampler"] == sampler]
        if not rs:
            continue
        best_fid, best_ctl = min(r["fid_t"] for r in rs), max(r["miou_ratio"] for r in rs)
        ok = [
            int(r["settings"]["steps"])
            for r in rs
            if r["fid_t"] <= best_fid * (1 + tolerance) and r["miou_ratio"] >= best_ctl * (1 - tolerance)
        ]
        fid_only = [int(r["settings"]["steps"]) for r in rs if r["fid_t"] <= best_fid * (1 + tolerance)]
        out[sampler] = {
            "best_fid_t": best_fid,
            "best_miou_ratio": best_ctl,
            "fewest_steps_fid_t": min(fid_only),
            "fewest_steps_both": min(ok) if ok else None,
        }
    return out


def summarize(out: Path, arms: list[Arm] | None = None) -> dict:
    """Write ``out``/<experiment>.csv and .md, ``out``/summary.md, the plots, and return what was found
    (``pending``: the arms of ``arms`` without a result)."""
    import csv

    results = load_results(out)
    parts = []
    for experiment in EXPERIMENTS:
        rs = results.get(experiment)
        if not rs:
            continue
        header, rows = table_rows(experiment, rs)
        with open(out / f"{experiment}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header] + rows)
        text = f"## {experiment}\n\n"
        paper = paper_numbers()
        if experiment in paper:
            text += (
                f"Paper: {paper[experiment]['source']}. Ours: FID-T (toy segmenter features), not comparable "
                "in value with the paper's FID; compare the order of the arms.\n\n"
            )
        text += markdown_table(header, rows) + "\n"
        if experiment == "steps":
            best = fewest_steps(rs)
            (out / "steps_fewest.json").write_text(json.dumps(best, indent=1) + "\n")
            text += "\nFewest base steps within 2% of the sampler's best (FID-T, and FID-T and mIoU ratio):\n\n"
            text += (
                markdown_table(
                    ["sampler", "best FID-T", "fewest steps (FID-T)", "best mIoU ratio", "fewest steps (both)"],
                    [
                        [s, b["best_fid_t"], b["fewest_steps_fid_t"], b["best_miou_ratio"], b["fewest_steps_both"]]
                        for s, b in best.items()
                    ],
                )
                + "\n"
            )
        if experiment == "guidance":
            text += eps_table(rs)
        (out / f"{experiment}.md").write_text(text)
        parts.append(text)
    compute = compute_rows(out)
    if compute:
        text = (
            "## compute: wall seconds of the runs in this folder, one thread each (training counted once per run "
            "folder)\n\n"
            + markdown_table(["experiment", "arms", "training s", "evaluation s", "hours"], compute)
            + "\n"
        )
        (out / "compute.md").write_text(text)
        parts.append(text)
    spread = spread_rows(out)
    if spread:
        header = [
            "arm",
            "repeat",
            "FID-T",
            "FID-T repeat",
            "difference",
            "controllability",
            "controllability repeat",
            "difference",
        ]
        text = (
            "## spread: the same arms on other scenes and sampling seeds (seedS), or trained with another seed "
            "(trainT)\n\n" + markdown_table(header, spread) + "\n"
        )
        (out / "spread.md").write_text(text)
        parts.append(text)
    pending = [a.key for a in arms or [] if not result_path(out, a).is_file()]
    if pending:
        parts.append("## pending\n\n" + "\n".join(f"- {k}" for k in pending) + "\n")
    (out / "summary.md").write_text("# Toy-scale reproduction: tables\n\n" + "\n".join(parts))
    plot_all(out, results)
    for experiment in ("finetune", "pretraining", "upsampler"):
        for task in TASKS:
            rs = results.get(experiment, {})
            names = [
                a.name
                for a in experiment_arms(experiment, BUDGETS["full"])
                if a.task == task and rs.get(a.name, {}).get("grid")
            ]
            if len(names) > 1:
                comparison_grid(out, [rs[n] for n in names], out / "grids" / f"{experiment}-{task}.png")
    return {"results": results, "pending": pending}


def _grid_tiles(path: Path, column: int) -> np.ndarray:
    """The pictures of one column of a grid written by :func:`piti.evaluation.images.save_grid` (3 columns,
    2-px padding, 14-px header): uint8 (rows, S, S, 3)."""
    from PIL import Image

    grid = np.asarray(Image.open(path).convert("RGB"))
    size, pad, head = (grid.shape[1] - 2) // 3 - 2, 2, 14
    rows = (grid.shape[0] - head - pad) // (size + pad)
    x = pad + column * (size + pad)
    return np.stack([grid[head + pad + i * (size + pad) :][:size, x : x + size] for i in range(rows)])


def comparison_grid(out: Path, results: list[dict], path: Path) -> None:
    """One grid of several arms' samples of the same scenes: condition, each arm's generated images, real."""
    from piti.evaluation.images import save_grid

    first = out / results[0]["grid"]
    columns = {"condition": _grid_tiles(first, 0)}
    columns.update({r["arm"]: _grid_tiles(out / r["grid"], 1) for r in results})
    columns["real"] = _grid_tiles(first, 2)
    save_grid(path, columns, min(len(c) for c in columns.values()))


# ---------------------------------------------------------------------------------------------- plots


def plot_all(out: Path, results: dict) -> list[Path]:
    """The plots of whatever results exist; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    g = {k: v for k, v in results.get("guidance", {}).items() if "fid_t" in v}
    if g:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        zero = [r for r in g.values() if r["settings"]["guidance"] == 0]
        for mode, style in (("plain", "C3o-"), ("normalized", "C0s-")):
            pts = sorted(
                [
                    (r["settings"]["guidance"], r["fid_t"], r["miou_ratio"])
                    for r in g.values()
                    if r["settings"]["guidance"] > 0 and r["settings"]["guidance_mode"] == mode
                ]
                + [(0.0, r["fid_t"], r["miou_ratio"]) for r in zero]
            )
            if pts:
                w, fid, ratio = zip(*pts)
                axes[0].plot(w, fid, style, label=mode)
                axes[1].plot(w, ratio, style, label=mode)
        for ax, name in zip(axes, ("FID-T (lower is better)", "mIoU ratio (generated / real)")):
            ax.set_xlabel("guidance w")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("guidance: plain vs normalized (toy mask model, 64 px)")
        fig.tight_layout()
        written.append(_save(fig, plots / "guidance_curves.png"))
    traces = {k: v for k, v in results.get("guidance", {}).items() if "trace" in v}
    if traces:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, (name, r) in enumerate(sorted(traces.items())):
            t = r["trace"]
            ratio = np.array(t["plain_std"] if "plain" in name else t["normalized_std"]) / np.array(t["cond_std"])
            axes[0].plot(t["t"], ratio, f"C{i}", label=name.removeprefix("trace-"))
            mean_gap = np.array(t["plain_mean"] if "plain" in name else t["normalized_mean"]) - np.array(t["cond_mean"])
            axes[1].plot(t["t"], mean_gap, f"C{i}", label=name.removeprefix("trace-"))
            if "normalized" in name and "normalized_analytic_std" in t:  # the paper's analytic sigma, same trajectory
                analytic = np.array(t["normalized_analytic_std"]) / np.array(t["cond_std"])
                axes[0].plot(t["t"], analytic, f"C{i}--", label=name.removeprefix("trace-") + " (analytic sigma)")
        axes[0].set_ylabel("std(guided eps) / std(conditional eps)")
        axes[1].set_ylabel("mean(guided eps) - mean(conditional eps)")
        for ax in axes:
            ax.set_xlabel("model timestep t (sampling runs right to left)")
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("guided epsilon against the conditional one, step by step (mean over scenes)")
        fig.tight_layout()
        written.append(_save(fig, plots / "guidance_eps_stats.png"))
    s = {k: v for k, v in results.get("steps", {}).items() if not v["upsample"]}
    if s:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for sampler, style in (("ddpm", "C3o-"), ("ddim", "C2^-"), ("dpmpp", "C0s-")):
            pts = sorted(
                (int(r["settings"]["steps"]), r["fid_t"], r["miou_ratio"], r["seconds_per_image"])
                for r in s.values()
                if r["settings"]["sampler"] == sampler
            )
            if pts:
                k, fid, ratio, sec = zip(*pts)
                for ax, y in zip(axes, (fid, ratio, sec)):
                    ax.plot(k, y, style, label=sampler)
        for ax, name in zip(axes, ("FID-T", "mIoU ratio", "seconds per image (64 px)")):
            ax.set_xlabel("base steps")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("samplers and steps (toy mask model, base 64 px, normalized guidance w=5)")
        fig.tight_layout()
        written.append(_save(fig, plots / "steps_curves.png"))
    training = [e for e in ("finetune", "pretraining", "upsampler") if e in results]
    if training:
        written.append(plot_training_arms(out, training, plots / "training_arms.png"))
    return written


def plot_training_arms(out: Path, experiments: list[str], path: Path) -> Path:
    """FID-T and controllability of every training arm, one marker per repeat (training seed, scene block), so
    a comparison's differences can be read against its spread."""
    import matplotlib.pyplot as plt

    seeded = load_results(out, seeds=True)
    markers = {"seed0": ("o", "training seed 0"), "train1": ("s", "training seed 1"), "seed1": ("^", "scenes 32..63")}
    fig, axes = plt.subplots(2, len(experiments), figsize=(4.4 * len(experiments), 6.2), squeeze=False)
    for col, experiment in enumerate(experiments):
        rs = seeded.get(experiment, {})
        present = {arm for arm, _ in rs}
        arms = [a.name for a in experiment_arms(experiment, BUDGETS["full"]) if a.name in present]  # the paper's order
        panels = (("fid_t", "FID-T (lower is better)", 1.0), ("controllability", "controllability", 0.1))
        for row, (key, name, min_span) in enumerate(panels):
            ax = axes[row][col]
            for tag, (marker, label) in markers.items():
                pts = [(i, rs[(arm, tag)][key]) for i, arm in enumerate(arms) if (arm, tag) in rs]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, marker, ls="none", ms=7, mfc="none" if tag != "seed0" else None, label=label)
            lo, hi = ax.get_ylim()  # at least about twice one arm's spread over scene blocks: small gaps look small
            if hi - lo < min_span:
                ax.set_ylim((lo + hi - min_span) / 2, (lo + hi + min_span) / 2)
            ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(experiment)
        axes[0][col].legend(fontsize=7)
    fig.suptitle("training comparisons: each arm's score per repeat (controllability: the task's own ratio to real)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
