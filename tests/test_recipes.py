"""Recipes: one YAML file holds every stage's settings, with the config dataclasses as its schema."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from megatron_utils.demo import DemoConfig
from megatron_utils.models.backbones import FRAME_CLASSIFIER
from megatron_utils.recipes import Recipe, list_recipes, load_recipe, to_dict


def test_bundled_recipes_load_into_the_config_dataclasses():
    assert {"demo", "ffpp-c23"} <= set(list_recipes())
    demo, ffpp = load_recipe("demo"), load_recipe("ffpp-c23")
    assert demo.preprocess.faces.crop_size == 128 and ffpp.preprocess.faces.crop_size == 224
    assert ffpp.preprocess.frames.frames_per_clip == 32 == ffpp.preprocess.embed.frames_per_clip
    assert isinstance(demo.finetune.sbi.hull_scale, tuple)  # YAML lists become the fields' tuples
    assert DemoConfig().recipe == demo  # the demo runs exactly its recipe


def test_a_recipe_file_round_trips_and_overrides_apply(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(to_dict(load_recipe("demo"))))
    mine = load_recipe(path, {"train.epochs": 3, "preprocess.faces.crop_size": 160, "model": "lstm"})
    assert (mine.train.epochs, mine.preprocess.faces.crop_size, mine.model) == (3, 160, "lstm")
    assert dataclasses.replace(mine, source="") == dataclasses.replace(
        load_recipe("demo"), model="lstm", source="",
        train=dataclasses.replace(load_recipe("demo").train, epochs=3),
        preprocess=dataclasses.replace(load_recipe("demo").preprocess, faces=dataclasses.replace(
            load_recipe("demo").preprocess.faces, crop_size=160)))
    assert mine.source == str(path)


def test_unknown_keys_and_names_are_refused_with_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"typo.yaml: train: unknown TrainConfig setting\(s\) \['epoch'\]"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="no bundled recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(ValueError, match="fakes must be one of"):  # the dataclasses still validate
        load_recipe("demo", {"finetune.fakes": "sometimes"})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty) == Recipe(source=str(empty))  # an empty file is every default


def test_with_finetuned_points_the_rgb_embedder_at_the_runs_best_checkpoint(tmp_path):
    recipe = load_recipe("ffpp-c23")
    with pytest.raises(FileNotFoundError, match="02_finetune"):
        recipe.with_finetuned(tmp_path / "finetune")
    best = tmp_path / "finetune" / "best"
    best.mkdir(parents=True)
    (best / "config.json").write_text(json.dumps({"model_type": FRAME_CLASSIFIER}))  # what a saved one says
    tuned = recipe.with_finetuned(tmp_path / "finetune")
    assert tuned.preprocess.embed.rgb_weights == str(best.resolve())
    assert dataclasses.replace(tuned.preprocess.embed, rgb_weights=None) == recipe.preprocess.embed
    assert (tuned.train, tuned.finetune, tuned.preprocess.depth) == (recipe.train, recipe.finetune,
                                                                    recipe.preprocess.depth)
