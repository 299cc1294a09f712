import numpy as np
import pytest

from megatron_utils.preprocessing.video import (
    MediaError,
    decode_spans,
    iter_frames,
    probe,
    read_frames,
    read_image,
    seek_plan,
    write_mp4,
)


def test_probe_real_video(asset):
    info = probe(asset("wolfgang_langer"))
    assert (info.width, info.height, info.codec) == (640, 360, "h264")
    assert info.frame_count == 472 and abs(info.fps - 23.976) < 0.01


def test_read_selected_frames_stops_early(asset):
    indices, frames = read_frames(asset("single_face_video"), [0, 10, 20])
    assert indices == [0, 10, 20] and frames.shape == (3, 360, 640, 3) and frames.dtype == np.uint8
    assert frames[0].std() > 10  # real picture content, not a blank frame


def test_write_mp4_roundtrip_is_h264(tmp_path):
    rng = np.random.default_rng(0)
    frames = [
        np.clip(
            np.full((64, 96, 3), 40 * i, np.uint8) + rng.integers(0, 5, (64, 96, 3), dtype=np.uint8), 0, 255
        ).astype(np.uint8)
        for i in range(6)
    ]
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    info = probe(path)
    assert (info.width, info.height, info.codec, info.frame_count) == (96, 64, "h264", 6)
    decoded = dict(iter_frames(path))
    assert abs(float(decoded[5].mean()) - float(frames[5].mean())) < 3


@pytest.mark.parametrize(
    "content,reason", [(b"", "empty"), (b"this is not a video" * 50, "not a readable video")]
)
def test_bad_files_raise_media_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError, match=reason) as error:
        probe(path)
    assert str(path) in str(error.value)


def test_read_image_and_missing_file(asset, tmp_path):
    image = read_image(asset("grace_hopper"))
    assert image.shape == (512, 512, 3)
    with pytest.raises(MediaError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")


def test_decode_spans_start_at_the_keyframe_before_each_wanted_frame():
    assert decode_spans([0, 10, 20, 30], [3, 12, 14, 35]) == [(0, 3), (10, 14), (30, 35)]
    # frame 11's keyframe (10) is reached by decoding on from frame 9: no seek back
    assert decode_spans([0, 10, 20, 30], [9, 11, 29]) == [(0, 11), (20, 29)]
    assert decode_spans([0], [5, 50]) == [(0, 50)]


def test_seeking_decodes_less_and_gives_the_same_frames(asset, tmp_path):
    frames = [frame for _, frame in iter_frames(asset("wolfgang_langer"), range(120))]
    path = write_mp4(tmp_path / "gop12.mp4", frames, gop=12, preset="veryfast")
    wanted = [5, 40, 41, 90, 119]
    _, spans = seek_plan(path, wanted)
    assert spans == [(0, 5), (36, 41), (84, 90), (108, 119)]  # 32 frames decoded instead of 120
    sought = dict(iter_frames(path, wanted, seek=True))
    from_start = dict(iter_frames(path, wanted, seek=False))
    assert sorted(sought) == wanted == sorted(from_start)
    for index in wanted:
        np.testing.assert_array_equal(sought[index], from_start[index])
    # Dense sampling gains nothing from seeking: decoded from the start.
    assert seek_plan(path, range(0, 120, 3)) is None


def test_seeking_in_a_camera_encoded_video_matches_decoding_from_the_start(asset):
    path = asset("wolfgang_langer")  # a real Pexels H.264 encode, B-frames and all
    wanted = list(range(7, 472, 58))
    assert seek_plan(path, wanted, always=True) is not None
    sought = dict(iter_frames(path, wanted, seek=True))
    from_start = dict(iter_frames(path, wanted, seek=False))
    assert sorted(sought) == wanted == sorted(from_start)
    for index in wanted:
        np.testing.assert_array_equal(sought[index], from_start[index])
