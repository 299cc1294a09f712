"""Shared fixtures. Source media are fetched once into the repository's `cache/sources/` (verified by
sha256) and reused across runs; every test gets its own empty stage-cache root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MEGATRON_SOURCES", str(REPO / "cache" / "sources"))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MEGATRON_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def asset():
    """`asset(name)` -> verified local path of a real media file or weights (see `core.assets`)."""
    from megatron_utils.core.assets import fetch

    return fetch


@pytest.fixture(scope="session")
def tiny_mini(tmp_path_factory: pytest.TempPathFactory):
    """The `tiny` mini dataset, built once per session: (folder, MiniReport)."""
    from megatron_utils.datasets.mini import build_mini

    out = tmp_path_factory.mktemp("mini") / "tiny"
    return out, build_mini("tiny", out, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train faster on one thread; a second one mostly waits (and 2-core CI boxes are shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_mini):
    """A megatron-tiny run on the tiny mini dataset (see tests/tiny_run.py): (run, index table, embed dir)."""
    from tiny_run import train_tiny_run

    return train_tiny_run(tiny_mini[0], tmp_path_factory.mktemp("tiny-run"))
