"""Every stage command's flags are made from its config dataclasses: every field is reachable, choices come
from the registries, a recipe gives the starting values and a flag overrides one."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from megatron_utils.cli import build_parser
from megatron_utils.cli.options import STAGES, preprocess_config, scalar_type, stage_config
from megatron_utils.inference.predict import PredictConfig
from megatron_utils.recipes import load_recipe
from megatron_utils.training.attacks import AttackConfig
from megatron_utils.training.finetune import FinetuneConfig
from megatron_utils.training.train import TrainConfig


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def scalar_fields(config: type, skip: tuple[str, ...] = ()) -> set[str]:
    hints = typing.get_type_hints(config)
    return {field.name for field in dataclasses.fields(config)
            if scalar_type(hints[field.name])[0] and field.name not in skip}


def test_every_scalar_field_of_every_stage_config_has_a_flag(parser):
    preprocess = parser.parse_args(["preprocess", "video.mp4"]).options
    assert set(preprocess) == set(STAGES)
    for section, config in STAGES.items():  # embed's T always follows the frames stage's
        skipped = ("frames_per_clip",) if section == "embed" else ()
        assert set(preprocess[section].dests) == scalar_fields(config, skipped), section
    assert set(parser.parse_args(["extract", "video.mp4"]).options) == {"frames", "faces"}
    embed = parser.parse_args(["embed", "--faces-cache", "f", "--depth-cache", "d"]).options["embed"]
    assert set(embed.dests) == scalar_fields(STAGES["embed"])
    commands = {("finetune", "--index", "i", "--faces", "f"): ("options", FinetuneConfig),
                ("compare", "--index", "i", "--embeddings", "e"): ("train_options", TrainConfig),
                ("train",): ("train_options", TrainConfig),
                ("evaluate", "run"): ("attack_options", AttackConfig),
                ("predict", "video.mp4", "--run", "run"): ("options", PredictConfig)}
    for command, (name, config) in commands.items():
        assert set(getattr(parser.parse_args(command), name).dests) == scalar_fields(config), command


def test_flags_override_the_recipe_field_by_field(parser):
    args = parser.parse_args([
        "preprocess", "video.mp4", "--recipe", "demo", "--frames-per-clip", "6", "--frames-sampling",
        "consecutive", "--faces-crop-size", "96", "--faces-fallback", "none", "--faces-margin", "1.5",
        "--depth-model", "facemesh", "--embed-rgb-weights", "runs/ft/best", "--embed-input-size", "none",
        "--audio-encoder", "tiny", "--audio-silence-dbfs", "-50"])
    demo = load_recipe("demo").preprocess
    config = preprocess_config(args, args.options)
    assert config == dataclasses.replace(
        demo, frames=dataclasses.replace(demo.frames, frames_per_clip=6, sampling="consecutive"),
        faces=dataclasses.replace(demo.faces, crop_size=96, fallback=None, margin=1.5),
        depth=dataclasses.replace(demo.depth, model="facemesh"),
        embed=dataclasses.replace(demo.embed, rgb_weights="runs/ft/best", input_size=None),
        audio=dataclasses.replace(demo.audio, encoder="tiny", silence_dbfs=-50.0))
    assert config.embed.frames_per_clip == 6  # T follows the frames stage
    untouched = parser.parse_args(["preprocess", "video.mp4", "--recipe", "demo"])
    assert preprocess_config(untouched, untouched.options) == demo  # no flag: the recipe as it is
    alone = parser.parse_args(["embed", "--faces-cache", "f", "--depth-cache", "d",
                               "--embed-frames-per-clip", "4", "--embed-batch-size", "8"])
    assert (stage_config(alone, alone.options, "embed").frames_per_clip,
            stage_config(alone, alone.options, "embed").batch_size) == (4, 8)


def test_choices_come_from_the_registries_and_bad_values_are_usage_errors(parser, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["preprocess", "video.mp4", "--embed-rgb-backbone", "resnet9000"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'resnet9000'" in error and "tiny_random" in error  # the registered backbones
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "video.mp4", "--faces-detector", "nope"])
    assert "blazeface" in capsys.readouterr().err  # the registered detectors are named
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "video.mp4", "--faces-crop-size", "big"])
    finetune = parser.parse_args(["finetune", "--index", "i", "--faces", "f", "--adversarial-eps", "4/255",
                                  "--no-amp"])
    assert finetune.options.given(finetune) == {"adversarial_eps": pytest.approx(4 / 255), "amp": False}
