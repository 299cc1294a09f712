from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from feature_inputs import real_faces_entries, save_tiny_depth_model, write_faces_cache

from megatron_utils.models.backbones import WeightsUnavailableError, load_depth_model
from megatron_utils.preprocessing.batching import to_unit_tensor
from megatron_utils.preprocessing.depth import (
    DEPTH_LEVELS,
    DepthConfig,
    DepthEstimator,
    compute_depth,
    read_depth,
)
from megatron_utils.preprocessing.faces import encode_faces


@pytest.fixture(scope="session")
def faces_entries(asset):
    return real_faces_entries(asset)


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory) -> Path:
    return save_tiny_depth_model(tmp_path_factory.mktemp("tiny_depth"))


@pytest.fixture
def faces_cache(faces_entries, cache_dir):
    return write_faces_cache(faces_entries, cache_dir)


def tiny_config(model: Path, **overrides) -> DepthConfig:
    return DepthConfig(**{"model": str(model), "output_size": 48, "batch_size": 3, **overrides})


def test_depth_entries_have_documented_shapes_and_per_crop_range(faces_cache, faces_entries, tiny_depth):
    cache, report = compute_depth(faces_cache, tiny_config(tiny_depth))
    assert report.done == len(faces_entries) and not report.failures
    assert report.units == sum(len(e["crops"]) for e in faces_entries.values())
    for item_id, faces in faces_entries.items():
        tensors = read_depth(cache, item_id)
        depth = tensors["depth"]
        assert depth.dtype == np.float32 and depth.shape == (len(faces["crops"]), 48, 48)
        np.testing.assert_array_equal(tensors["frame_index"], faces["frame_index"])
        # Min-max normalised per crop: every map spans the full range on its own.
        assert (depth.reshape(len(depth), -1).min(1) == 0).all()
        assert (depth.reshape(len(depth), -1).max(1) == 1).all()
    assert {r["weights"] for r in cache.records().values()} == {f"local folder {tiny_depth.name}"}  # no path


def test_depth_differs_between_faces(faces_entries, tiny_depth):
    maps = DepthEstimator(tiny_config(tiny_depth))(np.concatenate(
        [faces_entries["photo/obama"]["crops"], faces_entries["photo/biden"]["crops"]]))
    assert np.abs(maps[0].astype(np.float32) - maps[1].astype(np.float32)).mean() > 1 / 255


def test_batching_across_videos_matches_one_video_at_a_time(faces_cache, faces_entries, tiny_depth):
    cache, _ = compute_depth(faces_cache, tiny_config(tiny_depth, batch_size=4))
    single = DepthEstimator(tiny_config(tiny_depth, batch_size=1))
    for item_id, faces in faces_entries.items():
        batched = read_depth(cache, item_id)["depth"]
        # Float rounding of batched against single convolutions may move a value across a grid boundary.
        assert np.abs(batched - single(faces["crops"])).max() <= 1.01 / DEPTH_LEVELS


def test_cache_key_covers_model_and_sizes(faces_cache, tiny_depth, tmp_path):
    base, _ = compute_depth(faces_cache, tiny_config(tiny_depth))
    other_model = save_tiny_depth_model(tmp_path / "other", seed=1)
    variants = [tiny_config(other_model), tiny_config(tiny_depth, output_size=32),
                tiny_config(tiny_depth, input_size=28)]
    keys = {compute_depth(faces_cache, config)[0].key for config in variants}
    assert len(keys | {base.key}) == 4
    # Batch size does not change the maps, so it does not change the key.
    assert compute_depth(faces_cache, tiny_config(tiny_depth, batch_size=2))[0].key == base.key


def test_rerun_skips_and_force_redoes(faces_cache, faces_entries, tiny_depth):
    compute_depth(faces_cache, tiny_config(tiny_depth))
    _, again = compute_depth(faces_cache, tiny_config(tiny_depth))
    assert (again.done, again.skipped) == (0, len(faces_entries))
    _, forced = compute_depth(faces_cache, tiny_config(tiny_depth), force=True)
    assert (forced.done, forced.skipped) == (len(faces_entries), 0)


def test_missing_or_corrupt_faces_entries_become_recorded_failures(faces_cache, faces_entries, tiny_depth):
    faces_cache.entry_path("photo/obama").unlink()
    faces_cache.entry_path("photo/biden").write_bytes(b"not a safetensors file")
    entry = encode_faces(faces_entries["photo/obama2"])
    faces_cache.write("photo/obama2", {**entry, "crops_bytes": entry["crops_bytes"][::-1].copy()})
    cache, report = compute_depth(faces_cache, tiny_config(tiny_depth))
    broken = {"photo/obama", "photo/biden", "photo/obama2"}
    assert set(report.failures) == broken and set(cache.failures()) == broken
    assert "FileNotFoundError" in report.failures["photo/obama"]
    assert "faces entry 'photo/obama2'" in report.failures["photo/obama2"]
    assert "crops image 0 of 1: cannot be decoded as WEBP" in report.failures["photo/obama2"]
    assert report.done == len(faces_entries) - 3
    # A re-run reports the failures again without retrying them; a repaired entry is redone.
    faces_cache.write("photo/obama", encode_faces(faces_entries["photo/obama"]))
    _, again = compute_depth(faces_cache, tiny_config(tiny_depth))
    assert (again.done, set(again.failures)) == (1, {"photo/biden", "photo/obama2"})


def test_stored_maps_are_the_estimators_maps_within_half_a_level(faces_cache, faces_entries, tiny_depth):
    cache, _ = compute_depth(faces_cache, tiny_config(tiny_depth, batch_size=1))
    estimator = DepthEstimator(tiny_config(tiny_depth, batch_size=1))
    for item_id, faces in faces_entries.items():
        stored = read_depth(cache, item_id)["depth"]
        np.testing.assert_array_equal(stored, estimator(faces["crops"]))  # what `predict` computes
        with torch.inference_mode():  # a crop a call, as stored: other batch shapes round floats otherwise
            unrounded = np.concatenate([estimator.depth_maps(to_unit_tensor(crop[None], torch.device("cpu")))
                                        .numpy() for crop in faces["crops"]])
        assert np.abs(stored - unrounded).max() <= 0.5 / DEPTH_LEVELS + 1e-7  # the differentiable path
        assert len(np.unique(stored)) > 256  # finer than 8 bits, which would band smooth maps


def test_a_damaged_depth_map_fails_naming_the_item(faces_cache, faces_entries, tiny_depth):
    cache, _ = compute_depth(faces_cache, tiny_config(tiny_depth))
    tensors, _ = cache.read("video/single_face")
    damaged = tensors["depth_bytes"].copy()
    start = tensors["depth_offsets"][2]
    damaged[start:start + 8] = 0  # map 2's PNG signature
    cache.write("video/single_face", {**tensors, "depth_bytes": damaged})
    count = len(faces_entries["video/single_face"]["crops"])
    expected = rf"depth entry 'video/single_face' .*depth image 2 of {count}: cannot be decoded as PNG"
    with pytest.raises(ValueError, match=expected):
        read_depth(cache, "video/single_face")


def test_input_size_must_be_a_multiple_of_the_patch_size(tiny_depth):
    with pytest.raises(ValueError, match="multiple of the model's patch size 14.*28 or 42"):
        DepthEstimator(tiny_config(tiny_depth, input_size=30))


def test_offline_hub_model_without_local_weights_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="local path.*random-init:depth-anything-v2-small"):
        load_depth_model(DepthConfig().model)


def test_random_init_builds_real_v2_small_architecture_with_a_loud_warning(caplog):
    with caplog.at_level(logging.WARNING):
        loaded = load_depth_model("random-init:depth-anything-v2-small")
    assert "RANDOM weights" in caplog.text and "NOT meaningful" in caplog.text
    assert loaded.data_config.input_size == 518 and loaded.patch_size == 14
    backbone = loaded.model.config.backbone_config
    assert (backbone.hidden_size, backbone.num_hidden_layers) == (384, 12)
    assert list(backbone.out_indices) == [3, 6, 9, 12]
    assert 24e6 < sum(p.numel() for p in loaded.model.parameters()) < 26e6  # V2-Small: 24.8M parameters
    assert loaded.fingerprint.startswith("random-init:")
