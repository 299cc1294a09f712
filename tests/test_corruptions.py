"""Real-world corruptions: each degrades a real face frame more as its severity rises, and the robustness
table evaluates a run on corrupted copies without touching its clean caches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_run import video_of

from megatron_utils.cli import main
from megatron_utils.preprocessing.video import iter_frames, probe, read_image
from megatron_utils.training.corruptions import CORRUPTIONS, corrupt_file, list_corruptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


@pytest.mark.parametrize("name", [n for n in list_corruptions() if n != "h264"])
def test_each_corruption_degrades_a_real_face_more_as_severity_rises(name, asset):
    frames = read_image(asset("obama"))[None]
    quality = [psnr(CORRUPTIONS.entry(name)(frames, severity)[0], frames[0]) for severity in (1, 3, 5)]
    assert quality[0] > quality[1] > quality[2], quality
    assert quality[0] < 60  # severity 1 already changes the picture
    assert CORRUPTIONS.entry(name)(frames, 3).dtype == np.uint8


def test_h264_severity_is_the_encoder_quality(tiny_run, tmp_path):
    source = Path(video_of(tiny_run[1], "real"))
    light = corrupt_file(source, tmp_path / "light.mp4", "h264", 1)
    heavy = corrupt_file(source, tmp_path / "heavy.mp4", "h264", 5)
    assert heavy.stat().st_size < light.stat().st_size / 2
    assert probe(heavy).frame_count == probe(source).frame_count
    (_, original), (_, first_light), (_, first_heavy) = (next(iter_frames(path, [0]))
                                                        for path in (source, light, heavy))
    assert psnr(first_light, original) > psnr(first_heavy, original) + 3
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt_file(source, tmp_path / "x.mp4", "blur", 9)


def test_robustness_table_leaves_the_clean_caches_alone_and_reuses_its_copies(tiny_run, tmp_path, capsys):
    run, _, embed_dir = tiny_run
    entries = sorted((embed_dir / "items").glob("*.safetensors"))
    assert entries
    stamps = {path: os.stat(path).st_mtime_ns for path in entries}
    out = tmp_path / "robustness"
    command = ["evaluate", str(run), "--split", "val", "--corrupt", "blur", "h264", "--severities", "5",
               "--out", str(out)]
    assert main(command) == 0
    table = pd.read_csv(out / "robustness.csv")
    assert table[["corruption", "severity"]].values.tolist() == [["none", 0], ["blur", 5], ["h264", 5]]
    assert (table["videos"] == table["videos"].iloc[0]).all() and table["auc"].notna().all()
    assert (out / "robustness.png").stat().st_size > 0
    copies = pd.read_csv(out / "videos" / "blur-5" / "index.csv")
    assert copies["video_id"].str.endswith("@blur-5").all() and copies["path"].str.startswith(str(out)).all()
    # The run's clean embeddings were neither rewritten nor joined by the corrupted copies' entries.
    assert {path: os.stat(path).st_mtime_ns for path in entries} == stamps
    assert sorted((embed_dir / "items").glob("*.safetensors")) == entries
    assert "blur" in capsys.readouterr().out
    copy = Path(copies["path"].iloc[0])
    stamp = os.stat(copy).st_mtime_ns
    assert main(command) == 0
    assert os.stat(copy).st_mtime_ns == stamp  # a rerun reuses the corrupted copies
    pd.testing.assert_frame_equal(pd.read_csv(out / "robustness.csv"), table)
