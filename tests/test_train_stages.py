"""Training stages on tiny networks and the synthetic world (CPU, a few seconds each).

Each stage trains the right parameters (frozen ones stay bit-identical), the loss falls on a fixed
batch, a NaN stops the run cleanly, a broken file is named, recipes and overrides resolve.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from piti.checkpoints import load_checkpoint, save_checkpoint
from piti.diffusion.resample import LossSecondMomentSampler, UniformSampler
from piti.errors import CheckpointError, ConfigError, DatasetError, MissingWeightsError
from piti.presets import create_model, get_config
from piti.train.config import TrainConfig, apply_overrides, list_sections, load_recipe, parse_overrides
from piti.train.ema import EMA
from piti.train.loop import NonFiniteLossError, StepBatches, Trainer, learning_rate, list_states
from piti.train.stages import NamedItems, collate

from conftest import TINY_TEXT, TINY_UNET, tiny_config, tiny_model_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """One CPU thread (the shared CI machine) and no pretrained VGG weights anywhere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("PITI_WEIGHTS_DIR", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module) -> dict[str, bool]:
    return {k: not torch.equal(before[k], v) for k, v in module.state_dict().items()}


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _glide_init(tmp_path: Path) -> Path:
    """A tiny GLIDE base saved as a project file: the 'pretrained' decoder of the PITI stages."""
    torch.manual_seed(123)
    glide = create_model("toy-glide-base", **dict(TINY_UNET, **TINY_TEXT))
    with torch.no_grad():  # "trained": no zero-initialised layers left, so gradients reach the encoder
        for p in glide.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "glide.safetensors"
    save_checkpoint(path, glide, step=0, metadata={"stage": "pretrain"})
    return path


# --------------------------------------------------------------------------------------------------
# Stages


def test_pretrain_trains_every_parameter_and_records_its_tokenizer(tmp_path):
    trainer = Trainer(
        tiny_config(
            tmp_path, "pretrain", uncond_p=0.5, sample_interval=3, sample_count=2, sample_steps=2, sample_guidance=2.0
        )
    )
    before = _snapshot(trainer.model)
    model_file = trainer.train()
    # sample grid with guidance: a row of targets and a row of samples, 2 images of 16 px, 2 px padding
    assert _png_size(trainer.run_dir / "samples" / "step_00000003.png") == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    changed = _changed(before, trainer.model)
    assert all(changed.values()), [k for k, c in changed.items() if not c]

    ckpt = load_checkpoint(model_file)
    meta = ckpt.metadata
    assert meta["stage"] == "pretrain" and meta["step"] == 3 and meta["weights"] == "ema"
    assert meta["tokenizer"]["kind"] == "word" and "boat" in meta["tokenizer"]["words"]
    assert (Path(trainer.run_dir) / "tokenizer.json").is_file()
    # The file holds the EMA weights (rate 0.9), not the raw ones.
    raw = trainer.model.state_dict()
    assert any(not torch.equal(ckpt.state_dict[k], raw[k]) for k in raw)
    assert torch.equal(ckpt.state_dict["input_blocks.0.0.weight"], trainer.ema.state_dict()["input_blocks.0.0.weight"])


@pytest.mark.parametrize("stage", ["encoder", "encoder-dropout"])
def test_encoder_stages_train_the_encoder_against_a_frozen_decoder(tmp_path, stage):
    init = _glide_init(tmp_path)
    glide = load_checkpoint(init).state_dict
    trainer = Trainer(tiny_config(tmp_path, stage, init=str(init), uncond_p=0.2 if stage == "encoder-dropout" else 0.0))
    decoder, encoder = trainer.model.decoder, trainer.model.encoder
    # Frozen = no gradients, no optimizer state, no EMA copy.
    assert not any(p.requires_grad for p in decoder.parameters())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in encoder.parameters()}
    assert all(k.startswith("encoder.") for k in trainer.ema.shadow)
    enc_before = _snapshot(encoder)

    model_file = trainer.train()
    # The decoder is GLIDE's, bit for bit, in the model and in the exported file.
    for k, v in decoder.state_dict().items():
        assert torch.equal(v, glide[k]), k
        assert torch.equal(load_checkpoint(model_file).state_dict["decoder." + k], glide[k]), k
    assert all(p.grad is None and p not in trainer.optimizer.state for p in decoder.parameters())
    assert all(_changed(enc_before, encoder).values())


def test_condition_dropout_uses_the_null_condition(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "joint"))
    stage = trainer.stage
    batch = {"image": torch.zeros(64, 3, 16, 16), "cond": torch.rand(64, 3, 16, 16) * 2 - 1}
    gen = torch.Generator().manual_seed(0)
    _, kept = stage.inputs(batch, gen, None, uncond_p=0.0)
    _, dropped = stage.inputs(batch, gen, None, uncond_p=1.0)
    assert torch.equal(kept["ref"], batch["cond"])
    assert torch.equal(dropped["ref"], torch.ones_like(batch["cond"]))
    _, some = stage.inputs(batch, gen, None, uncond_p=0.2)
    null_rows = (some["ref"] == 1).flatten(1).all(1)
    assert 2 <= int(null_rows.sum()) <= 30  # ~13 of 64 expected
    assert torch.equal(some["ref"][~null_rows], batch["cond"][~null_rows])


def test_joint_from_scratch_trains_encoder_and_decoder(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "joint", uncond_p=0.2))
    before = _snapshot(trainer.model)
    trainer.train()
    changed = _changed(before, trainer.model)
    assert all(changed.values()), [k for k, c in changed.items() if not c]
    assert load_checkpoint(trainer.run_dir / "model.safetensors").metadata["stage"] == "joint"


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_resolves_per_machine_and_is_kept_for_resume(tmp_path, monkeypatch, native):
    from piti.train import loop

    monkeypatch.setattr(loop, "auto_precision", lambda device: "bf16" if native else "fp32")
    trainer = Trainer(tiny_config(tmp_path, "joint", precision="auto", iterations=1))
    want = "bf16" if native else "fp32"
    assert trainer.config.precision == want
    assert isinstance(trainer.autocast(), torch.autocast) == native  # fp32: no autocast at all
    trainer.train()
    assert TrainConfig.load(trainer.run_dir / "config.yaml").precision == want  # a resume elsewhere keeps it
    with pytest.raises(ConfigError, match="precision must be one of"):
        tiny_config(tmp_path, "joint", precision="bf8").validate()


def test_joint_needs_pretrained_weights_or_from_scratch(tmp_path):
    with pytest.raises(ConfigError, match="from_scratch"):
        Trainer(tiny_config(tmp_path, "joint", from_scratch=False))
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(tiny_config(tmp_path, "joint", from_scratch=False, init=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="encoder"):
        tiny_config(tmp_path, "encoder", from_scratch=True)


def test_upsampler_stage_uses_degraded_low_res_and_the_extra_losses(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "upsampler", sample_interval=3, sample_count=2, sample_steps=2))
    disc = trainer.stage.extra.adversarial.discriminator
    before, disc_before = _snapshot(trainer.model), _snapshot(disc)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    import numpy as np

    low = trainer.stage.low_res(x, np.random.default_rng(0))
    assert low.shape == (2, 3, 16, 16) and low.min() >= -1 and low.max() <= 1

    trainer.train()
    assert all(_changed(before, trainer.model).values())
    assert all(_changed(disc_before, disc).values())
    rows = (trainer.run_dir / "log.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert {"perceptual", "adv", "disc"} <= set(header)
    assert all(math.isfinite(float(last[k])) for k in ("perceptual", "adv", "disc"))
    meta = load_checkpoint(trainer.run_dir / "model.safetensors").metadata
    assert meta["stage"] == "upsampler" and meta["perceptual_random_weights"] is True
    # rows: condition, low-res input, target, sample; 2 images of 32 px
    assert _png_size(trainer.run_dir / "samples" / "step_00000003.png") == (2 * 32 + 3 * 2, 4 * 32 + 5 * 2)


def test_upsampler_refuses_a_random_vgg_unless_asked(tmp_path):
    with pytest.raises(MissingWeightsError, match="vgg19"):
        Trainer(tiny_config(tmp_path, "upsampler", allow_random_perceptual=False))


def test_model_must_fit_the_stage(tmp_path):
    with pytest.raises(ConfigError, match="GLIDE"):
        Trainer(
            tiny_config(tmp_path, "pretrain", model="toy-piti-base-mask", model_overrides=tiny_model_overrides("joint"))
        )
    with pytest.raises(ConfigError, match="upsampler"):
        Trainer(tiny_config(tmp_path, "joint", model="toy-piti-upsample-mask"))


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # Random draws are made for the whole batch, so microbatches of 1 accumulate the same gradient.
    # Compared through AdamW's first moment after one step, (1 - beta1) * gradient.
    runs = []
    for microbatch in (0, 1):
        trainer = Trainer(
            tiny_config(tmp_path / str(microbatch), "joint", iterations=1, uncond_p=0.5, microbatch=microbatch)
        )
        trainer.train()
        runs.append([trainer.optimizer.state[p]["exp_avg"] for p in trainer.trainable])
    scale = max(float(m.abs().max()) for m in runs[0])
    for whole, micro in zip(*runs):
        torch.testing.assert_close(micro, whole, rtol=1e-4, atol=1e-5 * scale)
    assert scale > 0


def test_x0_term_adds_the_capped_inverse_snr_weighted_epsilon_error(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "joint", x0_weight=0.5, x0_snr_cap=30.0))
    stage = trainer.stage
    batch = collate([NamedItems(stage.dataset)[(i, 0)] for i in range(4)])
    drawn = stage.draw(batch, torch.Generator().manual_seed(0), np.random.default_rng(0), trainer.timestep_sampler)
    drawn["t"] = torch.tensor([0, 300, 900, 999])  # a spread of SNRs: from uncapped to capped
    with torch.no_grad():
        with_term = stage.loss(trainer.model, drawn, step=0, autocast=contextlib.nullcontext).loss
        stage.config = dataclasses.replace(stage.config, x0_weight=0.0)
        without = stage.loss(trainer.model, drawn, step=0, autocast=contextlib.nullcontext).loss
        x_t = stage.diffusion.q_sample(drawn["x_start"], drawn["t"], drawn["noise"])
        eps = trainer.model(x_t, stage.diffusion.model_timesteps(drawn["t"]), **drawn["kwargs"])[:, :3]
    alpha_bar = torch.as_tensor(stage.diffusion.alphas_cumprod)[drawn["t"]].float()
    factor = ((1 - alpha_bar) / alpha_bar).clamp(max=30.0)
    assert factor[0] < 1e-3 and factor[-1] == 30.0
    expected = 0.5 * (factor * (eps - drawn["noise"]).pow(2).mean(dim=(1, 2, 3)) * drawn["weights"]).mean()
    torch.testing.assert_close(with_term - without, expected, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "joint", precision="bf16", iterations=2))
    before = _snapshot(trainer.model)
    trainer.train()
    assert all(v.dtype == torch.float32 for v in trainer.model.state_dict().values())  # fp32 master weights
    assert any(_changed(before, trainer.model).values())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            Trainer(tiny_config(tmp_path, "joint", precision="fp16"))


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    # Four pairs, always the same batch (no flips); t and noise still vary from step to step.
    cfg = tiny_config(
        tmp_path, "joint", data={"kind": "synth", "length": 4}, hflip=False, iterations=30, lr=1e-3, grad_clip=1.0
    )
    trainer = Trainer(cfg)
    trainer.train()
    rows = (trainer.run_dir / "log.csv").read_text().splitlines()[1:]
    mse = [float(r.split(",")[2]) for r in rows]
    assert len(mse) == 30
    first, last = sum(mse[:5]) / 5, sum(mse[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # An absurd learning rate: step 0 is finite, its update blows the weights up, step 1 is not.
    cfg = tiny_config(tmp_path, "joint", lr=1e30, save_interval=1, iterations=5)
    trainer = Trainer(cfg)
    with pytest.raises(NonFiniteLossError, match=r"at step 1 .*state_00000001\.pt"):
        trainer.train()
    states = list_states(trainer.run_dir)
    assert [p.name for p in states] == ["state_00000001.pt"]
    state = torch.load(states[0], weights_only=True)
    assert state["step"] == 1
    assert load_checkpoint(trainer.run_dir / "model.safetensors").metadata["step"] == 1


def test_a_broken_training_file_is_named(tmp_path):
    from piti.data.synth import write_scenes

    root = write_scenes(tmp_path / "data", num=4, size=32, progress=False)
    broken = root / "images" / "000002.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    cfg = tiny_config(tmp_path, "joint", data={"kind": "prepared", "root": str(root)}, iterations=4)
    with pytest.raises(DatasetError, match="000002.png"):
        Trainer(cfg).train()


def test_named_items_wrap_reader_errors_with_the_file(tmp_path):
    class Item:
        image, cond = Path("/data/a.jpg"), {"labels": Path("/data/a.png")}

    class Broken(torch.utils.data.Dataset):
        items = [Item()]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise OSError("decoder error")

    with pytest.raises(DatasetError, match=r"/data/a\.jpg, /data/a\.png.*OSError: decoder error"):
        NamedItems(Broken())[(0, 1)]


# --------------------------------------------------------------------------------------------------
# Pieces of the loop


def test_uniform_sampler_weights_are_one():
    t, w = UniformSampler(50).sample(1000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 50 and len(t.unique()) > 40
    assert torch.allclose(w, torch.ones(1000))


def test_loss_second_moment_sampler_favours_high_losses():
    s = LossSecondMomentSampler(20)
    t = torch.arange(20).repeat(9)
    s.update(t, (t + 1).double())
    assert not s.warmed_up()
    assert torch.allclose(torch.from_numpy(s.probabilities()), torch.full((20,), 1 / 20, dtype=torch.float64))
    s.update(torch.arange(20), torch.arange(20).double() + 1)
    assert s.warmed_up()
    p = s.probabilities()
    # p_t proportional to sqrt(E[L_t^2]) = t + 1 here, mixed with 0.1% uniform mass
    expected = (torch.arange(20.0) + 1) / 210 * 0.999 + 0.001 / 20
    assert torch.allclose(torch.from_numpy(p).float(), expected, atol=1e-7)
    t, w = s.sample(5000, torch.Generator().manual_seed(0))
    assert (t >= 10).float().mean() > 0.7  # high-loss steps drawn more often ...
    assert torch.allclose(w, 1 / (20 * torch.from_numpy(p)[t]).float())  # ... and down-weighted
    # history is per t, newest kept: one more (large) loss at t = 0 replaces the oldest
    s.update(torch.tensor([0]), torch.tensor([100.0], dtype=torch.float64))
    assert s.losses[0, -1] == 100.0 and s.counts[0] == 10
    restored = LossSecondMomentSampler(20)
    restored.load_state_dict(copy.deepcopy(s.state_dict()))
    assert (restored.probabilities() == s.probabilities()).all()


def test_step_batches_are_a_function_of_the_step_and_shard_the_global_batch():
    single = StepBatches(10, 4, 0, 1, seed=3, start_step=0)
    ranks = [StepBatches(10, 4, r, 2, seed=3, start_step=0) for r in range(2)]
    for step in range(6):
        keys = single.keys(step)
        assert sorted(ranks[0].keys(step) + ranks[1].keys(step)) == sorted(keys)
        assert set(ranks[0].keys(step)).isdisjoint(ranks[1].keys(step))
    # 5 steps x 4 = 20 samples = two epochs, each a permutation of the 10 items
    seen = [k[0] for step in range(5) for k in single.keys(step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]
    # starting later gives the same batches (no hidden state)
    later = iter(StepBatches(10, 4, 0, 1, seed=3, start_step=3))
    assert next(later) == single.keys(3)


def test_learning_rate_warms_up_holds_and_decays_to_zero():
    cfg = TrainConfig(stage="joint", model="toy-piti-base-mask", lr=1e-3, warmup_steps=10, iterations=100)
    assert [learning_rate(cfg, s) for s in (0, 9, 50, 99)] == pytest.approx([1e-4, 1e-3, 1e-3, 1e-3])
    cfg = dataclasses.replace(cfg, lr_decay_steps=40)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[:60] == pytest.approx([learning_rate(dataclasses.replace(cfg, lr_decay_steps=0), s) for s in range(60)])
    assert lrs[60] == pytest.approx(1e-3) and lrs[80] == pytest.approx(5e-4) and lrs[99] == pytest.approx(2.5e-5)
    assert all(a >= b for a, b in zip(lrs[60:], lrs[61:]))  # monotone decay, never negative
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        TrainConfig(stage="joint", model="toy-piti-base-mask", iterations=0, lr_decay_steps=10)


def test_ema_warmup_forgets_the_initial_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    plain, warm = EMA(model, rate=0.999), EMA(model, rate=0.999, warmup=True)
    assert warm.rate_at(0) == pytest.approx(0.1) and warm.rate_at(10**6) == 0.999 and plain.rate_at(0) == 0.999
    with torch.no_grad():
        model.weight.fill_(1.0)  # the trained weights jump away from the initial 0 and stay there
    for step in range(1000):
        plain.update(step)
        warm.update(step)
    # without warm-up 0.999**1000 = 37% of the initial weights remain; with it, (9/10)(10/11)... ~ 1%
    assert plain.shadow["weight"].item() == pytest.approx(1 - 0.999**1000, abs=1e-4)
    assert warm.shadow["weight"].item() > 0.98


def test_ema_averages_trained_parameters_only():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].requires_grad_(False)
    ema = EMA(model, rate=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    ema.update()
    assert set(ema.shadow) == {"0.weight", "0.bias"}
    torch.testing.assert_close(ema.state_dict()["0.weight"], start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert torch.equal(ema.state_dict()["1.weight"], model[1].weight)
    current = model[0].weight.detach().clone()
    with ema.swapped():
        torch.testing.assert_close(model[0].weight, start + 1.0)
    assert torch.equal(model[0].weight, current)


# --------------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("recipe", ["configs/toy.yaml", "configs/official.yaml"])
def test_every_recipe_section_resolves_to_a_valid_config(recipe):
    sections = list_sections(ROOT / recipe)
    assert {"encoder", "encoder-dropout", "joint", "upsampler"} <= set(sections)
    for section in sections:
        for task in ("mask", "sketch"):
            cfg = load_recipe(ROOT / recipe, section, {"task": task})
            mc = get_config(cfg.model, **cfg.model_overrides)  # the preset exists
            assert (mc.kind == "glide") == (cfg.stage == "pretrain")
            if cfg.stage != "pretrain":
                assert task in cfg.out_dir and mc.task == task


def test_official_recipe_has_the_papers_hyperparameters():
    official = ROOT / "configs/official.yaml"
    stages = {s: load_recipe(official, s) for s in ("encoder", "encoder-dropout", "joint", "upsampler")}
    assert [stages[s].lr for s in stages] == [3.5e-5, 2e-5, 3.5e-5, 1e-5]
    assert [stages[s].uncond_p for s in stages] == [0.0, 0.2, 0.2, 0.0]
    assert [stages[s].batch_size for s in stages] == [128, 128, 128, 4]
    assert [stages[s].iterations for s in stages] == [200000, 60000, 0, 0]
    assert [stages[s].schedule_sampler for s in stages] == ["loss-second-moment"] * 3 + ["uniform"]
    up = stages["upsampler"]
    assert (up.perceptual_weight, up.adv_weight, up.adv_start, up.perceptual_start, up.disc_lr) == (
        0.004,
        0.01,
        100,
        100,
        1e-5,
    )
    assert all(s.ema_rate == 0.9999 and s.precision == "fp32" for s in stages.values())


def test_overrides_are_typed_nested_and_checked():
    o = parse_overrides(["lr=2e-5", "data.length=64", "model_overrides.num_channels=32", "init="])
    assert o == {"lr": "2e-5", "data.length": 64, "model_overrides.num_channels": 32, "init": None}
    assert TrainConfig(stage="joint", model="toy-piti-base-mask", lr=o["lr"]).lr == 2e-5  # YAML's "2e-5" is a str
    d = apply_overrides({"data": {"kind": "synth"}}, o)
    assert d["data"] == {"kind": "synth", "length": 64} and d["model_overrides"] == {"num_channels": 32}
    with pytest.raises(ConfigError, match="unknown training option 'lrr'"):
        apply_overrides({}, {"lrr": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    cfg = load_recipe(ROOT / "configs/toy.yaml", "joint", parse_overrides(["task=depth", "lr=1e-3"]))
    assert cfg.model == "toy-piti-base-depth" and cfg.lr == 1e-3 and cfg.out_dir.endswith("joint-depth")
    with pytest.raises(ConfigError, match="no section 'stage9'"):
        load_recipe(ROOT / "configs/toy.yaml", "stage9")
    with pytest.raises(ConfigError, match="precision"):
        load_recipe(ROOT / "configs/toy.yaml", "joint", {"precision": "fp8"})
