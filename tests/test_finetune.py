"""Fine-tuning the RGB embedder on real crops of the tiny mini dataset and their self-blended pseudo-fakes."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import megatron_utils.training.finetune
from megatron_utils.cli import main
from megatron_utils.core.cache import StageCache
from megatron_utils.datasets import build_index, write_index
from megatron_utils.models.backbones import FrameClassifier, create_backbone, is_frame_classifier
from megatron_utils.preprocessing.batching import images_to_tensor
from megatron_utils.preprocessing.faces import FaceConfig, extract_faces, read_faces
from megatron_utils.preprocessing.frames import FramesConfig
from megatron_utils.training.distributed import ONE_PROCESS
from megatron_utils.training.finetune import (
    EmbedderTask,
    FinetuneConfig,
    finetune,
    frame_refs,
    read_crop,
)


@pytest.fixture(scope="module")
def faces(tiny_mini, tmp_path_factory):
    folder, _ = tiny_mini
    table = build_index(folder).table
    frames = FramesConfig(frames_per_clip=4, clips_per_video=2)
    cache, _ = extract_faces(table, frames, FaceConfig(crop_size=64, min_faces=3),
                             cache_root=tmp_path_factory.mktemp("cache"))
    return table, cache


def tiny(**overrides) -> FinetuneConfig:
    return FinetuneConfig(**{"backbone": "tiny_random", "epochs": 2, "crops_per_video": 4, "batch_size": 8,
                             "num_workers": 0, **overrides})


def embedder_task(faces, config):
    table, cache = faces
    train = frame_refs(table, cache, "train", config.crops_per_video, fakes=config.fakes == "dataset")
    val = frame_refs(table, cache, "val", config.crops_per_video, fakes=config.fakes == "dataset")
    model = FrameClassifier.start(create_backbone("tiny_random"))
    return EmbedderTask(model, cache, train, val, config, torch.device("cpu")), train, val


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_streams_every_real_crop_once_with_its_pseudo_fake(faces, workers):
    task, train, _ = embedder_task(faces, tiny(num_workers=workers))
    assert set(train.label) == {0}  # fakes="none": no fake video is even read
    batches = list(task.batches(0, torch.Generator().manual_seed(0), ONE_PROCESS))
    labels = torch.cat([targets for _, targets, _ in batches]).numpy()
    assert (labels == 0).sum() == len(train)  # every real crop once per epoch
    assert (labels == 1).sum() >= 0.9 * (labels == 0).sum()  # nearly every one with its pseudo-fake
    pixels = batches[0][0]["pixels"]
    assert pixels.shape[1:] == (3, 64, 64) and pixels.min() >= 0 and pixels.max() <= 1
    assert all(global_size == len(targets) for _, targets, global_size in batches)
    crop, landmarks = read_crop(faces[1], train, 0)  # one crop, read alone, is the cached one
    assert np.array_equal(crop, read_faces(faces[1], train.item(0))[0]["crops"][train.row[0]])
    assert landmarks.shape == (68, 2)
    again = list(task.batches(0, torch.Generator().manual_seed(0), ONE_PROCESS))
    torch.testing.assert_close(again[0][0]["pixels"], pixels, rtol=0, atol=0)  # seeded per crop, any workers


def test_selection_without_fakes_reads_only_reals_and_their_pseudo_fakes(faces):
    task, _, val = embedder_task(faces, tiny(num_workers=0))
    metrics = task.validate(ONE_PROCESS)
    assert set(val.label) == {0}
    assert "val_video_auc" not in metrics and metrics["score"] == metrics["val_sbi_auc"]
    with_fakes, _, val = embedder_task(faces, tiny(num_workers=0, fakes="dataset"))
    metrics = with_fakes.validate(ONE_PROCESS)
    assert set(val.label) == {0, 1}
    assert metrics["score"] == pytest.approx((metrics["val_sbi_auc"] + metrics["val_video_auc"]) / 2)


def test_finetuned_weights_load_as_a_backbone_and_change_the_features(faces, tmp_path, one_torch_thread):
    table, cache = faces
    best = finetune(table, cache.dir, tiny(), tmp_path / "ft")
    history = pd.read_csv(tmp_path / "ft" / "history.csv")
    assert len(history) == 2 and {"val_sbi_auc", "samples_per_second", "score"} <= set(history)
    tuned, base = create_backbone("auto", weights=best), create_backbone("tiny_random")
    assert tuned.name == "tiny_random" and tuned.fingerprint.startswith("sha256:")
    assert tuned.fingerprint != base.fingerprint and "fine-tuned" in tuned.weights
    refs = frame_refs(table, cache, "val", 2)
    crops = np.stack([read_crop(cache, refs, i)[0] for i in range(len(refs))])
    data = base.data_config
    pixels = images_to_tensor(crops, data.input_size, data.mean, data.std, torch.device("cpu"))
    classifier = FrameClassifier.from_pretrained(best)  # the whole classifier, as it was selected
    with torch.no_grad():
        assert not torch.allclose(tuned.model(pixels), base.model(pixels), atol=1e-3)
        torch.testing.assert_close(classifier.features(torch.from_numpy(crops).permute(0, 3, 1, 2) / 255),
                                   tuned.model(pixels), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="fine-tuned tiny_random, not a mobilenetv2_offline"):
        create_backbone("mobilenetv2_offline", weights=best)
    # The hub mixin's folder: config, weights and a card that says what was tuned and how it was chosen.
    assert sorted(path.name for path in best.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (best / "README.md").read_text()
    selected = history.loc[history["score"].idxmax()]
    assert "`tiny_random` fine-tuned by `megatron finetune`" in card and "random-init (test model)" in card
    assert f"at epoch {selected['epoch']:.0f}: val_sbi_auc {selected['val_sbi_auc']:.4f}" in card
    assert "library_name: megatron-deepfake" in card and str(tmp_path) not in card


def test_a_killed_run_resumes_as_if_never_stopped(faces, tmp_path, monkeypatch, one_torch_thread):
    table, cache = faces
    finetune(table, cache.dir, tiny(epochs=3), tmp_path / "straight")
    validate = megatron_utils.training.finetune.frame_probabilities
    calls = []

    def killed_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(megatron_utils.training.finetune, "frame_probabilities", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(table, cache.dir, tiny(epochs=3), tmp_path / "halted")
    monkeypatch.setattr(megatron_utils.training.finetune, "frame_probabilities", validate)
    finetune(table, cache.dir, tiny(epochs=3), tmp_path / "halted", resume=True)
    straight = pd.read_csv(tmp_path / "straight" / "history.csv")
    resumed = pd.read_csv(tmp_path / "halted" / "history.csv")
    columns = ["epoch", "train_loss", "val_sbi_auc"]
    pd.testing.assert_frame_equal(straight[columns], resumed[columns], rtol=1e-4)
    # Notebook 02 run again: the finished run trains nothing; other settings are refused, by name.
    written = (tmp_path / "halted" / "last" / "training_state.json").stat().st_mtime_ns
    finetune(table, cache.dir, tiny(epochs=3), tmp_path / "halted", resume=True)
    assert (tmp_path / "halted" / "last" / "training_state.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match=r"other settings.*config\.crops_per_video: 4 -> 6"):
        finetune(table, cache.dir, tiny(epochs=3, crops_per_video=6), tmp_path / "halted", resume=True)
    # A run saved before a setting existed resumes with that setting at its default (the old behaviour).
    run_file = tmp_path / "halted" / "finetune.json"
    saved = json.loads(run_file.read_text())
    del saved["config"]["tune_fraction"]
    run_file.write_text(json.dumps(saved))
    finetune(table, cache.dir, tiny(epochs=3), tmp_path / "halted", resume=True)
    with pytest.raises(ValueError, match=r"other settings.*config\.tune_fraction: 1\.0 -> 0\.5"):
        finetune(table, cache.dir, tiny(epochs=3, tune_fraction=0.5), tmp_path / "halted", resume=True)


def test_imagenet_backbone_learns_to_spot_pseudo_fakes_on_unseen_people(faces, tmp_path):
    """A real signal: after three short epochs the pretrained MobileNetV2 tells validation identities'
    crops from their self-blends far better than chance (0.72-0.85 across builds of the tiny set)."""
    table, cache = faces
    finetune(table, cache.dir, tiny(backbone="mobilenetv2_offline", epochs=3, batch_size=16,
                                    crops_per_video=8, input_size=64), tmp_path / "mnv2")
    history = pd.read_csv(tmp_path / "mnv2" / "history.csv")
    assert history["val_sbi_auc"].max() > 0.65


def test_a_faces_cache_without_landmarks_is_refused_with_the_reason(faces, tmp_path):
    table, cache = faces
    old = StageCache("faces", {"old": True}, root=tmp_path)
    item = table["video_id"].iloc[0]
    tensors, _ = cache.read(item)
    old.write(item, {k: v for k, v in tensors.items() if k != "landmarks"})
    with pytest.raises(ValueError, match="has no landmarks"):
        frame_refs(table[table["video_id"] == item].assign(split="train"), old, "train", 4)


def test_cli_finetunes_and_says_how_to_use_the_result(faces, tmp_path, capsys, one_torch_thread):
    table, cache = faces
    index = write_index(table, tmp_path / "index.csv")
    out = tmp_path / "cli-run"
    code = main(["finetune", "--index", str(index), "--faces", str(cache.dir), "--backbone", "tiny_random",
                 "--epochs", "1", "--batch-size", "8", "--crops-per-video", "2", "--out", str(out)])
    assert code == 0 and is_frame_classifier(out / "best")
    assert f"--embed-rgb-weights {out / 'best'}" in capsys.readouterr().out
    assert main(["finetune", "--index", str(index), "--faces", str(cache.dir), "--backbone", "tiny_random",
                 "--out", str(out)]) == 2  # a finished run is not overwritten without --resume


def test_adversarial_finetuning_trains_on_fgsm_rs_images_within_eps(faces, tmp_path, monkeypatch,
                                                                    one_torch_thread):
    table, cache = faces
    real_fgsm_rs = megatron_utils.training.finetune.fgsm_rs
    perturbations = []

    def watched(model, pixels, labels, eps):
        adversarial = real_fgsm_rs(model, pixels, labels, eps)
        assert model.training  # the attack ran, and left the model, in training mode
        perturbations.append(float((adversarial - pixels).abs().max()))
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        return adversarial

    monkeypatch.setattr(megatron_utils.training.finetune, "fgsm_rs", watched)
    finetune(table, cache.dir, tiny(adversarial="fgsm-rs", adversarial_eps=8 / 255), tmp_path / "adv")
    finetune(table, cache.dir, tiny(), tmp_path / "standard")
    assert perturbations and all(0 < p <= 8 / 255 + 1e-6 for p in perturbations)
    adversarial, standard = (FrameClassifier.from_pretrained(tmp_path / run / "best").state_dict()
                             for run in ("adv", "standard"))
    assert any(not torch.equal(adversarial[name], standard[name]) for name in standard)


def test_tune_fraction_keeps_the_early_layers_pretrained(faces, tmp_path, one_torch_thread):
    table, cache = faces
    base = create_backbone("tiny_random").model.state_dict()
    best = finetune(table, cache.dir, tiny(tune_fraction=0.5), tmp_path / "ft")
    tuned = dict(FrameClassifier.from_pretrained(best).backbone.named_parameters())
    sizes = np.array([value.numel() for value in tuned.values()])
    frozen = np.cumsum(sizes[::-1])[::-1] > 0.5 * sizes.sum()  # beyond the last half, from the output
    assert frozen[0] and not frozen[-1]
    moved = np.array([not torch.equal(value, base[name]) for name, value in tuned.items()])
    assert not moved[frozen].any(), [name for name, m in zip(tuned, moved & frozen, strict=True) if m]
    assert moved[~frozen].mean() > 0.8  # the output end learned (a tensor without gradient may not)
    with pytest.raises(ValueError, match=r"tune_fraction must lie in \[0, 1\], got 1.5"):
        tiny(tune_fraction=1.5)
