import json

import numpy as np
import pandas as pd
import pytest

from megatron_utils.cli import main
from megatron_utils.datasets.synthetic import SyntheticEmbedConfig, write_synthetic_embed_cache
from megatron_utils.models.checkpoint import Decision, load_decision
from megatron_utils.models.heads import TemporalHead, model_config
from megatron_utils.training.evaluate import (
    binary_metrics,
    choose_decision,
    evaluate_run,
    fit_platt,
    metric_table,
)
from megatron_utils.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny detector trained on a synthetic FF++-like cache (fakes shifted along one depth direction)."""
    root = tmp_path_factory.mktemp("evaluate")
    index, cache_dir = write_synthetic_embed_cache(root / "cache", SyntheticEmbedConfig(identities=60))
    index.to_csv(root / "index.csv", index=False)
    config = TrainConfig(epochs=4, batch_size=32, lr=2e-3, min_lr=2e-4, seed=1)
    return train(root / "index.csv", cache_dir, config, model_config("megatron-tiny"), root / "run")


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    """Another dataset, other identities and other methods, with the same kind of manipulation."""
    root = tmp_path_factory.mktemp("other")
    config = SyntheticEmbedConfig(identities=30, dataset="celebdf", methods=("CelebDF-synthesis",), seed=7)
    index, cache_dir = write_synthetic_embed_cache(root / "cache", config)
    index.to_parquet(root / "celebdf.parquet")
    return root / "celebdf.parquet", cache_dir


def test_binary_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = binary_metrics(labels, probs, threshold=0.5)  # predictions: 0, 0, 0, 1
    assert metrics["auc"] == pytest.approx(0.75)  # 3 of 4 (fake, real) pairs ranked right
    assert metrics["eer"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert (metrics["real"], metrics["fake"], metrics["videos"]) == (2, 2, 4)
    assert (metrics["fpr"], metrics["tpr"]) == (0.0, 0.5)
    assert metrics["tpr_at_5fpr"] == pytest.approx(0.5)  # 0.8 alone clears both reals
    assert np.isnan(metrics["uncertain"])  # no band given
    banded = binary_metrics(labels, probs, threshold=0.5, uncertain_below=0.3)
    assert banded["uncertain"] == pytest.approx(0.5)  # 0.4 and 0.35 lie in [0.3, 0.5)
    only_reals = binary_metrics(np.zeros(3, dtype=int), np.array([0.2, 0.7, 0.1]), threshold=0.5)
    assert np.isnan(only_reals["auc"]) and only_reals["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("target_fpr", [0.0, 0.05, 0.2])
def test_decision_holds_the_target_false_positive_rate_on_validation(target_fpr):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.2, 400), 0, 1)
    decision = choose_decision(labels, probs, target_fpr=target_fpr, target_fnr=0.1)
    reals, fakes = probs[labels == 0], probs[labels == 1]
    assert (reals >= decision.threshold).mean() <= target_fpr
    # the lowest such threshold: the next real below it would break the target
    next_real = reals[reals < decision.threshold].max()
    assert (reals >= next_real).mean() > target_fpr
    assert (fakes < decision.uncertain_below).mean() <= 0.1
    assert decision.uncertain_below <= decision.threshold
    verdicts = {decision.verdict(p) for p in probs}
    assert verdicts == {"real", "uncertain", "fake"}
    assert f"at most {target_fpr:.0%} of real validation videos" in decision.meaning()
    with pytest.raises(ValueError, match="both real and fake"):
        choose_decision(np.ones(4, dtype=int), probs[:4])


def test_separated_classes_leave_no_uncertain_band():
    decision = choose_decision(np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert 0.3 < decision.threshold <= 0.31 and decision.uncertain_below == decision.threshold
    assert [decision.verdict(p) for p in (0.3, 0.7)] == ["real", "fake"]
    assert "uncertain" not in decision.meaning()


def test_metric_table_rows_compare_each_method_with_all_reals():
    scores = pd.DataFrame({
        "label": ["real", "real", "fake", "fake", "fake"], "dataset": ["ffpp"] * 5,
        "method": ["original", "original", "Deepfakes", "FaceSwap", "FaceSwap"],
        "probability": [0.1, 0.6, 0.9, 0.2, 0.7],
    })
    table = metric_table(scores, Decision(threshold=0.5, uncertain_below=0.5)).set_index(["group", "name"])
    assert list(table.index) == [("overall", "all"), ("dataset", "ffpp"), ("method", "Deepfakes"),
                                 ("method", "FaceSwap")]
    assert table.loc[("method", "Deepfakes"), ["real", "fake"]].tolist() == [2, 1]
    assert table.loc[("method", "Deepfakes"), "auc"] == pytest.approx(1.0)
    # FaceSwap fakes (0.2, 0.7) against the reals (0.1, 0.6): 3 of 4 pairs ranked right.
    assert table.loc[("method", "FaceSwap"), "auc"] == pytest.approx(0.75)
    assert table.loc[("method", "FaceSwap"), "real"] == 2


def test_platt_scaling_turns_saturated_logits_into_probabilities_that_hold():
    """Logits that all sit near +8 (every P ~ 0.9997, as the demo head's were) but still rank: after
    scaling, reals score low and fakes high, and the probability in each bin matches the share of fakes."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 4000)
    true_logit = rng.normal(np.where(labels == 1, 1.5, -1.5), 1.0)
    labels = (rng.random(8000) < 1 / (1 + np.exp(-true_logit))).astype(int)  # outcomes that follow the logit
    saturated = 8.0 + 0.1 * true_logit
    scale, shift = fit_platt(saturated, labels)
    calibrated = 1 / (1 + np.exp(-(scale * saturated + shift)))
    assert scale > 0  # the ranking is kept
    bins = np.digitize(calibrated, [0.2, 0.4, 0.6, 0.8])
    for b in np.unique(bins):
        chosen = bins == b
        assert abs(calibrated[chosen].mean() - labels[chosen].mean()) < 0.06, b
    assert calibrated[labels == 0].mean() < 0.4 < 0.6 < calibrated[labels == 1].mean()


def test_decision_text_tells_a_threshold_from_a_band_edge_that_lie_close():
    text = Decision(threshold=0.99977, uncertain_below=0.99975).meaning()
    assert "P(fake) >= 0.99977" in text and "uncertain from 0.99975" in text
    assert "P(fake) >= 0.62" in Decision(threshold=0.62, uncertain_below=0.41).meaning()


def test_a_trained_head_is_calibrated_on_validation(run):
    """The checkpoint carries the Platt scaling fitted on validation, and its decision rule is stated on
    the calibrated scale: the threshold sits between the reals' and the fakes' typical probabilities."""
    head = TemporalHead.from_pretrained(run / "best")
    scale, shift = head.calibration.tolist()
    assert (scale, shift) != (1.0, 0.0) and scale > 0
    scores = pd.read_csv(evaluate_run(run).out_dir / "scores.csv")
    reals = scores.loc[scores["label"] == "real", "probability"]
    fakes = scores.loc[scores["label"] == "fake", "probability"]
    threshold = json.loads((run / "best" / "decision.json").read_text())["threshold"]
    assert reals.median() < threshold <= fakes.median() + 1e-9
    assert 0.02 < threshold < 0.98  # on a probability scale that means something, not pushed to 0 or 1


def test_evaluate_writes_metrics_plots_and_report(run):
    evaluation = evaluate_run(run)
    out = run / "eval" / "index-test"
    assert evaluation.out_dir == out
    for name in ("roc.png", "confusion.png", "training_curves.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics.loc[metrics["group"] == "method", "name"]) == {"Deepfakes", "FaceSwap"}
    overall = evaluation.overall()
    assert overall["auc"] > 0.8
    scores = pd.read_csv(out / "scores.csv")
    index = pd.read_csv(run / "index.csv")
    assert set(scores["video_id"]) == set(index.loc[index["split"] == "test", "video_id"])
    # The threshold applied is the one stored with the checkpoint (chosen on validation).
    threshold = json.loads((run / "best" / "decision.json").read_text())["threshold"]
    labels = (scores["label"] == "fake").to_numpy()
    assert overall["accuracy"] == pytest.approx(np.mean((scores["probability"] >= threshold) == labels))
    report = (out / "report.md").read_text()
    embed_key = json.loads((run / "config.json").read_text())["data"]["embed_key"]
    for expected in ("| method | Deepfakes |", "| method | FaceSwap |", str((run / "best").resolve()),
                     embed_key, "same as training", load_decision(run / "best").meaning(),
                     "![roc.png](roc.png)", "**Trained on:**"):
        assert expected in report
    assert "<table" in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["threshold"] == threshold


def test_cross_dataset_evaluation_without_retraining(run, other_dataset, tmp_path, monkeypatch, capsys):
    weights_before = (run / "best" / "model.safetensors").read_bytes()
    monkeypatch.setattr("megatron_utils.cli.COMMAND_MODULES", ["train"])
    index_path, cache_dir = other_dataset
    status = main(["evaluate", str(run), "--index", str(index_path), "--embeddings", str(cache_dir),
                   "--out", str(tmp_path / "cross")])
    assert status == 0 and "CelebDF-synthesis" in capsys.readouterr().out
    metrics = pd.read_csv(tmp_path / "cross" / "metrics.csv").set_index(["group", "name"])
    assert ("dataset", "celebdf") in metrics.index and ("dataset", "ffpp") not in metrics.index
    assert metrics.loc[("overall", "all"), "auc"] > 0.8  # the same artifact, on unseen identities
    report = (tmp_path / "cross" / "report.md").read_text()
    assert "DIFFERENT from training" in report and str(cache_dir.resolve()) in report
    assert (run / "best" / "model.safetensors").read_bytes() == weights_before


def test_evaluation_refuses_embeddings_of_another_size(run, tmp_path):
    index, cache_dir = write_synthetic_embed_cache(tmp_path / "cache",
                                                   SyntheticEmbedConfig(identities=10, rgb_dim=16))
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"sizes \{'depth': 32, 'rgb': 16\}"):
        evaluate_run(run, tmp_path / "index.csv", cache_dir, out_dir=tmp_path / "out")
