"""`preprocess` on a local Ray cluster of 2 CPU workers fills the same caches as one process: the same keys,
the same items done and failed, the same embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def test_ray_preprocessing_matches_one_process(local_cluster, tiny_mini, tmp_path):
    from megatron_utils.preprocessing.cluster import preprocess_on_ray

    table = build_index(tiny_mini[0]).table.groupby("label").head(3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    table = pd.concat([table, pd.DataFrame([{"video_id": "broken", "path": str(broken), "label": "fake"}])])
    config = PreprocessConfig(frames=FramesConfig(frames_per_clip=4, clips_per_video=2),
                              faces=FaceConfig(crop_size=64, min_faces=4),
                              depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=64),
                              embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"))
    clustered = preprocess_on_ray(table, config, cache_root=tmp_path / "ray", actors=2, shard_size=2)
    single = preprocess(table, config, cache_root=tmp_path / "one", workers=0)

    assert clustered.embed.key == single.embed.key
    assert clustered.failures().keys() == single.failures().keys() == {"broken"}
    assert "broken.mp4" in clustered.failures()["broken"]
    for stage in ("faces", "depth", "embed"):
        ours, theirs = getattr(clustered, stage), getattr(single, stage)
        assert sorted(ours.done_items()) == sorted(theirs.done_items())
        assert len(list(ours.manifest_dir.glob("*.jsonl"))) == 2  # each actor wrote its own manifest
    for item in single.embed.done_items():
        expected, _ = single.embed.read(item)
        got, _ = clustered.embed.read(item)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(got[name].astype(np.float32), value.astype(np.float32), atol=2e-3,
                                       err_msg=f"{item} {name}")
