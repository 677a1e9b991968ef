"""The consistency-feedback term and its reward models (piti/train/rewards.py), on tiny networks.

Off, the term is absent; on, its gradients reach the UNet and not the frozen reward model, which stays out
of the optimizer and the checkpoint; a wrong reward file fails before training; the targets read back from
the conditions equal what the datasets encoded; a tiny reward model learns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from piti.checkpoints import load_checkpoint
from piti.data.conditions import depth_to_condition, labels_to_colors, resize_sketch, sketch_to_distance, to_unit
from piti.diffusion.resample import UniformSampler
from piti.errors import CheckpointError, ConfigError, MissingWeightsError
from piti.train.loop import Trainer
from piti.train.rewards import (
    RewardConfig,
    RewardNet,
    condition_target,
    consistency_by_t,
    consistency_loss,
    load_reward_model,
    save_reward_model,
    train_reward_model,
)

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reward_file(tmp_path: Path, task: str = "depth") -> Path:
    torch.manual_seed(7)
    path = tmp_path / f"reward-{task}.safetensors"
    save_reward_model(path, RewardNet(RewardConfig(task=task, widths=(4, 8), groups=2)))
    return path


def _config(tmp_path, **changes):
    return tiny_config(tmp_path, "joint", model="toy-piti-base-depth", task="depth", uncond_p=0.0, **changes)


def _draw(trainer):
    batch = next(trainer.data_iterator())
    return trainer.stage.draw(batch, torch.Generator().manual_seed(0), np.random.default_rng(0), UniformSampler(1000))


def test_term_is_absent_when_off(tmp_path):
    trainer = Trainer(_config(tmp_path))
    assert trainer.stage.reward is None
    out = trainer.stage.loss(trainer.model, _draw(trainer), 0, trainer.autocast)
    assert "reward" not in out.metrics


def test_term_reaches_the_unet_not_the_reward_model(tmp_path):
    trainer = Trainer(_config(tmp_path, reward_model=str(_reward_file(tmp_path)), reward_weight=1.0, reward_max_t=1000))
    stage, reward = trainer.stage, trainer.stage.reward
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    assert not {id(p) for p in reward.parameters()} & {
        id(p) for g in trainer.optimizer.param_groups for p in g["params"]
    }

    drawn = _draw(trainer)
    x_t = stage.diffusion.q_sample(drawn["x_start"], drawn["t"], drawn["noise"])
    output = trainer.model(x_t, stage.diffusion.model_timesteps(drawn["t"]), **drawn["kwargs"])
    terms = stage.diffusion.training_losses(output, drawn["x_start"], x_t, drawn["t"], drawn["noise"])
    metrics = {}
    term = stage.reward_term(terms["x0_pred"], drawn, metrics)  # the term alone
    assert term.item() > 0 and metrics["reward"] == term.item()
    term.backward()
    decoder_grads = [p.grad for p in trainer.model.decoder.parameters() if p.grad is not None]
    assert decoder_grads and any(g.abs().sum() > 0 for g in decoder_grads)
    assert all(p.grad is None for p in reward.parameters())

    # Large t or the null condition: nothing to score.
    stage.config.reward_max_t = 200
    assert stage.reward_term(terms["x0_pred"], dict(drawn, t=torch.full_like(drawn["t"], 200)), {}).item() == 0
    null = dict(drawn, kwargs={"ref": torch.ones_like(drawn["kwargs"]["ref"])})
    assert stage.reward_term(terms["x0_pred"], null, {}).item() == 0


def test_training_logs_the_term_and_resumes_without_the_reward_model_in_the_checkpoint(tmp_path):
    path = _reward_file(tmp_path)
    config = _config(tmp_path, reward_model=str(path), reward_weight=1.0, reward_max_t=1000, iterations=2)
    before = {k: v.clone() for k, v in load_reward_model(path).state_dict().items()}
    trainer = Trainer(config)
    trainer.train()
    rows = (trainer.run_dir / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "reward" in header and all(math.isfinite(float(r.split(",")[header.index("reward")])) for r in rows[1:])
    state = torch.load(trainer.last_state, weights_only=True)
    assert not any("reward" in k for k in state["model"]) and state["stage"] == {}
    meta = load_checkpoint(trainer.run_dir / "model.safetensors").metadata
    assert meta["reward"] == {"model": str(path), "weight": 1.0}
    assert all(torch.equal(before[k], v) for k, v in trainer.stage.reward.state_dict().items())

    config.iterations = 4
    resumed = Trainer(config, resume=trainer.run_dir)
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 4


def test_a_wrong_reward_model_fails_before_training(tmp_path):
    with pytest.raises(MissingWeightsError, match="reward model not found"):
        Trainer(_config(tmp_path, reward_model=str(tmp_path / "missing.safetensors"), reward_weight=1.0))
    with pytest.raises(ConfigError, match="sketch reward model; this run's task is depth"):
        Trainer(_config(tmp_path, reward_model=str(_reward_file(tmp_path, "sketch")), reward_weight=1.0))
    from piti.evaluation.depth_estimator import DepthEstimator, DepthEstimatorConfig, save_depth_estimator

    judge = tmp_path / "judge.safetensors"
    save_depth_estimator(judge, DepthEstimator(DepthEstimatorConfig(widths=(4, 8), feature_dim=4)))
    with pytest.raises(CheckpointError, match="not a reward model.*judge"):
        Trainer(_config(tmp_path, reward_model=str(judge), reward_weight=1.0))
    with pytest.raises(ConfigError, match="reward_model and reward_weight"):
        _config(tmp_path, reward_model=str(_reward_file(tmp_path)))
    with pytest.raises(ConfigError, match="base PITI stages"):
        tiny_config(tmp_path, "upsampler", reward_model=str(_reward_file(tmp_path)), reward_weight=1.0)


def test_targets_read_back_from_the_conditions():
    rng = np.random.default_rng(0)
    # depth: norm * log(d_max + 1.01) is the log depth, up to the colour map's 256 bins (jet repeats one colour 4x)
    depth = np.exp(rng.uniform(np.log(1.0), np.log(80.0), (32, 32))).astype(np.float32)
    depth[:6] = 0  # sky
    cond = torch.from_numpy(depth_to_condition(depth))[None]
    target = condition_target("depth", cond, 32)
    assert torch.equal(target["valid"][0], torch.from_numpy(depth > 0))
    d_max = min(300.0, float(np.percentile(depth, 99)))
    valid = depth > 0
    log_depth = target["norm"][0].numpy() * np.log(d_max + 1.01)
    assert np.abs(log_depth[valid] - np.log(np.minimum(depth[valid], d_max))).max() < 2 * np.log(d_max + 1.01) / 256
    # the scale-fitting depth loss is 0 for a prediction proportional to it, and not for a shuffled one
    pred = (3.0 * target["norm"])[:, None]
    assert consistency_loss("depth", pred, target).item() < 1e-5
    assert consistency_loss("depth", pred.flip(-1), target).item() > 0.1
    # sketch: the distance encoding's lines, shrunk as resize_sketch
    sketch = np.where(rng.random((32, 32)) < 0.05, 255, 0).astype(np.uint8)
    cond = torch.from_numpy(sketch_to_distance(sketch))[None]
    assert torch.equal(condition_target("sketch", cond, 32)["edges"][0], torch.from_numpy(sketch > 127).float())
    half = torch.from_numpy(resize_sketch(sketch, (16, 16)) > 127).float()
    assert torch.equal(condition_target("sketch", cond, 16)["edges"][0], half)
    # mask: palette colours back to labels
    labels = rng.integers(0, 10, (32, 32)).astype(np.uint8)
    cond = torch.from_numpy(to_unit(labels_to_colors(labels, "synth")))[None]
    assert torch.equal(condition_target("mask", cond, 32)["labels"][0], torch.from_numpy(labels).long())


def test_consistency_by_t_scores_real_shuffled_and_one_step_predictions(tmp_path):
    trainer = Trainer(_config(tmp_path))
    reward = load_reward_model(_reward_file(tmp_path), task="depth")
    r = consistency_by_t(trainer.model.eval(), reward, trainer.stage.dataset, (10, 900), num=3)
    assert list(r["by_t"]) == [10, 900] and r["num"] == 3
    assert all(math.isfinite(v) and v > 0 for v in [r["real"], r["shuffled"], *r["by_t"].values()])


@pytest.mark.parametrize("task", ["sketch", "depth"])
def test_a_tiny_reward_model_learns(task):
    torch.manual_seed(0)
    model = RewardNet(RewardConfig(task=task, widths=(8, 16), groups=4))
    losses = train_reward_model(model, steps=30, batch_size=4, lr=1e-2, seed=5)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert not model.training


def test_reward_batches_and_training_at_the_upsampler_size():
    from piti.train.rewards import evaluate_reward_model, reward_batch

    x, target = reward_batch("mask", [(7, 0), (7, 1)], torch.Generator(), size=128)
    assert x.shape == (2, 3, 128, 128) and target["labels"].shape == (2, 128, 128)
    small, _ = reward_batch("mask", [(7, 0)], torch.Generator(), augment=False)
    assert small.shape[-1] == 64  # the base model's size by default
    model = RewardNet(RewardConfig(task="depth", widths=(4, 8), groups=2))
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    train_reward_model(model, steps=4, batch_size=1, seed=5, sizes=(64, 128))
    assert seen == [64, 128, 64, 128]  # alternated per step
    assert evaluate_reward_model(model, num=2, size=128)["size"] == 128


def test_score_cli_reads_a_reward_model_at_each_size(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reward_models", ROOT / "eval/train_reward_models.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    path = tmp_path / "m.safetensors"
    save_reward_model(path, RewardNet(RewardConfig(task="mask", widths=(4, 8), groups=2)))
    args = ["--task", "mask", "--score", "--sizes", "64,128", "--eval-num", "2", "--out", str(path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "(64 px): task mask, num 2, size 64" in out and "(128 px): task mask, num 2, size 128" in out
    with pytest.raises(SystemExit):
        cli.main(["--task", "mask", "--score", "--sizes", "64,90", "--out", str(path)])


@pytest.mark.parametrize("task", ["depth", "sketch", "mask"])
def test_shipped_reward_models_are_small_reward_files(task):
    path = ROOT / "checkpoints/toy/rewards" / f"{task}.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not trained yet")
    assert path.stat().st_size < 1_000_000
    model = load_reward_model(path, task=task)
    assert model.config.task == task and model.checkpoint_metadata["results"]["seed"] != 0  # the judges' seed is 0


# ---------------------------------------------------------------- class feedback (depth and sketch)


def test_class_term_scores_x0_pred_against_the_scene_labels(tmp_path):
    config = _config(
        tmp_path, class_reward_model=str(_reward_file(tmp_path, "mask")), class_reward_weight=1.0, iterations=2
    )
    trainer = Trainer(config)
    stage, reward = trainer.stage, trainer.stage.class_reward
    assert stage.reward is None and not any(p.requires_grad for p in reward.parameters())
    drawn = _draw(trainer)
    n, size = drawn["x_start"].shape[0], drawn["x_start"].shape[-1]
    assert drawn["labels"].shape == (n, size, size) and drawn["labels"].dtype == torch.int64

    x_t = stage.diffusion.q_sample(drawn["x_start"], drawn["t"], drawn["noise"])
    output = trainer.model(x_t, stage.diffusion.model_timesteps(drawn["t"]), **drawn["kwargs"])
    terms = stage.diffusion.training_losses(output, drawn["x_start"], x_t, drawn["t"], drawn["noise"])
    metrics = {}
    term = stage.class_term(terms["x0_pred"], drawn, metrics)
    expected = consistency_loss("mask", reward(terms["x0_pred"]), {"labels": drawn["labels"]}).mean()
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and metrics["class_reward"] == term.item()
    shuffled = dict(drawn, labels=(drawn["labels"] + 1) % reward.config.out_channels)
    assert stage.class_term(terms["x0_pred"], shuffled, {}).item() != pytest.approx(term.item())
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.decoder.parameters())
    assert all(p.grad is None for p in reward.parameters())

    # Above class_reward_max_t or with the null condition: nothing to score.
    stage.config.class_reward_max_t = 200
    assert stage.class_term(terms["x0_pred"], dict(drawn, t=torch.full_like(drawn["t"], 200)), {}).item() == 0
    null = dict(drawn, kwargs={"ref": torch.ones_like(drawn["kwargs"]["ref"])})
    assert stage.class_term(terms["x0_pred"], null, {}).item() == 0

    trainer.train()
    rows = (trainer.run_dir / "log.csv").read_text().splitlines()
    column = rows[0].split(",").index("class_reward")
    assert all(math.isfinite(float(r.split(",")[column])) for r in rows[1:])
    assert load_checkpoint(trainer.run_dir / "model.safetensors").metadata["class_reward"]["weight"] == 1.0


def test_a_wrong_class_reward_model_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="is a depth reward model; the class term reads classes"):
        Trainer(_config(tmp_path, class_reward_model=str(_reward_file(tmp_path)), class_reward_weight=1.0))
    with pytest.raises(ConfigError, match="class_reward_model and class_reward_weight"):
        _config(tmp_path, class_reward_model=str(_reward_file(tmp_path, "mask")))
    with pytest.raises(ConfigError, match="label maps"):
        _config(
            tmp_path,
            class_reward_model=str(_reward_file(tmp_path, "mask")),
            class_reward_weight=1.0,
            data={"kind": "folder", "root": str(tmp_path)},
        )
