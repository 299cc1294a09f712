"""68-point landmark tracking through every frame of a clip, with the faces stage's detector and landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...preprocessing.faces import dlib_boxes
from ...preprocessing.landmarks import fit_landmarks

TRACK_FACE_PX = 100  # faces are searched at about this size: HOG finds faces from ~80 px without upsampling


class FaceNotFound(RuntimeError):
    """No face (or too few frames with a face) where one was expected."""


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    @property
    def size(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def detect_faces(image: np.ndarray, upsample: int, max_side: int = 1000) -> list[Detection]:
    """The faces stage's dlib HOG detector at one upsampling, run on a copy shrunk to `max_side`."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes, scores = dlib_boxes(image, upsample)
    return [Detection(tuple(float(v) / scale for v in box), float(score))
            for box, score in zip(boxes, scores, strict=True)]


class FaceTracker:
    """Landmarks for every frame: detect near the previous face, fit 68 points, fill short gaps."""

    def _detect_near(self, frame: np.ndarray, previous: Detection | None) -> Detection | None:
        if previous is not None:
            # Search a window twice the face size around the last position, scaled so the face is ~100 px.
            cx, cy = previous.center
            half = previous.size
            x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
            x1, y1 = int(min(frame.shape[1], cx + half)), int(min(frame.shape[0], cy + half))
            scale = TRACK_FACE_PX / previous.size
            window = cv2.resize(frame[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
                                if scale < 1 else cv2.INTER_LINEAR)
            rects = detect_faces(window, upsample=0)
            if rects:
                anchor = np.array([cx - x0, cy - y0]) * scale
                box = min(rects, key=lambda d: np.linalg.norm(d.center - anchor))
                x, y, u, v = (np.array(box.box) / scale) + (x0, y0, x0, y0)
                return Detection((x, y, u, v), box.score)
        found = detect_faces(frame, upsample=1)
        if not found:
            return None
        anchor = previous.center if previous is not None else np.array(frame.shape[1::-1]) / 2
        return min(found, key=lambda d: np.linalg.norm(d.center - anchor))

    def landmarks(self, frame: np.ndarray, detection: Detection) -> np.ndarray:
        return fit_landmarks(frame, detection.box)

    def track(self, frames: np.ndarray, max_missing: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks [N, 68, 2] (float32, temporally smoothed) and `detected` [N] for frames [N, H, W, 3]."""
        points = np.zeros((len(frames), 68, 2), np.float32)
        detected = np.zeros(len(frames), bool)
        previous: Detection | None = None
        for index, frame in enumerate(frames):
            detection = self._detect_near(frame, previous)
            if detection is None:
                continue
            points[index] = self.landmarks(frame, detection)
            detected[index] = True
            previous = detection
        missing = 1 - detected.mean()
        if missing > max_missing:
            raise FaceNotFound(f"face found in only {detected.sum()} of {len(frames)} frames")
        # Fill gaps from the nearest frame with a face, then smooth out detector jitter.
        found = np.flatnonzero(detected)
        nearest = found[np.abs(np.arange(len(frames))[:, None] - found[None]).argmin(1)]
        points = points[nearest]
        padded = np.concatenate([points[:1], points, points[-1:]])
        points = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
        return points.astype(np.float32), detected


def yaw_ratio(points: np.ndarray) -> float:
    """Where the nose tip sits between the jaw ends, averaged over frames [N, 68, 2]: ~0.5 for a frontal
    face, towards 0 or 1 as the head turns."""
    left, right, nose = points[:, 0, 0], points[:, 16, 0], points[:, 30, 0]
    return float(np.mean((nose - left) / np.maximum(right - left, 1e-3)))


def landmark_box(points: np.ndarray) -> np.ndarray:
    """x0, y0, x1, y1 around a [68, 2] landmark set (or [N, 68, 2] -> [N, 4])."""
    return np.concatenate([points.min(-2), points.max(-2)], -1)
