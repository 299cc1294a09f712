"""Checkpoint folders: hub upload (through a stand-in for the hub client) and what resolves as one."""

from pathlib import Path

import huggingface_hub
import pytest
import torch

from megatron_utils.models.checkpoint import push_to_hub, resolve_checkpoint
from megatron_utils.models.heads import MegatronHead, model_config


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return MegatronHead(model_config("megatron-tiny", rgb_dim=8, depth_dim=8)).save_pretrained(
        tmp_path / "run" / "best")


def test_push_to_hub_uploads_the_folder(checkpoint, monkeypatch):
    calls = []

    class StandInHub:  # records what the real client would be asked, offline
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInHub)
    assert push_to_hub(checkpoint, "someone/megatron-demo", token="t") == "https://huggingface.co/someone/megatron-demo"
    assert calls == [("token", "t"), ("create", "someone/megatron-demo", True, True),
                     ("upload", ["config.json", "model.safetensors"], "someone/megatron-demo")]


def test_push_to_hub_refuses_a_folder_that_is_no_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        push_to_hub(tmp_path, "someone/empty")


def test_run_folders_checkpoints_and_missing_paths_resolve_or_fail_clearly(checkpoint, tmp_path, monkeypatch):
    assert resolve_checkpoint(checkpoint.parent) == (checkpoint.parent, checkpoint)
    assert resolve_checkpoint(checkpoint) == (checkpoint.parent, checkpoint)
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        resolve_checkpoint(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id: a clear error, no network wait
    with pytest.raises(FileNotFoundError, match="someone/not-cached"):
        resolve_checkpoint("someone/not-cached")
