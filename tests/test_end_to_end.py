"""The main job end to end on the tiny mini dataset with tiny random-weight models: build, index,
faces, fine-tune, depth, embeddings, train, evaluate, report."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from config_walk import config_walk

from megatron_utils.datasets import build_index
from megatron_utils.datasets.index import shared_identities
from megatron_utils.demo import DemoConfig, run_demo
from megatron_utils.inference.predict import Detector
from megatron_utils.preprocessing.depth import FACEMESH, DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig
from megatron_utils.recipes import Recipe
from megatron_utils.training.evaluate import evaluate_on_data
from megatron_utils.training.finetune import FinetuneConfig
from megatron_utils.training.train import TrainConfig


def test_tiny_mini_indexes_with_real_and_fake_in_every_split_and_no_shared_identity(tiny_mini):
    folder, _ = tiny_mini
    result = build_index(folder)
    table = result.table
    assert not result.problems
    for split in ("train", "val", "test"):
        labels = set(table.loc[table["split"] == split, "label"])
        assert labels == {"real", "fake"}, f"{split} has {labels}"
    assert shared_identities(table) == {}
    assert set(table["method"]) == {"original", "FaceSwap", "MouthReenact", "SelfBlend", "VoiceSwap"}


def tiny_demo_config(folder: Path, out: Path) -> DemoConfig:
    """The demo on the tiny mini dataset in `folder` with tiny models, writing under `out`."""
    return DemoConfig(
        preset="tiny", data_dir=folder, run_dir=out / "run", cache_root=out / "cache", workers=2,
        recipe=Recipe(preprocess=PreprocessConfig(
            frames=FramesConfig(frames_per_clip=4, clips_per_video=2),
            faces=FaceConfig(crop_size=64, min_faces=3),
            depth=DepthConfig(model=FACEMESH, output_size=48),
            embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"),
        ),
        finetune=FinetuneConfig(backbone="tiny_random", epochs=2, crops_per_video=4, batch_size=8),
        model="megatron-tiny", train=TrainConfig(epochs=3, batch_size=8, patience=3, fakes="both")),
    )


def test_demo_pipeline_runs_end_to_end_and_reports(tiny_mini, tmp_path):
    folder, _ = tiny_mini
    config = tiny_demo_config(folder, tmp_path)
    with config_walk() as walk:
        summary = run_demo(config)
    # Following the settings through the code climbs back up the layer order at most 8 times (see
    # tests/config_walk.py; the review of issue 21 counted 19).
    assert len(walk.climbs) <= 8, walk.describe()
    videos = len(build_index(folder).table)  # every video of the tiny set, its VoiceSwap fakes included
    assert summary["videos"] == videos
    assert summary["weights"]["depth_model"] == FACEMESH  # chosen explicitly: no offline notice
    assert summary["weights"]["rgb_backbone"].startswith("tiny_random")
    assert summary["weights"]["rgb_finetuned"] == str((tmp_path / "run" / "finetune" / "best").resolve())
    history = pd.read_csv(tmp_path / "run" / "finetune" / "history.csv")
    assert len(history) == 2 and history["val_sbi_auc"].between(0, 1).all()
    report = (tmp_path / "run" / "eval" / "index-test" / "report.md").read_text()
    assert "auc" in report.lower() and "FaceSwap" in report
    assert "depth model facemesh (offline provider" in report and "fine-tuned weights" in report
    assert "rgb backbone tiny_random" in report
    metrics = pd.read_csv(tmp_path / "run" / "eval" / "index-test" / "metrics.csv")
    per_method = metrics[metrics["group"] == "method"]
    test_rows = build_index(folder).table.query("split == 'test' and label == 'fake'")
    assert set(per_method["name"]) == set(test_rows["method"]) >= {"FaceSwap", "MouthReenact", "SelfBlend"}
    assert (per_method["fake"] > 0).all() and (per_method["real"] == metrics.iloc[0]["real"]).all()
    test_metrics = summary["test_metrics"]
    assert not any(pd.isna(test_metrics[name]) for name in ("auc", "fpr", "tpr", "tpr_at_5fpr"))
    saved = json.loads((tmp_path / "run" / "demo_summary.json").read_text())
    assert saved["seconds"].keys() >= {"train", "index"}

    again = run_demo(config)  # everything is cached: nothing is rebuilt or retrained
    assert again["test_metrics"] == summary["test_metrics"]
    for step in ("faces", "preprocess (depth, embeddings)"):
        assert again["seconds"][step] < summary["seconds"][step]

    # Cross-dataset in one call: the folder is indexed and preprocessed with the run's own preprocessing
    # (all cached here, since it is the same data) and scores exactly as the run's own evaluation.
    other = evaluate_on_data(tmp_path / "run", folder, split="test", cache_root=tmp_path / "cache", workers=2)
    assert other.overall()["auc"] == summary["test_metrics"]["auc"]
    assert (tmp_path / "run" / "data" / f"{folder.name}.csv").is_file()
    everything = evaluate_on_data(tmp_path / "run", folder, split=None, cache_root=tmp_path / "cache")
    assert everything.overall()["videos"] == videos and everything.out_dir.name == f"{folder.name}-all"

    # best/ is self-contained: moved away from its run (fine-tuned embedder, preprocessing, threshold and
    # model card inside), it scores a test video exactly as the run's evaluation did.
    best = tmp_path / "run" / "best"
    assert {"decision.json", "evaluation.json", "preprocess.json", "README.md", "models"} <= \
        {path.name for path in best.iterdir()}
    assert json.loads((best / "config.json").read_text())["architecture"] == "megatron"
    card = (best / "README.md").read_text()
    assert "test split" in card and "of reals called fake" in card  # the card carries the test metrics
    assert "at most 5% of real validation videos scored this high" in card  # the threshold in words
    # Every model in words: architecture, source, sha256 of its weights.
    assert "- temporal head: `megatron`, trained by megatron train" in card
    assert "- RGB embedder: `tiny_random`, fine-tuned by megatron finetune (from random-init" in card
    assert "- depth map: `facemesh`, MediaPipe face mesh" in card and card.count("`sha256:") >= 3
    assert "ffpp (train split:" in card  # data by dataset name and split
    for path in best.rglob("*"):  # no machine path, in the card or anywhere else in the checkpoint
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert str(tmp_path) not in text and "/tmp" not in text and "/root" not in text, path
    evaluated = pd.read_csv(tmp_path / "run" / "eval" / "index-test" / "scores.csv").iloc[0]
    moved = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(best, moved)
    shutil.rmtree(tmp_path / "run")  # nothing of the run is left: not its finetune/ nor its preprocess.json
    detector = Detector.from_pretrained(moved)
    assert "fine-tuned by megatron finetune" in detector.weights["rgb_backbone"]
    assert detector.threshold == json.loads((moved / "decision.json").read_text())["threshold"]
    prediction = detector.predict(evaluated["path"])
    assert prediction.fake_probability == pytest.approx(evaluated["probability"], abs=2e-3)
