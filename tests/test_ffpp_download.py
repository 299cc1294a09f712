"""The FF++ download driver against stand-in scripts that take the real script's arguments, ask for the
terms of use the same way, fetch the official file lists and write tiny files into the FF++ layout."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from megatron_utils.cli import data_download
from megatron_utils.datasets import build_index
from megatron_utils.datasets.ffpp import OFFICIAL_SPLITS_DIR
from megatron_utils.datasets.ffpp_download import DownloadConfig, download_ffpp, verify_part

DFD_ACTORS = ["01__kitchen_pan", "02__outside_talking_still_laughing"]
DFD_FAKES = ["01_02__outside_talking_still_laughing__YVGY8LOK", "02_01__kitchen_pan__ABCD1234"]

STAND_IN = '''
import argparse, json, os, sys, tempfile
from os.path import join

METHODS = ["Deepfakes", "DeepFakeDetection", "Face2Face", "FaceShifter", "FaceSwap", "NeuralTextures"]
DATASETS = {{"original": "original_sequences/youtube",
            "DeepFakeDetection_original": "original_sequences/actors",
            **{{method: "manipulated_sequences/" + method for method in METHODS}}}}
parser = argparse.ArgumentParser()
parser.add_argument("output_path")
parser.add_argument("-d", "--dataset", default="all", choices=list(DATASETS) + ["all"])
parser.add_argument("-c", "--compression", default="raw", choices=["raw", "c23", "c40"])
parser.add_argument("-t", "--type", default="videos", choices=["videos", "masks", "models"])
parser.add_argument("-n", "--num_videos", type=int, default=None)
parser.add_argument("--server", default="EU", choices=["EU", "EU2", "CA"])
args = parser.parse_args()
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
print("Press any key to continue, or CTRL-C to exit.")
input("")

pairs = [p for s in ("train", "val", "test") for p in json.load(open(join({splits!r}, s + ".json")))]
if args.dataset == "original":
    names = [i for p in pairs for i in p]
elif args.dataset == "DeepFakeDetection_original":
    names = {actors!r}
elif args.dataset == "DeepFakeDetection":
    names = {fakes!r}
else:
    names = [n for a, b in pairs for n in (a + "_" + b, b + "_" + a)]
folder = join(args.output_path, DATASETS[args.dataset], args.compression, args.type)
print("Output path: " + folder)
os.makedirs(folder, exist_ok=True)
for number, name in enumerate(names):
    if args.dataset == {fail_part!r} and number == len(names) // 2:
        open(join(folder, "tmpab12cd34"), "wb").write(b"par")  # an interrupted temporary download
        sys.exit("Error during download: connection reset")
    path = join(folder, name + ".mp4")
    if os.path.isfile(path):
        continue  # the real script skips existing files
    content = b"" if args.dataset == {zero_part!r} and number == 3 else b"video"
    handle, tmp = tempfile.mkstemp(dir=folder)
    os.write(handle, content)
    os.close(handle)
    os.rename(tmp, path)
'''


def stand_in(tmp_path: Path, fail_part: str | None = None, zero_part: str | None = None) -> Path:
    script = tmp_path / f"download_{fail_part}_{zero_part}.py"
    script.write_text(STAND_IN.format(log=str(tmp_path / "calls.jsonl"), splits=str(OFFICIAL_SPLITS_DIR),
                                      actors=DFD_ACTORS, fakes=DFD_FAKES, fail_part=fail_part,
                                      zero_part=zero_part))
    return script


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_full_download_then_resume_skips_everything(tmp_path, capfd):
    out = tmp_path / "ffpp"
    config = DownloadConfig(stand_in(tmp_path), out, compression="c0",
                            methods=("Deepfakes", "DeepFakeDetection"), server="EU2", accept_tos=True)
    report = download_ffpp(config)
    assert report.complete, report.summary()
    assert calls(tmp_path) == [[str(out), "-d", part, "-c", "raw", "-t", "videos", "--server", "EU2"]
                               for part in ("original", "DeepFakeDetection_original", "Deepfakes",
                                            "DeepFakeDetection")]
    assert "Output path:" in capfd.readouterr().out  # the script's output is streamed, not swallowed
    counts = {check.part: (check.expected, check.present) for check in report.checks}
    assert counts == {"original": (1000, 1000), "Deepfakes": (1000, 1000),
                      "DeepFakeDetection_original": (2, 2), "DeepFakeDetection": (2, 2)}

    again = download_ffpp(config)
    assert again.complete and len(calls(tmp_path)) == 4  # nothing re-run
    assert sorted(again.skipped) == sorted(config.parts())

    result = build_index(out)  # the downloaded layout indexes cleanly with the official splits
    assert result.problems == [] and result.unmatched == []
    assert len(result.table) == 2004
    assert set(result.table.loc[result.table["method"] == "Deepfakes", "split"]) == {"train", "val", "test"}


def test_interrupted_part_is_resumed_alone(tmp_path):
    out = tmp_path / "ffpp"
    methods = ("Deepfakes", "Face2Face")
    report = download_ffpp(DownloadConfig(stand_in(tmp_path, fail_part="Face2Face"), out, methods=methods,
                                          accept_tos=True))
    assert not report.complete
    assert report.returncodes == {"original": 0, "Deepfakes": 0, "Face2Face": 1}
    face2face = report.checks[-1]
    assert (face2face.expected, face2face.present, len(face2face.missing)) == (1000, 500, 500)
    assert face2face.extra == ["tmpab12cd34"]
    assert "download INCOMPLETE" in report.summary() and "500 missing" in report.summary()

    report = download_ffpp(DownloadConfig(stand_in(tmp_path), out, methods=methods, accept_tos=True))
    assert report.complete, report.summary()
    assert report.skipped == ["original", "Deepfakes"]
    assert [call[2] for call in calls(tmp_path)] == ["original", "Deepfakes", "Face2Face", "Face2Face"]
    assert report.checks[-1].extra == []  # the interrupted temporary file was cleared before the re-run


def test_zero_byte_file_is_reported_and_fetched_again(tmp_path):
    out = tmp_path / "ffpp"
    report = download_ffpp(DownloadConfig(stand_in(tmp_path, zero_part="Deepfakes"), out,
                                          methods=("Deepfakes",), accept_tos=True))
    deepfakes = report.checks[1]
    assert report.returncodes["Deepfakes"] == 0 and not report.complete
    assert len(deepfakes.empty) == 1 and deepfakes.missing == []
    (deepfakes.folder / "notes.txt").write_text("mine")

    report = download_ffpp(DownloadConfig(stand_in(tmp_path), out, methods=("Deepfakes",), accept_tos=True))
    assert report.complete and report.skipped == ["original"]
    assert report.checks[1].empty == [] and report.checks[1].extra == ["notes.txt"]  # extra: reported only


def test_dfd_without_a_recorded_run_is_unverified(tmp_path):
    folder = tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos"
    folder.mkdir(parents=True)
    (folder / f"{DFD_FAKES[0]}.mp4").write_bytes(b"video")
    check = verify_part(tmp_path, "DeepFakeDetection", "c23")
    assert (check.expected, check.present, check.complete) == (None, 1, False)
    assert check.status.startswith("unverified")


def test_failing_dfd_run_is_not_recorded_complete(tmp_path):
    out = tmp_path / "ffpp"
    report = download_ffpp(DownloadConfig(stand_in(tmp_path, fail_part="DeepFakeDetection"), out,
                                          methods=("DeepFakeDetection",), accept_tos=True))
    dfd = report.checks[-1]
    assert report.returncodes["DeepFakeDetection"] == 1 and not dfd.complete and dfd.expected is None
    report = download_ffpp(DownloadConfig(stand_in(tmp_path), out, methods=("DeepFakeDetection",),
                                          accept_tos=True))
    assert report.complete and report.checks[-1].present == len(DFD_FAKES)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    data_download.register(parser.add_subparsers())
    args = parser.parse_args(["download-ffpp", *argv])
    return args.handler(args)


def test_cli_exit_status_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "ffpp"
    common = ["--out", str(out), "--methods", "FaceSwap", "--accept-tos"]
    assert run_cli(["--script", str(stand_in(tmp_path, fail_part="FaceSwap")), *common]) == 1
    assert run_cli(["--script", str(stand_in(tmp_path)), *common, "--verify-only"]) == 1
    assert len(calls(tmp_path)) == 2  # --verify-only ran nothing
    assert run_cli(["--script", str(stand_in(tmp_path)), *common]) == 0
    assert "download complete" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="request form"):
        run_cli(["--script", str(tmp_path / "absent.py"), *common])
    with pytest.raises(ValueError, match=r"unknown FF\+\+ method"):
        download_ffpp(DownloadConfig(stand_in(tmp_path), out, methods=("Deepfake",)))
    with pytest.raises(ValueError, match="unknown compression"):
        download_ffpp(DownloadConfig(stand_in(tmp_path), out, compression="c30"))


def test_without_a_terminal_the_terms_flag_is_asked_for_before_the_script_runs(tmp_path, monkeypatch):
    """A notebook has no terminal to answer the script's terms-of-use prompt: the script would die on end of
    input, so the error names the flag instead, and nothing runs."""
    monkeypatch.setattr("sys.stdin", io.StringIO())
    with pytest.raises(ValueError, match="ACCEPT_FFPP_TOS = True"):
        download_ffpp(DownloadConfig(stand_in(tmp_path), tmp_path / "ffpp", methods=("FaceSwap",)))
    assert calls(tmp_path) == []
