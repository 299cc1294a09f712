"""The numbered notebooks: their structure (badge, one parameters cell, Drive cell, stored without outputs)
and a top-to-bottom run of all of them, in order, on the tiny mini dataset with tiny models."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from megatron_utils.core.colab import GITHUB_REPO, colab_url, mount_drive
from megatron_utils.inference.predict import FaceScore, Prediction, WindowScore
from megatron_utils.preprocessing.faces import FaceConfig, extract_faces
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.video import probe, read_image
from megatron_utils.visualization import notebook as viz

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "megatron-notebook-tests"

# Tiny values injected into the parameters cells (each notebook gets the names it declares).
TINY = {
    "DATA_DIR": "data/mini-tiny",
    "CACHE_DIR": "cache",
    "RUN_DIR": "runs/tiny",
    "DATASET": "mini",
    "MINI_PRESET": "tiny",
    "MINI_SEED": 0,
    "FRAMES_PER_CLIP": 4,
    "CLIPS_PER_VIDEO": 2,
    "CROP_SIZE": 64,
    "MIN_FACES": 4,
    "WORKERS": 2,
    "DEPTH_MODEL": "random-init:depth-anything-tiny",
    "RGB_BACKBONE": "tiny_random",
    "DEPTH_BACKBONE": "tiny_random",
    "FACE_GRID_VIDEOS": 1,
    "FINETUNE_EPOCHS": 1,
    "FINETUNE_BATCH_SIZE": 8,
    "FINETUNE_CROPS_PER_VIDEO": 4,
    "SHEET_CROPS": 2,
    "MODEL": "megatron-tiny",
    "EPOCHS": 3,
    "BATCH_SIZE": 8,
    "DEVICE": "cpu",
    "PROJECTION": "pca",
    "CROSS_DATA_DIR": "data/mini-tiny-seed1",
    "CROSS_MINI_PRESET": "tiny",
    "CROSS_MINI_SEED": 1,
    "CLIPS": 2,  # 07: the two training clips of T = 4 frames per video
}


def parameters_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_numbered_notebooks_are_all_there():
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["00_setup_and_data", "01_faces", "02_finetune", "03_depth", "04_embeddings", "05_train",
                     "06_evaluate", "07_predict"]
    assert [name[:2] for name in names] == [f"{number:02d}" for number in range(len(names))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_structure(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    badge = re.search(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", first.source)
    assert badge is not None, f"{path.name}: no Open-in-Colab badge in the first cell"
    assert badge.group(1) == colab_url(path.name)
    assert f"/github/{GITHUB_REPO}/blob/main/notebooks/{path.name}" in badge.group(1)

    parameters = parameters_cells(notebook)
    assert len(parameters) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    codes = code_cells(notebook)
    assert codes[0] is parameters[0], f"{path.name}: the parameters cell must be the first code cell"
    drive = codes[1].source
    assert "mount_drive(WORKSPACE)" in drive
    assert 'os.environ["MEGATRON_CACHE"]' in drive
    assert f"git+https://github.com/{GITHUB_REPO}.git" in drive  # Colab installs this repository

    for cell in codes:
        assert cell.outputs == [], f"{path.name}: stored with outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name}: stored with execution counts"


def test_shared_parameters_have_the_same_defaults():
    """A setting repeated in several notebooks (paths, T, crop size, models) must not drift apart, or
    a later notebook would silently recompute everything under another configuration."""
    seen: dict[str, tuple[str, str]] = {}
    for path in NOTEBOOKS:
        for name, info in papermill.inspect_notebook(str(path)).items():
            first = seen.setdefault(name, (path.name, info["default"]))
            assert info["default"] == first[1], (f"{name} is {info['default']} in {path.name} but "
                                                 f"{first[1]} in {first[0]}")


def test_mount_drive_outside_colab_mounts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mount_drive("work/space") == tmp_path / "work" / "space"
    assert not (tmp_path / "work").exists()  # nothing created, nothing mounted
    assert mount_drive(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_mount_drive_in_colab_uses_my_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mounted: list[str] = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    folder = mount_drive("megatron", mountpoint=tmp_path / "drive")
    assert mounted == [str(tmp_path / "drive")]
    assert folder == tmp_path / "drive" / "MyDrive" / "megatron" and folder.is_dir()
    assert mount_drive(tmp_path / "local", mountpoint=tmp_path / "drive") == tmp_path / "local"


def test_face_report_tables_name_the_failures(asset, cache_dir: Path):
    """The tables 01_faces shows: a video without faces is listed with its reason; counts add up."""

    table = pd.DataFrame({"video_id": ["real/face", "fake/no_face", "fake/missing"],
                          "path": [asset("single_face_video"), asset("no_face_video"), "/nonexistent.mp4"],
                          "label": ["real", "fake", "fake"], "method": ["original", "Demo", "Demo"],
                          "split": ["test"] * 3})
    faces, report = extract_faces(table.iloc[:2], FramesConfig(frames_per_clip=4), FaceConfig(crop_size=32),
                                  workers=0)
    failures = viz.failure_table(faces, table)
    assert failures["video_id"].tolist() == ["fake/no_face"]
    error = failures["error"].iloc[0]
    assert error == report.failures["fake/no_face"] and "face" in error
    counts = viz.status_by_method(faces, table)
    assert counts.loc["original"].tolist() == [1, 1, 0, 0]
    assert counts.loc["Demo"].tolist() == [2, 0, 1, 1]  # videos, ok, failed, not run
    assert viz.manifest_table(faces, table)["status"].tolist() == ["failed", "ok"]


def scored_face(track: int, probabilities: list[float]) -> FaceScore:
    """A face scored on windows of 4 frames sampled every 2nd video frame, a window every 2 sampled frames."""
    windows = [WindowScore(4 * n, 4 * n + 6, p, 4) for n, p in enumerate(probabilities)]
    frames = list(range(0, 4 * len(probabilities) + 3, 2))
    return FaceScore(track=track, probability=sum(probabilities) / len(probabilities),
                     frames_used=len(frames), windows=windows, frame_index=frames,
                     boxes=[[0, 0, 10, 10]] * len(frames),
                     timeline=[0.5] * len(frames))


def test_prediction_tables_of_07_predict():
    """The tables 07_predict shows: faces highest first with the deciding one marked, each step's share of
    the time, and a batch in which a failed file keeps its reason beside the scored ones."""
    faces = [scored_face(0, [0.2, 0.3]), scored_face(1, [0.9, 0.7, 0.8])]
    scored = Prediction("/v/fake.mp4", "ok", fake_probability=faces[1].probability, verdict="fake",
                        threshold=0.6, face=1, faces=faces, frames_used=8,
                        timings={"decode_faces": 0.3, "depth": 0.5, "embed": 0.1, "classify": 0.1,
                                 "total": 1.0})
    table = viz.face_scores(scored)
    assert table["face"].tolist() == [1, 0] and table["decides"].tolist() == [True, False]
    assert table["verdict"].tolist() == ["fake", "real"]
    assert table["windows"].tolist() == [3, 2] and table["last_frame"].tolist() == [14, 10]

    timing = viz.timing_table(scored).set_index("step")
    assert timing.loc["total", "share"] == 1.0
    assert timing.drop("total")["seconds"].sum() == pytest.approx(timing.loc["total", "seconds"])

    failed = Prediction("/v/broken.mp4", "failed", error="/v/broken.mp4: cannot open the video",
                        threshold=0.6)
    batch = viz.prediction_table([scored, failed])
    assert batch["status"].tolist() == ["ok", "failed"]
    assert batch["faces"].tolist() == [2, 0] and batch["fake_probability"].iloc[0] == pytest.approx(0.8)
    assert pd.isna(batch["error"].iloc[0]) and "broken.mp4" in batch["error"].iloc[1]
    assert pd.isna(batch["verdict"].iloc[1])


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this interpreter, importing this checkout's `megatron_utils` (whatever kernels,
    or editable installs of another checkout, the machine has)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the tiny models need no network; nothing may wait on it
    return KERNEL


@pytest.mark.slow
def test_notebooks_run_top_to_bottom(tmp_path: Path, kernel: str, tiny_mini):
    workspace = tmp_path / "workspace"
    executed = tmp_path / "executed"
    executed.mkdir()
    # The session's build of the same preset and seed: notebook 00's build finds every video finished and
    # reuses it (the builder's own resume), instead of building the tiny set a second time.
    shutil.copytree(tiny_mini[0], workspace / "data" / "mini-tiny")
    for path in NOTEBOOKS:
        declared = papermill.inspect_notebook(str(path))
        parameters = {name: value for name, value in TINY.items() if name in declared}
        papermill.execute_notebook(str(path), str(executed / path.name), kernel_name=kernel,
                                   parameters={"WORKSPACE": str(workspace), **parameters},
                                   cwd=str(tmp_path), progress_bar=False, log_output=False)
        run = nbformat.read(executed / path.name, as_version=4)
        figures = [output for cell in code_cells(run) for output in cell.outputs
                   if "image/png" in output.get("data", {})]
        assert figures, f"{path.name} showed no picture"
        if path.stem == "07_predict":
            batch = next(o for o in run.cells[-1].outputs if o.output_type == "execute_result")
            assert " failed " in batch["data"]["text/plain"]  # the broken file's row, beside the scored
    assert (workspace / "data" / "mini-tiny" / "index.csv").is_file()
    assert list((workspace / "cache" / "embed").glob("*/items/*.safetensors"))
    predicted = workspace / "runs" / "tiny" / "predict"
    timeline = read_image(predicted / "timeline.png")
    assert timeline.ndim == 3 and min(timeline.shape[:2]) > 100 and timeline.std() > 5  # a drawn picture
    info = probe(predicted / "annotated.mp4")
    assert info.frame_count > 1 and min(info.width, info.height) > 0  # a playable video
