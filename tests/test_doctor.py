"""`megatron doctor` says what the machine will run with."""

from __future__ import annotations

import sys

from megatron_utils.cli import main
from megatron_utils.core.doctor import diagnose
from megatron_utils.core.extras import EXTRAS


def test_doctor_names_device_precision_disk_and_extras(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGATRON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "captum", None)  # find_spec sees no explain extra
    facts = diagnose(tmp_path / "runs")
    assert facts["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert facts["device"] == "cpu" and facts["precision"] == "float32"  # CI has no GPU
    assert facts["caches"].startswith(str(tmp_path / "cache")) and "GiB free" in facts["caches"]
    assert set(EXTRAS) <= {name.removeprefix("extra ") for name in facts}
    assert facts["extra explain"] == "not installed (pip install 'megatron-deepfake[explain]')"
    assert facts["extra serve"] == "installed"
    assert main(["doctor", "--runs", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "extra serve" in printed and str(tmp_path / "runs") in printed
