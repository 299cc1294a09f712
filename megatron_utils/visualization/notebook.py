"""Pictures and small tables for the notebooks: the data, the face crops, their depth maps, the embeddings.

Figures use matplotlib's object API (`Figure`, no pyplot), so nothing global changes and nothing is drawn
twice; a notebook shows a returned figure inline once `%matplotlib inline` is active, and
`figure.savefig(path)` writes it to a file. Tables are pandas DataFrames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..core.cache import FAILED, OK, StageCache, cache_root, cache_sizes
from ..inference.results import Prediction
from ..preprocessing.depth import read_depth
from ..preprocessing.faces import read_faces
from ..preprocessing.video import is_image, probe, read_frames, read_image

LABEL_COLOURS = {"real": "#2b7bba", "fake": "#d7301f"}
MARKERS = "osD^vP*Xh<>p"
INTERPOLATED_COLOUR = "#ff9f1c"  # frame drawn around crops whose box was filled in from neighbours


# Index ------------------------------------------------------------------------------------------------
def split_counts(table: pd.DataFrame) -> Figure:
    """Videos per method (bars) in each split (panels); reals in blue, fakes in red."""
    splits = [s for s in ("train", "val", "test", "") if (table["split"] == s).any()]
    methods = sorted(table["method"].unique(), key=lambda m: (table.loc[table["method"] == m, "label"]
                                                              .iloc[0] != "real", m))
    figure = Figure(figsize=(3.2 * len(splits), 0.45 * len(methods) + 1.2), dpi=100, layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(splits), sharey=True))
    label_of = table.groupby("method")["label"].first()
    for axes, split in zip(axes_row, splits, strict=True):
        counts = table[table["split"] == split]["method"].value_counts().reindex(methods, fill_value=0)
        bars = axes.barh(methods, counts.to_numpy(), color=[LABEL_COLOURS[label_of[m]] for m in methods])
        axes.bar_label(bars, padding=2, fontsize="small")
        axes.set_title(split or "no split")
        axes.set_xlabel("videos")
        axes.invert_yaxis()
        axes.margins(x=0.2)
    return figure


# Face crops and depth maps ----------------------------------------------------------------------------
def pick_videos(table: pd.DataFrame, cache: StageCache, per_method: int = 2,
                methods: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """A few videos of each method (reals first) that have an entry in `cache`, chosen at random."""
    done = set(cache.done_items())
    rows = table[table["video_id"].isin(done)]
    if methods is not None:
        rows = rows[rows["method"].isin(methods)]
    if rows.empty:
        raise ValueError(f"no video of the table has an entry in {cache.dir}")
    picked = rows.sample(frac=1.0, random_state=seed).groupby("method").head(per_method)
    order = picked["label"].ne("real").astype(int)
    return picked.assign(_order=order).sort_values(["_order", "method", "video_id"]).drop(columns="_order")


def _spread(count: int, wanted: int) -> np.ndarray:
    """`wanted` indices spread evenly over range(count) (all of them if there are fewer)."""
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(int))


def _spread_in_time(frame_index: np.ndarray, wanted: int) -> np.ndarray:
    """Positions of `wanted` entries spread over the video in frame order (entries are stored by clip)."""
    order = np.argsort(frame_index, kind="stable")
    return order[_spread(len(order), wanted)]


def _row_label(row: pd.Series) -> str:
    name = str(row["video_id"]).rsplit("/", 1)[-1]
    return f"{row['method']}\n{name[:18]}"


def face_grid(faces: StageCache, table: pd.DataFrame, per_method: int = 2, frames: int = 6,
              methods: Sequence[str] | None = None, seed: int = 0) -> Figure:
    """Face crops of a few videos per method: one row per video, `frames` crops spread over its clips.
    An orange frame marks a crop whose box was interpolated (no detection on that frame)."""
    rows = pick_videos(table, faces, per_method, methods, seed)
    figure = Figure(figsize=(1.3 * frames + 1.4, 1.35 * len(rows)), dpi=100, layout="constrained")
    grid = figure.subplots(len(rows), frames, squeeze=False)
    for axes_row, (_, row) in zip(grid, rows.iterrows(), strict=True):
        entry, _ = read_faces(faces, row["video_id"], ["crops", "frame_index", "detected"])
        chosen = _spread_in_time(entry["frame_index"], frames)
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if column >= len(chosen):
                continue
            k = chosen[column]
            axes.imshow(entry["crops"][k])
            axes.set_title(f"frame {entry['frame_index'][k]}", fontsize=7, pad=2)
            if not entry["detected"][k]:
                for spine in axes.spines.values():
                    spine.set(visible=True, color=INTERPOLATED_COLOUR, linewidth=3)
        axes_row[0].set_ylabel(_row_label(row), fontsize=8, rotation=0, ha="right", va="center",
                               color=LABEL_COLOURS.get(row["label"], "black"))
    return figure


def depth_grid(faces: StageCache, depth: StageCache, table: pd.DataFrame, per_method: int = 1,
               frames: int = 3, methods: Sequence[str] | None = None, seed: int = 0) -> Figure:
    """Face crops beside their depth maps (bright = near): one row per video, crop/depth pairs."""
    rows = pick_videos(table, depth, per_method, methods, seed)
    figure = Figure(figsize=(2.5 * frames + 1.4, 1.35 * len(rows)), dpi=100, layout="constrained")
    grid = figure.subplots(len(rows), 2 * frames, squeeze=False)
    for axes_row, (_, row) in zip(grid, rows.iterrows(), strict=True):
        crops, _ = read_faces(faces, row["video_id"], ["crops"])
        maps = read_depth(depth, row["video_id"])
        chosen = _spread_in_time(maps["frame_index"], frames)
        for axes in axes_row:
            axes.set_axis_off()
        for column, k in enumerate(chosen):
            crop_axes, depth_axes = axes_row[2 * column], axes_row[2 * column + 1]
            crop_axes.imshow(crops["crops"][k])
            depth_axes.imshow(maps["depth"][k], cmap="inferno", vmin=0, vmax=1)
            crop_axes.set_title(f"frame {maps['frame_index'][k]}", fontsize=7, pad=2)
            depth_axes.set_title("depth", fontsize=7, pad=2)
        axes_row[0].set_axis_on()
        axes_row[0].set_xticks([])
        axes_row[0].set_yticks([])
        axes_row[0].set_ylabel(_row_label(row), fontsize=8, rotation=0, ha="right", va="center",
                               color=LABEL_COLOURS.get(row["label"], "black"))
    return figure


# Stage reports ----------------------------------------------------------------------------------------
MANIFEST_COLUMNS = ["video_id", "label", "method", "split", "status", "faces", "tracks", "seconds", "error"]


def manifest_table(cache: StageCache, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per item of the stage's manifest (latest record), with the index columns when given;
    failed items first."""
    records = pd.DataFrame([{"video_id": item, **record} for item, record in cache.records().items()])
    if records.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    if table is not None:
        records = records.merge(table[["video_id", "label", "method", "split"]], on="video_id", how="left")
    columns = [c for c in MANIFEST_COLUMNS if c in records.columns]
    records = records[columns].assign(_failed=records["status"].ne(FAILED))
    return records.sort_values(["_failed", "video_id"]).drop(columns="_failed").reset_index(drop=True)


def failure_table(cache: StageCache, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The items the stage could not process, with the reason recorded in its manifest."""
    report = manifest_table(cache, table)
    keep = [c for c in ("video_id", "label", "method", "split", "error") if c in report.columns]
    return report.loc[report["status"] == FAILED, keep].reset_index(drop=True)


def status_by_method(cache: StageCache, table: pd.DataFrame) -> pd.DataFrame:
    """Per method: videos indexed, processed, failed and not yet processed by the stage."""
    status = table[["video_id", "method"]].merge(manifest_table(cache)[["video_id", "status"]],
                                                 on="video_id", how="left")
    counts = pd.crosstab(status["method"], status["status"].fillna("not run"))
    for column in (OK, FAILED, "not run"):
        if column not in counts.columns:
            counts[column] = 0
    counts.insert(0, "videos", counts[[OK, FAILED, "not run"]].sum(axis=1))
    return counts[["videos", OK, FAILED, "not run"]].rename_axis(columns=None)


def cache_size_table(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Disk use of every stage cache under `root` (default: `$MEGATRON_CACHE`) and its entry count."""
    base = Path(root) if root is not None else cache_root()
    rows = [{"stage": folder.split("/")[0], "key": folder.split("/")[1],
             "entries": sum(1 for _ in (base / folder / "items").glob("*.safetensors")),
             "MB": round(size / 2**20, 2)}
            for folder, size in cache_sizes(base).items()]
    return pd.DataFrame(rows, columns=["stage", "key", "entries", "MB"])


# Embeddings -------------------------------------------------------------------------------------------
def clip_embeddings(embed: StageCache, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One vector per clip and stream: the mean of its valid frames' embeddings. Returns the clips' index
    rows (with `clip`) and {"rgb": [N, D_rgb], "depth": [N, D_depth]} float32."""
    done = set(embed.done_items())
    rows, vectors = [], {"rgb": [], "depth": []}
    for _, row in table[table["video_id"].isin(done)].iterrows():
        entry, _ = embed.read(row["video_id"])
        valid = entry["valid"].astype(np.float32)  # [C, T]
        frames = valid.sum(axis=1)
        for stream in vectors:
            summed = np.einsum("ct,ctd->cd", valid, entry[stream].astype(np.float32))
            vectors[stream].append(summed[frames > 0] / frames[frames > 0, None])
        rows += [{**row.to_dict(), "clip": clip} for clip in np.flatnonzero(frames > 0)]
    if not rows:
        raise ValueError(f"no video of the table has an entry in {embed.dir}")
    return pd.DataFrame(rows), {stream: np.concatenate(parts) for stream, parts in vectors.items()}


def project_2d(vectors: np.ndarray, method: str = "pca", seed: int = 0
               ) -> tuple[np.ndarray, tuple[str, str]]:
    """Standardised vectors projected to 2-D with PCA or t-SNE; returns the points and the axis names."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(vectors)
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(scaled)
        share = pca.explained_variance_ratio_
        return pca.transform(scaled), (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})")
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(scaled) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                    ).fit_transform(scaled), ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"projection must be 'pca' or 'tsne', got {method!r}")


def embedding_projection(embed: StageCache, table: pd.DataFrame, method: str = "pca", seed: int = 0
                         ) -> Figure:
    """The clip embeddings of both streams in 2-D: colour is the label, the marker the method."""
    clips, vectors = clip_embeddings(embed, table)
    methods = sorted(clips["method"].unique())
    marker_of = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    figure = Figure(figsize=(11, 4.8), dpi=100, layout="constrained")
    for axes, stream in zip(figure.subplots(1, 2), ("rgb", "depth"), strict=True):
        points, (x_name, y_name) = project_2d(vectors[stream], method, seed)
        for (label, name), group in clips.groupby(["label", "method"]):
            chosen = group.index.to_numpy()
            axes.scatter(points[chosen, 0], points[chosen, 1], c=LABEL_COLOURS.get(label, "grey"),
                         marker=marker_of[name], s=28, alpha=0.75, edgecolors="none")
        axes.set_title(f"{stream} stream ({vectors[stream].shape[1]}-d, {len(clips)} clips)")
        axes.set(xlabel=x_name, ylabel=y_name)
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=label)
               for label, colour in LABEL_COLOURS.items()]
    handles += [Line2D([], [], color="black", marker=marker_of[m], linestyle="", label=m) for m in methods]
    figure.legend(handles=handles, loc="outside right center", fontsize="small")
    return figure


# Scores and videos ------------------------------------------------------------------------------------
def score_strip(scores: pd.DataFrame, threshold: float, seed: int = 0) -> Figure:
    """Each video's P(fake) per method (one row each), coloured by its true label; the dashed line is the
    decision threshold. Columns needed: `method`, `label`, `probability`."""
    methods = sorted(scores["method"].unique(), key=lambda m: (scores.loc[scores["method"] == m, "label"]
                                                               .iloc[0] != "real", m))
    jitter = np.random.default_rng(seed).uniform(-0.18, 0.18, len(scores))
    figure = Figure(figsize=(7, 0.5 * len(methods) + 1.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    row_of = {m: i for i, m in enumerate(methods)}
    rows = scores["method"].map(row_of).to_numpy() + jitter
    axes.scatter(scores["probability"], rows, c=[LABEL_COLOURS.get(x, "grey") for x in scores["label"]],
                 s=30, alpha=0.8, edgecolors="none")
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    axes.set(yticks=range(len(methods)), yticklabels=methods, xlim=(-0.02, 1.02), xlabel="P(fake) per video",
             title="Scores by method")
    axes.invert_yaxis()
    axes.legend(loc="lower right", fontsize="small")
    return figure


def video_frames(path: str | os.PathLike, count: int = 4, title: str | None = None) -> Figure:
    """`count` frames spread over a video (or the image itself), side by side."""
    if is_image(path):
        indices, frames = [0], read_image(path)[None]
    else:
        indices, frames = read_frames(path, _spread(probe(path).frame_count, count).tolist())
    figure = Figure(figsize=(3.2 * len(frames), 3.0), dpi=100, layout="constrained")
    for axes, index, frame in zip(np.atleast_1d(figure.subplots(1, len(frames))), indices, frames,
                                  strict=True):
        axes.imshow(frame)
        axes.set_title(f"frame {index}", fontsize=8)
        axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# Predictions ------------------------------------------------------------------------------------------
def face_scores(prediction: Prediction) -> pd.DataFrame:
    """One row per scored face of a prediction, highest P(fake) first: its verdict at the run's threshold,
    whether it decided the video's verdict, its windows and the frames they span."""
    rows = [{"face": face.track, "probability": face.probability,
             "verdict": "fake" if face.probability >= prediction.threshold else "real",
             "decides": face.track == prediction.face, "windows": len(face.windows),
             "frames_used": face.frames_used, "first_frame": face.frame_index[0],
             "last_frame": face.frame_index[-1]}
            for face in prediction.faces]
    columns = ["face", "probability", "verdict", "decides", "windows", "frames_used", "first_frame",
               "last_frame"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("probability", ascending=False, ignore_index=True)


def timing_table(prediction: Prediction) -> pd.DataFrame:
    """Seconds spent in each step of one prediction (decoding and face search, depth, embedding,
    classification) and each step's share of the total."""
    total = prediction.timings.get("total")
    rows = [{"step": step, "seconds": seconds, "share": seconds / total if total else None}
            for step, seconds in prediction.timings.items()]
    return pd.DataFrame(rows, columns=["step", "seconds", "share"])


PREDICTION_COLUMNS = ["path", "status", "verdict", "fake_probability", "face", "faces", "frames_used",
                      "seconds", "error"]


def prediction_table(predictions: Iterable[Prediction]) -> pd.DataFrame:
    """One row per scored input: verdict, P(fake), the deciding face, or the reason it failed."""
    rows = [{"path": p.path, "status": p.status, "verdict": p.verdict,
             "fake_probability": p.fake_probability, "face": p.face, "faces": len(p.faces),
             "frames_used": p.frames_used, "seconds": p.timings.get("total"), "error": p.error}
            for p in predictions]
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS).astype({"face": "Int64"})  # None stays missing
