import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from megatron_utils.cli import main
from megatron_utils.core.cache import (
    FAILED,
    HOST,
    OK,
    StageCache,
    atomic_path,
    cache_sizes,
    copy_cache,
    stable_hash,
)


def test_key_changes_with_any_config_value(cache_dir):
    a = StageCache("faces", {"size": 224, "margin": 1.3})
    b = StageCache("faces", {"size": 224, "margin": 1.25})
    assert a.key != b.key and a.dir != b.dir
    assert StageCache("faces", {"margin": 1.3, "size": 224}).key == a.key  # order does not matter
    assert json.loads((a.dir / "config.json").read_text())["config"] == {"size": 224, "margin": 1.3}


def test_write_read_roundtrip_and_manifest(cache_dir):
    cache = StageCache("embed", {"d": 8})
    rgb = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float16)
    cache.write("ffpp/Deepfakes/000_003", {"rgb": rgb}, {"backbone": "x"}, fingerprint="1:2", seconds=0.5)
    cache.record("broken/video", FAILED, error="broken/video.mp4: file is empty (0 bytes)", fingerprint="0:1")
    tensors, meta = cache.read("ffpp/Deepfakes/000_003")
    np.testing.assert_array_equal(tensors["rgb"], rgb)
    assert meta == {"backbone": "x"}
    fresh = StageCache("embed", {"d": 8})  # re-reads the manifest from disk
    assert fresh.status("ffpp/Deepfakes/000_003", "1:2") == OK
    assert fresh.status("ffpp/Deepfakes/000_003", "9:9") is None  # the source changed: redo
    assert fresh.failures() == {"broken/video": "broken/video.mp4: file is empty (0 bytes)"}
    assert fresh.done_items() == ["ffpp/Deepfakes/000_003"]
    assert list(cache_sizes(cache_dir)) == [f"embed/{cache.key}"]


def test_torn_manifest_line_and_missing_entry_are_not_done(cache_dir):
    cache = StageCache("faces", {})
    cache.write("a", {"x": np.zeros(3, np.uint8)})
    with open(cache.manifest_path, "a") as handle:
        handle.write('{"item": "b", "status": "o')  # killed mid-write
    cache.entry_path("a").unlink()
    fresh = StageCache("faces", {})
    assert fresh.records().keys() == {"a"}
    assert not fresh.is_done("a")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_never_leaves_a_visible_partial_entry(cache_dir):
    """SIGKILL a process that writes entries in a loop; every entry on disk must load."""
    script = (
        "import numpy as np\nfrom megatron_utils.core.cache import StageCache\n"
        "c = StageCache('stress', {})\n"
        "for i in range(100000):\n"
        "    c.write(f'v{i % 50}', {'x': np.full((256, 256), i % 251, np.uint8)})\n"
    )
    env = {**os.environ, "MEGATRON_CACHE": str(cache_dir)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    cache = StageCache("stress", {})  # opening sweeps the killed writer's temporary file
    assert not list(cache.items_dir.glob(".*.tmp*"))
    assert cache.done_items(), "the writer should have finished some entries before the kill"
    for item in cache.done_items():
        tensors, _ = cache.read(item)
        assert tensors["x"].shape == (256, 256)


def test_stable_hash_accepts_dataclasses():
    from dataclasses import dataclass

    @dataclass
    class Config:
        size: int = 224

    assert stable_hash(Config()) == stable_hash({"size": 224})


def test_writers_in_several_processes_fill_one_cache_without_losing_a_record(cache_dir):
    """Four processes write the same 40 items at once (as workers that were handed overlapping work would,
    with the same content): each keeps its own manifest file, a reader merges them, every entry loads."""
    script = (
        "import sys\nimport numpy as np\nfrom megatron_utils.core.cache import StageCache\n"
        "c = StageCache('shared', {})\n"
        "for i in range(40):\n"
        "    c.write(f'v{i}', {'x': np.full(4096, i, np.uint8)}, writer=int(sys.argv[1]))\n"
    )
    env = {**os.environ, "MEGATRON_CACHE": str(cache_dir)}
    writers = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env) for w in range(4)]
    assert [writer.wait(timeout=120) for writer in writers] == [0] * 4
    cache = StageCache("shared", {})
    manifests = sorted(cache.manifest_dir.glob("*.jsonl"))
    assert len(manifests) == 4 and all(len(path.read_text().splitlines()) == 40 for path in manifests)
    assert sorted(cache.records()) == sorted(f"v{i}" for i in range(40)) == sorted(cache.done_items())
    assert {record["writer"] for record in cache.records().values()} <= {0, 1, 2, 3}
    for i in range(40):
        assert set(cache.read(f"v{i}")[0]["x"]) == {i}
    assert not list(cache.items_dir.glob(".*.tmp*"))


def test_only_this_machines_dead_writers_temporaries_are_swept(cache_dir):
    cache = StageCache("sweep", {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    names = {"dead here": f".a.safetensors.{HOST}.{dead}.0123abcd.tmp.safetensors",
             "alive here": f".b.safetensors.{HOST}.{os.getpid()}.0123abcd.tmp.safetensors",
             "elsewhere": f".c.safetensors.other-node-7.{dead}.0123abcd.tmp.safetensors"}
    for name in names.values():
        (cache.items_dir / name).write_bytes(b"partial")
    assert cache.remove_stale_temporaries() == 1
    assert sorted(path.name for path in cache.items_dir.iterdir()) == sorted(
        [names["alive here"], names["elsewhere"]])


def test_copy_to_another_root_lists_only_arrived_entries_and_resumes(tmp_path, capsys):
    source = StageCache("depth", {"faces": "abc"}, root=tmp_path / "local")
    arrays = {f"v{i}": np.full((3, 8, 8), i, np.uint16) for i in range(3)}
    for item, array in arrays.items():
        source.write(item, {"depth": array}, fingerprint=item)
    source.record("broken", FAILED, error="broken.mp4: not a readable video")
    copy = copy_cache(source.dir, tmp_path / "drive")
    assert copy.dir == tmp_path / "drive" / "depth" / source.key
    assert sorted(copy.done_items()) == ["v0", "v1", "v2"] and copy.failures() == source.failures()
    for item, array in arrays.items():
        np.testing.assert_array_equal(copy.read(item)[0]["depth"], array)

    # Cut short: an entry is missing there and the source has gone on. Listed as not done, never broken.
    copy.entry_path("v1").unlink()
    source.write("v3", {"depth": np.full((3, 8, 8), 3, np.uint16)}, fingerprint="v3")
    assert "v1" not in StageCache.open(copy.dir).done_items()
    assert main(["cache", "copy", str(source.dir), "--to", str(tmp_path / "drive")]) == 0
    assert "4 entries" in capsys.readouterr().out
    again = StageCache.open(copy.dir, "depth")
    assert sorted(again.done_items()) == ["v0", "v1", "v2", "v3"]
    np.testing.assert_array_equal(again.read("v1")[0]["depth"], arrays["v1"])
    assert not [p for p in again.items_dir.iterdir() if p.name.startswith(".")]  # no temporaries left
