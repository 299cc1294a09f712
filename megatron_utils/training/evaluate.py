"""Video-level metrics and evaluation reports.

A video's score is the mean P(fake) of its clips. Metrics (scikit-learn): ROC AUC, average precision,
EER, and at the decision threshold accuracy, balanced accuracy and F1; overall, per dataset, and per
manipulation method (that method's fakes against all reals of the split). The threshold is the one
`train` chose on the validation split and stored in the checkpoint's decision.json: the one maximising
validation balanced accuracy (equivalently Youden's J = TPR - FPR on the ROC curve).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from scipy.special import log_expit
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from ..core.cache import write_json_atomic
from ..core.precision import autocast, resolve_device, training_dtype
from ..core.templates import render
from ..datasets import build_index, read_index, write_index
from ..models.backbones import RANDOM_INIT_PREFIX
from ..models.checkpoint import DECISION_FILE, Checkpoint, Decision, load_decision
from ..models.heads import TemporalHead
from ..preprocessing.depth import FACEMESH
from ..preprocessing.preprocess import PreprocessConfig, preprocess
from ..visualization.plots import plot_confusion, plot_roc, plot_training_curves
from .clips import ClipSet, iterate_batches, load_clips, preprocessing_config

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["auc", "auc_low", "auc_high", "ap", "eer", "accuracy", "balanced_accuracy", "f1", "fpr",
                  "tpr", "tpr_at_5fpr", "uncertain"]
REPORTED_FPR = 0.05  # every evaluation reports the TPR at this false-positive rate
BOOTSTRAP_SAMPLES = 2000


def bootstrap_auc_interval(labels: np.ndarray, probs: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC, resampling reals and fakes separately (so every
    resample has both classes and the class balance of the data)."""
    rng = np.random.default_rng(seed)
    real, fake = probs[labels == 0], probs[labels == 1]
    real_draws = real[rng.integers(0, len(real), (samples, len(real)))]
    fake_draws = fake[rng.integers(0, len(fake), (samples, len(fake)))]
    # Mann-Whitney: AUC = (rank sum of the fakes - n_f (n_f + 1) / 2) / (n_f n_r), ties at mean rank
    ranks = rankdata(np.concatenate([real_draws, fake_draws], axis=1), axis=1)
    n_real, n_fake = len(real), len(fake)
    aucs = (ranks[:, n_real:].sum(1) - n_fake * (n_fake + 1) / 2) / (n_fake * n_real)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100 - tail))


@torch.no_grad()
def clip_logits(model: TemporalHead, clips: ClipSet, batch_size: int = 512, amp: bool = True) -> np.ndarray:
    """The raw fake logit of every clip, in the ClipSet's order (float32)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = []
    for features, valid, _ in iterate_batches(clips, batch_size, device=device):
        with autocast(device, training_dtype(device, amp)):
            logits.append(model(**features, valid=valid).float()[:, 0].cpu())
    model.train(was_training)
    return torch.cat(logits).numpy()


def clip_probabilities(model: TemporalHead, clips: ClipSet, batch_size: int = 512,
                       amp: bool = True) -> np.ndarray:
    """Calibrated P(fake) of every clip, in the ClipSet's order."""
    return model.probability(torch.from_numpy(clip_logits(model, clips, batch_size, amp))).numpy()


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: the (scale, shift) minimising the log loss of sigmoid(scale * logit + shift) on these
    (validation) clips, reals and fakes weighted equally (probabilities as if both were equally common).
    The scale stays positive, so the ranking (and every AUC) is unchanged, and within [e^-4, e^5]."""
    x, y = logits.astype(np.float64), labels.astype(np.float64)
    weight = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))

    def log_loss(params: np.ndarray) -> float:
        z = np.exp(params[0]) * x + params[1]
        return float(-(weight * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum())

    start = np.array([0.0, -float(np.median(x))])  # centred: saturated logits start near the optimum
    fitted = minimize(log_loss, start, method="L-BFGS-B", bounds=[(-4.0, 5.0), (None, None)]).x
    return float(np.exp(fitted[0])), float(fitted[1])


def video_probabilities(clips: ClipSet, clip_probs: np.ndarray) -> np.ndarray:
    """Mean clip probability per video (rows of `clips.videos`)."""
    video = clips.video.cpu().numpy()
    sums = np.bincount(video, weights=clip_probs, minlength=len(clips.videos))
    return sums / np.bincount(video, minlength=len(clips.videos))


def equal_error_rate(labels: np.ndarray, probs: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, probs)
    fnr = 1 - tpr
    crossing = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[crossing] + fnr[crossing]) / 2)


def fpr_threshold(real_probs: np.ndarray, target_fpr: float = 0.05) -> float:
    """The lowest threshold that at most `target_fpr` of these real videos reach."""
    reals = np.sort(real_probs)[::-1]
    allowed_reals = int(np.floor(target_fpr * len(reals) + 1e-9))  # reals that may score at or above
    return float(np.nextafter(reals[allowed_reals], np.inf)) if allowed_reals < len(reals) else 0.0


def choose_decision(labels: np.ndarray, probs: np.ndarray, target_fpr: float = 0.05,
                    target_fnr: float = 0.05) -> Decision:
    """The decision rule for these (validation) videos: the lowest threshold that at most `target_fpr` of
    the reals reach, and the uncertain band's lower edge that at most `target_fnr` of the fakes fall under
    (clipped to the threshold, so the band is empty where the classes separate)."""
    if len(np.unique(labels)) < 2:
        raise ValueError("choosing a decision rule needs both real and fake videos")
    threshold = fpr_threshold(probs[labels == 0], target_fpr)
    fakes = np.sort(probs[labels == 1])
    allowed_fakes = int(np.floor(target_fnr * len(fakes) + 1e-9))  # fakes that may score below
    uncertain_below = float(fakes[allowed_fakes]) if allowed_fakes < len(fakes) else 1.0
    return Decision(threshold=threshold, uncertain_below=min(uncertain_below, threshold),
                    target_fpr=target_fpr, target_fnr=target_fnr)


def tpr_at_fpr(labels: np.ndarray, probs: np.ndarray, fpr_limit: float = REPORTED_FPR) -> float:
    """The share of fakes caught at the best threshold that flags at most `fpr_limit` of the reals."""
    fpr, tpr, _ = roc_curve(labels, probs)
    return float(tpr[fpr <= fpr_limit + 1e-12].max())


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float,
                   uncertain_below: float | None = None) -> dict[str, float]:
    """Video-level metrics at `threshold`: `fpr` is the share of reals called fake, `tpr` of fakes caught,
    `uncertain` of all videos in the band [uncertain_below, threshold). Ranking metrics (AUC, AP, EER, TPR
    at 5% FPR), balanced accuracy and F1 need both classes and are NaN otherwise."""
    predicted = (probs >= threshold).astype(np.int64)
    metrics = {"videos": len(labels), "real": int((labels == 0).sum()), "fake": int((labels == 1).sum()),
               **dict.fromkeys(METRIC_COLUMNS, float("nan"))}
    metrics["accuracy"] = float(accuracy_score(labels, predicted))
    if metrics["real"]:
        metrics["fpr"] = float(predicted[labels == 0].mean())
    if metrics["fake"]:
        metrics["tpr"] = float(predicted[labels == 1].mean())
    if uncertain_below is not None and len(labels):
        metrics["uncertain"] = float(((probs >= uncertain_below) & (probs < threshold)).mean())
    if metrics["real"] and metrics["fake"]:
        metrics["tpr_at_5fpr"] = tpr_at_fpr(labels, probs)
        low, high = bootstrap_auc_interval(labels, probs)
        metrics.update(auc=float(roc_auc_score(labels, probs)), auc_low=low, auc_high=high,
                       ap=float(average_precision_score(labels, probs)), eer=equal_error_rate(labels, probs),
                       balanced_accuracy=float(balanced_accuracy_score(labels, predicted)),
                       f1=float(f1_score(labels, predicted, zero_division=0)))
    return metrics


def metric_table(scores: pd.DataFrame, decision: Decision) -> pd.DataFrame:
    """Rows: overall, each dataset, each manipulation method (its fakes against all reals)."""
    labels = (scores["label"] == "fake").to_numpy(np.int64)
    probs = scores["probability"].to_numpy()
    groups = [("overall", "all", np.ones(len(scores), dtype=bool))]
    groups += [("dataset", dataset, (scores["dataset"] == dataset).to_numpy())
               for dataset in sorted(scores["dataset"].unique())]
    groups += [("method", method, ((scores["method"] == method).to_numpy() & (labels == 1)) | (labels == 0))
               for method in sorted(scores.loc[labels == 1, "method"].unique())]
    return pd.DataFrame([{"group": group, "name": name,
                          **binary_metrics(labels[chosen], probs[chosen], decision.threshold,
                                           decision.uncertain_below)}
                         for group, name, chosen in groups])


def score_videos(model: TemporalHead, clips: ClipSet, batch_size: int = 512, amp: bool = True
                 ) -> pd.DataFrame:
    """The index rows of the clips' videos with `probability` (mean clip P(fake)) and `clips` columns."""
    probs = clip_probabilities(model, clips, batch_size, amp)
    scores = clips.videos.copy()
    scores["probability"] = video_probabilities(clips, probs)
    scores["clips"] = np.bincount(clips.video.cpu().numpy(), minlength=len(scores))
    return scores


@dataclass
class Evaluation:
    metrics: pd.DataFrame  # metric_table rows
    scores: pd.DataFrame  # one row per video
    out_dir: Path

    def overall(self) -> dict:
        return self.metrics.iloc[0].to_dict()


def evaluate_run(run_dir: str | os.PathLike, index: str | os.PathLike | None = None,
                 embed_cache_dir: str | os.PathLike | None = None, split: str | None = "test",
                 out_dir: str | os.PathLike | None = None, checkpoint: str = "best", batch_size: int = 512,
                 device: str = "auto") -> Evaluation:
    """Evaluate a trained run on its own data, or (cross-dataset) on another index and embed cache without
    retraining. Writes metrics.csv/json, scores.csv, PNG plots, report.md and report.html to `out_dir`
    (default: <run>/eval/<index name>-<split>). `split=None`: every video of the index."""
    run_dir = Path(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text())
    index_path = Path(index) if index is not None else run_dir / "index.csv"
    embed_cache_dir = Path(embed_cache_dir or run_config["data"]["embed_cache"])
    name = f"{index_path.stem}-{split or 'all'}"
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval" / name
    out_dir.mkdir(parents=True, exist_ok=True)

    torch_device = resolve_device(device)
    model = TemporalHead.from_pretrained(run_dir / checkpoint, map_location=torch_device)
    preprocessing = preprocessing_config(embed_cache_dir)
    trained_key = run_config["preprocessing"]["key"]
    if preprocessing["config"] != run_config["preprocessing"]["config"]:
        log.warning("the embed cache %s (key %s) was made with other preprocessing than the run's training "
                    "data (key %s); see the report", embed_cache_dir, preprocessing["key"], trained_key)
    clips = load_clips(read_index(index_path), embed_cache_dir, split)
    dims = {stream: value.shape[-1] for stream, value in clips.features.items()}
    expected = {stream: getattr(model.config, f"{stream}_dim") for stream in model.stream_names}
    if any(dims.get(stream) != size for stream, size in expected.items()):
        raise ValueError(f"{embed_cache_dir} holds embeddings of sizes {dims}, but the model in "
                         f"{run_dir / checkpoint} expects {expected}")
    scores = score_videos(model, clips.to(torch_device), batch_size)
    decision = load_decision(run_dir / checkpoint)
    threshold = decision.threshold
    metrics = metric_table(scores, decision)
    labels = (scores["label"] == "fake").to_numpy(np.int64)

    scores.to_csv(out_dir / "scores.csv", index=False)
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    provenance = {
        "run": str(run_dir.resolve()), "checkpoint": str((run_dir / checkpoint).resolve()),
        "model": model.config.to_dict(), "threshold": threshold, "decision": decision.to_dict(),
        "decision_meaning": decision.meaning(), "split": split,
        "index": str(index_path.resolve()), "embed_cache": str(embed_cache_dir.resolve()),
        "preprocessing": preprocessing, "trained_on_preprocessing_key": trained_key,
        "trained_on": {name: run_config["data"][name] for name in ("index", "embed_cache", "train_videos",
                                                                   "val_videos")},
        "missing_videos": clips.missing,
    }
    write_json_atomic(out_dir / "metrics.json", {**provenance, "metrics": metrics.to_dict(orient="records")})
    plot_roc(scores, out_dir / "roc.png")
    plot_confusion(labels, scores["probability"].to_numpy() >= threshold, out_dir / "confusion.png")
    figures = ["roc.png", "confusion.png"]
    if (run_dir / "history.csv").exists():
        plot_training_curves(pd.read_csv(run_dir / "history.csv"), out_dir / "training_curves.png")
        figures.append("training_curves.png")
    write_reports(out_dir, provenance, metrics, figures)
    overall = metrics.iloc[0]
    if index is None and split == "test" and (run_dir / checkpoint / DECISION_FILE).is_file():
        folder = run_dir / checkpoint
        test_metrics = metrics.to_dict("records")[0]  # Python numbers, for evaluation.json
        Checkpoint.from_pretrained(folder).record_evaluation(folder, {**test_metrics, "split": split})
    log.info("%s split of %s: video AUC %.4f, balanced accuracy %.4f at threshold %.3f (%d videos) -> %s",
             split, index_path, overall["auc"], overall["balanced_accuracy"], threshold, len(scores), out_dir)
    return Evaluation(metrics=metrics, scores=scores, out_dir=out_dir)


def evaluate_on_data(run_dir: str | os.PathLike, data: str | os.PathLike, split: str | None = "test",
                     dataset: str = "auto", cache_root: str | os.PathLike | None = None,
                     workers: int | None = None, **options) -> Evaluation:
    """Cross-dataset evaluation in one call: index `data` (a dataset folder, or an index file), preprocess
    the split's videos with the run's own preprocessing (cached, so a second call only evaluates), then
    evaluate the run on them. `split=None` evaluates every video of the index. `options` go to
    `evaluate_run`."""
    run_dir, data = Path(run_dir), Path(data)
    if data.is_file():
        index_path, table = data, read_index(data)
    elif data.is_dir():
        table = build_index(data, dataset).table
        index_path = write_index(table, run_dir / "data" / f"{data.name}.csv")
    else:
        raise FileNotFoundError(f"{data} is neither a dataset folder nor an index file")
    config = PreprocessConfig.from_embed_cache(run_dir)  # the run's copy of its training preprocessing
    evaluated = table if split is None else table[table["split"] == split]  # only what is scored
    result = preprocess(evaluated, config, cache_root=cache_root, workers=workers)
    log.info("%s preprocessed as %s was trained: %s", data, run_dir, result.summary().replace("\n", "; "))
    return evaluate_run(run_dir, index_path, result.embed.dir, split, **options)


def feature_models(preprocessing: dict) -> str:
    """Which networks made the embeddings, in words, with random weights called out."""
    config, pipeline = preprocessing.get("config", {}), preprocessing.get("pipeline")
    depth_model = pipeline["depth"]["model"] if pipeline else "unknown (not made by `megatron preprocess`)"
    if depth_model.startswith(RANDOM_INIT_PREFIX):
        depth_model += " (RANDOM weights: the depth maps carry no real depth information)"
    elif depth_model == FACEMESH:
        depth_model += " (offline provider: depth rendered from the MediaPipe face mesh fitted to each crop)"
    tuned = {stream: pipeline["embed"].get(f"{stream}_weights") for stream in ("rgb", "depth")} if pipeline \
        else {}
    streams = [f"{stream} backbone {config[stream]['backbone']} ({config[stream]['weights']}"
               + (f", fine-tuned weights {tuned[stream]})" if tuned.get(stream) else ")")
               for stream in ("rgb", "depth") if isinstance(config.get(stream), dict)]
    if "audio" in config:  # the embed cache was made with an audio stream (its key names the audio stage's)
        audio = (pipeline or {}).get("audio") or {}
        streams.append(f"audio encoder {audio.get('encoder', 'unknown')} "
                       f"({audio.get('weights') or 'its packaged weights'}; audio cache {config['audio']})")
    return "; ".join([f"depth model {depth_model}", *streams])


def write_reports(out_dir: Path, provenance: dict, metrics: pd.DataFrame, figures: list[str]) -> None:
    """report.md and report.html: the metrics, the figures, and exactly which weights and data were used."""
    missing = provenance["missing_videos"]
    same_preprocessing = provenance["preprocessing"]["key"] == provenance["trained_on_preprocessing_key"]
    trained_on = provenance["trained_on"]
    facts = [
        ("Weights", provenance["checkpoint"]),
        ("Trained on", f"{trained_on['index']} ({trained_on['train_videos']} train, "
                       f"{trained_on['val_videos']} validation videos), "
                       f"embeddings {trained_on['embed_cache']}"),
        ("Decision", f"{provenance['decision_meaning']} (chosen on the validation split in training); `fpr` "
                     f"and `tpr` below are at this threshold, `uncertain` the share of videos in the band"),
        ("Index", f"{provenance['index']} (split: {provenance['split']})"),
        ("Embed cache", f"{provenance['embed_cache']} (key {provenance['preprocessing']['key']})"),
        ("Feature models", feature_models(provenance["preprocessing"])),
        ("Preprocessing", "same as training" if same_preprocessing else
         f"DIFFERENT from training (trained on key {provenance['trained_on_preprocessing_key']})"),
        ("Videos without embeddings (skipped)", str(len(missing))),
    ]
    context = {
        "facts": facts, "columns": list(metrics.columns), "figures": figures, "missing": missing,
        "rows": [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
                 for row in metrics.itertuples(index=False)],
        "model_json": json.dumps(provenance["model"], indent=2, sort_keys=True),
        "preprocessing_json": json.dumps(provenance["preprocessing"], indent=2, sort_keys=True),
    }
    for name in ("report.md", "report.html"):
        (out_dir / name).write_text(render(name, **context))

