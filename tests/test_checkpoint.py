"""The detector's checkpoint through the hub library: a run's best/ with its local models copied in, no
machine path anywhere, loaded back as it was, uploaded by the library's push_to_hub (to a stand-in hub
client), and what resolves as a checkpoint."""

import json
from pathlib import Path

import huggingface_hub.hub_mixin
import pytest
import torch

from megatron_utils.core.cache import PREPROCESS_FILE, sha256_file
from megatron_utils.models.backbones import FrameClassifier, create_backbone
from megatron_utils.models.checkpoint import Checkpoint, resolve_checkpoint
from megatron_utils.models.heads import MegatronHead, model_config
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig

DECISION = {"chosen_on": "val", "threshold": 0.61, "uncertain_below": 0.42, "target_fpr": 0.05,
            "target_fnr": 0.05, "epoch": 3, "val_auc": 0.9, "val_balanced_accuracy": 0.8, "val_tpr": 0.7,
            "val_uncertain": 0.1, "train_data": "ffpp (train split: 4 real and 16 fake videos)",
            "val_data": "ffpp (val split: 2 real and 8 fake videos)", "train_videos": 20, "fakes": "sbi"}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder whose preprocessing names a fine-tuned RGB embedder and a depth model by local paths
    (absolute, as `megatron preprocess` records them), and records where its stage caches are."""
    embedder = tmp_path / "finetune" / "best"
    FrameClassifier.start(create_backbone("tiny_random")).save_pretrained(embedder)
    depth_model = tmp_path / "models" / "depth-small"
    depth_model.mkdir(parents=True)
    (depth_model / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    (depth_model / "model.safetensors").write_bytes(b"stand-in weights")
    config = PreprocessConfig(depth=DepthConfig(model=str(depth_model)),
                              embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random",
                                                rgb_weights=str(embedder)))
    tuned = f"sha256:{sha256_file(embedder / 'model.safetensors')}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / PREPROCESS_FILE).write_text(json.dumps({
        "config": config.to_dict(),
        "caches": {"embed": str(tmp_path / "cache" / "embed" / "key")},
        "weights": {"depth": "sha256:d3",
                    "rgb": {"backbone": "tiny_random", "weights": tuned, "input_size": 64},
                    "depth_backbone": {"backbone": "tiny_random", "weights": "random-init:seed0",
                                       "input_size": 64}},
        "sources": {"depth": "local folder depth-small",
                    "rgb": "fine-tuned by megatron finetune (from random-init (test model))",
                    "depth_backbone": "random-init (test model)"}}))
    return run_dir


def head() -> MegatronHead:
    torch.manual_seed(0)
    return MegatronHead(model_config("megatron-tiny", rgb_dim=256, depth_dim=256))


def files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def test_a_run_checkpoint_is_self_contained_and_names_its_models_in_words(run, monkeypatch):
    monkeypatch.chdir(run.parent.parent)  # relative paths in the preprocessing are the run's own
    best = run / "best"
    Checkpoint.of_run(head(), run, DECISION).save_pretrained(best)
    assert files(best) == ["README.md", "config.json", "decision.json", "model.safetensors",
                           "models/depth/config.json", "models/depth/model.safetensors",
                           "models/rgb/README.md", "models/rgb/config.json", "models/rgb/model.safetensors",
                           "preprocess.json"]
    for path in best.rglob("*"):  # no machine path in any file: not the run's, not the caches'
        if path.suffix in (".json", ".md"):
            assert str(run.parent) not in path.read_text(), path
    recipe = json.loads((best / PREPROCESS_FILE).read_text())
    assert (recipe["config"]["embed"]["rgb_weights"], recipe["config"]["depth"]["model"]) == \
        ("models/rgb", "models/depth")
    assert "caches" not in recipe
    # The embedder, saved again through the mixin, is byte for byte the one the embeddings were made with.
    assert sha256_file(best / "models/rgb/model.safetensors") == \
        sha256_file(run.parent / "finetune/best/model.safetensors")
    card = (best / "README.md").read_text()
    head_sha = sha256_file(best / "model.safetensors")
    assert f"- temporal head: `megatron`, trained by megatron train (64-d, streams both, fusion " \
           f"cross_attention); `sha256:{head_sha}`" in card
    assert "- RGB embedder: `tiny_random`, fine-tuned by megatron finetune (from random-init (test " \
           "model)); `sha256:" in card
    assert "- depth map: `depth_anything`, local folder depth-small; `sha256:d3`" in card
    assert "- depth embedder: `tiny_random`, random-init (test model)" in card
    assert "ffpp (train split: 4 real and 16 fake videos)" in card  # data by dataset name and split
    assert "library_name: megatron-deepfake" in card


def test_a_checkpoint_loads_back_as_it_was_saved(run, tmp_path):
    saved = Checkpoint.of_run(head(), run, DECISION)
    saved.save_pretrained(run / "best")
    moved = tmp_path / "elsewhere"
    (run / "best").rename(moved)  # nothing of the run is needed any more
    loaded = Checkpoint.from_pretrained(moved)
    rgb, depth, valid = torch.randn(2, 3, 256), torch.randn(2, 3, 256), torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(loaded.head(rgb, depth, valid=valid),
                               saved.head.eval()(rgb, depth, valid=valid), rtol=0, atol=0)
    assert loaded.decision == DECISION and loaded.evaluation is None
    embed = loaded.preprocessing["config"]["embed"]
    assert embed["rgb_weights"] == str(moved / "models" / "rgb")  # local models resolve where they are now
    assert isinstance(loaded.models["rgb"], FrameClassifier)
    assert loaded.models["depth"] == moved / "models" / "depth"
    for name, tensor in saved.models["rgb"].state_dict().items():
        assert torch.equal(loaded.models["rgb"].state_dict()[name], tensor), name

    before = files(moved)
    loaded.save_pretrained(moved)  # saved again where it was loaded from: nothing lost on the way
    assert files(moved) == before
    assert (moved / "models" / "depth" / "model.safetensors").read_bytes() == b"stand-in weights"

    metrics = {"split": "test", "videos": 10, "real": 5, "fake": 5, "auc": 0.75, "auc_low": 0.5,
               "auc_high": 0.9, "fpr": 0.2, "tpr": 0.6, "tpr_at_5fpr": 0.4}
    loaded.record_evaluation(moved, metrics)
    again = Checkpoint.from_pretrained(moved)
    assert again.evaluation == metrics
    assert "test split (10 videos: 5 real, 5 fake): video AUC 0.7500" in (moved / "README.md").read_text()


def test_push_to_hub_is_the_librarys_and_uploads_the_whole_checkpoint(run, monkeypatch):
    Checkpoint.of_run(head(), run, DECISION).save_pretrained(run / "best")
    calls = []

    class StandInHub:  # records what the real client would be asked, offline
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, **options):
            card = (Path(folder_path) / "README.md").read_text()
            calls.append(("upload", repo_id, files(Path(folder_path)), card))
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", StandInHub)
    loaded = Checkpoint.from_pretrained(run / "best")
    assert loaded.push_to_hub("someone/megatron-demo", token="t", private=True) == \
        "https://huggingface.co/someone/megatron-demo/commit/1"
    assert calls[:2] == [("token", "t"), ("create", "someone/megatron-demo", True, True)]
    _, repo, uploaded, card = calls[2]
    assert repo == "someone/megatron-demo" and uploaded == files(run / "best")
    assert card == (run / "best" / "README.md").read_text()


def test_run_folders_checkpoints_and_missing_paths_resolve_or_fail_clearly(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "best"
    head().save_pretrained(checkpoint)
    assert resolve_checkpoint(checkpoint.parent) == (checkpoint.parent, checkpoint)
    assert resolve_checkpoint(checkpoint) == (checkpoint.parent, checkpoint)
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        Checkpoint.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="decision.json does not exist"):
        Checkpoint.from_pretrained(checkpoint)  # a bare head: no decision rule
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id: a clear error, no network wait
    with pytest.raises(FileNotFoundError, match="someone/not-cached"):
        resolve_checkpoint("someone/not-cached")
