"""The numbered notebooks as a Colab user meets them: their structure (badge, the shared parameters and setup
cell that installs this repository, reads the recipe and runs `megatron doctor`, no logic and no stored
outputs), and a top-to-bottom run of all of them on the tiny mini dataset with a tiny recipe, then a second
run of the two that train, which must train nothing.

`tests/test_end_to_end.py` runs the pipeline through `run_demo`; this test covers what only the notebooks do:
their cells against the public API, the pictures, tables and files they show, prediction with explanations
and annotated video, and resuming when a notebook is run again."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
import types
import typing
from dataclasses import is_dataclass
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook
from papermill.exceptions import PapermillExecutionError

from megatron_utils.core.cache import StageCache, cache_root
from megatron_utils.core.colab import (
    colab_url,
    install_requirement,
    mount_drive,
    open_workspace,
    repository_url,
)
from megatron_utils.inference.predict import FaceScore, Prediction, WindowScore
from megatron_utils.models.backbones import is_frame_classifier
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig, extract_faces
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig
from megatron_utils.preprocessing.video import probe, read_image
from megatron_utils.recipes import Recipe, to_dict
from megatron_utils.training.finetune import FinetuneConfig
from megatron_utils.training.train import TrainConfig
from megatron_utils.visualization import notebook as viz

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "megatron-notebook-tests"

# The tiny setup: the real chain at toy sizes with random-weight tiny models, one process per stage.
TINY_RECIPE = Recipe(
    preprocess=PreprocessConfig(
        frames=FramesConfig(frames_per_clip=4, clips_per_video=2),
        faces=FaceConfig(crop_size=64, min_faces=4),
        depth=DepthConfig(model="random-init:depth-anything-tiny", input_size=56, output_size=64),
        embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random")),
    finetune=FinetuneConfig(backbone="tiny_random", epochs=1, batch_size=8, crops_per_video=4, num_workers=0,
                            device="cpu"),
    model="megatron-tiny",
    train=TrainConfig(epochs=3, batch_size=8, fakes="dataset", device="cpu"))
# Injected into the parameters cells (each notebook gets the names it declares), besides WORKSPACE and RECIPE.
TINY = {
    "DATA_DIR": "data/mini-tiny",
    "RUN_DIR": "runs/tiny",
    "MINI_PRESET": "tiny",
    "WORKERS": 0,
    "FACE_GRID_VIDEOS": 1,
    "SHEET_CROPS": 2,
    "PROJECTION": "pca",
    "CLIPS": 2,  # 07: the two training clips of T = 4 frames per video
    "BATCH_VIDEOS": 2,
    "CROSS_DATA_DIR": "data/mini-tiny",  # the same videos: 06's optional cell runs, from the caches
    "CROSS_CACHE_DIR": "cache",
}


def parameters_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def shared_block(parameters: nbformat.NotebookNode) -> str:
    """The parameters every notebook starts with: the cell up to its first empty line."""
    return parameters.source.split("\n\n")[0]


def recipe_settings() -> set[str]:
    """Every setting a recipe holds (frames_per_clip, crop_size, epochs, ...), at any depth."""
    names: set[str] = set()
    pending: list[type] = [Recipe]
    while pending:
        for name, hint in typing.get_type_hints(pending.pop()).items():
            names.add(name)
            if is_dataclass(hint):
                pending.append(hint)
    return names - {"source"}


def test_the_numbered_notebooks_are_all_there():
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["00_setup_and_data", "01_faces", "02_finetune", "03_depth", "04_embeddings", "05_train",
                     "06_evaluate", "07_predict"]
    assert [name[:2] for name in names] == [f"{number:02d}" for number in range(len(names))]


def test_the_repository_address_is_written_once_and_installed_from():
    """pyproject.toml's [project.urls] is the one place: the installed metadata carries it (a stale
    editable install would not), and colab.py builds the install requirement and badges from it."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert repository_url() == declared, "the installed metadata is stale: pip install -e ."
    assert install_requirement() == f"megatron-deepfake @ git+{declared}.git"
    owner_name = declared.removeprefix("https://github.com/")
    assert colab_url("x.ipynb") == f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/x.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_structure(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    badge = re.search(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", first.source)
    assert badge is not None, f"{path.name}: no Open-in-Colab badge in the first cell"
    assert badge.group(1) == colab_url(path.name)
    assert "On a Colab T4, FF++ c23" in first.source and "Estimated" in first.source, \
        f"{path.name}: the first cell states no estimated time and disk for FF++ c23 on a T4"

    parameters = parameters_cells(notebook)
    assert len(parameters) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    codes = code_cells(notebook)
    assert codes[0] is parameters[0], f"{path.name}: the parameters cell must be the first code cell"
    declared = {name.lower() for name in papermill.inspect_notebook(str(path))}
    repeated = declared & recipe_settings()
    assert not repeated, f"{path.name} declares recipe settings {sorted(repeated)}: they belong to RECIPE"

    setup = codes[1].source
    install = f'    %pip install --quiet "{install_requirement()}"'
    assert setup.splitlines()[2:4] == ['if "google.colab" in sys.modules:  # a fresh Colab runtime: install '
                                       'Megatron from GitHub first', install]
    for call in ("open_workspace(WORKSPACE, CACHE_DIR)", "mg.load_recipe(RECIPE, OVERRIDES)",
                 "print(report("):
        assert call in setup, f"{path.name}: the setup cell does not call {call}"

    for cell in codes:
        assert cell.outputs == [], f"{path.name}: stored with outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name}: stored with execution counts"
        assert set(cell.metadata) <= {"tags"}, f"{path.name}: stored with run metadata {set(cell.metadata)}"
        assert not re.search(r"^\s*(def|class) ", cell.source, re.MULTILINE), \
            f"{path.name}: defines a function or class; logic belongs in megatron_utils"
    assert "papermill" not in notebook.metadata and "widgets" not in notebook.metadata


def test_every_notebook_shares_the_same_parameters_and_setup():
    """Each notebook runs alone in its own Colab session, so each repeats the shared parameters and the
    setup cell; they must be the same text everywhere, or one notebook would install, mount or preprocess
    differently from the others."""
    notebooks = {path.name: nbformat.read(path, as_version=4) for path in NOTEBOOKS}
    for part in (lambda nb: shared_block(parameters_cells(nb)[0]), lambda nb: code_cells(nb)[1].source,
                 lambda nb: nb.cells[3].source):  # the setup cell's explanation
        texts = {name: part(nb) for name, nb in notebooks.items()}
        assert len(set(texts.values())) == 1, f"they differ: {texts}"


def test_the_ffpp_download_cell_says_how_to_get_the_script_and_accept_the_terms():
    notebook = nbformat.read(REPO / "notebooks" / "00_setup_and_data.ipynb", as_version=4)
    option_a = next(cell.source for cell in notebook.cells if cell.source.startswith("## Option A"))
    for needed in ("request form", "faceforensics_download_v4.py", "MyDrive/megatron", "FFPP_SCRIPT",
                   "ACCEPT_FFPP_TOS = True", "terms of use"):
        assert needed in option_a, f"00's FF++ explanation does not mention {needed!r}"
    download = next(cell.source for cell in code_cells(notebook) if "download_ffpp(" in cell.source)
    assert "script=workspace / FFPP_SCRIPT" in download and "accept_tos=ACCEPT_FFPP_TOS" in download


def test_shared_parameters_have_the_same_defaults():
    """A parameter repeated in several notebooks must not drift apart, or a later notebook would look for
    another dataset, run or cache."""
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


def test_open_workspace_puts_every_stage_cache_in_the_workspace(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("MEGATRON_CACHE", raising=False)
    workspace = open_workspace(tmp_path / "megatron", "caches")
    assert workspace == tmp_path / "megatron"
    assert cache_root() == tmp_path / "megatron" / "caches"  # what every stage's StageCache opens under


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


def execute(paths: list[Path], kernel: str, workspace: Path, recipe: Path, out: Path
            ) -> dict[str, nbformat.NotebookNode]:
    """The notebooks run one after the other as Colab runs each (papermill, the tiny parameters each
    declares), in one kernel to save its start and imports per notebook; `%reset -f` empties the namespace
    before each, so none can lean on a name another defined. Returns each run, by name."""
    cells = []
    for path in paths:
        declared = papermill.inspect_notebook(str(path))
        parameters = {"WORKSPACE": str(workspace), "RECIPE": str(recipe),
                      **{name: value for name, value in TINY.items() if name in declared}}
        notebook = papermill.execute_notebook(str(path), None, parameters, prepare_only=True)
        for cell in [new_code_cell("%reset -f", metadata={"tags": []}), *notebook.cells]:
            cell.metadata["notebook"] = path.stem
            cells.append(cell)
    merged = new_notebook(cells=cells, metadata=notebook.metadata)
    out.mkdir(parents=True)
    nbformat.write(merged, out / "all.ipynb")
    try:
        papermill.execute_notebook(str(out / "all.ipynb"), str(out / "all.ipynb"), kernel_name=kernel,
                                   cwd=str(workspace.parent), progress_bar=False, log_output=False)
    except PapermillExecutionError as error:
        raise AssertionError(f"{cells[error.cell_index].metadata['notebook']} failed: {error}") from error
    ran = nbformat.read(out / "all.ipynb", as_version=4)
    return {path.stem: new_notebook(cells=[c for c in ran.cells if c.metadata["notebook"] == path.stem])
            for path in paths}


def shown(run: nbformat.NotebookNode, kind: str) -> list[str]:
    """Every output of `kind` ("image/png", "text/plain", "stream") the run displayed, in order."""
    if kind == "stream":
        return [output["text"] for cell in code_cells(run) for output in cell.outputs if "text" in output]
    return [output["data"][kind] for cell in code_cells(run) for output in cell.outputs
            if kind in output.get("data", {})]


def drawn(path: Path) -> bool:
    image = read_image(path)
    return image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 5


@pytest.mark.slow
def test_notebooks_run_top_to_bottom_and_a_rerun_trains_nothing(tmp_path: Path, kernel: str, tiny_mini):
    workspace = tmp_path / "workspace"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(TINY_RECIPE)))
    # The session's build of the same preset and seed: notebook 00's build finds every video finished and
    # reuses it (the builder's own resume), instead of building the tiny set a second time.
    shutil.copytree(tiny_mini[0], workspace / "data" / "mini-tiny")
    executed = execute(NOTEBOOKS, kernel, workspace, recipe, tmp_path / "executed")
    for name, run in executed.items():
        assert shown(run, "image/png"), f"{name} showed no picture"
        assert any("device " in text and "extra serve" in text for text in shown(run, "stream")), \
            f"{name} printed no `megatron doctor` report"
        assert any(str(recipe) in text for text in shown(run, "stream")), f"{name} did not read the recipe"

    table = pd.read_csv(workspace / "data" / "mini-tiny" / "index.csv")
    run_dir = workspace / "runs" / "tiny"
    faces = StageCache.open(next((workspace / "cache" / "faces").iterdir()), "faces")
    faces_manifest = viz.manifest_table(faces, table)
    assert set(faces_manifest["video_id"]) == set(table["video_id"])  # every video: crops or its reason
    finetuned = run_dir / "finetune"
    assert is_frame_classifier(finetuned / "best") and drawn(finetuned / "pseudo_fakes.png")
    assert len(pd.read_csv(finetuned / "history.csv")) == TINY_RECIPE.finetune.epochs
    embedded = json.loads(next((workspace / "cache" / "embed").glob("*/preprocess.json")).read_text())
    assert embedded["config"]["embed"]["rgb_weights"] == str((finetuned / "best").resolve())  # 04 used 02's
    assert len(pd.read_csv(run_dir / "history.csv")) == TINY_RECIPE.train.epochs
    assert drawn(run_dir / "training_curves.png")
    overall = json.loads((run_dir / "eval" / "index-test" / "metrics.json").read_text())["metrics"][0]
    assert 0 <= overall["auc"] <= 1 and (run_dir / "eval" / "index-test" / "report.md").is_file()
    assert list((run_dir / "eval" / "index-test" / "explain").glob("*/*.png"))  # 06 explained a verdict
    assert (run_dir / "eval" / "mini-tiny-test" / "metrics.json").is_file()  # and ran the second dataset
    predicted = run_dir / "predict"
    assert drawn(predicted / "timeline.png")
    info = probe(predicted / "annotated.mp4")
    assert info.frame_count > 1 and min(info.width, info.height) > 0  # a playable video
    batch = shown(executed["07_predict"], "text/plain")[-1]
    assert batch.count(" ok ") == TINY["BATCH_VIDEOS"] and batch.count(" failed ") == 1

    # Run the two training notebooks again, as after a Colab session ended: caches and runs are reused.
    trained = {folder: (folder / "last" / "training_state.json").stat().st_mtime_ns
               for folder in (finetuned, run_dir)}
    manifests = sorted((workspace / "cache").glob("*/*/manifests/*"))
    execute([REPO / "notebooks" / f"{name}.ipynb" for name in ("02_finetune", "05_train")], kernel, workspace,
            recipe, tmp_path / "again")
    assert trained == {folder: (folder / "last" / "training_state.json").stat().st_mtime_ns
                       for folder in trained}
    assert sorted((workspace / "cache").glob("*/*/manifests/*")) == manifests  # no stage wrote anything
