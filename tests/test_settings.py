"""Sampling settings declared once: specs, checks, flags, headers and the samplers' own knobs."""

import argparse
import dataclasses

import pytest

from piti.diffusion.samplers import SAMPLERS, sampler_options
from piti.errors import ConfigError
from piti.settings import (
    PROFILES,
    SamplingSettings,
    add_settings_arguments,
    setting_specs,
    settings_from_args,
    settings_from_header,
)


def parser(defaults=None):
    p = argparse.ArgumentParser()
    add_settings_arguments(p, defaults)
    return p


def test_every_field_has_a_spec_with_help_and_a_flag():
    specs = setting_specs()
    assert list(specs) == [f.name for f in dataclasses.fields(SamplingSettings)]
    flags = {a.dest for a in parser()._actions}
    for name, spec in specs.items():
        assert spec.help and spec.default == getattr(SamplingSettings(), name)
        assert name in flags
    assert specs["sampler"].choices == tuple(SAMPLERS) and specs["upsample_start"].describe() == "in (0, 1]"


@pytest.mark.parametrize(
    "bad",
    [
        dict(guidance_mode="strong"),
        dict(noise_scale=2.0),
        dict(upsample_start=0.0),
        dict(upsample_temperature=0),
        dict(guidance=float("nan")),
        dict(eta=-0.1),
        dict(sampler="euler"),
        dict(palette="pascal"),
        dict(quantize_low_res="yes"),
        dict(cond_noise=-0.5),
        dict(cond_noise_tmin=0.95),  # not below the default cond_noise_tmax 0.9
    ],
)
def test_bad_values_are_refused_with_the_setting_named(bad):
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=name):
        PROFILES["fast"].replace(**bad)


def test_replace_converts_keeps_none_and_refuses_unknown_names():
    s = PROFILES["official"].replace(steps=50, guidance=2, sampler=None)
    assert s.steps == "50" and s.guidance == 2.0 and isinstance(s.guidance, float) and s.sampler == "ddpm"
    # booleans as a command line writes them (benchmarks' --variant), refused otherwise ("yes" above)
    assert (
        s.replace(skip_terminal="True").skip_terminal is True
        and s.replace(quantize_low_res="0").quantize_low_res is False
    )
    with pytest.raises(ConfigError, match="unknown sampling setting.*temperature"):
        s.replace(temperature=1.0)


def test_profiles_differ_in_sampler_and_steps_only():
    fast, official = PROFILES["fast"].to_dict(), PROFILES["official"].to_dict()
    assert {k for k in fast if fast[k] != official[k]} == {"sampler", "steps", "upsample_sampler", "upsample_steps"}
    assert official["sampler"] == "ddpm" and official["steps"] == "250" and official["upsample_steps"] == "fast27"
    assert official["guidance"] == pytest.approx(0.3) and official["guidance_mode"] == "plain"


def test_flags_default_to_none_and_give_only_what_was_set():
    args = parser().parse_args(["--guidance", "4", "--guidance-mode", "normalized", "--no-quantize-low-res"])
    assert settings_from_args(args) == {"guidance": 4.0, "guidance_mode": "normalized", "quantize_low_res": False}
    assert settings_from_args(parser().parse_args([])) == {}


def test_the_official_scale_is_converted_at_the_edge():
    assert settings_from_args(parser().parse_args(["--guidance-scale", "1.3"]))["guidance"] == pytest.approx(0.3)
    with pytest.raises(SystemExit):
        parser().parse_args(["--guidance", "1", "--guidance-scale", "2"])


def test_flags_with_defaults_give_every_setting():
    recipe = PROFILES["fast"].replace(guidance=5, sampler="ddpm")
    got = settings_from_args(parser(recipe).parse_args(["--steps", "25"]))
    assert SamplingSettings(**got) == recipe.replace(steps="25")


def test_headers_are_checked_and_read_in_their_convention():
    assert settings_from_header({"guidance": 5.0, "guidance_convention": "paper"}) == {"guidance": 5.0}
    assert settings_from_header({"guidance": 1.3, "guidance_convention": "official"})["guidance"] == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="colour"):
        settings_from_header({"colour": "red"})
    with pytest.raises(ConfigError, match="steps|sampler"):
        settings_from_header({"sampler": "heun"})


def test_each_sampler_gets_its_own_knobs_from_the_settings():
    s = PROFILES["fast"].replace(noise_scale=0.7, eta=0.5, upsample_noise_scale=0.9, upsample_eta=0.2)
    assert sampler_options("ddpm", s) == {"noise_scale": 0.7, "noise_scale_tmax": 1.0, "antithetic_noise": False}
    assert sampler_options("ddim", s) == {"eta": 0.5, "antithetic_noise": False}
    assert sampler_options("dpmpp", s) == {}  # deterministic: its x_T alone (the pipeline's) can be antithetic
    assert sampler_options("ddpm", s, prefix="upsample_") == {"noise_scale": 0.9}  # no upsample_noise_scale_tmax
    assert sampler_options("ddim", s, prefix="upsample_") == {"eta": 0.2}
    with pytest.raises(ConfigError, match="unknown sampler"):
        sampler_options("heun", s)


def test_the_guidance_annealing_and_reward_windows_must_be_open():
    with pytest.raises(ConfigError, match="guidance_tmin must be below"):
        SamplingSettings(guidance_tmin=0.8, guidance_tmax=0.2)
    with pytest.raises(ConfigError, match="cond_noise_tmin must be below"):
        SamplingSettings(cond_noise=1.0, cond_noise_tmin=0.9, cond_noise_tmax=0.9)
    with pytest.raises(ConfigError, match="reward_guidance_tmin must be below"):
        SamplingSettings(reward_guidance=0.1, reward_guidance_tmin=0.6, reward_guidance_tmax=0.5)
