"""`megatron predict` on the session's tiny run (tests/tiny_run.py: real mini-dataset videos preprocessed
with tiny models, 64 px crops, T = 8), scoring real and broken media through the Python API and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import STRIDE, T, video_of

from megatron_utils.cli import main
from megatron_utils.inference.predict import (
    Detector,
    Prediction,
    annotate_image,
    annotate_video,
    plot_timeline,
    write_csv,
    write_jsonl,
)
from megatron_utils.models.heads import MegatronHead
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess
from megatron_utils.preprocessing.video import iter_frames, probe, read_frames, read_image, write_mp4
from megatron_utils.training.clips import load_clips
from megatron_utils.training.evaluate import clip_probabilities

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = {"clips_per_video": 2}  # 40-frame videos: windows of frames 0, 5, ..., 35 and 4, 9, ..., 39


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector(tiny_run):
    return Detector.from_pretrained(tiny_run[0], **FAST)


def check_record(prediction: Prediction):
    assert prediction.status == "ok" and prediction.error is None, prediction.error
    assert 0 <= prediction.fake_probability <= 1
    p, band = prediction.fake_probability, prediction.uncertain_below
    assert band <= prediction.threshold
    expected = "fake" if p >= prediction.threshold else "uncertain" if p >= band else "real"
    assert prediction.verdict == expected
    assert "of real validation videos scored this high" in prediction.decision
    best = max(prediction.faces, key=lambda face: face.probability)
    assert (prediction.face, prediction.fake_probability) == (best.track, best.probability)
    assert prediction.face_box == best.boxes[0]
    for face in prediction.faces:
        assert face.probability == pytest.approx(np.mean([w.probability for w in face.windows]))
        assert len(face.frame_index) == len(face.boxes) == len(face.timeline) == face.frames_used
        for frame, value in zip(face.frame_index, face.timeline, strict=True):  # mean of covering windows
            covering = [w.probability for w in face.windows if w.first_frame <= frame <= w.last_frame]
            assert value == pytest.approx(np.mean(covering))
    assert set(prediction.timings) == {"decode_faces", "depth", "embed", "classify", "total"}
    assert "tiny_random" in prediction.weights["rgb_backbone"]
    assert "random-init:depth-anything-tiny" in prediction.weights["depth_model"]
    json.dumps(prediction.to_dict())  # JSON-able as it is


def test_video_predictions_are_complete_and_identical_twice(detector, tiny_run):
    _, table, _ = tiny_run
    for label in ("real", "fake"):
        path = video_of(table, label)
        first, second = detector.predict(path), detector.predict(path)
        check_record(first)
        assert first.media == "video" and first.sample_every == STRIDE and first.frames_used == 16
        assert [(w.first_frame, w.last_frame) for w in first.faces[0].windows] == [(0, 35), (4, 39)]
        # No augmentation and no dropout at inference: the same file gives the same result.
        drop_timings = lambda p: {**p.to_dict(), "timings": None}  # noqa: E731
        assert drop_timings(first) == drop_timings(second)
    assert not detector.model.training


def test_bytes_and_decoded_frames_score_like_the_file(detector, tiny_run, tmp_path):
    """A service scores an upload's bytes or frames it decoded itself, without a temporary file."""
    _, table, _ = tiny_run
    path = Path(video_of(table, "fake"))
    from_file = detector.predict(path)
    from_bytes = detector(path.read_bytes(), name="upload.mp4")
    _, frames = read_frames(path, range(probe(path).frame_count))
    from_frames = detector(frames, name="frames")
    for other, name in ((from_bytes, "upload.mp4"), (from_frames, "frames")):
        check_record(other)
        assert other.path == name
        assert other.fake_probability == pytest.approx(from_file.fake_probability, abs=1e-6)
        assert [w.probability for w in other.faces[0].windows] == pytest.approx(
            [w.probability for w in from_file.faces[0].windows], abs=1e-6)
    assert (from_file.source, from_bytes.source, from_frames.source) == ("file", "bytes", "frames")
    # Annotating needs the scored media again: a name alone is not a file to read.
    with pytest.raises(ValueError, match="scored from bytes"):
        annotate_video(from_bytes, tmp_path / "upload.mp4")
    annotated = annotate_video(from_frames, tmp_path / "frames.mp4", media=frames)
    assert probe(annotated).frame_count == len(frames)
    broken = detector(b"not a video", name="junk.bin")
    assert broken.status == "failed" and broken.error.startswith("junk.bin: ")
    wrong = detector(frames.astype(np.float32), name="floats")
    assert wrong.status == "failed" and "uint8" in wrong.error and wrong.error.startswith("floats: ")


@pytest.fixture(scope="module")
def uniform_embeddings(tiny_run, tmp_path_factory):
    """The real test video preprocessed like tiny_run but with uniform sampling, 2 interleaved clips."""
    _, table, _ = tiny_run
    recipe = json.loads((tiny_run[0] / "preprocess.json").read_text())["config"]
    config = PreprocessConfig.from_dict({**recipe, "frames": {"frames_per_clip": T, "clips_per_video": 2}})
    rows = table[table["path"] == video_of(table, "real")]
    return preprocess(rows, config, cache_root=tmp_path_factory.mktemp("uniform"), workers=0).embed.dir


@pytest.mark.parametrize(("streams", "sampling"), [("both", "consecutive"), ("depth", "consecutive"),
                                                   ("both", "uniform")])
def test_predict_scores_a_video_exactly_as_evaluate_scores_its_cached_clips(tiny_run, uniform_embeddings,
                                                                             streams, sampling, tmp_path):
    """Predict samples as training did by construction: its clips are the cached ones, and its score is
    evaluate's. Also the guard against feeding one modality to the other stream."""
    run, table, embed_dir = tiny_run
    embed_dir = uniform_embeddings if sampling == "uniform" else embed_dir
    # A checkpoint whose score depends strongly, and differently, on each stream's input, so that swapping
    # the modalities moves it far more than float16 rounding can.
    sensitive = tmp_path / "run"
    (sensitive / "best").mkdir(parents=True)
    shutil.copy(embed_dir / "preprocess.json", sensitive / "best")
    shutil.copy(run / "best" / "decision.json", sensitive / "best")
    config = replace(MegatronHead.from_pretrained(run / "best").config, streams=streams, pooling="mean",
                     dropout=0.0)
    torch.manual_seed(0)
    model = MegatronHead(config).eval()
    with torch.no_grad():  # tiny_random features vary little: amplify them, and the head
        for scale, name in zip((40.0, -60.0), model.stream_names, strict=False):
            model.embeddings[name].project.weight.mul_(scale)
        model.head[-1].weight.mul_(5.0)
    model.save_pretrained(sensitive / "best")

    row = table[table["path"] == video_of(table, "real")]
    clips = load_clips(row, embed_dir)
    per_clip = clip_probabilities(model, clips)
    expected = float(per_clip[0])
    with torch.no_grad():
        rgb, depth = clips.features["rgb"].float(), clips.features["depth"].float()
        swapped = model(rgb=depth, depth=rgb, valid=clips.valid) if streams == "both" else \
            model(rgb=None, depth=rgb, valid=clips.valid)
    assert abs(float(torch.sigmoid(swapped[0, 0])) - expected) > 0.1  # a swap would be caught

    prediction = Detector.from_pretrained(sensitive).predict(row["path"].iloc[0])
    check_record(prediction)
    windows = prediction.faces[0].windows
    assert len(windows) == len(per_clip)
    if sampling == "consecutive":
        assert (windows[0].first_frame, windows[0].last_frame) == (0, (T - 1) * STRIDE)
    for window, probability in zip(windows, per_clip, strict=True):
        assert window.probability == pytest.approx(float(probability), abs=1e-3)
    assert prediction.faces[0].probability == pytest.approx(float(np.mean(per_clip)), abs=1e-3)


def test_multi_face_photo_scores_every_face_and_names_the_highest(detector, asset):
    prediction = detector.predict(asset("pyfeat_multi_face"))
    check_record(prediction)
    assert prediction.media == "image" and len(prediction.faces) >= 3
    assert len({tuple(face.boxes[0]) for face in prediction.faces}) == len(prediction.faces)
    for face in prediction.faces:  # a still image is one window of one frame
        assert face.frame_index == [0] and len(face.windows) == 1 and face.windows[0].frames == 1


def test_single_image(detector, asset, tmp_path):
    prediction = detector.predict(asset("obama"))
    check_record(prediction)
    assert len(prediction.faces) == 1 and prediction.frames_used == 1
    out = annotate_image(prediction, tmp_path / "obama.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    # The same photo as uploaded bytes and as a decoded array is the same still image.
    for media in (Path(asset("obama")).read_bytes(), read_image(asset("obama"))):
        again = detector(media, name="upload")
        check_record(again)
        assert again.media == "image" and again.sample_every is None
        assert again.fake_probability == pytest.approx(prediction.fake_probability, abs=1e-6)


@pytest.fixture(scope="module")
def broken_files(tiny_run, asset, tmp_path_factory):
    """Each malformed input with the words its failure reason must contain."""
    folder = tmp_path_factory.mktemp("broken")
    good = video_of(tiny_run[1], "real")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    data = Path(good).read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_mp4(folder / "one_frame.mp4", [frame for _, frame in iter_frames(good, [0])])
    return {folder / "empty.mp4": "empty", folder / "text.mp4": "not a readable video",
            folder / "truncated.mp4": "not a readable video", folder / "one_frame.mp4": "too short",
            asset("no_face_video"): "no face found", folder / "missing.mp4": "does not exist"}


def test_broken_inputs_fail_with_reasons_and_the_batch_goes_on(detector, tiny_run, broken_files, tmp_path):
    good = video_of(tiny_run[1], "fake")
    paths = [good, *broken_files, good]
    predictions = list(detector.predict_many(paths))
    assert [p.path for p in predictions] == [str(p) for p in paths]
    check_record(predictions[0])
    assert predictions[-1].fake_probability == predictions[0].fake_probability
    for prediction, (path, reason) in zip(predictions[1:-1], broken_files.items(), strict=True):
        assert prediction.status == "failed" and prediction.fake_probability is None
        assert str(path) in prediction.error and reason in prediction.error, prediction.error
    write_jsonl(predictions, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert Prediction.from_dict(json.loads(lines[0])) == predictions[0]
    write_csv(predictions, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert [row["status"] for row in rows] == ["ok", *["failed"] * len(broken_files), "ok"]
    assert rows[1]["error"] == predictions[1].error


def test_timeline_plot_and_annotated_video(detector, tiny_run, tmp_path):
    path = video_of(tiny_run[1], "fake")
    prediction = detector.predict(path)
    plot = plot_timeline(prediction, tmp_path / "timeline.png")
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert Image.open(plot).size[0] > 400
    video = annotate_video(prediction, tmp_path / "annotated.mp4")
    info, source = probe(video), probe(path)
    assert info.codec == "h264" and info.frame_count == source.frame_count
    assert (info.width, info.height) == (source.width, source.height)
    # The box is drawn on every frame between sampled ones: frame 2 lies between samples 0 and 4.
    (_, drawn), (_, plain) = next(iter_frames(video, [2])), next(iter_frames(path, [2]))
    face = prediction.deciding_face()
    x0, y0, x1, y1 = (int(v) for v in np.mean([face.boxes[0], face.boxes[1]], axis=0))
    edge = np.abs(drawn[y0 + 2: y1 - 2, x0].astype(int) - plain[y0 + 2: y1 - 2, x0].astype(int)).mean()
    assert edge > 30  # the box's left side is painted over the face's surroundings
    failed = detector.predict(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="was not scored"):
        plot_timeline(failed, tmp_path / "nothing.png")


def test_weights_other_than_the_training_ones_are_refused(tiny_run, tmp_path):
    from safetensors.torch import save_file

    from megatron_utils.models.backbones import create_backbone

    backbone = create_backbone("tiny_random")
    state = {name: tensor + 0.01 for name, tensor in backbone.model.state_dict().items()}
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="rgb backbone weights .* are not the ones the run was trained with"):
        Detector.from_pretrained(tiny_run[0], rgb_weights=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="unknown option"):
        Detector.from_pretrained(tiny_run[0], windows=3)


def test_cli_exit_codes_and_outputs(tiny_run, broken_files, tmp_path, capsys):
    run, table, _ = tiny_run
    inputs = tmp_path / "inputs"
    (inputs / "nested").mkdir(parents=True)
    shutil.copy(video_of(table, "fake"), inputs / "nested" / "clip.mp4")
    (inputs / "notes.txt").write_text("not media: folders yield only videos and images")
    out = tmp_path / "out"
    args = ["predict", str(inputs), "--run", str(run), "--clips-per-video", "2", "--jsonl",
            str(out / "p.jsonl"), "--csv", str(out / "p.csv"), "--annotate", str(out / "annotated"),
            "--plot", str(out / "plots")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "clip.mp4" in printed and "scored 1 of 1 inputs" in printed and "tiny_random" in printed
    assert len((out / "p.jsonl").read_text().splitlines()) == 1
    assert probe(out / "annotated" / "clip.mp4").codec == "h264"
    assert (out / "plots" / "clip.png").read_bytes().startswith(PNG_SIGNATURE)

    empty = next(path for path in broken_files if path.name == "empty.mp4")
    assert main(["predict", str(inputs / "nested" / "*.mp4"), str(empty), "--run", str(run),
                 "--clips-per-video", "2"]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "file is empty" in printed and "scored 1 of 2" in printed

    assert main(["predict", str(tmp_path / "nothing-*.mp4"), "--run", str(run)]) == 2
    assert "no input matched" in capsys.readouterr().err
    assert main(["predict", "", "--run", str(run)]) == 2  # not the current folder
    assert "empty string" in capsys.readouterr().err
    assert main(["predict", str(inputs), "--run", str(tmp_path / "no-run")]) == 2
    assert main(["predict", str(inputs), "--run", str(run), "--checkpoint", "nope"]) == 2
