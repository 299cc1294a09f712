"""The whole chain on real videos with tiny random-weight models: faces -> depth -> embeddings."""

from dataclasses import replace

import numpy as np
import pytest

from megatron_utils.cli import main
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess

TINY = PreprocessConfig(
    frames=FramesConfig(frames_per_clip=6, clips_per_video=2),
    faces=FaceConfig(crop_size=96, min_faces=3),
    depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=64),
    embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"),
)


@pytest.fixture
def videos(asset, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    return [("real/single_face", asset("single_face_video")), ("real/no_face", asset("no_face_video")),
            ("broken/empty", empty), ("photo/obama", asset("obama"))]


def test_chain_embeds_good_videos_and_reports_each_failure_with_its_stage(videos, cache_dir):
    result = preprocess(videos, TINY, workers=0)
    assert sorted(result.embed.done_items()) == ["photo/obama", "real/single_face"]
    failures = result.failures()
    assert set(failures) == {"real/no_face", "broken/empty"}
    assert failures["broken/empty"].startswith("faces: ") and "empty (0 bytes)" in failures["broken/empty"]
    assert "no face" in failures["real/no_face"]

    tensors, _ = result.embed.read("real/single_face")
    assert tensors["rgb"].shape[:2] == (2, 6) and tensors["rgb"].dtype == np.float16
    assert tensors["valid"].sum() >= 2 * 3
    photo, _ = result.embed.read("photo/obama")
    assert photo["rgb"].shape[:2] == (1, 6) and photo["valid"].sum() == 1  # an image is a clip of one frame

    # The embeddings record how they were made, so training and prediction can rebuild the chain: the
    # face detector's device as it ran ("auto" resolved; dlib runs on the CPU).
    assert PreprocessConfig.from_embed_cache(result.embed.dir) == replace(TINY, faces=replace(TINY.faces,
                                                                                             device="cpu"))


def test_rerun_skips_everything_and_a_config_change_gets_new_caches(videos, cache_dir):
    first = preprocess(videos, TINY, workers=0)
    again = preprocess(videos, TINY, workers=0)
    assert [r.done for r in again.reports] == [0, 0, 0]
    assert [r.skipped for r in again.reports] == [2, 2, 2]
    assert again.failures() == first.failures()
    changed = PreprocessConfig(TINY.frames, TINY.faces, DepthConfig(model=TINY.depth.model, output_size=32),
                               TINY.embed)
    other = preprocess(videos[:1], changed, workers=0)
    assert other.faces.dir == first.faces.dir and other.depth.dir != first.depth.dir
    assert other.embed.dir != first.embed.dir and other.reports[1].done == 1


def test_frames_per_clip_always_comes_from_the_frames_stage():
    config = PreprocessConfig(FramesConfig(frames_per_clip=5), embed=EmbedConfig(frames_per_clip=32))
    assert config.embed.frames_per_clip == 5
    with pytest.raises(ValueError, match="unknown fields"):
        PreprocessConfig.from_dict({"frames": {"frames": 3}})


def test_cli_preprocess_exits_1_when_an_item_failed(videos, cache_dir, capsys):
    paths = [str(path) for _, path in videos[:3:2]]  # single_face and the empty file
    status = main(["preprocess", *paths, "--frames-per-clip", "4", "--faces-min-faces", "2",
                   "--faces-crop-size", "64", "--depth-model", "random-init:depth-anything-tiny",
                   "--depth-output-size", "32", "--embed-rgb-backbone", "tiny_random",
                   "--embed-depth-backbone", "tiny_random", "--workers", "0"])
    out = capsys.readouterr().out
    assert status == 1
    assert "failed empty" in out and "embed cache: " in out and "tiny_random" in out


def test_training_never_reads_embeddings_made_from_another_file_with_the_same_id(videos, cache_dir, asset):
    import pandas as pd

    from megatron_utils.training.clips import load_clips

    result = preprocess(videos[:1] + videos[3:], TINY, workers=0)  # single_face and obama
    rows = [dict(video_id="real/single_face", path=str(asset("single_face_video")), label="real"),
            dict(video_id="photo/obama", path=str(asset("biden")), label="fake")]  # another file, same id
    rows = [{**row, "split": "train"} for row in rows]
    clips = load_clips(pd.DataFrame(rows), result.embed.dir, "train")
    assert list(clips.videos["video_id"]) == ["real/single_face"]
    assert "made from" in clips.missing["photo/obama"] and "obama.jpg" in clips.missing["photo/obama"]
