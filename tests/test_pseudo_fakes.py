"""Self-blended twins of real videos for training the temporal head without the dataset's fakes."""

import numpy as np
import pytest

from megatron_utils.core.cache import StageCache
from megatron_utils.datasets import build_index
from megatron_utils.preprocessing.depth import FACEMESH, DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess
from megatron_utils.training.pseudo_fakes import SBI_METHOD, training_index


@pytest.fixture(scope="module")
def embedded(tiny_mini, tmp_path_factory):
    table = build_index(tiny_mini[0]).table
    config = PreprocessConfig(frames=FramesConfig(frames_per_clip=4, clips_per_video=2),
                              faces=FaceConfig(crop_size=64, min_faces=3),
                              depth=DepthConfig(model=FACEMESH, output_size=48),
                              embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"))
    result = preprocess(table, config, cache_root=tmp_path_factory.mktemp("cache"), workers=2)
    return table, result.embed


def test_sbi_mode_replaces_every_seen_fake_with_twins_of_the_reals(embedded):
    table, embed = embedded
    seen = training_index(table, embed.dir, "sbi")
    for split in ("train", "val"):
        reals = table[(table["split"] == split) & (table["label"] == "real")]
        fakes = seen[(seen["split"] == split) & (seen["label"] == "fake")]
        assert set(fakes["method"]) == {SBI_METHOD} and len(fakes) == len(reals)
        assert sorted(v.split("/", 1)[1] for v in fakes["video_id"]) == sorted(reals["video_id"])
    test = table[table["split"] == "test"].reset_index(drop=True)
    assert seen[seen["split"] == "test"].reset_index(drop=True).equals(test)  # never touched
    both = training_index(table, embed.dir, "both")
    assert len(both) == len(table) + (seen["method"] == SBI_METHOD).sum()


def test_twins_are_cached_blended_embeddings_in_the_real_clip_layout(embedded):
    table, embed = embedded
    seen = training_index(table, embed.dir, "sbi")
    records = len(StageCache.open(embed.dir).records())
    again = training_index(table, embed.dir, "sbi")  # cached: nothing is computed or recorded again
    assert again.equals(seen) and len(StageCache.open(embed.dir).records()) == records
    for twin in seen.loc[seen["method"] == SBI_METHOD, "video_id"][:4]:
        fake, _ = embed.read(twin)
        real, _ = embed.read(twin.split("/", 1)[1])
        np.testing.assert_array_equal(fake["frame_index"], real["frame_index"])
        np.testing.assert_array_equal(fake["valid"], real["valid"])
        assert not np.allclose(fake["rgb"], real["rgb"], atol=1e-3)  # the blend changed the pixels


def test_unknown_fakes_mode_is_refused(embedded):
    table, embed = embedded
    with pytest.raises(ValueError, match="fakes must be one of"):
        training_index(table, embed.dir, "imagined")
