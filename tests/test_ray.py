"""`preprocess` on a local Ray cluster of 2 CPU workers fills the same caches as one process: the same keys,
the same items done and failed, the same embeddings."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from megatron_utils.datasets import build_index
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


CONFIG = PreprocessConfig(frames=FramesConfig(frames_per_clip=4, clips_per_video=2),
                          faces=FaceConfig(crop_size=64, min_faces=4),
                          depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=64),
                          embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"))


@pytest.fixture(scope="module")
def one_process(tiny_mini, tmp_path_factory):
    """(index table with a broken file, the single-process result on it)."""
    root = tmp_path_factory.mktemp("ray")
    table = build_index(tiny_mini[0]).table.groupby("label").head(3)
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    table = pd.concat([table, pd.DataFrame([{"video_id": "broken", "path": str(broken), "label": "fake"}])])
    return table, preprocess(table, CONFIG, cache_root=root / "one", workers=0)


def assert_same_caches(clustered, single) -> None:
    assert clustered.embed.key == single.embed.key
    assert clustered.failures().keys() == single.failures().keys() == {"broken"}
    for stage in ("faces", "depth", "embed"):
        assert sorted(getattr(clustered, stage).done_items()) == sorted(getattr(single, stage).done_items())
    for item in single.embed.done_items():
        expected, _ = single.embed.read(item)
        got, _ = clustered.embed.read(item)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(got[name].astype(np.float32), value.astype(np.float32), atol=2e-3,
                                       err_msg=f"{item} {name}")


def test_ray_preprocessing_matches_one_process(local_cluster, one_process, tmp_path):
    from megatron_utils.preprocessing.cluster import preprocess_on_ray

    table, single = one_process
    clustered = preprocess_on_ray(table, CONFIG, cache_root=tmp_path / "ray", actors=2, shard_size=2)

    assert_same_caches(clustered, single)
    assert "broken.mp4" in clustered.failures()["broken"]
    for stage in ("faces", "depth", "embed"):  # each actor wrote its own manifest file
        assert len(list(getattr(clustered, stage).manifest_dir.glob("*.jsonl"))) == 2


def test_a_killed_worker_is_restarted_and_nothing_is_lost(local_cluster, one_process, tmp_path):
    from megatron_utils.preprocessing.cluster import preprocess_on_ray

    table, single = one_process
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=preprocess_on_ray(
        table, CONFIG, cache_root=tmp_path / "ray", actors=2, shard_size=1)))
    thread.start()
    faces_manifests = tmp_path / "ray" / "faces" / single.faces.key / "manifests"
    deadline = time.monotonic() + 120
    while not list(faces_manifests.glob("*.jsonl")):  # an actor is at work
        assert time.monotonic() < deadline and thread.is_alive(), "no actor started working"
        time.sleep(0.2)
    workers = [process for process in psutil.process_iter(["cmdline"])
               if "PreprocessWorker" in " ".join(process.info["cmdline"] or [])]
    assert workers, "no Ray worker process running a PreprocessWorker"
    workers[0].send_signal(signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "result" in outcome
    assert_same_caches(outcome["result"], single)


def test_a_killed_driver_loses_nothing_and_the_rerun_completes(local_cluster, one_process, tmp_path):
    """A driver (its own process, joined to the running cluster) SIGKILLed mid-run; Ray reaps its actors,
    and the same call again finishes with the caches of a single-process run."""
    from megatron_utils.preprocessing.cluster import preprocess_on_ray

    table, single = one_process
    table.to_csv(tmp_path / "index.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    script = (
        "import json, sys\nimport pandas as pd\n"
        "from megatron_utils.preprocessing.cluster import preprocess_on_ray\n"
        "from megatron_utils.preprocessing.preprocess import PreprocessConfig\n"
        "config = PreprocessConfig.from_dict(json.load(open(sys.argv[2])))\n"
        "preprocess_on_ray(pd.read_csv(sys.argv[1]), config, cache_root=sys.argv[3], address=sys.argv[4],\n"
        "                  actors=2, shard_size=1)\n")
    driver = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "index.csv"),
                               str(tmp_path / "config.json"), str(tmp_path / "ray"),
                               ray.get_runtime_context().gcs_address])
    faces_manifests = tmp_path / "ray" / "faces" / single.faces.key / "manifests"
    deadline = time.monotonic() + 180
    while sum(len(path.read_text().splitlines()) for path in faces_manifests.glob("*.jsonl")) < 2:
        assert time.monotonic() < deadline and driver.poll() is None, "the driver did no work"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    rerun = preprocess_on_ray(table, CONFIG, cache_root=tmp_path / "ray", actors=2, shard_size=2)
    assert_same_caches(rerun, single)
