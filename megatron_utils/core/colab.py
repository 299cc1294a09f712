"""Google Colab helpers for the notebooks in `notebooks/`: where the repository lives, and the workspace.

On Colab the runtime's disk is wiped when the session ends, so datasets, stage caches and training runs
go to a folder in the user's Google Drive. Everywhere else (a local Jupyter, CI) nothing is mounted and
the workspace is an ordinary folder.

The repository's address is written once, in pyproject.toml's `[project.urls]`; it is read here from the
installed package's metadata, and tests/test_notebooks.py checks that the notebooks' install cell names it.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from urllib.parse import urlparse

from .extras import PACKAGE

logger = logging.getLogger(__name__)

REPOSITORY_LABEL = "Repository"  # the key of [project.urls] that holds the GitHub address
DEFAULT_BRANCH = "main"
DRIVE_MOUNTPOINT = Path("/content/drive")
MY_DRIVE = "MyDrive"


def in_colab() -> bool:
    """True inside a Google Colab runtime (its `google.colab` module is preloaded there)."""
    return "google.colab" in sys.modules


def repository_url() -> str:
    """The repository's GitHub address, from the installed package's metadata (pyproject.toml)."""
    try:
        entries = metadata(PACKAGE).get_all("Project-URL") or []
    except PackageNotFoundError as error:
        raise RuntimeError(f"{PACKAGE} is not installed, so its repository address is unknown: "
                           "install it (pip install -e .)") from error
    urls = dict(entry.split(", ", 1) for entry in entries)
    if REPOSITORY_LABEL not in urls:
        raise RuntimeError(f"the installed {PACKAGE} metadata has no {REPOSITORY_LABEL} URL (it has "
                           f"{sorted(urls)}): reinstall it from this checkout (pip install -e .)")
    return urls[REPOSITORY_LABEL]


def github_repo() -> str:
    """owner/name on GitHub."""
    return urlparse(repository_url()).path.strip("/")


def install_requirement() -> str:
    """What the notebooks' install cell gives pip: this package straight from the repository."""
    return f"{PACKAGE} @ git+{repository_url()}.git"


def colab_url(notebook: str, branch: str = DEFAULT_BRANCH) -> str:
    """The Colab address that opens `notebooks/<notebook>` straight from GitHub."""
    return f"https://colab.research.google.com/github/{github_repo()}/blob/{branch}/notebooks/{notebook}"


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


def open_workspace(workspace: str | os.PathLike, cache_dir: str | os.PathLike = "cache") -> Path:
    """A notebook's start: the workspace (`mount_drive`), its `cache_dir` as every stage's cache root (so
    all notebooks share one set of caches), and INFO logging with the stages' progress."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    folder = mount_drive(workspace)
    os.environ["MEGATRON_CACHE"] = str(folder / cache_dir)  # what core.cache.cache_root() reads
    return folder
