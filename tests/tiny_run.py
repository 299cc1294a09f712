"""A megatron-tiny run trained on real mini-dataset videos with tiny models (random-init Depth Anything,
`tiny_random` backbones, 64 px crops, T = 8): what the predict and serve tests score with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from megatron_utils.datasets import build_index, write_index
from megatron_utils.models.heads import model_config
from megatron_utils.preprocessing.depth import DepthConfig
from megatron_utils.preprocessing.embed import EmbedConfig
from megatron_utils.preprocessing.faces import FaceConfig
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.preprocessing.preprocess import PreprocessConfig, preprocess
from megatron_utils.training.train import TrainConfig, train

T, STRIDE = 8, 5  # training clips: frames 0, 5, ..., 35 of each 40-frame mini video


def train_tiny_run(mini_folder: Path, root: Path) -> tuple[Path, pd.DataFrame, Path]:
    """(run folder, its index table, embed cache folder): 3 epochs on 12 real and fake videos."""
    table = build_index(mini_folder).table
    table = table[table["split"].isin(["train", "val"])]
    table = table.groupby(["split", "label"]).head(3).reset_index(drop=True)
    write_index(table, root / "index.csv")
    config = PreprocessConfig(
        frames=FramesConfig(frames_per_clip=T, sampling="consecutive", stride=STRIDE),
        faces=FaceConfig(crop_size=64, min_faces=4),
        depth=DepthConfig(model="random-init:depth-anything-tiny", output_size=64),
        embed=EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random"),
    )
    result = preprocess(table, config, cache_root=root / "cache", workers=0)
    assert not result.failures()
    run = train(root / "index.csv", result.embed.dir, TrainConfig(epochs=3, batch_size=4, lr=2e-3),
                model_config("megatron-tiny"), root / "run")
    return run, table, result.embed.dir


def video_of(table: pd.DataFrame, label: str) -> str:
    return table.loc[table["label"] == label, "path"].iloc[0]
