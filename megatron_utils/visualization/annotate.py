"""Pictures of a `Prediction`: the per-frame probability timeline (PNG) and the video (H.264 MP4) or image
with every scored face boxed and its running score written beside it.

Faces are boxed red when their score is at or above the decision threshold ("fake"), green below it; the
face that decided the verdict is drawn thicker. Between sampled frames, boxes and scores are interpolated
linearly; a face is drawn from its first to its last scored frame. Given an explanation's heat maps
(`heatmaps.npz` of `predict --explain`), the explained face is overlaid with the Grad-CAM map of the nearest
sampled frame, in its crop window interpolated like the boxes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from ..inference.results import FaceScore, Prediction
from ..preprocessing.frames import Media, normalized
from ..preprocessing.video import iter_frames, read_image, write_mp4

FAKE_COLOUR = (220, 40, 40)  # RGB
REAL_COLOUR = (40, 190, 70)
UNCERTAIN_COLOUR = (230, 150, 20)
VERDICT_COLOURS = {"fake": FAKE_COLOUR, "uncertain": UNCERTAIN_COLOUR, "real": REAL_COLOUR}
HEAT_ALPHA = 0.45  # weight of the heat colours over the image where the map is 1


def _require_ok(prediction: Prediction) -> None:
    if not prediction.ok:
        raise ValueError(f"{prediction.path} was not scored: {prediction.error}")


def plot_timeline(prediction: Prediction, path: str | os.PathLike) -> Path:
    """PNG: each face's per-frame probability, its windows (bars over the frames they span) and the
    decision threshold."""
    _require_ok(prediction)
    figure = Figure(figsize=(8, 3.6), dpi=100)
    axes = figure.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    for number, face in enumerate(prediction.faces):
        colour = colours[number % len(colours)]
        decided = face.track == prediction.face
        axes.plot(face.frame_index, face.timeline, marker="o", markersize=3, color=colour,
                  linewidth=2.2 if decided else 1.2,
                  label=f"face {face.track}: {face.probability:.3f}" + (" (decides)" if decided else ""))
        for window in face.windows:
            axes.hlines(window.probability, window.first_frame, window.last_frame, colors=colour, alpha=0.35,
                        linewidth=5)
    axes.axhline(prediction.threshold, color="grey", linestyle="--", linewidth=1,
                 label=f"threshold {prediction.threshold:.3f}")
    last_frame = max(prediction.frame_count - 1, 1)
    axes.set(xlim=(0, last_frame), ylim=(-0.02, 1.02), xlabel="frame", ylabel="P(fake)",
             title=f"{Path(prediction.path).name}: {prediction.verdict} ({prediction.fake_probability:.3f})")
    if prediction.fps:
        seconds = axes.secondary_xaxis("top", functions=(lambda f: f / prediction.fps,
                                                         lambda s: s * prediction.fps))
        seconds.set_xlabel("seconds")
    axes.legend(loc="best", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return path


def _face_at(face: FaceScore, frame: int) -> tuple[np.ndarray, float] | None:
    """The face's box and score at `frame`, interpolated between its sampled frames; None outside them."""
    frames = face.frame_index
    if not frames or frame < frames[0] or frame > frames[-1]:
        return None
    boxes = np.asarray(face.boxes)
    box = np.array([np.interp(frame, frames, boxes[:, k]) for k in range(4)])
    return box, float(np.interp(frame, frames, face.timeline))


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """uint8 RGB: the image under a heat map in [0, 1] (resized to it) in the JET colours (blue: little,
    red: the most); weak evidence stays see-through."""
    heat = np.clip(np.asarray(heat, np.float32), 0, 1)
    if heat.shape != image.shape[:2]:
        heat = cv2.resize(heat, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(heat * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = alpha * np.sqrt(heat)[..., None]
    return np.uint8(np.round(image * (1 - weight) + colours * weight))


def load_heatmaps(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An explanation's `heatmaps.npz`: frame_index [N], heatmaps float [N, S, S] in [0, 1] and windows
    [N, 3] (left, top, side of each crop in its frame)."""
    with np.load(path) as data:
        return {name: data[name] for name in ("frame_index", "heatmaps", "windows")}


def overlay_heatmap(image: np.ndarray, heatmaps: dict[str, np.ndarray], frame: int) -> np.ndarray:
    """`image` with the heat map of the sampled frame nearest `frame` in the interpolated crop window;
    unchanged outside the explained frames' span."""
    frames = heatmaps["frame_index"]
    if not len(frames) or frame < frames[0] or frame > frames[-1]:
        return image
    left, top, side = (int(round(np.interp(frame, frames, heatmaps["windows"][:, k]))) for k in range(3))
    heat = cv2.resize(heatmaps["heatmaps"][np.abs(frames - frame).argmin()].astype(np.float32), (side, side),
                      interpolation=cv2.INTER_LINEAR)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, image.shape[1]), min(top + side, image.shape[0])
    if x1 > x0 and y1 > y0:
        image[y0:y1, x0:x1] = heat_overlay(image[y0:y1, x0:x1], heat[y0 - top:y1 - top, x0 - left:x1 - left])
    return image


def draw_faces(image: np.ndarray, prediction: Prediction, frame: int,
               heatmaps: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A copy of `image` (RGB) with the faces present at `frame` and the verdict drawn on it, over the
    explained face's heat map when `heatmaps` are given."""
    out = np.ascontiguousarray(image.copy())
    if heatmaps is not None:
        out = overlay_heatmap(out, heatmaps, frame)
    scale = max(out.shape[0] / 720, 0.4)
    thickness = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for face in prediction.faces:
        found = _face_at(face, frame)
        if found is None:
            continue
        box, score = found
        colour = FAKE_COLOUR if score >= prediction.threshold else REAL_COLOUR
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        width = thickness * 2 if face.track == prediction.face else thickness
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, width)
        label = f"face {face.track}: {score:.2f}"
        (text_w, text_h), base = cv2.getTextSize(label, font, 0.6 * scale, thickness)
        top = max(y0 - text_h - base - 4, 0)
        cv2.rectangle(out, (x0, top), (x0 + text_w + 4, top + text_h + base + 4), colour, -1)
        cv2.putText(out, label, (x0 + 2, top + text_h + 2), font, 0.6 * scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    header = (f"{prediction.verdict.upper()} {prediction.fake_probability:.3f} "
              f"(threshold {prediction.threshold:.3f})")
    colour = VERDICT_COLOURS[prediction.verdict]
    (text_w, text_h), base = cv2.getTextSize(header, font, 0.7 * scale, thickness)
    cv2.rectangle(out, (0, 0), (text_w + 12, text_h + base + 12), (0, 0, 0), -1)
    cv2.putText(out, header, (6, text_h + 6), font, 0.7 * scale, colour, thickness, cv2.LINE_AA)
    return out


def _scored_media(prediction: Prediction, media: Media | None) -> Media:
    """What was scored: the file `prediction.path`, or the bytes or frames the caller gives again."""
    if media is not None:
        return media
    if prediction.source != "file":
        raise ValueError(f"{prediction.path} was scored from {prediction.source}, not a file: pass the same "
                         f"{prediction.source} as `media` to annotate it")
    return prediction.path


def annotate_video(prediction: Prediction, out_path: str | os.PathLike, crf: int = 23,
                   media: Media | None = None, heatmaps: str | os.PathLike | None = None) -> Path:
    """H.264 MP4 of the whole video (every decodable frame, at its frame rate) with boxes and scores;
    `media` is the bytes or frames that were scored, when they were not a file; `heatmaps` an explanation's
    heatmaps.npz to overlay."""
    _require_ok(prediction)
    if prediction.media != "video":
        raise ValueError(f"{prediction.path} is an image; use annotate_image")
    source = normalized(_scored_media(prediction, media), prediction.path)
    heat = None if heatmaps is None else load_heatmaps(heatmaps)

    def frames() -> Iterator[np.ndarray]:
        for index, frame in enumerate(source) if isinstance(source, np.ndarray) else iter_frames(source):
            yield draw_faces(frame, prediction, index, heat)

    return write_mp4(out_path, frames(), fps=prediction.fps or 25.0, crf=crf)


def annotate_image(prediction: Prediction, out_path: str | os.PathLike, media: Media | None = None,
                   heatmaps: str | os.PathLike | None = None) -> Path:
    """The image with boxes and scores, written in the format its suffix names (e.g. .png); `media` is the
    bytes or array that were scored, when they were not a file; `heatmaps` as for `annotate_video`."""
    _require_ok(prediction)
    source = normalized(_scored_media(prediction, media), prediction.path)
    heat = None if heatmaps is None else load_heatmaps(heatmaps)
    image = source[0] if isinstance(source, np.ndarray) else read_image(source)
    image = draw_faces(image, prediction, 0, heat)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{out_path}: cannot write an image in this format")
    return out_path
