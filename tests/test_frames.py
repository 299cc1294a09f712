import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from megatron_utils.preprocessing.frames import FramesConfig, sample_indices, sample_video
from megatron_utils.preprocessing.video import MediaError, probe, read_frames, read_image, write_mp4

# The track header matrix a phone writes for a portrait recording: stored frames are the scene turned
# 90 degrees counter-clockwise, and players turn them 90 degrees clockwise (ffprobe: "rotate 90").
PHONE_PORTRAIT_MATRIX = (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)


def phone_portrait_mp4(path: Path, upright: np.ndarray, frames: int = 3) -> Path:
    """A portrait video as phones record it: landscape frames plus a display matrix in the mp4 `tkhd`
    box (the mp4 muxer drops a plain `rotate` tag, so the matrix is patched into the written file)."""
    write_mp4(path, [np.rot90(upright, k=1)] * frames, fps=10)
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    assert tkhd > 0 and data.count(b"tkhd") == 1
    matrix_at = tkhd - 4 + (48 if data[tkhd + 4] == 0 else 60)  # box start + fields before the matrix
    data[matrix_at:matrix_at + 36] = struct.pack(">9i", *PHONE_PORTRAIT_MATRIX)
    path.write_bytes(bytes(data))
    return path


def test_uniform_spreads_one_clip_over_the_video():
    (clip,) = sample_indices(472, FramesConfig(frames_per_clip=32))
    gaps = np.diff(clip)
    assert len(clip) == 32 and clip[0] >= 0 and clip[-1] < 472
    assert gaps.min() >= 14 and gaps.max() - gaps.min() <= 1  # even steps of 472 / 32 = 14.75
    assert clip[0] < 14.75 and clip[-1] >= 472 - 14.75  # covers start to end


def test_uniform_clips_interleave_without_sharing_frames():
    clips = sample_indices(300, FramesConfig(frames_per_clip=16, clips_per_video=3))
    assert len(clips) == 3 and all(len(c) == 16 and c == sorted(c) for c in clips)
    merged = sorted(i for c in clips for i in c)
    assert len(set(merged)) == 48 and max(np.diff(merged)) - min(np.diff(merged)) <= 1
    assert clips[0][0] < clips[1][0] < clips[2][0] < clips[0][1]  # clip c offset by c/C of a step


def test_short_videos_use_every_frame_once_in_a_single_shorter_clip():
    config = FramesConfig(frames_per_clip=32, clips_per_video=4)
    assert sample_indices(10, config) == [list(range(10))]
    assert sample_indices(32, config) == [list(range(32))]  # identical clips are not repeated
    assert sample_indices(1, config) == [[0]]
    assert sample_indices(0, config) == []
    between = sample_indices(50, config)  # longer than T, shorter than C x T: clips overlap but differ
    assert 1 < len(between) <= 4 and all(len(c) == 32 for c in between)
    assert len({tuple(c) for c in between}) == len(between)


def test_consecutive_windows_with_stride_spread_over_the_video():
    config = FramesConfig(frames_per_clip=8, sampling="consecutive", clips_per_video=3, stride=2)
    clips = sample_indices(100, config)
    assert [c[0] for c in clips] == [0, 42, 85] and clips[-1][-1] == 99
    assert all(np.all(np.diff(c) == 2) and len(c) == 8 for c in clips)
    assert sample_indices(10, config) == [[0, 2, 4, 6, 8]]  # shorter than one window


@pytest.mark.parametrize("bad", [dict(sampling="random"), dict(frames_per_clip=0), dict(stride=0)])
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        FramesConfig(**bad)


def test_sample_video_decodes_exactly_the_sampled_frames(asset):
    path = asset("single_face_video")
    video = sample_video(path, FramesConfig(frames_per_clip=8, clips_per_video=2))
    assert video.info.frame_count == 72 and len(video.clips) == 2
    frames = dict(video.frames())
    assert sorted(frames) == video.wanted
    _, expected = read_frames(path, video.wanted[:1])
    assert np.array_equal(frames[video.wanted[0]], expected[0])


def test_still_image_is_a_one_frame_video(asset):
    video = sample_video(asset("grace_hopper"), FramesConfig())
    assert video.clips == [[0]] and video.info.frame_count == 1
    ((index, frame),) = list(video.frames())
    assert index == 0 and frame.shape == (512, 512, 3)


def test_bytes_and_decoded_frames_sample_like_the_file(asset):
    """An upload's bytes and frames decoded by the caller give the same clips and pixels as the file."""
    path = asset("single_face_video")
    config = FramesConfig(frames_per_clip=8, clips_per_video=2)
    from_file = sample_video(path, config)
    from_bytes = sample_video(Path(path).read_bytes(), config, name="upload.mp4")
    _, all_frames = read_frames(path, range(from_file.info.frame_count))
    from_frames = sample_video(all_frames, config, name="frames")
    assert (from_bytes.name, from_frames.name) == ("upload.mp4", "frames")
    expected = dict(from_file.frames())
    for other in (from_bytes, from_frames):
        assert other.clips == from_file.clips and other.info.frame_count == 72
        got = dict(other.frames())
        assert sorted(got) == sorted(expected)
        assert all(np.array_equal(got[i], expected[i]) for i in expected)
    photo = sample_video(Path(asset("grace_hopper")).read_bytes(), config)
    assert photo.clips == [[0]] and photo.info.codec == "image" and photo.name == "<bytes>"
    array_photo = sample_video(read_image(asset("grace_hopper")), config)
    assert array_photo.clips == [[0]] and array_photo.info.codec == "image" and array_photo.name == "<frames>"


@pytest.mark.parametrize("media, reason", [
    (b"", "no data"), (b"not a video at all", "not a readable video"),
    (np.zeros((4, 8, 8, 3), np.float32), "uint8"), (np.zeros((8, 8), np.uint8), "[N, H, W, 3]"),
])
def test_bad_bytes_or_arrays_fail_with_their_name_and_reason(media, reason):
    with pytest.raises(MediaError, match=r"^upload: .*" + re.escape(reason)):
        sample_video(media, FramesConfig(), name="upload")


def test_rotated_phone_video_is_decoded_upright(asset, tmp_path):
    upright = cv2.resize(read_image(asset("obama")), (320, 400), interpolation=cv2.INTER_AREA)
    path = phone_portrait_mp4(tmp_path / "portrait.mp4", upright)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (320, 400, 270)  # 270 CCW = 90 clockwise
    ((_, frame),) = list(sample_video(path, FramesConfig(frames_per_clip=1)).frames())
    assert frame.shape == upright.shape
    error_upright = np.abs(frame.astype(int) - upright).mean()
    error_flipped = np.abs(frame.astype(int) - upright[::-1, ::-1]).mean()
    assert error_upright < 6 < error_flipped  # matches the scene, not a wrongly turned copy
