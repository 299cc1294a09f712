"""Turn a still photo into a short video: a smooth virtual camera (zoom, pan, slight roll), sensor noise."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CameraMotion:
    zoom: float  # final zoom factor (>1 zooms in)
    pan: tuple[float, float]  # total drift as a fraction of the window side
    roll_degrees: float  # amplitude of a slow roll
    roll_phase: float
    noise_sigma: float  # grey levels of Gaussian sensor noise

    @classmethod
    def random(cls, rng: np.random.Generator) -> CameraMotion:
        angle = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(0.03, 0.07)
        return cls(zoom=float(rng.uniform(1.04, 1.14)),
                   pan=(float(drift * np.cos(angle)), float(drift * np.sin(angle))),
                   roll_degrees=float(rng.uniform(1.0, 2.5)), roll_phase=float(rng.uniform(0, 2 * np.pi)),
                   noise_sigma=float(rng.uniform(1.0, 2.5)))


def _ease(t: float) -> float:
    return t * t * (3 - 2 * t)  # smoothstep: starts and ends without a jolt


def animate_still(image: np.ndarray, center: tuple[float, float], side: float, size: int, n_frames: int,
                  motion: CameraMotion, rng: np.random.Generator) -> np.ndarray:
    """Frames [n, size, size, 3] filming a square window (`center`, `side` in image pixels) with `motion`."""
    # Pre-shrink so the warp never minifies by more than ~1.3x (warpAffine has no area filter).
    scale = min(1.0, 1.3 * size / side)
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cx, cy, side = center[0] * scale, center[1] * scale, side * scale
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for index in range(n_frames):
        t = _ease(index / max(1, n_frames - 1))
        zoom = 1 + (motion.zoom - 1) * t
        roll = motion.roll_degrees * np.sin(2 * np.pi * index / max(1, n_frames - 1) + motion.roll_phase)
        x = cx + (t - 0.5) * motion.pan[0] * side
        y = cy + (t - 0.5) * motion.pan[1] * side
        # Map the window (rotated by `roll`, shrunk by `zoom`) onto the output square.
        matrix = cv2.getRotationMatrix2D((x, y), roll, zoom * size / side)
        matrix[:, 2] += (size / 2 - x, size / 2 - y)
        frame = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        noise = rng.normal(0, motion.noise_sigma, frame.shape)
        frames[index] = np.clip(frame + noise, 0, 255).astype(np.uint8)
    return frames
