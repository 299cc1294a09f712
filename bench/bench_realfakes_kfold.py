"""Identity-disjoint k-fold on realfakes-dev: SBI fine-tuning on reals only, every FF++ item tested once.

`../shared/data/realfakes-dev/` (83 videos from public datasets, mostly FF++ c23; research-only terms, never
copied into the project) is indexed as `bench_realfakes.py` does. Its FF++ items are grouped by identity:
an original joins every fake that uses its id as target or source (connected components), and the groups
are dealt into k folds, stratified by label. For each fold:

- training: the real videos of the other folds plus the reals that install here (the embedded demo's),
  as real crops and their self-blended pseudo-fakes; no fake video is ever trained on;
- nested selection, inside the training data only: the checkpoint (epoch) is chosen on an inner validation
  split (one identity group-fold of the training FF++ reals plus the demo's validation reals) by the
  pseudo-fake AUC, and the decision threshold is the one at most `--target-fpr` of the inner validation
  reals reach. Nothing about a setting is read from the fold's test videos;
- test: the fold's own reals and fakes (each FF++ item is tested exactly once), and every video outside
  FF++'s layout (DeepFakeDetection, DeeperForensics, DFDC, one FF++ fake of unknown method), which every
  fold's model scores.

Scores are the frame classifier's mean P(fake) per video. Reported: pooled AUC with 95% bootstrap
intervals, the share of reals called fake at each fold's own threshold (FPR), the share of fakes caught
(TPR) and the TPR at 5% FPR, per method and per source. `--identities` repeats the k-fold with the real
training identities subsampled and fits the growth curve (AUC against log identities, extrapolated to FF++'s
720 training identities); `--minutes` caps each fold's fine-tuning. Run alone:

    python bench/bench_realfakes_kfold.py [--folds 5] [--identities 10 25 all] [--minutes 4]
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from bench_realfakes import DEFAULT_DATA, installed_index, realfakes_index
from common import REPO, RESULTS, environment, peak_rss_mb, print_table, write_results
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from megatron_utils.core.cache import StageCache
from megatron_utils.demo import DemoConfig
from megatron_utils.models.backbones import FrameClassifier
from megatron_utils.preprocessing.faces import extract_faces
from megatron_utils.training.evaluate import binary_metrics, fpr_threshold
from megatron_utils.training.finetune import finetune, score_videos

log = logging.getLogger("bench_realfakes_kfold")


def identity_groups(table: pd.DataFrame) -> np.ndarray:
    """One group number per row: FF++ ids linked by every fake's target and source (connected components)."""
    ids_of = table[["target_id", "source_id"]].replace("", np.nan)  # originals have no source
    ids = pd.concat([ids_of["target_id"], ids_of["source_id"]]).dropna().astype(str).unique()
    number = {identity: i for i, identity in enumerate(ids)}
    linked = ids_of.dropna()
    rows = linked["target_id"].astype(str).map(number).to_numpy()
    cols = linked["source_id"].astype(str).map(number).to_numpy()
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    return component[table["target_id"].astype(str).map(number).to_numpy()]


def person_and_photo(row: pd.Series) -> tuple[str, str]:
    """Who a real video shows, and the group that must stay whole in a split: an FF++ identity group, or an
    installed clip's person (`obama-2` -> `obama`) and the photo they were cut from (`faceapi-s5-p0` ->
    `faceapi-s5`: every face of a group photo stays together)."""
    if pd.notna(row.get("group")):
        return f"ffpp-{int(row['group'])}", f"ffpp-{int(row['group'])}"
    person = re.sub(r"-\d+$", "", str(row["target_id"]))
    return person, re.sub(r"-p\d+$", "", person)


def deal_folds(ffpp: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """The test fold of every FF++ item: identity groups kept whole, labels balanced across folds."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(ffpp), -1)
    labels = (ffpp["label"] == "fake").to_numpy()
    for number, (_, test) in enumerate(splitter.split(ffpp, labels, ffpp["group"])):
        fold[test] = number
    return fold


def training_reals(ffpp: pd.DataFrame, installed: pd.DataFrame, fold: int, folds: int, identities: int | None,
                   seed: int) -> pd.DataFrame:
    """The fold's fine-tuning index: the other folds' FF++ reals and the installed reals, optionally down to
    `identities` people, split into `train` and the nested `val` (one inner group-fold of those people)."""
    reals = pd.concat([ffpp[(ffpp["fold"] != fold) & (ffpp["label"] == "real")],
                       installed[installed["label"] == "real"]], ignore_index=True)
    reals[["person", "photo"]] = reals.apply(person_and_photo, axis=1, result_type="expand")
    rng = np.random.default_rng(seed + fold)
    if identities is not None:
        people = reals["person"].unique()
        reals = reals[reals["person"].isin(rng.choice(people, min(identities, len(people)), replace=False))]
    inner = StratifiedGroupKFold(n_splits=min(folds - 1, reals["photo"].nunique()), shuffle=True,
                                 random_state=seed + fold)
    inner_val = next(inner.split(reals, np.zeros(len(reals)), reals["photo"]))[1]
    split = np.where(np.isin(np.arange(len(reals)), inner_val), "val", "train")
    return reals.reset_index(drop=True).assign(split=split)


def rates(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """AUC (with interval) and TPR at 5% FPR of the pooled scores; FPR and TPR at each video's own fold
    threshold."""
    called = probs >= thresholds
    metrics = binary_metrics(labels, probs, 0.5)
    return {"real": int((labels == 0).sum()), "fake": int((labels == 1).sum()),
            "auc": metrics["auc"], "auc_95": f"[{metrics['auc_low']:.2f}, {metrics['auc_high']:.2f}]",
            "fpr": float(called[labels == 0].mean()) if (labels == 0).any() else float("nan"),
            "tpr": float(called[labels == 1].mean()) if (labels == 1).any() else float("nan"),
            "tpr_at_5fpr": metrics["tpr_at_5fpr"]}


def report_rows(tested: pd.DataFrame, external: pd.DataFrame, setting: str) -> list[dict[str, object]]:
    """Pooled FF++ k-fold rows (all, each method against all FF++ reals) and the external videos (the mean
    of every fold's scores and thresholds), per manipulation source."""
    def row(name: str, scores: pd.DataFrame) -> dict[str, object]:
        labels = (scores["label"] == "fake").to_numpy(np.int64)
        return {"setting": setting, "group": name,
                **rates(labels, scores["probability"].to_numpy(), scores["threshold"].to_numpy())}

    rows = [row("FF++ k-fold, all", tested)]
    reals = tested[tested["label"] == "real"]
    for method in sorted(tested.loc[tested["label"] == "fake", "method"].unique()):
        fakes = tested[tested["method"] == method]
        rows.append(row(f"  FF++ {method} vs FF++ reals", pd.concat([reals, fakes])))
    mean = external.groupby("video_id").agg(probability=("probability", "mean"),
                                            threshold=("threshold", "mean"))
    external = external.drop_duplicates("video_id").drop(columns=["probability", "threshold"]).join(
        mean, on="video_id")
    rows.append(row("external (every fold's model, mean)", external))
    for method in sorted(external.loc[external["label"] == "fake", "method"].unique()):
        chosen = external[(external["method"] == method) | (external["label"] == "real")]
        rows.append(row(f"  {method} vs external reals", chosen))
    return rows


def growth(settings: dict[str, dict], rows: list[dict[str, object]], target: int = 720) -> dict[str, object]:
    """AUC and TPR at 5% FPR (pooled FF++ k-fold) against the real training identities, a straight line in
    log(identities) fitted through them, and what it predicts at `target` identities (FF++'s train split);
    plotted into bench/results/realfakes-kfold-growth.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = {row["setting"]: row for row in rows if row["group"] == "FF++ k-fold, all"}
    people = np.array([np.mean([fold["identities"] for fold in settings[name]["folds"]])
                       for name in settings])
    curve: dict[str, object] = {"identities": people.tolist()}
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for metric in ("auc", "tpr_at_5fpr"):
        values = np.array([pooled[f"{name} identities"][metric] for name in settings])
        slope, intercept = np.polyfit(np.log(people), values, 1)
        curve[metric] = {"values": values.tolist(), "per_doubling": float(slope * np.log(2)),
                         f"predicted_at_{target}": float(intercept + slope * np.log(target))}
        axes.plot(people, values, "o", label=metric)
        line = np.geomspace(people.min(), target, 50)
        axes.plot(line, intercept + slope * np.log(line), "--", linewidth=1)
    axes.set(xscale="log", xlabel="real training identities per fold", ylabel="pooled FF++ k-fold",
             ylim=(0, 1), title="realfakes-dev, identity-disjoint k-fold")
    axes.legend()
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / "realfakes-kfold-growth.png", dpi=120)
    plt.close(figure)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--identities", nargs="+", default=["all"],
                        help="real training identities per fold (the growth curve), or 'all'")
    parser.add_argument("--minutes", type=float, default=None,
                        help="cap on each fold's fine-tuning (default: none, the recipe's epochs)")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-realfakes-kfold")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    demo = DemoConfig()  # the demo recipe's faces and fine-tuning: the README model's settings
    recipe = demo.recipe
    finetune_config = replace(recipe.finetune, max_minutes=args.minutes)
    realfakes, installed = realfakes_index(args.data), installed_index(demo)
    installed = installed[installed["label"] == "real"]  # only reals are trained on
    faces, report = extract_faces(pd.concat([realfakes, installed], ignore_index=True),
                                  recipe.preprocess.frames, recipe.preprocess.faces)
    print(report.summary())
    crops = recipe.preprocess.frames.frames_per_clip * recipe.preprocess.frames.clips_per_video
    faces_cache = StageCache.open(faces.dir)

    ffpp = realfakes[realfakes["split"] != "external"].reset_index(drop=True)
    ffpp = ffpp[ffpp["video_id"].map(lambda v: faces_cache.is_done(v))].reset_index(drop=True)
    ffpp["group"] = identity_groups(ffpp)
    ffpp["fold"] = deal_folds(ffpp, args.folds, args.seed)
    external = realfakes[realfakes["split"] == "external"]

    rows, payload = [], {"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment(),
                         "finetune": finetune_config.__dict__ | {"sbi": None, "augment": None},
                         "faces_failures": report.failures, "settings": {}}
    for identities in args.identities:
        count = None if identities == "all" else int(identities)
        tested, scored_external, folds_info = [], [], []
        for fold in range(args.folds):
            table = training_reals(ffpp, installed, fold, args.folds, count, args.seed)
            run = args.out / f"identities-{identities}" / f"fold-{fold}"
            started = time.perf_counter()
            best = finetune(table, faces.dir, finetune_config, run, resume=True)  # resumes a killed run
            seconds = time.perf_counter() - started
            model = FrameClassifier.from_pretrained(best)
            inner_reals = score_videos(model, table[table["split"] == "val"], faces_cache, None, crops)
            threshold = fpr_threshold(inner_reals["probability"].to_numpy(), args.target_fpr)
            test = ffpp[ffpp["fold"] == fold].drop(columns=["group", "fold"])
            tested.append(score_videos(model, test, faces_cache, None, crops).assign(threshold=threshold,
                                                                                       fold=fold))
            scored_external.append(score_videos(model, external, faces_cache, None, crops).assign(
                threshold=threshold, fold=fold))
            folds_info.append({"fold": fold, "train_reals": int((table["split"] == "train").sum()),
                               "inner_val_reals": int((table["split"] == "val").sum()),
                               "identities": int(table["person"].nunique()), "threshold": threshold,
                               "finetune_seconds": round(seconds, 1), "test_videos": len(test)})
            log.info("fold %d (%s identities): %s", fold, identities, folds_info[-1])
        tested_all, external_all = pd.concat(tested), pd.concat(scored_external)
        rows += report_rows(tested_all, external_all, f"{identities} identities")
        payload["settings"][identities] = {"folds": folds_info, "scores": tested_all.to_dict("records"),
                                           "external_scores": external_all.to_dict("records")}
        write_results("realfakes-kfold", {"rows": rows, **payload})  # each setting as soon as it is done
    if len(args.identities) > 1:
        payload["growth"] = growth(payload["settings"], rows)
        print("growth with identities:", payload["growth"])
    payload["peak_rss_mb"] = peak_rss_mb()
    print_table(rows, f"realfakes-dev, identity-disjoint {args.folds}-fold, SBI on reals only "
                      f"(demo recipe: {recipe.finetune.input_size} px, {crops} crops per video)")
    write_results("realfakes-kfold", {"rows": rows, **payload})


if __name__ == "__main__":
    main()
