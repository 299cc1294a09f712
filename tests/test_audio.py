"""The optional audio stream on real sound: decoding, windows aligned to the sampled frames, the pretrained
speaker encoder, the stage cache, the mini dataset's audio tracks and VoiceSwap family, training and
predicting with a third stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megatron_utils.core.cache import StageCache
from megatron_utils.datasets import build_index, write_index
from megatron_utils.datasets.mini.build import MANIFEST, fake_path, original_path
from megatron_utils.datasets.mini.speech import voice_of
from megatron_utils.models.audio import MelConfig
from megatron_utils.models.heads import model_config
from megatron_utils.preprocessing.audio import AudioConfig, AudioEmbedder, mel_windows
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess
from megatron_utils.preprocessing.video import decode_audio, read_frames, write_mp4
from megatron_utils.training.clips import load_clips
from megatron_utils.training.evaluate import evaluate_run
from megatron_utils.training.train import TrainConfig, train

RATE = MelConfig().sample_rate


def test_decoding_follows_the_track_and_says_when_there_is_none(asset, tmp_path):
    speech = decode_audio(asset("face_noface_video"), RATE)
    assert speech.dtype == np.float32 and abs(len(speech) / RATE - 6.4) < 0.05  # the video's 6.4 s
    assert decode_audio(asset("carphone"), RATE) is None  # a video without an audio track
    assert decode_audio(asset("grace_hopper"), RATE) is None  # a photo
    # Written with the frames as AAC and read back: the same samples, at the same times.
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE).astype(np.float32)
    frames = np.zeros((50, 32, 32, 3), np.uint8)
    back = decode_audio(write_mp4(tmp_path / "tone.mp4", frames, fps=25, audio=tone), RATE)
    assert np.corrcoef(back[1000:31000], tone[1000:31000])[0, 1] > 0.999


def test_windows_are_centred_on_their_frames_and_silence_is_absent():
    mel = MelConfig()
    samples = np.zeros(4 * RATE, np.float32)
    burst = slice(int(1.0 * RATE), int(1.6 * RATE))
    samples[burst] = 0.2 * np.sin(2 * np.pi * 300 * np.arange(burst.stop - burst.start) / RATE)
    windows, present = mel_windows(samples, np.array([1.3, 3.5, 5.0, -1.0]), mel)
    assert windows.shape == (4, mel.window_frames, mel.n_mels)
    assert present.tolist() == [True, False, False, False]  # silence, past the end, before the start
    assert not windows[1:].any()
    energy = windows[0].sum(axis=1)  # per 10-ms frame of the 1.6-s window centred on 1.3 s
    loud = np.flatnonzero(energy > 0.01 * energy.max())
    # The burst spans 1.0-1.6 s: frames 50-110 of the window that starts at 0.5 s, give or take one FFT.
    assert 45 <= loud.min() <= 55 and 105 <= loud.max() <= 115


def test_the_pretrained_speaker_encoder_tells_two_sources_apart(asset):
    embedder = AudioEmbedder(AudioConfig(encoder="resemblyzer", device="cpu"))
    assert "resemblyzer" in embedder.weights and embedder.encoder.fingerprint.startswith("sha256:")
    speaker = embedder(asset("face_noface_video"), np.array([2.5, 3.5, 4.5, 5.5, 0.5]))
    room = embedder(asset("single_face_video"), np.array([0.8, 1.2, 1.6]))
    assert speaker[:, -1].tolist() == [1, 1, 1, 1, 0]  # its first two seconds are silent
    assert not speaker[4].any()
    a, b = speaker[:4, :-1], room[:, :-1]
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    within = (a @ a.T)[np.triu_indices(4, 1)].mean()
    assert within > (a @ b.T).mean() + 0.05  # the same sound is closer to itself than to another's


@pytest.fixture(scope="module")
def mini(tiny_mini):
    out, _ = tiny_mini
    return out, json.loads((out / MANIFEST).read_text())


def loudness_dbfs(samples: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(samples))) + 1e-12)


def test_audio_survives_the_mini_build(mini, asset):
    out, manifest = mini
    voices = {o["clip_id"]: o["voice"] for o in manifest["originals"]}
    assert {"its own", "synthetic"} <= set(voices.values())
    assert all(o["voice"] == "synthetic" for o in manifest["originals"] if o["kind"] == "still")
    for clip in voices:
        heard = decode_audio(original_path(out, clip), RATE)
        assert heard is not None and loudness_dbfs(heard) > -60, clip  # every original speaks
    # A video's own voice is its source's stretch, through AAC.
    own = next(o for o in manifest["originals"] if o["voice"] == "its own")
    source = decode_audio(asset(own["asset"]), RATE)
    start = round(own["start"] / own["fps"] * RATE)
    heard = decode_audio(original_path(out, own["clip_id"]), RATE)
    length = min(len(heard), len(source) - start)
    assert np.corrcoef(heard[:length], source[start:start + length])[0, 1] > 0.9
    swaps = [f for f in manifest["fakes"] if f["method"] == "VoiceSwap"]
    assert {f["split"] for f in swaps} == {"train", "val", "test"}
    for fake in swaps[:2]:
        path = fake_path(out, "VoiceSwap", fake["name"])
        # The target's pictures, the source's sound.
        _, frames = read_frames(path, [0, 20])
        _, original = read_frames(original_path(out, fake["target"]), [0, 20])
        assert np.abs(frames.astype(int) - original).mean() < 1.0
        heard, voice = decode_audio(path, RATE), decode_audio(original_path(out, fake["source"]), RATE)
        length = min(len(heard), len(voice))
        assert np.corrcoef(heard[:length], voice[:length])[0, 1] > 0.95


def test_each_identity_has_its_own_synthetic_voice(mini):
    out, manifest = mini
    assert voice_of("obama") == voice_of("obama") and voice_of("obama") != voice_of("biden")
    embedder = AudioEmbedder(AudioConfig(encoder="resemblyzer", device="cpu"))
    heard = {o["clip_id"]: (o["identity"], embedder(original_path(out, o["clip_id"]), np.array([0.5, 1.1])))
             for o in manifest["originals"] if o["voice"] == "synthetic"}
    same, other = [], []
    clips = list(heard)
    for i, a in enumerate(clips):
        for b in clips[i + 1:]:
            similarity = float(heard[a][1][0, :-1] @ heard[b][1][1, :-1])
            (same if heard[a][0] == heard[b][0] else other).append(similarity)
    assert same and other
    # Two clips of one identity sound alike to the speaker encoder; two identities sound different.
    assert np.mean(same) > np.mean(other) + 0.1


def audio_table(out: Path, root: Path) -> Path:
    """The tiny mini set's train and val originals, VoiceSwap fakes and two FaceSwap fakes, plus a copy of
    an original without any audio track (a silent video), in train and val."""
    table = build_index(out).table
    table = table[table["split"].isin(["train", "val"])]
    picked = pd.concat([table[table["method"].isin(["original", "VoiceSwap"])],
                        table[table["method"] == "FaceSwap"].head(2)])
    first = picked.iloc[0]
    _, frames = read_frames(first["path"], range(40))
    silent = first.copy()
    silent["video_id"], silent["path"] = "silent-copy", str(write_mp4(root / "silent.mp4", frames))
    picked = pd.concat([picked, silent.to_frame().T]).reset_index(drop=True)
    picked = picked.assign(split=["train", "val"] * (len(picked) // 2) + ["train"] * (len(picked) % 2))
    write_index(picked, root / "index.csv")
    return root / "index.csv"


def test_train_and_predict_with_the_audio_stream(mini, tmp_path, one_torch_thread):
    from megatron_utils.inference.predict import Detector

    out, _ = mini
    index = audio_table(out, tmp_path)
    table = pd.read_csv(index)
    config = PreprocessConfig(
        frames=FramesConfig(frames_per_clip=8, sampling="consecutive", stride=5),
        faces=FaceConfig(crop_size=64, min_faces=4),
        depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=64),
        embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"),
        audio=AudioConfig(encoder="resemblyzer"),
    )
    result = preprocess(table, config, cache_root=tmp_path / "cache", workers=0)
    assert not result.failures() and result.audio is not None
    assert result.embed.config["audio"] == result.audio.key  # the audio stream is part of the embed key
    clips = load_clips(table, result.embed.dir)
    assert sorted(clips.streams) == ["audio", "depth", "rgb"] and clips.features["audio"].shape[-1] == 257
    heard = clips.features["audio"][..., -1].float().amax(dim=1).numpy()  # per clip: any frame with sound
    videos = clips.videos.iloc[clips.video.numpy()]
    silent = videos["path"].map(lambda path: decode_audio(path, RATE) is None).to_numpy()
    assert silent.any() and not heard[silent].any()  # no track: the stream is absent
    assert heard[~silent].mean() > 0.8  # sound nearly everywhere else (a room tone may fall below the floor)
    assert heard[(videos["method"] == "VoiceSwap").to_numpy()].any()  # a lent voice is heard

    run = train(index, result.embed.dir, TrainConfig(epochs=2, batch_size=4, lr=2e-3, fakes="both"),
                model_config("megatron-tiny"), tmp_path / "run")
    head = json.loads((run / "best" / "config.json").read_text())
    assert head["audio_dim"] == 257
    # Self-blended twins blend pixels only: each sounds exactly like its real video.
    embed = StageCache.open(result.embed.dir, "embed")
    twins = [item for item in embed.done_items() if item.startswith("sbi-")]
    assert twins
    for twin in twins:
        real = twin.split("/", 1)[1]
        np.testing.assert_array_equal(embed.read(twin)[0]["audio"], embed.read(real)[0]["audio"])
    evaluation = evaluate_run(run, index, result.embed.dir, split="val")
    assert not np.isnan(evaluation.overall()["auc"])  # both classes scored (two epochs learn little)
    assert "audio encoder resemblyzer" in (evaluation.out_dir / "report.md").read_text()  # says what it heard
    detector = Detector.from_pretrained(run, device="cpu")
    assert "resemblyzer" in detector.weights["audio_encoder"]
    swap = table.loc[table["method"] == "VoiceSwap", "path"].iloc[0]
    from_path = detector(swap)
    assert from_path.status == "ok" and "audio" in from_path.timings
    from_bytes = detector(Path(swap).read_bytes(), name="upload.mp4")  # the sound comes with the bytes
    assert from_bytes.fake_probability == pytest.approx(from_path.fake_probability, abs=1e-6)
    # Decoded frames carry no sound: the stream is masked, and the clip still gets a score, another one.
    _, frames = read_frames(swap, range(40))
    unheard = detector(frames, name="frames").fake_probability
    assert abs(unheard - from_path.fake_probability) > 1e-6
    for name in ("lstm", "frame-cnn"):  # the baselines read the same third stream
        other = train(index, result.embed.dir, TrainConfig(epochs=1, batch_size=4, lr=2e-3),
                      model_config(name), tmp_path / name)
        assert json.loads((other / "best" / "config.json").read_text())["audio_dim"] == 257
        assert Detector.from_pretrained(other, device="cpu")(swap).status == "ok"
