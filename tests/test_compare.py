"""`megatron compare`: the registered heads (megatron, lstm, frame-cnn) trained on the same embeddings and
ranked; each trains, evaluates and predicts like the default model."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from tiny_run import video_of

from megatron_utils.cli import main
from megatron_utils.datasets.synthetic import SyntheticEmbedConfig, write_synthetic_embed_cache
from megatron_utils.inference.predict import Detector
from megatron_utils.models.baselines import FrameHead, LSTMHead
from megatron_utils.models.heads import TemporalHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ["megatron-tiny", "lstm", "frame-cnn"]
FAST = ["--epochs", "5", "--batch-size", "32", "--lr", "0.002", "--seed", "3"]


def test_every_head_learns_a_linear_signal_and_a_second_call_reuses_the_runs(tmp_path, capsys):
    index, cache_dir = write_synthetic_embed_cache(tmp_path / "cache", SyntheticEmbedConfig(identities=100))
    index.to_csv(tmp_path / "index.csv", index=False)
    command = ["compare", "--index", str(tmp_path / "index.csv"), "--embeddings", str(cache_dir),
               "--models", *MODELS, "--out", str(tmp_path / "compare"), *FAST]
    assert main(command) == 0
    table = pd.read_csv(tmp_path / "compare" / "leaderboard.csv").set_index("model")
    assert sorted(table.index) == sorted(MODELS)
    assert table["test_auc"].is_monotonic_decreasing  # ranked
    # The fakes differ from the reals along one direction of the depth stream: every head finds it; the
    # 193-parameter frame classifier more slowly, within the same 5 epochs.
    assert (table.loc[["megatron-tiny", "lstm"], "test_auc"] > 0.85).all(), table["test_auc"]
    assert table.loc["frame-cnn", "test_auc"] > 0.7, table["test_auc"]
    assert (table["test_auc_low"] <= table["test_auc"]).all()
    assert (table["test_auc"] <= table["test_auc_high"]).all()
    assert table.loc["frame-cnn", "parameters"] < table.loc["lstm", "parameters"]
    assert (table["train_s"] > 0).all() and table.loc["lstm", "architecture"] == "lstm"
    assert isinstance(TemporalHead.from_pretrained(table.loc["lstm", "run"] + "/best"), LSTMHead)
    assert isinstance(TemporalHead.from_pretrained(table.loc["frame-cnn", "run"] + "/best"), FrameHead)
    assert "an LSTM reads" in (tmp_path / "compare" / "lstm" / "best" / "README.md").read_text()
    markdown = (tmp_path / "compare" / "leaderboard.md").read_text()
    assert all(f"| {model} |" in markdown for model in MODELS) and "[95% CI]" in markdown
    assert markdown in capsys.readouterr().out

    history = tmp_path / "compare" / "lstm" / "history.csv"
    stamp = os.stat(history).st_mtime_ns
    assert main(command) == 0
    assert os.stat(history).st_mtime_ns == stamp  # evaluated again, not retrained
    again = pd.read_csv(tmp_path / "compare" / "leaderboard.csv").set_index("model")
    pd.testing.assert_series_equal(again["test_auc"], table["test_auc"])


def test_baselines_train_evaluate_and_predict_real_mini_videos(tiny_run, tmp_path):
    _, table, embed_dir = tiny_run
    index = tmp_path / "index.csv"
    table.to_csv(index, index=False)
    video = video_of(table, "fake")
    assert main(["compare", "--index", str(index), "--embeddings", str(embed_dir), "--models", "lstm",
                 "frame-cnn", "--split", "val", "--out", str(tmp_path / "compare"), "--epochs", "3",
                 "--batch-size", "4", "--predict-video", str(video)]) == 0
    leaderboard = pd.read_csv(tmp_path / "compare" / "leaderboard.csv").set_index("model")
    assert (leaderboard["predict_s"] > 0).all() and leaderboard["val_auc"].between(0, 1).all()
    # the selected checkpoint scored again on the split it was selected on
    assert leaderboard["val_auc"].tolist() == pytest.approx(leaderboard["best_val_auc"].tolist(), abs=1e-6)
    for model in ("lstm", "frame-cnn"):
        prediction = Detector.from_pretrained(tmp_path / "compare" / model, clips_per_video=2).predict(video)
        assert prediction.ok, prediction.error
        assert 0 <= prediction.fake_probability <= 1 and len(prediction.faces[0].windows) == 2
