"""Google Colab helpers for the notebooks in `notebooks/`: where the repository lives, and Drive mounting.

On Colab the runtime's disk is wiped when the session ends, so datasets, stage caches and training runs
go to a folder in the user's Google Drive. Everywhere else (a local Jupyter, CI) nothing is mounted and
the workspace is an ordinary folder.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

GITHUB_REPO = "megatron-deepfake/megatron"  # owner/name on GitHub; the notebooks' badges point here
DEFAULT_BRANCH = "main"
DRIVE_MOUNTPOINT = Path("/content/drive")
MY_DRIVE = "MyDrive"


def in_colab() -> bool:
    """True inside a Google Colab runtime (its `google.colab` module is preloaded there)."""
    return "google.colab" in sys.modules


def colab_url(notebook: str, repo: str = GITHUB_REPO, branch: str = DEFAULT_BRANCH) -> str:
    """The Colab address that opens `notebooks/<notebook>` straight from GitHub."""
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"


def mount_drive(workspace: str | os.PathLike, mountpoint: str | os.PathLike = DRIVE_MOUNTPOINT) -> Path:
    """The folder that holds data, caches and runs.

    In Colab: mounts Google Drive at `mountpoint` (asking for permission once) and returns
    `<mountpoint>/MyDrive/<workspace>` for a relative `workspace` (an absolute one is used as given),
    created if needed, so everything survives the end of the session. Elsewhere: mounts nothing and
    returns `workspace` as an absolute path.
    """
    workspace = Path(workspace).expanduser()
    if not in_colab():
        return workspace.resolve()
    from google.colab import drive  # only importable inside Colab

    mountpoint = Path(mountpoint)
    drive.mount(str(mountpoint))
    folder = workspace if workspace.is_absolute() else mountpoint / MY_DRIVE / workspace
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("Google Drive mounted at %s; workspace %s", mountpoint, folder)
    return folder
