import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_frames import phone_portrait_mp4

from megatron_utils import cli
from megatron_utils.core.cache import OK
from megatron_utils.core.image_codec import ImageCodec
from megatron_utils.preprocessing import faces
from megatron_utils.preprocessing.faces import (
    BATCH_DETECTORS,
    FaceConfig,
    FaceDetector,
    NoFaceError,
    create_detector,
    extract_faces,
    extract_video_faces,
    faces_cache,
    fill_boxes,
    list_detectors,
    read_face_row,
    read_faces,
    resolve_face_config,
    square_crop,
    track_faces,
)
from megatron_utils.preprocessing.frames import FramesConfig, sample_indices, sample_video
from megatron_utils.preprocessing.video import iter_frames, read_image, write_mp4
from megatron_utils.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]
SHORT = FramesConfig(frames_per_clip=8)
ENTRY_KEYS = {"crops", "frame_index", "clip_index", "boxes", "scores", "detected", "landmarks", "track"}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


@pytest.fixture(scope="module")
def wolfgang(asset):
    return extract_video_faces(asset("wolfgang_langer"), FramesConfig(frames_per_clip=32), FaceConfig())


def test_detectors_are_registered():
    assert {"dlib_hog", "opencv_haar", "mtcnn", "blazeface"} <= set(list_detectors())
    assert {"mtcnn"} == BATCH_DETECTORS
    assert FaceConfig(detector="auto").detector == "auto"
    with pytest.raises(ValueError, match="unknown face detector"):
        FaceConfig(detector="nope")


def test_auto_detector_and_device_are_a_function_of_the_machine_s_device(tmp_path):
    def chosen(config: FaceConfig, machine: str) -> tuple[str, str]:
        resolved = resolve_face_config(config, machine)
        return resolved.detector, resolved.device

    auto = FaceConfig(detector="auto", device="auto")
    assert chosen(auto, "cuda") == ("mtcnn", "cuda") and chosen(auto, "cpu") == ("dlib_hog", "cpu")
    assert chosen(replace(auto, device="cpu"), "cuda") == ("dlib_hog", "cpu")  # the CPU was asked for
    assert chosen(replace(auto, device="cuda:1"), "cpu") == ("mtcnn", "cuda:1")
    assert chosen(FaceConfig(detector="mtcnn"), "cuda") == ("mtcnn", "cuda")
    assert chosen(FaceConfig(detector="mtcnn"), "cpu") == ("mtcnn", "cpu")
    assert chosen(FaceConfig(), "cuda") == ("dlib_hog", "cpu")  # dlib runs on the CPU wherever it is
    with pytest.raises(ValueError, match="dlib_hog.*CPU only.*mtcnn"):
        resolve_face_config(FaceConfig(device="cuda"), "cuda")
    for machine in ("cuda", "cpu"):  # resolving twice changes nothing, so workers may resolve again
        once = resolve_face_config(auto, machine)
        assert resolve_face_config(once, "cpu" if machine == "cuda" else "cuda") == once
    # The FF++ recipe asks for exactly this; this machine has no GPU, so its cache key says dlib_hog on cpu.
    recipe = load_recipe("ffpp-c23").preprocess
    assert (recipe.faces.detector, recipe.faces.device) == ("auto", "auto")
    cache = faces_cache(recipe.frames, recipe.faces, cache_root=tmp_path)
    saved = json.loads((cache.dir / "config.json").read_text())["config"]["faces"]
    assert (saved["detector"], saved["device"]) == ("dlib_hog", "cpu")
    assert cache.key == faces_cache(recipe.frames, replace(recipe.faces, detector="dlib_hog", device="cpu"),
                                    cache_root=tmp_path).key
    assert cache.key != faces_cache(recipe.frames, replace(recipe.faces, detector="mtcnn"),
                                    cache_root=tmp_path).key


def test_real_video_faces_found_plausible_and_smooth(wolfgang):
    (track,) = wolfgang.tracks
    assert len(track) >= 29 and track.detected.sum() >= 29  # a face in (nearly) every sampled frame
    assert set(track.frame_index) <= set(sample_indices(472, FramesConfig(frames_per_clip=32))[0])
    assert track.crops.shape == (len(track), 224, 224, 3) and track.crops.dtype == np.uint8
    boxes = track.boxes
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 640 and boxes[:, 3].max() <= 360
    sides = boxes[:, 2] - boxes[:, 0]
    assert sides.min() > 60 and sides.max() < 360  # a head-and-shoulders shot, not a speck or the frame
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    shift = np.linalg.norm(np.diff(centres, axis=0), axis=1) / sides[1:]
    assert shift.max() < 0.5  # ~0.6 s between samples: the face moves, it does not jump
    assert track.crops.std() > 20  # real picture content


def test_landmarks_are_fitted_on_the_crops(wolfgang):
    (track,) = wolfgang.tracks
    points = track.landmarks
    assert points.shape == (len(track), 68, 2) and points.dtype == np.float32
    assert points.min() > -0.1 * 224 and points.max() < 1.1 * 224  # on the crop, not on the frame
    nose_tip, chin, brows = points[:, 30], points[:, 8], points[:, 17:27].mean(1)
    assert np.abs(nose_tip - 112).max() < 50  # the crop is centred on the face
    assert (brows[:, 1] < nose_tip[:, 1]).all() and (nose_tip[:, 1] < chin[:, 1]).all()
    eye_distance = np.linalg.norm(points[:, 36] - points[:, 45], axis=1)
    assert eye_distance.min() > 50 and eye_distance.max() < 130  # margin 1.3: eyes ~40% of the side


def test_haar_finds_grace_hopper_where_hog_does(asset):
    image = read_image(asset("grace_hopper"))
    hog_boxes, _, hog_name = FaceDetector(FaceConfig(fallback=None))(image)
    haar_boxes, _, haar_name = FaceDetector(FaceConfig(detector="opencv_haar", fallback=None))(image)
    assert (hog_name, haar_name) == ("dlib_hog", "opencv_haar")
    assert len(hog_boxes) == 1 and len(haar_boxes) >= 1
    best = max(haar_boxes, key=lambda box: iou(box, hog_boxes[0]))
    assert iou(best, hog_boxes[0]) > 0.6  # Haar boxes are mapped onto HOG's box convention


def test_largest_track_keeps_one_person_and_all_returns_each(asset):
    path = asset("pyfeat_multi_face")
    largest = extract_video_faces(path, SHORT, FaceConfig(track="largest"))
    everyone = extract_video_faces(path, SHORT, FaceConfig(track="all"))
    assert len(largest.tracks) == 1 and len(everyone.tracks) >= 3
    boxes = np.concatenate([t.boxes for t in everyone.tracks])
    sides = boxes[:, 2] - boxes[:, 0]
    assert np.array_equal(largest.tracks[0].boxes[0], boxes[sides.argmax()])
    assert max(iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]) < 0.1  # different people
    assert everyone.tensors()["track"].tolist() == list(range(len(everyone.tracks)))


def test_square_crop_shifts_inside_the_frame_and_pads_only_when_too_small(asset):
    image = read_image(asset("grace_hopper"))  # 512 x 512
    inside = square_crop(image, np.array([200, 200, 300, 300]), 1.0, 100)
    assert np.array_equal(inside, image[200:300, 200:300])
    corner = square_crop(image, np.array([0, 0, 100, 100]), 2.0, 200)  # would start at -50: shifted
    assert np.array_equal(corner, image[:200, :200])
    huge = square_crop(image, np.array([0, 0, 512, 512]), 1.5, 768)  # 768 > 512: centred, black border
    assert huge[:128].max() == 0 and huge[-128:].max() == 0
    assert np.array_equal(huge[128:-128, 128:-128], image)
    shrunk = square_crop(image, np.array([0, 0, 512, 512]), 1.0, 64)
    assert np.array_equal(shrunk, cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA))


def test_fill_boxes_interpolates_close_gaps_and_drops_far_ones():
    detected = {0: np.array([0.0, 0, 10, 10]), 4: np.array([8.0, 0, 18, 10]), 40: np.array([0.0, 0, 10, 10])}
    filled, reasons = fill_boxes(detected, [0, 1, 2, 4, 20, 44, 60], max_gap=5)
    assert np.allclose(filled[1], [2, 0, 12, 10]) and np.allclose(filled[2], [4, 0, 14, 10])
    assert np.allclose(filled[44], detected[40])  # past the last detection: its box is held
    assert set(reasons) == {20, 60} and "within 5 frames" in reasons[20]


def test_frames_without_a_face_are_filled_from_neighbours_or_dropped(asset, tmp_path):
    indices, frames = zip(*iter_frames(asset("single_face_video"), range(12)), strict=True)
    frames = [np.zeros_like(f) if i in (4, 8) else f for i, f in zip(indices, frames, strict=True)]
    path = write_mp4(tmp_path / "gaps.mp4", frames, fps=30)
    config = FramesConfig(frames_per_clip=12, sampling="consecutive")
    (track,) = extract_video_faces(path, config, FaceConfig(max_gap=2)).tracks
    assert track.frame_index.tolist() == list(range(12))
    assert track.frame_index[~track.detected].tolist() == [4, 8] and track.scores[4] == 0
    assert np.allclose(track.boxes[4], (track.boxes[3] + track.boxes[5]) / 2, atol=1)
    assert track.crops[4].max() == 0 and track.crops[3].std() > 20  # cut from blank frame 4 itself
    (strict,) = extract_video_faces(path, config, FaceConfig(max_gap=0)).tracks
    assert 4 not in strict.frame_index and "no face detected" in strict.dropped[4]


def make_bad_and_odd_inputs(asset, folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {"empty": folder / "empty.mp4", "text": folder / "text.mp4", "missing": folder / "missing.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a video at all\n" * 100)
    for name, source in [("half_moov_first", "wolfgang_langer"), ("half_moov_last", "single_face_video")]:
        data = asset(source).read_bytes()
        files[name] = folder / f"{name}.mp4"
        files[name].write_bytes(data[: len(data) // 2])
    photo = read_image(asset("obama"))  # 910 x 1137 portrait
    files["one_frame"] = write_mp4(folder / "one_frame.mp4", [cv2.resize(photo, (320, 400))])
    files["portrait"] = phone_portrait_mp4(folder / "portrait.mp4", cv2.resize(photo, (320, 400)))
    canvas = np.zeros((2160, 3840, 3), np.uint8)
    canvas[:, 1056:2784] = cv2.resize(photo, (1728, 2160), interpolation=cv2.INTER_CUBIC)
    files["uhd"] = write_mp4(folder / "uhd.mp4", [canvas] * 3, preset="ultrafast")
    files["no_face"] = asset("no_face_video")
    files["good"] = asset("single_face_video")
    return files


def test_batch_records_bad_input_and_goes_on_then_skips_and_redoes(asset, tmp_path):
    files = make_bad_and_odd_inputs(asset, tmp_path / "media")
    items = pd.DataFrame({"video_id": list(files), "path": [str(p) for p in files.values()]})
    faces = FaceConfig(min_faces=3)
    cache, report = extract_faces(items, SHORT, faces, cache_root=tmp_path / "cache", workers=2)
    assert set(report.failures) == {"empty", "text", "missing", "half_moov_last", "no_face"}
    assert "empty (0 bytes)" in report.failures["empty"] and str(files["empty"]) in report.failures["empty"]
    assert "not a readable video" in report.failures["text"]
    assert "does not exist" in report.failures["missing"]
    assert "not a readable video" in report.failures["half_moov_last"]
    assert "no face found in any of the 8 sampled frames" in report.failures["no_face"]
    assert report.done == 5 and report.units > 0 and cache.dir.name == cache.key

    tensors, meta = read_faces(cache, "good")
    assert set(tensors) == ENTRY_KEYS and tensors["crops"].shape == (8, 224, 224, 3)
    assert tensors["boxes"].dtype == np.float32 and tensors["detected"].dtype == bool
    assert tensors["frame_index"].dtype == np.int32 and tensors["clip_index"].tolist() == [0] * 8
    assert (meta["width"], meta["height"], meta["fps"], meta["frame_count"]) == (640, 360, 30.0, 72)
    assert meta["detectors_used"]["dlib_hog"] >= 1 and meta["source"] == str(files["good"])

    half, meta = read_faces(cache, "half_moov_first")  # the stream breaks off mid-way: the first half is used
    assert 3 <= len(half["frame_index"]) < 8 and half["frame_index"].max() < 472 // 2
    assert any("could not be decoded" in reason for reason in meta["dropped"][0].values())
    one, _ = read_faces(cache, "one_frame")
    assert one["frame_index"].tolist() == [0]  # min_faces is capped at the frames there are
    portrait, meta = read_faces(cache, "portrait")  # found only because frames are turned upright
    assert meta["rotation"] == 270 and (meta["width"], meta["height"]) == (320, 400)
    assert portrait["boxes"][:, 2].max() <= 320 and portrait["boxes"][:, 3].max() <= 400
    uhd, meta = read_faces(cache, "uhd")
    assert (meta["width"], meta["height"]) == (3840, 2160) and len(uhd["frame_index"]) == 3
    assert uhd["boxes"][0, 0] > 1056 and uhd["boxes"][0, 2] - uhd["boxes"][0, 0] > 400  # in 4K pixels

    _, again = extract_faces(items, SHORT, faces, cache_root=tmp_path / "cache", workers=2)
    assert (again.done, again.skipped, set(again.failures)) == (0, 5, set(report.failures))
    os.utime(files["one_frame"], ns=(time.time_ns(), time.time_ns() + 10**9))  # the source changed
    _, changed = extract_faces(items, SHORT, faces, cache_root=tmp_path / "cache", workers=1)
    assert (changed.done, changed.skipped) == (1, 4)
    _, forced = extract_faces(items[items.video_id == "good"], SHORT, faces, force=True,
                              cache_root=tmp_path / "cache", workers=1)
    assert forced.done == 1


def test_stored_crops_are_the_extracted_crops_exactly(asset, tmp_path):
    path = asset("single_face_video")
    cache, _ = extract_faces([("good", path)], SHORT, FaceConfig(), cache_root=tmp_path, workers=1)
    extracted = extract_video_faces(path, SHORT, FaceConfig()).tensors()
    stored, _ = read_faces(cache, "good")
    assert set(stored) == set(extracted) == ENTRY_KEYS
    for name, array in extracted.items():
        assert stored[name].dtype == array.dtype
        np.testing.assert_array_equal(stored[name], array, err_msg=name)  # lossless: bit for bit
    for row in (0, 5, len(extracted["crops"]) - 1):  # one crop read alone, as fine-tuning streams them
        one = read_face_row(cache, "good", ("crops", "landmarks"), row)
        np.testing.assert_array_equal(one["crops"], extracted["crops"][row])
        np.testing.assert_array_equal(one["landmarks"], extracted["landmarks"][row])
    assert cache.entry_path("good").stat().st_size < 0.5 * extracted["crops"].nbytes
    assert set(read_faces(cache, "good", ["frame_index", "track"])[0]) == {"frame_index", "track"}


def test_the_crops_storage_format_is_part_of_the_cache_key(tmp_path, monkeypatch):
    webp = faces_cache(SHORT, FaceConfig(), tmp_path)
    monkeypatch.setattr(faces, "CROPS_CODEC", ImageCodec("PNG", "uint8", 3))
    png = faces_cache(SHORT, FaceConfig(), tmp_path)
    assert webp.key != png.key and webp.config["crops"]["format"] == "WEBP"


def test_a_damaged_crop_fails_naming_the_item_and_the_crop(wolfgang, tmp_path):
    cache = faces_cache(FramesConfig(frames_per_clip=32), FaceConfig(), tmp_path)
    extracted = wolfgang.tensors()
    entry = faces.encode_faces(extracted)
    count = len(extracted["crops"])
    start = entry["crops_offsets"][3]
    damaged = entry["crops_bytes"].copy()
    damaged[start:start + 16] = 0  # crop 3's RIFF/WebP header
    cache.write("ffpp/Deepfakes/000_003", {**entry, "crops_bytes": damaged})
    expected = rf"faces entry 'ffpp/Deepfakes/000_003' .*crops image 3 of {count}: cannot be decoded as WEBP"
    with pytest.raises(ValueError, match=expected):
        read_faces(cache, "ffpp/Deepfakes/000_003")
    with pytest.raises(ValueError, match=expected):
        read_face_row(cache, "ffpp/Deepfakes/000_003", ("crops",), 3)
    intact = read_face_row(cache, "ffpp/Deepfakes/000_003", ("crops",), 4)["crops"]  # the damage stays local
    np.testing.assert_array_equal(intact, extracted["crops"][4])

    cache.write("truncated", {**entry, "crops_bytes": entry["crops_bytes"][:-100]})  # a short copy
    with pytest.raises(ValueError, match=r"faces entry 'truncated' .*crops: offsets .* do not split"):
        read_faces(cache, "truncated")
    with pytest.raises(ValueError, match=rf"faces entry 'truncated' .*crops image {count - 1} of {count}"):
        read_face_row(cache, "truncated", ("crops",), count - 1)


def test_single_video_raises_clear_errors(asset):
    with pytest.raises(NoFaceError, match="no face found"):
        extract_video_faces(asset("pyfeat_no_face_image"), SHORT, FaceConfig())


KILL_SCRIPT = """
import sys
from megatron_utils.preprocessing.faces import FaceConfig, extract_faces
from megatron_utils.preprocessing.frames import FramesConfig
items = [(f"copy{i}", sys.argv[1]) for i in range(6)]
extract_faces(items, FramesConfig(frames_per_clip=4), FaceConfig(), cache_root=sys.argv[2], workers=2)
"""


def test_killed_run_resumes_without_corrupt_or_duplicate_entries(asset, tmp_path):
    source, root = asset("single_face_video"), tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(root)], cwd=REPO,
                               start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list(root.glob("faces/*/items/copy*.safetensors")) and time.time() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the parent and its pool workers, mid-run
        process.wait()
    items = [(f"copy{i}", str(source)) for i in range(6)]
    cache, report = extract_faces(items, FramesConfig(frames_per_clip=4), cache_root=root, workers=1)
    assert report.skipped >= 1 and report.done >= 1 and report.done + report.skipped == 6
    assert not report.failures
    entries = sorted(p.name for p in cache.items_dir.glob("copy*.safetensors"))  # hidden temp files aside
    assert len(entries) == 6 and sorted(cache.done_items()) == [f"copy{i}" for i in range(6)]
    for i in range(6):
        tensors, _ = read_faces(cache, f"copy{i}")
        assert tensors["crops"].shape == (4, 224, 224, 3)
        assert cache.records()[f"copy{i}"]["status"] == OK


def test_cli_extract_prints_summary_and_fails_on_bad_items(asset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["extract"])
    index = tmp_path / "index.csv"
    pd.DataFrame({"video_id": ["good"], "path": [str(asset("single_face_video"))]}).to_csv(index, index=False)
    common = ["--frames-per-clip", "8", "--workers", "1", "--cache", str(tmp_path / "cache")]
    assert cli.main(["extract", str(index), str(asset("grace_hopper")), *common]) == 0
    out = capsys.readouterr().out
    assert "faces: 2 done" in out and "cache: " in out and str(tmp_path / "cache") in out
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"")
    assert cli.main(["extract", str(index), str(bad), *common]) == 1
    out = capsys.readouterr().out
    assert "1 already cached, 1 failed" in out and "broken" in out and "empty" in out


def test_dlib_detection_does_not_depend_on_the_memory_layout_of_the_frame(asset):
    """PyAV returns frames with padded rows for some widths; dlib must see the same pixels either way."""
    image = read_image(asset("obama"))
    padded = np.zeros((image.shape[0], image.shape[1] + 24, 3), np.uint8)
    padded[:, : image.shape[1]] = image
    view = padded[:, : image.shape[1]]  # same pixels, rows 24 px apart in memory
    detect = create_detector("dlib_hog", FaceConfig(upsample=0))
    boxes, scores = detect(view)
    expected_boxes, expected_scores = detect(np.ascontiguousarray(view))
    assert len(boxes) == 1
    np.testing.assert_array_equal(boxes, expected_boxes)
    np.testing.assert_allclose(scores, expected_scores)


@pytest.mark.parametrize("name", ["dlib_hog", "mtcnn"])
def test_threads_sharing_one_detector_find_what_one_thread_finds(name, asset):
    # `megatron serve` runs several jobs on one loaded pipeline; dlib's detector and OpenCV's cascade crash
    # or corrupt when two threads use one instance, so each thread gets its own; MTCNN's torch modules
    # keep no state between calls, so the threads share one.
    from concurrent.futures import ThreadPoolExecutor

    detector = FaceDetector(FaceConfig(detector=name, fallback="opencv_haar"))
    images = [read_image(asset(name)) for name in ("obama", "biden", "pyfeat_multi_face", "einstein")]
    images.append(np.full_like(images[0], 128))  # no face: the Haar fallback runs too
    expected = [detector(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(detector, images * 4))
    for (boxes, scores, by), (want_boxes, want_scores, want_by) in zip(found, expected * 4, strict=True):
        np.testing.assert_allclose(boxes, want_boxes, atol=1e-3)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert by == want_by


@pytest.mark.parametrize("name", ["mtcnn", "blazeface"])
def test_neural_detectors_find_what_dlib_finds_in_its_box_convention(name, asset):
    detect, reference = create_detector(name, FaceConfig()), create_detector("dlib_hog", FaceConfig())
    for photo in ("obama", "grace_hopper", "pyfeat_single_face"):
        image = read_image(asset(photo))
        (boxes, scores), (truth, _) = detect(image), reference(image)
        assert len(boxes) == 1 and len(truth) == 1 and scores[0] > 0.5, (photo, boxes, scores)
        side, true_side = boxes[0, 2] - boxes[0, 0], truth[0, 2] - truth[0, 0]
        # Mapped onto dlib HOG's boxes (square, same scale and centre), so a clip's crops keep one scale.
        assert boxes[0, 3] - boxes[0, 1] == pytest.approx(side, rel=1e-4)
        assert 0.75 < side / true_side < 1.33, (photo, side, true_side)
        offset = np.linalg.norm((boxes[0, :2] + boxes[0, 2:]) / 2 - (truth[0, :2] + truth[0, 2:]) / 2)
        assert offset < 0.15 * true_side, (photo, offset, true_side)
    assert len(detect(read_image(asset("pyfeat_no_face_image")))[0]) == 0
    # MTCNN finds every face of the group photo that dlib does; BlazeFace (short range) only the larger ones.
    group = read_image(asset("pyfeat_multi_face"))
    assert len(detect(group)[0]) >= (4 if name == "mtcnn" else 1)


def test_blazeface_decoding_pieces():
    from megatron_utils.preprocessing.detectors import blazeface_anchors, weighted_nms

    anchors = blazeface_anchors()
    assert anchors.shape == (896, 2) and len(np.unique(anchors, axis=0)) == 16 * 16 + 8 * 8
    assert anchors.min() > 0 and anchors.max() < 1
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    kept, scores = weighted_nms(boxes, np.array([0.9, 0.6, 0.8], np.float32), 0.3)
    np.testing.assert_allclose(kept[0], [0.4, 0.4, 10.4, 10.4], atol=1e-5)  # score-weighted mean of two
    np.testing.assert_allclose(kept[1], boxes[2])
    np.testing.assert_allclose(scores, [0.9, 0.8])


def test_a_video_tracked_with_the_mtcnn_detector_through_the_stage(asset, tmp_path, one_torch_thread):
    frames, path = FramesConfig(frames_per_clip=8), asset("single_face_video")
    config = FaceConfig(detector="mtcnn", fallback=None, crop_size=64)
    cache, report = extract_faces([("video", path)], frames, config, cache_root=tmp_path, workers=1)
    assert report.done == 1 and not report.failures
    saved = json.loads((cache.dir / "config.json").read_text())["config"]["faces"]
    assert (saved["detector"], saved["device"]) == ("mtcnn", "cpu")  # the key names what ran, and where
    tensors, meta = read_faces(cache, "video")
    assert meta["detectors_used"] == {"mtcnn": 8} and tensors["crops"].shape == (8, 64, 64, 3)
    (hog,) = extract_video_faces(path, frames, FaceConfig(fallback=None, crop_size=64)).tracks
    assert hog.frame_index.tolist() == tensors["frame_index"].tolist()
    # dlib's box convention, so crops from either detector show the face at one scale
    assert min(iou(a, b) for a, b in zip(tensors["boxes"], hog.boxes, strict=True)) > 0.6


def test_a_video_detected_in_batches_is_tracked_as_frame_by_frame(asset, one_torch_thread):
    # On a GPU the batch detector takes 32 frames at a time; batches of 3 over 8 frames (the last one
    # short) walk the same path here, where the CPU takes one frame at a time.
    video = sample_video(asset("single_face_video"), FramesConfig(frames_per_clip=8))
    config = FaceConfig(detector="mtcnn", crop_size=64)
    one_by_one, batched = FaceDetector(config), FaceDetector(config)
    batched.batch_size = 3
    (expected,) = track_faces(video, config, one_by_one).tracks
    (track,) = track_faces(video, config, batched).tracks
    assert track.frame_index.tolist() == expected.frame_index.tolist() and len(track) == 8
    np.testing.assert_allclose(track.boxes, expected.boxes, atol=1e-2)
    assert np.abs(track.crops.astype(int) - expected.crops).max() <= 1


def matched(found: np.ndarray, expected: np.ndarray) -> float:
    """The lowest IoU of each expected box with its best match among `found` (1 when both are empty)."""
    assert len(found) == len(expected)
    return min((max(iou(want, box) for box in found) for want in expected), default=1.0)


@pytest.fixture(scope="module")
def wolfgang_frames(asset):
    """Six frames of a real video, at the detection size (640 x 360)."""
    return [frame for _, frame in iter_frames(asset("wolfgang_langer"), range(0, 472, 80))]


def test_batched_mtcnn_finds_the_faces_facenet_finds_frame_by_frame(asset, wolfgang_frames, one_torch_thread):
    import torch
    from facenet_pytorch import MTCNN

    from megatron_utils.preprocessing.detectors import MTCNN_MIN_FACE, mtcnn_detect

    library = MTCNN(keep_all=True, min_face_size=MTCNN_MIN_FACE).eval()
    group = read_image(asset("pyfeat_multi_face"))
    for batch in (wolfgang_frames, [group]):
        with torch.inference_mode():
            found = mtcnn_detect(library, torch.from_numpy(np.stack(batch)))
        for image, (boxes, scores) in zip(batch, found, strict=True):
            expected, expected_scores = library.detect(image)  # the library, one frame at a time
            assert len(expected) >= 1 and matched(boxes, expected) > 0.99
            expected_scores = np.asarray(expected_scores, np.float32)
            np.testing.assert_allclose(np.sort(scores), np.sort(expected_scores), atol=1e-4)
    assert len(found[0][0]) >= 4  # every face of the group photo


def test_mtcnn_batches_match_its_frames_and_mixed_sizes_are_grouped(asset, wolfgang_frames, one_torch_thread):
    detect = create_detector("mtcnn", FaceConfig())
    one_by_one = [detect(frame) for frame in wolfgang_frames]
    for (boxes, scores), (expected, expected_scores) in zip(detect.batch(wolfgang_frames), one_by_one,
                                                           strict=True):
        assert len(boxes) == 1 and matched(boxes, expected) > 0.99
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    photo = read_image(asset("grace_hopper"))  # 512 x 512
    with pytest.raises(ValueError, match="images of one size.*groups frames by size"):
        detect.batch([wolfgang_frames[0], photo])
    # FaceDetector hands the detector each size's frames together and keeps their order.
    detector = FaceDetector(FaceConfig(detector="mtcnn", fallback=None))
    assert detector.batch_size == 1  # on the CPU, where a batch is no faster; 32 on a GPU
    frames = [wolfgang_frames[0], photo, wolfgang_frames[1]]
    for (boxes, _, name), frame in zip(detector.detect_frames(frames), frames, strict=True):
        expected, _, _ = detector(frame)
        assert name == "mtcnn" and matched(boxes, expected) > 0.99
