"""The notebooks' install cell, performed as Colab performs it: pip installs this package from a git URL into
a fresh virtual environment, which then imports it and runs `megatron doctor`.

The repository is the working tree's tracked files committed into a throwaway git repository (what a push
would publish), and the requirement is the one the notebooks' install cell gives pip, with the GitHub
address swapped for that repository's `git+file://` URL. pip clones it and builds the package with build
isolation (fetching setuptools from the package index, or pip's cache), as on Colab.

The shortcut that keeps this under 2 minutes: the fresh environment sees the dependencies already installed
here (a .pth file names this environment's site-packages) and pip installs the package alone (`--no-deps`).
Checked: the package installs from git as committed, with every data file the repository holds inside
`megatron_utils/` (recipes, templates, FF++ split lists, the web page); its metadata names
requirements.txt's dependencies and the repository address; the `megatron` command exists; `megatron
doctor` runs. Left unchecked: that pip can resolve, download and install the dependencies (here they are
constraints.txt's versions, not what pip would choose on Colab today), Colab's preinstalled packages,
Python 3.12 (`scripts/check_wheels.py` checks that every dependency has a wheel for it), a GPU, and the
GitHub address itself (tests/test_notebooks.py checks the cell names the one in pyproject.toml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from megatron_utils.core.colab import repository_url

REPO = Path(__file__).resolve().parents[1]
PIP_TIMEOUT = 300  # seconds; pip builds the package and may fetch setuptools for the build

# Run inside the fresh environment: what the installed package says about itself.
INSPECT = """
import json
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path

import megatron_utils
from megatron_utils.core.colab import install_requirement
from megatron_utils.recipes import list_recipes

installed = Path(str(files("megatron_utils")))
print(json.dumps({"module": megatron_utils.__file__, "install_requirement": install_requirement(),
                  "requires": distribution("megatron-deepfake").requires, "recipes": list_recipes(),
                  "files": sorted(str(path.relative_to(installed)) for path in installed.rglob("*")
                                  if path.is_file() and path.suffix not in (".py", ".pyc"))}))
"""


def notebook_requirement() -> str:
    """What the notebooks' install cell gives pip (the setup cell is the same in all: test_notebooks.py)."""
    notebook = nbformat.read(REPO / "notebooks" / "00_setup_and_data.ipynb", as_version=4)
    setup = next(cell.source for cell in notebook.cells if "%pip install" in cell.source)
    return re.search(r'%pip install --quiet "([^"]+)"', setup).group(1)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def snapshot(destination: Path) -> Path:
    """The working tree's tracked files, as they are now, committed into a new repository."""
    destination.mkdir()
    for name in git("ls-files", "-z", cwd=REPO).split("\0"):
        source = REPO / name
        if name and source.is_file():  # a tracked file deleted in the working tree is not published
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git("init", "--quiet", cwd=destination)
    git("add", "--all", cwd=destination)
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "-m", "snapshot",
        cwd=destination)
    return destination


def fresh_environment(folder: Path) -> Path:
    """A new virtual environment (no pip of its own) that sees this environment's installed packages."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(folder)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # Appended to sys.path after the environment's own site-packages, so what pip installs there wins.
    (Path(purelib) / "visible-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_notebooks_install_cell_installs_from_git_and_megatron_doctor_runs(tmp_path: Path):
    requirement = notebook_requirement()
    github = f"git+{repository_url()}.git"
    assert requirement == f"megatron-deepfake @ {github}"
    clone = snapshot(tmp_path / "repository")
    python = fresh_environment(tmp_path / "env")
    # The checkout must not be importable: only what pip installed may answer.
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    environment["MEGATRON_CACHE"] = str(tmp_path / "cache")
    local = requirement.replace(github, f"git+file://localhost{clone.as_posix()}")  # old pip: host needed
    pip = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--quiet",
                          "--disable-pip-version-check", local], cwd=tmp_path, env=environment,
                         capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert pip.returncode == 0, f"pip install {local} failed:\n{pip.stdout}\n{pip.stderr}"

    command = python.parent / ("megatron.exe" if os.name == "nt" else "megatron")
    doctor = subprocess.run([command, "doctor", "--runs", str(tmp_path / "runs")], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    assert doctor.returncode == 0, doctor.stderr
    facts = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in doctor.stdout.splitlines())
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["device"] in ("cpu", "cuda", "cuda:0")
    assert facts["caches"].startswith(str(tmp_path / "cache"))
    assert {f"extra {name}" for name in ("serve", "audio", "explain", "ray", "mini")} <= facts.keys()

    inspected = subprocess.run([python, "-c", INSPECT], cwd=tmp_path, env=environment, capture_output=True,
                               text=True, timeout=PIP_TIMEOUT)
    assert inspected.returncode == 0, inspected.stderr
    installed = json.loads(inspected.stdout)
    assert Path(installed["module"]).is_relative_to(tmp_path / "env")  # the git install, not this checkout
    assert installed["install_requirement"] == requirement  # the metadata knows the repository's address
    declared = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    core = [Requirement(req) for req in installed["requires"] if "extra ==" not in req]
    assert core == [Requirement(line) for line in declared if line]
    assert {"demo", "ffpp-c23"} <= set(installed["recipes"])
    tracked = git("ls-files", "megatron_utils", cwd=clone).split()
    data = sorted(name.removeprefix("megatron_utils/") for name in tracked if not name.endswith(".py"))
    assert data == installed["files"], "the installed package lacks data files that the repository holds"
