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

Every test video is also scored after a re-encode (x264 CRF 38 over the c23 files, close to FF++'s c40),
at the fold's clean threshold and at a second one, set on the inner reals together with the re-encoded
copies of its FF++ reals. The inner validation's pseudo-fake AUC is also read on re-encoded crops, so
compression is seen by the test and by the nested choice alike.

Scores are the frame classifier's mean P(fake) per video. Reported: pooled AUC with 95% bootstrap
intervals, the share of reals called fake at each fold's own threshold (FPR), the share of fakes caught
(TPR) and the TPR at 5% FPR, per method and per source. Eight levers can be swept, each setting a full
k-fold: `--identities` (the real training identities, subsampled), `--epochs` (the fine-tuning budget, with
each fold's measured minutes), `--crop-size` (face crops extracted and fine-tuned at that size), `--lr`,
`--crops-per-video` (frames per real video), `--recompression` (the JPEG, H.264 and downscale
augmentation of reals and pseudo-fakes alike, on or off), `--tune-fraction` (which layers are tuned:
the share of the backbone's weights, from its output end; 0 is a linear probe) and `--frames-per-video`
(frames the faces stage samples per video, the ceiling of `--crops-per-video`; test videos are scored on
as many). For every numeric lever given more than one value, a straight line in its log is fitted through
the pooled AUC and TPR at 5% FPR, plotted, and extrapolated (identities: to FF++'s 720 training
identities). When recipe levers are swept, a "nested choice" row reports what choosing among them
delivers: each fold takes the setting with the best pseudo-fake AUC on its inner validation reals (the
mean of clean and re-encoded). Results go to
bench/results/realfakes-kfold-<levers>.json. Run alone:

    python bench/bench_realfakes_kfold.py [--folds 5] [--identities 10 25 all] [--epochs 1 2 5]
                                          [--crop-size 128 192] [--lr 1e-4 3e-4] [--crops-per-video 4 16]
                                          [--recompression on off] [--tune-fraction 1 0.5 0.1]
                                          [--frames-per-video 16 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from bench_realfakes import DEFAULT_DATA, installed_index, realfakes_index
from common import REPO, RESULTS, environment, peak_rss_mb, print_table, write_results
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from megatron_utils.core.cache import StageCache
from megatron_utils.datasets import read_index
from megatron_utils.demo import DemoConfig
from megatron_utils.models.backbones import FrameClassifier
from megatron_utils.preprocessing.faces import extract_faces
from megatron_utils.preprocessing.video import h264_roundtrip
from megatron_utils.recipes import Recipe
from megatron_utils.training.corruptions import H264_CRF, corrupt_split
from megatron_utils.training.evaluate import binary_metrics, fpr_threshold
from megatron_utils.training.finetune import (
    FinetuneConfig,
    ValidationImages,
    finetune,
    frame_probabilities,
    frame_refs,
    score_videos,
    validation_metrics,
)
from megatron_utils.training.loop import STATE_JSON

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


def pooled_row(setting: str, group: str, scores: pd.DataFrame, threshold: str = "threshold"
               ) -> dict[str, object]:
    """One report row: `rates` of `scores`, each video judged at its fold's `threshold` column."""
    labels = (scores["label"] == "fake").to_numpy(np.int64)
    return {"setting": setting, "group": group,
            **rates(labels, scores["probability"].to_numpy(), scores[threshold].to_numpy())}


def report_rows(tested: pd.DataFrame, external: pd.DataFrame, setting: str, copy: str = ""
                ) -> list[dict[str, object]]:
    """Pooled FF++ k-fold rows (all, each method against all FF++ reals) and the external videos (the mean
    of every fold's scores and thresholds), per manipulation source; `copy` names a corrupted copy of the
    videos (its rows are prefixed with it)."""
    def row(name: str, scores: pd.DataFrame) -> dict[str, object]:
        return pooled_row(setting, f"{copy}{name}", scores)

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


# lever: (axis label, how a setting names its value); the order is the order of names and run folders
LEVERS = {"identities": ("real training identities per fold", "{} identities"),
          "epochs": ("fine-tuning epochs", "{} epochs"),
          "crop_size": ("face crop size (px)", "{} px"),
          "lr": ("fine-tuning learning rate", "lr {:g}"),
          "crops_per_video": ("crops per real video", "{} crops/video"),
          "recompression": ("recompression augmentation", "recompression {}"),
          "tune_fraction": ("share of the backbone's weights tuned", "{:g} of the backbone tuned"),
          "frames_per_video": ("frames sampled per video", "{} frames/video")}
EXTRAPOLATE_TO = {"identities": 720}  # FF++'s training identities
# Every test video is also scored after a re-encode at this severity of the corruptions benchmark (x264 CRF
# 38 over FF++'s c23: close to its c40), with the fold's clean threshold: what compression does to a verdict.
REENCODE = ("h264", 4)
REENCODED = f"re-encoded CRF {H264_CRF[REENCODE[1]]}: "
# The inner validation's pseudo-fake AUC is also read with every real crop and pseudo-fake re-encoded as one
# H.264 intra frame at this quantiser, so the nested choice can weigh compression without any test video.
INNER_QP = 36
BOTH_RULE = "threshold on clean and re-encoded inner reals"  # see run_setting
NO_RECOMPRESSION = {"jpeg_p": 0.0, "h264_p": 0.0, "downscale_p": 0.0}


def setting_name(setting: dict[str, object]) -> str:
    return ", ".join(LEVERS[lever][1].format(value) for lever, value in setting.items())


def run_folder(setting: dict[str, object]) -> str:
    return "-".join(f"{lever}-{value:g}" if isinstance(value, float) else f"{lever}-{value}"
                    for lever, value in setting.items())


def curve(lever: str, settings: dict[str, dict], rows: list[dict[str, object]]) -> dict[str, object]:
    """Pooled FF++ k-fold AUC and TPR at 5% FPR against one lever (the others held), a straight line in
    log(lever) fitted through them, and for identities what it predicts at FF++'s 720; plotted into
    bench/results/realfakes-kfold-<lever>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = {row["setting"]: row for row in rows if row["group"] == "FF++ k-fold, all"}
    # identities as counted in each fold ("all" is a number too); epochs as run, with their minutes
    x = np.array([np.mean([fold[lever] for fold in entry["folds"]]) if lever == "identities"
                  else float(entry["setting"][lever]) for entry in settings.values()])
    result: dict[str, object] = {lever: x.tolist(), "settings": list(settings)}
    if lever == "epochs":
        result["finetune_minutes"] = [np.mean([fold["finetune_seconds"] for fold in entry["folds"]]) / 60
                                      for entry in settings.values()]
    target = EXTRAPOLATE_TO.get(lever)
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for metric in ("auc", "tpr_at_5fpr"):
        values = np.array([pooled[name][metric] for name in settings])
        slope, intercept = np.polyfit(np.log(x), values, 1)
        result[metric] = {"values": values.tolist(), "per_doubling": float(slope * np.log(2))}
        line = np.geomspace(x.min(), target or x.max(), 50)
        if target:
            result[metric][f"predicted_at_{target}"] = float(intercept + slope * np.log(target))
        axes.plot(x, values, "o", label=metric)
        axes.plot(line, intercept + slope * np.log(line), "--", linewidth=1)
    axes.set(xscale="log", xlabel=LEVERS[lever][0], ylabel="pooled FF++ k-fold", ylim=(0, 1),
             title="realfakes-dev, identity-disjoint k-fold")
    axes.legend()
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(RESULTS / f"realfakes-kfold-{lever}.png", dpi=120)
    plt.close(figure)
    return result


class KFold(NamedTuple):
    """One full k-fold at one setting of the levers."""

    tested: pd.DataFrame  # the FF++ scores, each item by its own fold's model
    external: pd.DataFrame  # every fold's scores of the external videos
    tested_reencoded: pd.DataFrame  # the same, for the re-encoded copies (`REENCODE`)
    external_reencoded: pd.DataFrame
    folds: list[dict]  # each fold's facts: sizes, threshold, inner pseudo-fake AUCs, times
    failures: dict[str, str]  # videos whose faces failed, and why


SCORES = KFold._fields[:4]  # the score tables of a k-fold, in kfold_rows' order


def reencoded_pseudo_fake_auc(model: FrameClassifier, reals: pd.DataFrame, faces: StageCache,
                              config: FinetuneConfig) -> float:
    """The pseudo-fake AUC of `reals` (inner validation) with each real crop and its pseudo-fake (the ones
    the fine-tuning's validation draws) re-encoded at `INNER_QP`."""
    validation = ValidationImages(faces, frame_refs(reals, faces, None, config.crops_per_video), config)
    images, sources = zip(*((image, source) for i in range(len(validation))
                            for image, source in zip(*validation[i][:2], strict=True)), strict=True)
    degraded = np.stack([h264_roundtrip(image, INNER_QP) for image in images])
    probs = frame_probabilities(model, degraded, next(model.parameters()).device, config.amp)
    source = np.array(sources)
    return validation_metrics(probs, source, np.zeros_like(source))["val_sbi_auc"]


def judged(model: FrameClassifier, videos: pd.DataFrame, faces: StageCache, crops: int,
           thresholds: dict[str, float], fold: int) -> pd.DataFrame:
    """`videos` scored by one fold's model, with that fold's thresholds beside each score."""
    return score_videos(model, videos, faces, None, crops).assign(**thresholds, fold=fold)


def run_setting(setting: dict[str, object], recipe: Recipe, realfakes: pd.DataFrame, reencoded: pd.DataFrame,
                installed: pd.DataFrame, args: argparse.Namespace) -> KFold:
    """The k-fold at `setting`; every lever it does not name keeps `recipe`'s value. `reencoded`: the
    re-encoded copies of `realfakes`, scored by the same fold models."""
    crop_size, crops = int(setting["crop_size"]), int(setting["frames_per_video"])
    faces_config = replace(recipe.preprocess.faces, crop_size=crop_size)
    frames_config = recipe.preprocess.frames
    if crops % frames_config.frames_per_clip:
        raise ValueError(f"frames per video must be a multiple of the {frames_config.frames_per_clip} frames "
                         f"per clip, got {crops}")
    frames_config = replace(frames_config, clips_per_video=crops // frames_config.frames_per_clip)
    augment = recipe.finetune.augment
    finetune_config = replace(
        recipe.finetune, max_minutes=args.minutes, epochs=int(setting["epochs"]), input_size=crop_size,
        lr=float(setting["lr"]), crops_per_video=int(setting["crops_per_video"]),
        tune_fraction=float(setting["tune_fraction"]),
        augment=augment if setting["recompression"] == "on" else replace(augment, **NO_RECOMPRESSION))
    faces, report = extract_faces(pd.concat([realfakes, reencoded, installed], ignore_index=True),
                                  frames_config, faces_config)
    print(report.summary())
    faces_cache = StageCache.open(faces.dir)

    ffpp = realfakes[realfakes["split"] != "external"].reset_index(drop=True)
    ffpp = ffpp[ffpp["video_id"].map(faces_cache.is_done)].reset_index(drop=True)
    ffpp["group"] = identity_groups(ffpp)
    ffpp["fold"] = deal_folds(ffpp, args.folds, args.seed)
    external = realfakes[realfakes["split"] == "external"]
    fold_of = dict(zip(ffpp["video_id"], ffpp["fold"], strict=True))
    reencoded = reencoded.assign(fold=reencoded["original"].map(fold_of))
    external_copies = reencoded[reencoded["split"] == "external"]
    count = None if setting["identities"] == "all" else int(setting["identities"])
    tested, scored_external, tested_reencoded, external_reencoded, folds_info = [], [], [], [], []
    for fold in range(args.folds):
        table = training_reals(ffpp, installed, fold, args.folds, count, args.seed)
        run = args.out / run_folder(setting) / f"fold-{fold}"
        started = time.perf_counter()
        best = finetune(table, faces.dir, finetune_config, run, resume=True)  # resumes a killed run
        state = json.loads((best.parent / "last" / STATE_JSON).read_text())
        model = FrameClassifier.from_pretrained(best)
        inner = table[table["split"] == "val"]
        inner_reals = score_videos(model, inner, faces_cache, None, crops)
        threshold = fpr_threshold(inner_reals["probability"].to_numpy(), args.target_fpr)
        inner_reencoded = reencoded_pseudo_fake_auc(model, inner, faces_cache, finetune_config)
        # The alternative rule: at most target_fpr of the inner reals above it, counting the re-encoded
        # videos of its FF++ reals (the only inner reals with re-encoded copies) beside the clean ones.
        inner_copies = reencoded[reencoded["original"].isin(inner["video_id"])]
        copies_scored = (score_videos(model, inner_copies, faces_cache, None, crops)
                         if len(inner_copies) else pd.DataFrame({"probability": []}))  # none with few people
        both = fpr_threshold(np.r_[inner_reals["probability"], copies_scored["probability"]], args.target_fpr)
        thresholds = {"threshold": threshold, "threshold_both": both}
        test = ffpp[ffpp["fold"] == fold].drop(columns=["group", "fold"])
        judge = partial(judged, model, faces=faces_cache, crops=crops, thresholds=thresholds, fold=fold)
        tested.append(judge(test))
        scored_external.append(judge(external))
        tested_reencoded.append(judge(reencoded[reencoded["fold"] == fold]))
        external_reencoded.append(judge(external_copies))
        folds_info.append({"fold": fold, "train_reals": int((table["split"] == "train").sum()),
                           "inner_val_reals": len(inner),
                           "identities": int(table["person"].nunique()), **thresholds,
                           "inner_sbi_auc": state["best_score"], "inner_sbi_auc_reencoded": inner_reencoded,
                           "inner_reencoded_reals": len(copies_scored), "test_videos": len(test),
                           "finetune_seconds": round(state["seconds"], 1),
                           "wall_seconds": round(time.perf_counter() - started, 1)})
        log.info("fold %d (%s): %s", fold, setting_name(setting), folds_info[-1])
    return KFold(pd.concat(tested), pd.concat(scored_external), pd.concat(tested_reencoded),
                 pd.concat(external_reencoded), folds_info, report.failures)


def nested_choice(scored: dict[str, KFold], folds: int) -> dict[int, str]:
    """Each fold's recipe, chosen as a user without fakes would: the setting whose checkpoint reached the
    highest pseudo-fake AUC on the fold's inner validation reals (never its test videos), as they are and
    re-encoded alike (the mean of the two), so a setting cannot win by giving up compressed videos."""
    def inner(name: str, fold: int) -> float:
        facts = scored[name].folds[fold]
        return (facts["inner_sbi_auc"] + facts["inner_sbi_auc_reencoded"]) / 2

    return {fold: max(scored, key=lambda name: inner(name, fold)) for fold in range(folds)}


def nested_choice_scores(scored: dict[str, KFold], choice: dict[int, str]) -> list[pd.DataFrame]:
    """The scores of every fold's chosen setting (tested, external, and their re-encoded copies): what the
    selection procedure, not one setting, delivers."""
    return [pd.concat([getattr(scored[name], part).query("fold == @fold") for fold, name in choice.items()])
            for part in SCORES]


def kfold_rows(parts: list[pd.DataFrame], setting: str) -> list[dict[str, object]]:
    """The report rows of one k-fold: the videos as they are, then their re-encoded copies, then both
    judged at the threshold set on the inner reals as they are and re-encoded alike."""
    tested, external, tested_reencoded, external_reencoded = parts
    return [*report_rows(tested, external, setting),
            *report_rows(tested_reencoded, external_reencoded, setting, REENCODED),
            *(pooled_row(setting, f"{copy}FF++ k-fold, all, {BOTH_RULE}", scores, "threshold_both")
              for copy, scores in (("", tested), (REENCODED, tested_reencoded)))]


def main() -> None:
    demo = DemoConfig()  # the README model's recipe: every lever not swept keeps its value
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--identities", nargs="+", default=["all"],
                        help="real training identities per fold (the growth curve), or 'all'")
    parser.add_argument("--epochs", nargs="+", type=int, default=[demo.recipe.finetune.epochs],
                        help="fine-tuning epochs per fold (the budget curve)")
    parser.add_argument("--crop-size", nargs="+", type=int,
                        default=[demo.recipe.preprocess.faces.crop_size],
                        help="face crop and fine-tuning size in px (the crop-size curve)")
    parser.add_argument("--lr", nargs="+", type=float, default=[demo.recipe.finetune.lr],
                        help="fine-tuning learning rate (how far the pretrained network moves)")
    parser.add_argument("--crops-per-video", nargs="+", type=int,
                        default=[demo.recipe.finetune.crops_per_video],
                        help="crops fine-tuned on per real video (frames per identity)")
    parser.add_argument("--recompression", nargs="+", choices=["on", "off"], default=["on"],
                        help="the recipe's JPEG, H.264 and downscale augmentation, or none of it")
    parser.add_argument("--tune-fraction", nargs="+", type=float,
                        default=[demo.recipe.finetune.tune_fraction],
                        help="share of the backbone's weights tuned, from its output end (the rest frozen)")
    frames = demo.recipe.preprocess.frames
    parser.add_argument("--frames-per-video", nargs="+", type=int,
                        default=[frames.frames_per_clip * frames.clips_per_video],
                        help="frames the faces stage samples per video, for training and scoring alike")
    parser.add_argument("--minutes", type=float, default=None,
                        help="cap on each fold's fine-tuning (default: none, the epochs run out)")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-realfakes-kfold")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    realfakes, installed = realfakes_index(args.data), installed_index(demo)
    installed = installed[installed["label"] == "real"]  # only reals are trained on
    reencoded = read_index(corrupt_split(realfakes, *REENCODE, REPO / "cache" / "realfakes-reencoded"))
    reencoded["original"] = reencoded["video_id"].str.removesuffix("@{}-{}".format(*REENCODE))
    levers = {lever: getattr(args, lever) for lever in LEVERS}
    swept = [lever for lever, values in levers.items() if len(values) > 1]
    name = "-".join(["realfakes-kfold", *swept])
    rows, payload = [], {"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment(),
                         "finetune": demo.recipe.finetune.__dict__ | {"sbi": None, "augment": None},
                         "settings": {}}
    scored: dict[str, KFold] = {}
    for values in itertools.product(*levers.values()):
        setting = dict(zip(levers, values, strict=True))
        result = scored[setting_name(setting)] = run_setting(setting, demo.recipe, realfakes, reencoded,
                                                             installed, args)
        rows += kfold_rows([getattr(result, part) for part in SCORES], setting_name(setting))
        payload["settings"][setting_name(setting)] = {
            "setting": setting, "folds": result.folds, "faces_failures": result.failures,
            **{f"scores_{part}": getattr(result, part).to_dict("records") for part in SCORES}}
        write_results(name, {"rows": rows, **payload})  # each setting as soon as it is done
    if len(scored) > 1 and "identities" not in swept:
        payload["nested_choice"] = nested_choice(scored, args.folds)
        rows += kfold_rows(nested_choice_scores(scored, payload["nested_choice"]), "nested choice")
    for lever in swept:
        numeric = [float(value) for value in levers[lever] if value not in ("on", "off", "all")]
        if not numeric or min(numeric) <= 0:  # on/off, or no log scale
            continue
        payload[f"curve_{lever}"] = curve(lever, payload["settings"], rows)
        print(f"pooled FF++ k-fold against {lever}:", payload[f"curve_{lever}"])
    payload["peak_rss_mb"] = peak_rss_mb()
    print_table(rows, f"realfakes-dev, identity-disjoint {args.folds}-fold, SBI on reals only "
                      f"(demo recipe otherwise)")
    write_results(name, {"rows": rows, **payload})


if __name__ == "__main__":
    main()
