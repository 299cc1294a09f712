import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

from megatron_utils.cli import main
from megatron_utils.core.cache import FAILED, StageCache
from megatron_utils.datasets.synthetic import SyntheticEmbedConfig, write_synthetic_embed_cache
from megatron_utils.models.heads import MegatronHead, model_config
from megatron_utils.training import train as train_module
from megatron_utils.training.clips import Augmentation, augment, entry_layout, load_clips
from megatron_utils.training.compare import ablation_table
from megatron_utils.training.evaluate import evaluate_run
from megatron_utils.training.loop import learning_rate
from megatron_utils.training.train import TrainConfig, resume, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = TrainConfig(epochs=5, batch_size=32, lr=2e-3, min_lr=2e-4, patience=5, seed=3, eval_batch_size=256)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """An embed cache whose fakes differ from reals only along one direction of the depth stream."""
    root = tmp_path_factory.mktemp("synthetic")
    index, cache_dir = write_synthetic_embed_cache(root / "cache", SyntheticEmbedConfig(identities=100))
    index.to_csv(root / "index.csv", index=False)
    return root / "index.csv", cache_dir


@pytest.fixture(scope="module")
def full_run(synthetic, tmp_path_factory):
    index_path, cache_dir = synthetic
    out = tmp_path_factory.mktemp("runs") / "full"
    return train(index_path, cache_dir, FAST, model_config("megatron-tiny"), out)


def weights(run_dir, checkpoint="last"):
    return load_file(str(run_dir / checkpoint / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_run_folder_holds_config_checkpoints_history_and_threshold(full_run, synthetic):
    config = json.loads((full_run / "config.json").read_text())
    cache_config = json.loads((synthetic[1] / "config.json").read_text())
    # What `predict` needs to rebuild the preprocessing (this synthetic cache has no preprocess.json).
    assert config["preprocessing"] == {**cache_config, "pipeline": None}
    assert not (full_run / "preprocess.json").exists()
    assert config["data"]["embed_key"] == cache_config["key"]
    assert config["data"]["index"] == str(synthetic[0].resolve())
    assert config["model"]["rgb_dim"] == 32 and config["train"]["epochs"] == FAST.epochs
    history = pd.read_csv(full_run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    state = json.loads((full_run / "last" / "training_state.json").read_text())
    best = history.loc[history["val_auc"].idxmax()]
    assert state["best_epoch"] == best["epoch"] and state["best_score"] == pytest.approx(best["val_auc"])
    decision = json.loads((full_run / "best" / "decision.json").read_text())
    assert decision["threshold"] == pytest.approx(best["threshold"])  # chosen on validation, stored once
    assert decision["epoch"] == best["epoch"] and decision["chosen_on"] == "val"
    assert 0 < decision["threshold"] < 1
    assert "threshold" not in json.loads((full_run / "last" / "config.json").read_text())  # in decision.json
    on_val = evaluate_run(full_run, split="val", out_dir=full_run.parent / "val-eval").overall()
    assert on_val["fpr"] <= decision["target_fpr"] == 0.05  # the rule holds its target on validation
    assert on_val["tpr"] == pytest.approx(best["val_tpr"])
    assert "'val_auc': " in (full_run / "train.log").read_text()
    MegatronHead.from_pretrained(full_run / "best")


def test_ablations_find_a_depth_only_signal_only_with_depth(synthetic, tmp_path):
    table = ablation_table(*synthetic, FAST, model_config("megatron-tiny"), tmp_path,
                           variants=("full", "depth_only", "rgb_only")).set_index("variant")
    assert table.loc["full", "best_val_auc"] > 0.9 and table.loc["depth_only", "best_val_auc"] > 0.9
    assert table.loc["full", "test_auc"] > 0.85 and table.loc["depth_only", "test_auc"] > 0.85
    # The RGB stream carries no label information: chance level on held-out identities.
    assert abs(table.loc["rgb_only", "test_auc"] - 0.5) < 0.15


def test_training_is_deterministic_on_the_cpu(synthetic, full_run, tmp_path):
    again = train(*synthetic, FAST, model_config("megatron-tiny"), tmp_path / "again")
    assert_same_weights(weights(again), weights(full_run))
    assert_same_weights(weights(again, "best"), weights(full_run, "best"))
    columns = ["train_loss", "val_loss", "val_auc", "threshold"]
    pd.testing.assert_frame_equal(pd.read_csv(again / "history.csv")[columns],
                                  pd.read_csv(full_run / "history.csv")[columns])


def test_a_split_over_the_preload_limit_trains_from_disk_as_from_memory(synthetic, full_run, tmp_path):
    index = pd.read_csv(synthetic[0])
    in_memory = load_clips(index, synthetic[1], "train")
    on_disk = load_clips(index, synthetic[1], "train", preload_limit_gb=0)
    assert on_disk.on_disk and not in_memory.on_disk and on_disk.to(torch.device("cpu")) is on_disk
    for name, value in in_memory.features.items():
        assert torch.equal(on_disk.features[name], value)
    assert torch.equal(on_disk.valid, in_memory.valid) and torch.equal(on_disk.video, in_memory.video)
    streamed = train(*synthetic, replace(FAST, preload_limit_gb=0), model_config("megatron-tiny"),
                     tmp_path / "streamed")
    assert "into a memory-mapped file" in (streamed / "train.log").read_text()
    assert_same_weights(weights(streamed), weights(full_run))


def test_resume_after_a_kill_continues_exactly(synthetic, full_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_validate = train_module.HeadTask.validate

    def killed_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_module.HeadTask, "validate", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train(*synthetic, FAST, model_config("megatron-tiny"), tmp_path / "killed")
    monkeypatch.setattr(train_module.HeadTask, "validate", real_validate)
    assert json.loads((tmp_path / "killed" / "last" / "training_state.json").read_text())["epoch"] == 2
    with pytest.raises(ValueError, match="already holds a run"):
        train(*synthetic, FAST, model_config("megatron-tiny"), tmp_path / "killed")
    with pytest.raises(FileNotFoundError, match="no last/ checkpoint"):
        resume(tmp_path / "never_trained")
    # The same call with resume=True (as notebook 05 makes it, again after a kill) continues the run.
    resumed = train(*synthetic, FAST, model_config("megatron-tiny"), tmp_path / "killed", resume=True)
    assert_same_weights(weights(resumed), weights(full_run))
    assert list(pd.read_csv(resumed / "history.csv")["epoch"]) == [1, 2, 3, 4, 5]
    # Once more on the finished run: nothing is trained; with other settings it is refused, naming them.
    written = (resumed / "last" / "training_state.json").stat().st_mtime_ns
    train(*synthetic, FAST, model_config("megatron-tiny"), resumed, resume=True)
    assert (resumed / "last" / "training_state.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match=r"other settings.*train\.lr: 0\.002 -> 0\.1"):
        train(*synthetic, replace(FAST, lr=0.1), model_config("megatron-tiny"), resumed, resume=True)
    # Resuming with more epochs extends the run (`megatron train --resume RUN --epochs 6`).
    longer = resume(resumed, epochs=6)
    assert list(pd.read_csv(longer / "history.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]


def test_early_stopping_when_validation_auc_stops_improving(synthetic, tmp_path):
    frozen = TrainConfig(epochs=10, batch_size=64, lr=0.0, min_lr=0.0, patience=2)  # the AUC never improves
    run = train(*synthetic, frozen, model_config("megatron-tiny"), tmp_path / "frozen")
    state = json.loads((run / "last" / "training_state.json").read_text())
    assert state["bad_epochs"] == frozen.patience and state["epoch"] == 3 and state["best_epoch"] == 1
    assert len(pd.read_csv(run / "history.csv")) == 3


def test_missing_and_failed_cache_entries_are_reported(synthetic, tmp_path, caplog):
    index_path, cache_dir = synthetic
    index = pd.read_csv(index_path, dtype=str, keep_default_na=False)
    extra = index[index["split"] == "train"].head(3).copy()
    extra["video_id"] = ["ffpp/Deepfakes/never_embedded", "ffpp/Deepfakes/broken", "ffpp/Deepfakes/torn"]
    index = pd.concat([index, extra], ignore_index=True)
    # A cache in another root, holding the synthetic entries plus one recorded failure.
    cache = StageCache.open(cache_dir, "embed")
    copy_root = tmp_path / "cache"
    copy = type(cache)("embed", cache.config, root=copy_root)
    for item in cache.done_items():
        copy.write(item, cache.read(item)[0])
    copy.record("ffpp/Deepfakes/broken", FAILED, error="broken.mp4: no face found in any frame")
    copy.write("ffpp/Deepfakes/torn", cache.read(cache.done_items()[0])[0])
    copy.entry_path("ffpp/Deepfakes/torn").write_bytes(b"\x00" * 12)  # damaged on disk after the write
    pipeline = {"config": {"frames": {"frames_per_clip": 8}}, "caches": {}, "weights": {}}
    (copy.dir / "preprocess.json").write_text(json.dumps(pipeline))
    with caplog.at_level(logging.WARNING):
        clips = load_clips(index, copy.dir, "train")
    torn = clips.missing.pop("ffpp/Deepfakes/torn")
    assert torn.startswith("unreadable embed entry") and str(copy.entry_path("ffpp/Deepfakes/torn")) in torn
    assert clips.missing == {"ffpp/Deepfakes/never_embedded": "not in the embed cache",
                             "ffpp/Deepfakes/broken": "broken.mp4: no face found in any frame"}
    assert "3 of" in caplog.text and "never_embedded" in caplog.text
    assert len(clips.videos) == (index["split"] == "train").sum() - 3
    index.to_csv(tmp_path / "index.csv", index=False)
    run = train(tmp_path / "index.csv", copy.dir, TrainConfig(epochs=1), model_config("megatron-tiny"),
                tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert set(config["data"]["missing_videos"]) == {*clips.missing, "ffpp/Deepfakes/torn"}
    # The full preprocessing configuration travels with the run, for `megatron predict`.
    assert json.loads((run / "preprocess.json").read_text()) == pipeline
    assert config["preprocessing"]["pipeline"] == pipeline["config"]


def test_augmentation_keeps_valid_frames_and_is_reproducible():
    generator = torch.Generator().manual_seed(0)
    rgb, depth = torch.randn(64, 8, 4), torch.randn(64, 8, 3)
    valid = torch.ones(64, 8, dtype=torch.bool)
    valid[::2, 3:] = False
    config = Augmentation(min_crop_fraction=0.5, frame_dropout=0.3)
    out, out_valid = augment({"rgb": rgb, "depth": depth}, valid, config, generator)
    again, again_valid = augment({"rgb": rgb, "depth": depth}, valid, config,
                                 torch.Generator().manual_seed(0))
    assert torch.equal(out["rgb"], again["rgb"]) and torch.equal(out_valid, again_valid)
    out_rgb = out["rgb"]
    assert out_valid.any(dim=1).all()  # every clip keeps a frame
    assert out_valid.sum() < valid.sum()  # frames were cropped or dropped
    # Every kept frame is an original valid frame of the same clip (moved in time, never invented).
    for clip in range(64):
        for frame in torch.nonzero(out_valid[clip]).flatten():
            matches = (rgb[clip] == out_rgb[clip, frame]).all(dim=1) & valid[clip]
            assert matches.any()
            # Both streams are moved together: the depth frame is the one of the same time step.
            (source,) = torch.nonzero(matches).flatten()[:1]
            assert torch.equal(out["depth"][clip, frame], depth[clip, source])


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(step, 100, lr=1e-3, min_lr=1e-4, warmup_fraction=0.1) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_cli_trains_a_run(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("megatron_utils.cli.COMMAND_MODULES", ["train"])
    index_path, cache_dir = synthetic
    status = main(["train", "--index", str(index_path), "--embeddings", str(cache_dir), "--model",
                   "megatron-tiny", "--epochs", "1", "--streams", "depth", "--d-model", "32",
                   "--out", str(tmp_path / "cli")])
    assert status == 0 and "best checkpoint" in capsys.readouterr().out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["model"]["streams"] == "depth" and config["model"]["d_model"] == 32
    assert main(["train", "--embeddings", str(cache_dir)]) == 2  # --index missing: a usage error
    assert main(["train", "--resume", str(tmp_path / "cli"), "--lr", "0.1"]) == 2  # the run's lr stays
    assert "only --epochs may change" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "cli"), "--epochs", "2"]) == 0
    assert list(pd.read_csv(tmp_path / "cli" / "history.csv")["epoch"]) == [1, 2]


def test_entry_layout_reads_the_streams_aligned_with_valid(tmp_path):
    valid = np.ones((2, 8), bool)
    entry = {"rgb": np.zeros((2, 8, 4), np.float16), "depth": np.zeros((2, 8, 3), np.float16),
             "audio": np.zeros((2, 8, 5), np.float32), "valid": valid, "track": np.zeros(2, np.int32)}

    def layout(tensors):
        save_file(tensors, str(tmp_path / "entry.safetensors"))
        return entry_layout(tmp_path / "entry.safetensors")

    mask, streams = layout(entry)
    assert (mask == valid).all()
    assert streams == {"audio": ((2, 8, 5), np.float32), "depth": ((2, 8, 3), np.float16),
                       "rgb": ((2, 8, 4), np.float16)}  # a third stream needs no code here
    with pytest.raises(ValueError, match="disagree with valid"):
        layout({**entry, "depth": np.zeros((2, 7, 3), np.float16)})
    with pytest.raises(ValueError, match="valid"):
        layout({"rgb": entry["rgb"]})
