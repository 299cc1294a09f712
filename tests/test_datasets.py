"""Dataset indexes on small layouts built in tmp_path (the index does not decode, so tiny files do)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from megatron_utils.cli import data_index
from megatron_utils.datasets import COLUMNS, build_index, detect_dataset, read_index, summarize, write_index
from megatron_utils.datasets.ffpp import OFFICIAL_SPLITS_DIR, read_split_pairs


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def assert_identity_disjoint(table: pd.DataFrame) -> None:
    ids_by_split = {}
    for split, group in table[table["split"] != ""].groupby("split"):
        ids_by_split[split] = (set(group["target_id"]) | set(group["source_id"])) - {""}
    splits = list(ids_by_split)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            assert not ids_by_split[first] & ids_by_split[second], (first, second)


@pytest.fixture(scope="module")
def official_pairs() -> dict[str, list[tuple[str, str]]]:
    return read_split_pairs(OFFICIAL_SPLITS_DIR)


def make_ffpp(root: Path, pairs: dict[str, list[tuple[str, str]]], compression: str = "c23") -> None:
    """Two official pairs per split: originals, and Deepfakes + Face2Face fakes both ways."""
    for split_pairs in pairs.values():
        for a, b in split_pairs[:2]:
            touch(root, f"original_sequences/youtube/{compression}/videos/{a}.mp4",
                  f"original_sequences/youtube/{compression}/videos/{b}.mp4")
            for method in ("Deepfakes", "Face2Face"):
                touch(root, f"manipulated_sequences/{method}/{compression}/videos/{a}_{b}.mp4",
                      f"manipulated_sequences/{method}/{compression}/videos/{b}_{a}.mp4")


def test_official_splits_are_identity_disjoint(official_pairs):
    assert [len(official_pairs[s]) for s in ("train", "val", "test")] == [360, 70, 70]
    ids = [set(i for pair in official_pairs[s] for i in pair) for s in ("train", "val", "test")]
    assert len(ids[0] | ids[1] | ids[2]) == 1000
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_ffpp_index_columns_splits_and_ids(tmp_path, official_pairs):
    make_ffpp(tmp_path, official_pairs)
    result = build_index(tmp_path)
    table = result.table
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 * 2 * (2 + 4)
    assert result.problems == [] and result.unmatched == []
    assert set(table["dataset"]) == {"ffpp"} and set(table["compression"]) == {"c23"}
    assert set(table["media"]) == {"video"}
    assert (table.groupby("split").size() == 12).all()
    a, b = official_pairs["val"][0]
    fake = table.set_index("video_id").loc[f"manipulated_sequences/Face2Face/c23/videos/{a}_{b}"]
    assert (fake["label"], fake["method"], fake["target_id"], fake["source_id"], fake["split"]) == \
        ("fake", "Face2Face", a, b, "val")
    assert Path(fake["path"]).is_absolute() and Path(fake["path"]).is_file()
    real = table.set_index("video_id").loc[f"original_sequences/youtube/c23/videos/{b}"]
    assert (real["label"], real["method"], real["target_id"], real["source_id"]) == \
        ("real", "original", b, "")
    assert_identity_disjoint(table)
    text = summarize(table)
    assert "Face2Face" in text and "train" in text and "test" in text


def test_ffpp_c0_is_raw_and_dfd_has_no_split(tmp_path, official_pairs):
    make_ffpp(tmp_path, official_pairs, compression="c0")
    touch(tmp_path, "original_sequences/actors/raw/videos/01__kitchen_pan.mp4",
          "manipulated_sequences/DeepFakeDetection/raw/videos/01_02__outside_talking_still_laughing__YVGY8LOK.mp4")
    result = build_index(tmp_path, "ffpp")
    assert result.problems == []
    table = result.table.set_index("video_id")
    assert set(table["compression"]) == {"raw"}
    actor = table.loc["original_sequences/actors/raw/videos/01__kitchen_pan"]
    assert (actor["method"], actor["target_id"], actor["split"]) == ("DeepFakeDetection_original", "01", "")
    dfd = table.loc["manipulated_sequences/DeepFakeDetection/raw/videos/"
                    "01_02__outside_talking_still_laughing__YVGY8LOK"]
    assert (dfd["method"], dfd["target_id"], dfd["source_id"], dfd["split"]) == \
        ("DeepFakeDetection", "01", "02", "")
    assert any("DeepFakeDetection" in note and "no official split" in note for note in result.notes)
    assert "2 items have no split" in summarize(result.table)


def test_ffpp_broken_layout_is_reported(tmp_path, official_pairs):
    make_ffpp(tmp_path, official_pairs)
    (a, b), (_, d) = official_pairs["train"][0], official_pairs["test"][0]
    touch(tmp_path,
          f"manipulated_sequences/Deepfakes/c23/videos/{a}_{d}.mp4",  # target in train, source in test
          "manipulated_sequences/Deepfakes/c23/videos/notes.txt",  # not a video
          f"manipulated_sequences/Deepfakes/masks/videos/{a}_{b}.mp4",  # masks are not samples
          "original_sequences/youtube/c23/videos/bad_name_here.mp4",  # an original named like no id
          "README.md")
    (tmp_path / "manipulated_sequences/MyMethod/c23/videos").mkdir(parents=True)  # a method with no videos
    result = build_index(tmp_path)
    assert sorted(result.unmatched) == sorted([
        "manipulated_sequences/Deepfakes/c23/videos/notes.txt",
        f"manipulated_sequences/Deepfakes/masks/videos/{a}_{b}.mp4",
        "original_sequences/youtube/c23/videos/bad_name_here.mp4", "README.md"])
    assert any(f"{a}_{d}" in p and "train" in p and "test" in p for p in result.problems)
    assert any("MyMethod" in p and "no videos" in p for p in result.problems)
    across = result.table.set_index("video_id").loc[f"manipulated_sequences/Deepfakes/c23/videos/{a}_{d}"]
    assert across["split"] == ""
    assert_identity_disjoint(result.table)


def test_ffpp_missing_folders(tmp_path, official_pairs):
    touch(tmp_path, "manipulated_sequences/Deepfakes/c23/videos/071_054.mp4")
    result = build_index(tmp_path)
    assert any("no original_sequences/ folder" in p and "FaceForensics++ layout" in p
               for p in result.problems)
    (tmp_path / "manipulated_sequences").rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="original_sequences/ nor manipulated_sequences/"):
        build_index(tmp_path, "ffpp")
    with pytest.raises(ValueError, match="matches no known dataset layout"):
        build_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_index(tmp_path / "nowhere")


def test_ffpp_root_splits_for_mini_style_ids(tmp_path):
    """The mini dataset writes ROOT/splits/ with ids containing '-'; they win over the official lists."""
    splits = {"train": [["obama-0", "biden-1"]], "val": [["hopper-0", "langer-0"]],
              "test": [["carphone-0", "x-0"]]}
    for split, pairs in splits.items():
        touch(tmp_path, f"splits/{split}.json")
        (tmp_path / f"splits/{split}.json").write_text(json.dumps(pairs))
        for a, b in pairs:
            touch(tmp_path, f"original_sequences/youtube/c23/videos/{a}.mp4",
                  f"original_sequences/youtube/c23/videos/{b}.mp4",
                  f"manipulated_sequences/FaceMorph/c23/videos/{a}_{b}.mp4")
    result = build_index(tmp_path)
    assert result.problems == [] and result.unmatched == []  # the split files are not "unmatched"
    table = result.table.set_index("video_id")
    fake = table.loc["manipulated_sequences/FaceMorph/c23/videos/obama-0_biden-1"]
    assert (fake["method"], fake["target_id"], fake["source_id"], fake["split"]) == \
        ("FaceMorph", "obama-0", "biden-1", "train")
    assert any(str(tmp_path / "splits") in note for note in result.notes)
    # The same videos against the official lists: every id is in no split list.
    official = build_index(tmp_path, splits_dir=OFFICIAL_SPLITS_DIR)
    assert set(official.table["split"]) == {""}
    assert any("obama-0" in p and "no split list" in p for p in official.problems)
    (tmp_path / "splits/val.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks val.json"):
        build_index(tmp_path)


def write_metadata(folder: Path, entries: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(entries))


def test_dfdc(tmp_path):
    part = tmp_path / "dfdc_train_part_0"
    touch(part, "real1.mp4", "fake1.mp4", "fake2.mp4", "stray.mp4")
    write_metadata(part, {"real1.mp4": {"label": "REAL", "original": None, "split": "train"},
                          "fake1.mp4": {"label": "FAKE", "original": "real1.mp4", "split": "train"},
                          "fake2.mp4": {"label": "FAKE", "original": "real1.mp4", "split": "holdout"},
                          "gone.mp4": {"label": "FAKE", "original": "real1.mp4", "split": "train"},
                          "odd.mp4": {"label": "MAYBE"}})
    broken = tmp_path / "dfdc_train_part_1"
    touch(broken, "video.mp4")
    (broken / "metadata.json").write_text("{not json")
    assert detect_dataset(tmp_path) == "dfdc"
    result = build_index(tmp_path)
    table = result.table.set_index("video_id")
    assert list(table.index) == [f"dfdc_train_part_0/{n}" for n in ("fake1", "fake2", "real1")]
    assert table.loc["dfdc_train_part_0/fake1", ["label", "target_id", "split"]].tolist() == \
        ["fake", "real1", "train"]
    assert table.loc["dfdc_train_part_0/real1", ["label", "method", "target_id"]].tolist() == \
        ["real", "original", "real1"]
    assert table.loc["dfdc_train_part_0/fake2", "split"] == ""
    assert sorted(result.unmatched) == ["dfdc_train_part_0/stray.mp4", "dfdc_train_part_1/video.mp4"]
    problems = "\n".join(result.problems)
    for expected in ("gone.mp4 but the file is missing", "'odd.mp4' has no label", "unknown split 'holdout'",
                     "dfdc_train_part_1/metadata.json is not valid JSON"):
        assert expected in problems


def make_celebdf(root: Path) -> None:
    reals = [f"id{i}_{k:04d}" for i in range(8) for k in range(2)]
    fakes = [f"id{i}_id{(i + 1) % 8}_{k:04d}" for i in range(8) for k in range(2)]
    touch(root, *(f"Celeb-real/{n}.mp4" for n in reals), *(f"Celeb-synthesis/{n}.mp4" for n in fakes),
          *(f"YouTube-real/{i:05d}.mp4" for i in range(4)))
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00000.mp4\n1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id1_id2_0000.mp4\n"
        "1 Celeb-synthesis/id2_id3_0000.mp4\n0 Celeb-synthesis/id9_id9_0000.mp4\ngarbage\n")


def test_celebdf_test_list_and_val_carve(tmp_path):
    make_celebdf(tmp_path)
    touch(tmp_path, "Celeb-real/readme.txt")
    result = build_index(tmp_path, val_fraction=0.4)
    table = result.table.set_index("video_id")
    assert len(table) == 16 + 16 + 4
    assert table.loc["YouTube-real/00000", ["label", "method", "split"]].tolist() == \
        ["real", "YouTube-real", "test"]
    fake = table.loc["Celeb-synthesis/id1_id2_0000"]
    assert fake[["label", "target_id", "source_id", "split"]].tolist() == ["fake", "id1", "id2", "test"]
    assert result.unmatched == ["Celeb-real/readme.txt"]
    problems = "\n".join(result.problems)
    assert "labels Celeb-synthesis/id2_id3_0000.mp4 real, but its folder says fake" in problems
    assert "lists Celeb-synthesis/id9_id9_0000.mp4, which is missing" in problems
    assert "line 6" in problems
    train_val = result.table[result.table["split"].isin(["train", "val"])]
    assert set(train_val["split"]) == {"train", "val"}
    assert_identity_disjoint(train_val)
    again = build_index(tmp_path, val_fraction=0.4).table
    pd.testing.assert_frame_equal(result.table, again)  # the carve is deterministic
    without_val = build_index(tmp_path).table
    assert set(without_val["split"]) == {"train", "test"}


def test_celebdf_missing_parts(tmp_path):
    touch(tmp_path, "Celeb-real/id0_0000.mp4")
    result = build_index(tmp_path, "celebdf")
    assert set(result.table["split"]) == {""}
    problems = "\n".join(result.problems)
    assert "no Celeb-synthesis" in problems and "no List_of_testing_videos.txt" in problems
    with pytest.raises(ValueError, match="do not apply to dataset 'celebdf'"):
        build_index(tmp_path, splits_dir=tmp_path)


def test_generic_with_and_without_split_parents(tmp_path):
    touch(tmp_path, "real/a.mp4", "real/b.jpg", "fake/Deepfakes/x/c.mp4", "fake/d.png", "fake/notes.txt")
    result = build_index(tmp_path)
    table = result.table.set_index("video_id")
    assert table.loc["real/b", ["label", "media", "method", "split"]].tolist() == \
        ["real", "image", "original", ""]
    assert table.loc["fake/Deepfakes/x/c", ["label", "media", "method"]].tolist() == \
        ["fake", "video", "Deepfakes"]
    assert table.loc["fake/d", "method"] == "fake"
    assert result.unmatched == ["fake/notes.txt"]

    split_root = tmp_path / "split"
    touch(split_root, "train/real/a.mp4", "train/fake/b.mp4", "test/real/c.mp4", "val/fake/d.mp4",
          "misc/e.mp4")
    result = build_index(split_root, "generic")
    assert dict(zip(result.table["video_id"], result.table["split"], strict=True)) == \
        {"test/real/c": "test", "train/fake/b": "train", "train/real/a": "train", "val/fake/d": "val"}
    assert result.unmatched == ["misc/e.mp4"]

    only_real = tmp_path / "only_real"
    touch(only_real, "real/a.mp4")
    assert any("no fake/ folder" in p for p in build_index(only_real).problems)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_and_read_index_round_trip(tmp_path, official_pairs, suffix):
    make_ffpp(tmp_path / "ffpp", official_pairs)
    touch(tmp_path / "ffpp", "original_sequences/actors/c23/videos/01__kitchen_pan.mp4")  # empty split
    table = build_index(tmp_path / "ffpp").table
    path = write_index(table, tmp_path / f"index{suffix}")
    back = read_index(path)
    assert list(back.columns) == COLUMNS
    assert back.astype(object).equals(table.astype(object))
    assert (back["source_id"] == "").any()  # empty strings survive, not NaN
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_index(table, tmp_path / "index.txt")
    pd.DataFrame({"video_id": ["a"]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="lacks the column"):
        read_index(tmp_path / "other.csv")


def parse_index_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_index.register(parser.add_subparsers())
    return parser.parse_args(["index", *argv])


def test_cli_index_writes_summary_and_exit_status(tmp_path, official_pairs, capsys):
    make_ffpp(tmp_path, official_pairs)
    args = parse_index_args([str(tmp_path)])
    assert args.handler(args) == 0
    assert args.handler(args) == 0  # a second run does not index its own index.csv
    out = capsys.readouterr().out
    assert "wrote 36 rows" in out and "unmatched" not in out
    assert len(read_index(tmp_path / "index.csv")) == 36

    touch(tmp_path, "stray.bin")
    (tmp_path / "manipulated_sequences/Empty").mkdir()
    args = parse_index_args([str(tmp_path), "--dataset", "ffpp", "--out", str(tmp_path / "i.parquet")])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "1 files fit no rule" in out and "stray.bin" in out and "Empty" in out
    assert (tmp_path / "i.parquet").is_file()
