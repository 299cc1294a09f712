from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from feature_inputs import real_faces_entries, save_tiny_depth_model, write_faces_cache
from safetensors.torch import save_file

from megatron_utils.preprocessing.depth import DepthConfig, compute_depth, read_depth
from megatron_utils.preprocessing.embed import EmbedConfig, Embedder, compute_embeddings, to_clips
from megatron_utils.preprocessing.faces import FaceConfig, extract_video_faces
from megatron_utils.preprocessing.frames import FramesConfig


@pytest.fixture(scope="session")
def faces_entries(asset):
    return real_faces_entries(asset)


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory):
    return save_tiny_depth_model(tmp_path_factory.mktemp("tiny_depth"))


@pytest.fixture
def caches(faces_entries, tiny_depth, cache_dir):
    faces = write_faces_cache(faces_entries, cache_dir)
    depth, _ = compute_depth(faces, DepthConfig(model=str(tiny_depth), output_size=48))
    return faces, depth


def tiny_config(**overrides) -> EmbedConfig:
    defaults = {"rgb_backbone": "tiny_random", "depth_backbone": "tiny_random", "frames_per_clip": 4,
                "batch_size": 3}
    return EmbedConfig(**{**defaults, **overrides})


def test_embed_entries_are_clips_of_frames_with_padding_mask(caches, faces_entries):
    cache, report = compute_embeddings(*caches, tiny_config())
    assert report.done == len(faces_entries) and not report.failures
    video, _ = cache.read("video/single_face")  # 7 frames: clip 0 has 4, clip 1 has 3
    assert video["rgb"].dtype == video["depth"].dtype == np.float16
    assert video["rgb"].shape == video["depth"].shape == (2, 4, 256)
    np.testing.assert_array_equal(video["valid"], [[True] * 4, [True, True, True, False]])
    np.testing.assert_array_equal(video["frame_index"], [[0, 5, 10, 15], [20, 25, 30, -1]])
    assert not video["rgb"][1, 3].any() and video["rgb"][video["valid"]].any(axis=1).all()
    photo, _ = cache.read("photo/obama")  # a single image is C = 1 clip holding one valid frame
    np.testing.assert_array_equal(photo["valid"], [[True, False, False, False]])


def test_batching_across_videos_matches_one_video_at_a_time(caches, faces_entries):
    faces, depth = caches
    cache, _ = compute_embeddings(faces, depth, tiny_config(batch_size=4))
    single = Embedder(tiny_config(batch_size=1))
    for item_id, entry in faces_entries.items():
        rgb, depth_features = single(entry["crops"], read_depth(depth, item_id)["depth"])
        stored, _ = cache.read(item_id)
        features = {"rgb": rgb, "depth": depth_features}
        expected = to_clips(features, entry["clip_index"], entry["frame_index"], 4)
        for name in ("rgb", "depth"):
            np.testing.assert_allclose(stored[name].astype(np.float32), expected[name].astype(np.float32),
                                       rtol=1e-2, atol=1e-2)


def test_rgb_and_depth_streams_are_separate_networks(caches, faces_entries):
    embedder = Embedder(tiny_config(depth_backbone="mobilenetv2_offline"))
    assert embedder.rgb.model is not embedder.depth.model and not embedder.depth.model.training
    crops = faces_entries["video/single_face"]["crops"]
    rgb, depth = embedder(crops, read_depth(caches[1], "video/single_face")["depth"])
    assert rgb.shape == (len(crops), 256) and depth.shape == (len(crops), 1280)


def test_cache_key_covers_weights_sizes_and_clip_length(caches, tmp_path):
    base, _ = compute_embeddings(*caches, tiny_config())
    other_weights = tmp_path / "other.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        save_file(timm.create_model("test_byobnet", num_classes=0).state_dict(), str(other_weights))
    variants = [tiny_config(depth_weights=str(other_weights)), tiny_config(input_size=32),
                tiny_config(frames_per_clip=8)]
    keys = {compute_embeddings(*caches, config)[0].key for config in variants}
    assert len(keys | {base.key}) == 4
    assert compute_embeddings(*caches, tiny_config(batch_size=5))[0].key == base.key


def test_depth_cache_from_other_faces_is_refused(caches, faces_entries, cache_dir):
    other_faces = write_faces_cache({"photo/biden": faces_entries["photo/biden"]}, cache_dir, name="other")
    with pytest.raises(ValueError, match="computed from faces cache"):
        compute_embeddings(other_faces, caches[1], tiny_config())


def test_rerun_skips_force_redoes_and_missing_depth_is_a_recorded_failure(caches, faces_entries):
    faces, depth = caches
    compute_embeddings(faces, depth, tiny_config())
    _, again = compute_embeddings(faces, depth, tiny_config())
    assert (again.done, again.skipped) == (0, len(faces_entries))
    _, forced = compute_embeddings(faces, depth, tiny_config(), force=True)
    assert forced.done == len(faces_entries)
    depth.entry_path("photo/obama2").unlink()  # the depth entry vanished: its fingerprint changes
    _, report = compute_embeddings(faces, depth, tiny_config())
    assert set(report.failures) == {"photo/obama2"}
    assert "depth cache has no entry" in report.failures["photo/obama2"]
    assert report.skipped == len(faces_entries) - 1


def test_every_person_keeps_their_own_clips(asset):
    """`track="all"`: two people's crops never interleave in one clip, and none is dropped."""
    frames = FramesConfig(frames_per_clip=8, clips_per_video=2)
    video = extract_video_faces(asset("pyfeat_multi_face"), frames, FaceConfig(track="all"))
    entry = video.tensors()
    assert len(np.unique(entry["track"])) >= 2
    row_number = np.arange(len(entry["track"]), dtype=np.float32)[:, None]  # a feature naming its crop
    clips = to_clips({"rgb": row_number}, entry["clip_index"], entry["frame_index"], 8, entry["track"])
    members = [clip[valid].astype(int)
               for clip, valid in zip(clips["rgb"][..., 0], clips["valid"], strict=True)]
    for person, rows in zip(clips["track"], members, strict=True):
        assert (entry["track"][rows] == person).all()
        assert len(set(entry["clip_index"][rows])) == 1
        assert (np.diff(entry["frame_index"][rows]) > 0).all()
    assert sorted(np.concatenate(members)) == list(range(len(entry["track"])))
