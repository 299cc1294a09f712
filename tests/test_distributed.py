"""`torchrun --nproc-per-node 2 -m megatron_utils train` on the CPU (gloo) takes the steps one process
takes on the same global batches: the same loss curve, the same validation metrics, the same weights; rank
0 alone writes the run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd

from megatron_utils.datasets import write_index
from megatron_utils.models.backbones import is_frame_classifier
from megatron_utils.models.heads import TemporalHead
from megatron_utils.training.clips import load_clips
from megatron_utils.training.evaluate import clip_probabilities


def run_in_one_and_two_processes(options: list[str], tmp_path) -> None:
    """`megatron OPTIONS --out tmp/one` in one process, then under torchrun with 2 (--out tmp/two)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "megatron_utils", *options, "--out", str(tmp_path / "one")],
                   check=True, env=environment, capture_output=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                          "2", "-m", "megatron_utils", *options, "--out", str(tmp_path / "two")],
                         env=environment, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]


def test_two_processes_train_as_one(tiny_run, tmp_path):
    _, table, embed_dir = tiny_run
    write_index(table, tmp_path / "index.csv")
    # 6 train clips in global batches of 3: each step splits 2 + 1 over the two ranks. No dropout, which
    # draws from each process's own generator; the shuffling and augmentation draw from a shared seed.
    options = ["train", "--index", str(tmp_path / "index.csv"), "--embeddings", str(embed_dir),
               "--model", "megatron-tiny", "--epochs", "3", "--batch-size", "3", "--lr", "2e-3",
               "--dropout", "0",
               "--device", "cpu"]
    run_in_one_and_two_processes(options, tmp_path)
    assert "train on 2 processes (gloo)" in (tmp_path / "two" / "train.log").read_text()

    curves = {name: pd.read_csv(tmp_path / name / "history.csv") for name in ("one", "two")}
    assert len(curves["two"]) == 3
    np.testing.assert_allclose(curves["two"]["train_loss"], curves["one"]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(curves["two"]["val_loss"], curves["one"]["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(curves["two"]["val_auc"], curves["one"]["val_auc"])
    assert curves["one"]["train_loss"].iloc[0] != curves["one"]["train_loss"].iloc[-1]  # it did train
    # The same function (weights compared by what they compute: Adam moves attention's key bias, which has
    # no effect on the output, by full steps on gradients that are rounding noise).
    clips = load_clips(table, embed_dir, "val")
    scores = {name: clip_probabilities(TemporalHead.from_pretrained(tmp_path / name / "last"), clips,
                                       amp=False) for name in ("one", "two")}
    np.testing.assert_allclose(scores["two"], scores["one"], atol=1e-4)
    # One writer: one checkpoint set, no stray temporaries from the second rank.
    assert sorted(path.name for path in (tmp_path / "two").iterdir() if path.name.startswith(".")) == []


def test_two_processes_finetune_the_embedder(tiny_run, tmp_path):
    """torchrun finetune: the global batch is shared out and the gradients averaged. On the CPU each rank
    normalises its half batch with its own batch statistics (SyncBatchNorm needs CUDA), so the curve
    follows one process's closely rather than exactly."""
    _, table, embed_dir = tiny_run
    write_index(table, tmp_path / "index.csv")
    faces_dir = next((embed_dir.parent.parent / "faces").iterdir())
    options = ["finetune", "--index", str(tmp_path / "index.csv"), "--faces", str(faces_dir),
               "--backbone", "tiny_random", "--epochs", "2", "--batch-size", "8", "--crops-per-video", "4",
               "--device", "cpu"]
    run_in_one_and_two_processes(options, tmp_path)
    assert "finetune on 2 processes (gloo)" in (tmp_path / "two" / "finetune.log").read_text()
    curves = {name: pd.read_csv(tmp_path / name / "history.csv") for name in ("one", "two")}
    assert len(curves["two"]) == 2
    np.testing.assert_allclose(curves["two"]["train_loss"], curves["one"]["train_loss"], rtol=0.05)
    assert is_frame_classifier(tmp_path / "two" / "best")
