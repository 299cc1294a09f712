"""Models side by side on the same data: `compare_models` trains each named head with the same seed and
budget on one embed cache, evaluates it on one split, and returns a leaderboard row per model (video AUC
with its bootstrap interval, per method, parameters, training time, and optionally the seconds `predict`
takes on one video). `write_leaderboard` writes it as CSV and markdown. `megatron compare` and the
ablation table are both this.

A model whose run already finished in `out_root` is evaluated again, not retrained, and a run killed
part-way resumes from its last/ checkpoint, so a long comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..core.cache import atomic_path
from ..core.templates import render
from ..models.heads import MegatronConfig, TemporalHead
from .evaluate import evaluate_run
from .loop import STATE_JSON
from .train import TrainConfig, resume, train

log = logging.getLogger(__name__)

LEADERBOARD = "leaderboard"


def trained_run(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: str | os.PathLike,
                train_cfg: TrainConfig, model_cfg: MegatronConfig, run_dir: Path) -> Path:
    """The run in `run_dir`: reused when it finished with this config, resumed when it was killed, trained
    otherwise."""
    state_file = run_dir / "last" / STATE_JSON
    if state_file.is_file():
        config = json.loads((run_dir / "config.json").read_text())
        if config["train"] == asdict(train_cfg) and config["model"]["architecture"] == model_cfg.architecture:
            state = json.loads(state_file.read_text())
            if state["epoch"] >= train_cfg.epochs or state["bad_epochs"] >= train_cfg.patience:
                log.info("%s: finished earlier, evaluated again", run_dir)
                return run_dir
            return resume(run_dir)
    return train(index, embed_cache_dir, train_cfg, model_cfg, run_dir)


def predict_seconds(run_dir: Path, media: str | os.PathLike) -> float:
    """Seconds `predict` takes on `media` with the run (after one warm-up call), preprocessing included."""
    from ..inference.predict import Detector

    detector = Detector.from_pretrained(run_dir, device="cpu")
    detector.predict(media)
    started = time.perf_counter()
    prediction = detector.predict(media)
    if not prediction.ok:
        raise ValueError(f"cannot time predict on {media}: {prediction.error}")
    return time.perf_counter() - started


def compare_models(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: str | os.PathLike,
                   models: dict[str, MegatronConfig], train_cfg: TrainConfig, out_root: str | os.PathLike,
                   split: str = "test", predict_media: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per model, in the order given: train (same seed and budget), evaluate on `split`."""
    rows = []
    for name, model_cfg in tqdm(models.items(), desc="compare", unit="model", disable=len(models) < 2):
        run_dir = trained_run(index, embed_cache_dir, train_cfg, model_cfg, Path(out_root) / name)
        metrics = evaluate_run(run_dir, split=split).metrics
        overall = metrics.iloc[0]
        state = json.loads((run_dir / "last" / STATE_JSON).read_text())
        history = pd.read_csv(run_dir / "history.csv")
        row = {"model": name, "architecture": model_cfg.architecture,
               "parameters": TemporalHead.from_pretrained(run_dir / "best").num_parameters(),
               "best_val_auc": state["best_score"],  # the selection's: the head's score is its val AUC
               f"{split}_auc": overall["auc"], f"{split}_auc_low": overall["auc_low"],
               f"{split}_auc_high": overall["auc_high"],
               f"{split}_balanced_accuracy": overall["balanced_accuracy"],
               **{f"auc {method}": auc for method, auc in
                  metrics.loc[metrics["group"] == "method", ["name", "auc"]].itertuples(index=False)},
               "train_s": round(float(history["seconds"].iloc[-1]), 2)}
        if predict_media is not None:
            row["predict_s"] = round(predict_seconds(run_dir, predict_media), 3)
        rows.append({**row, "run": str(run_dir)})
    return pd.DataFrame(rows)


def write_leaderboard(table: pd.DataFrame, out_dir: str | os.PathLike, title: str, split: str = "test"
                      ) -> tuple[Path, Path]:
    """leaderboard.csv and leaderboard.md (ranked by the split's AUC) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    auc = f"{split}_auc"
    ranked = table.sort_values(auc, ascending=False, kind="stable")
    csv_path, md_path = out_dir / f"{LEADERBOARD}.csv", out_dir / f"{LEADERBOARD}.md"
    with atomic_path(csv_path) as tmp:
        ranked.to_csv(tmp, index=False)
    methods = [column for column in ranked.columns if column.startswith("auc ")]
    with atomic_path(md_path) as tmp:
        tmp.write_text(render("leaderboard.md", title=title, rows=ranked.to_dict("records"), auc=auc,
                              split=split, methods=methods,
                              timed="predict_s" in ranked.columns))
    return csv_path, md_path


ABLATIONS: dict[str, dict] = {
    "full": {},
    "rgb_only": {"streams": "rgb"},
    "depth_only": {"streams": "depth"},
    "concat": {"fusion": "concat"},
}


def ablation_table(index: str | os.PathLike | pd.DataFrame, embed_cache_dir: str | os.PathLike,
                   train_cfg: TrainConfig, model_cfg: MegatronConfig, out_root: str | os.PathLike,
                   variants: tuple[str, ...] = tuple(ABLATIONS), split: str = "test") -> pd.DataFrame:
    """The full model and each ablation (streams, fusion) compared: one row per variant."""
    models = {variant: replace(model_cfg, **ABLATIONS[variant]) for variant in variants}
    return compare_models(index, embed_cache_dir, models, train_cfg, out_root, split).rename(
        columns={"model": "variant"})
