"""The manipulation families, applied frame by frame with the landmarks tracked in every frame.

- FaceSwap: the source person's face, warped triangle by triangle (Delaunay over 68 landmarks) onto the
  target's landmarks (so the target keeps its face shape), colour-matched (Reinhard, LAB), Poisson-blended
  and feathered inside a convex hull shrunk inside the target's jaw line.
- MouthReenact: the same warp, but only the mouth region is replaced, so the target speaks with the
  source's mouth (a NeuralTextures-like expression manipulation).
- SelfBlend: the target's own face, colour/sharpness-jittered and slightly rescaled and shifted, blended
  back inside a landmark mask (Self-Blended Images).
Each returns the fake frames and the per-frame box of the changed region.

- VoiceSwap (an audio-visual family, `AUDIO_METHODS`): the target's frames untouched, with the source
  clip's audio track: a real video, someone else's voice. Its changed box is empty.

A fake keeps its target's audio track, except VoiceSwap's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ...preprocessing.landmarks import MOUTH, OUTER_FACE


def delaunay_triangles(points: np.ndarray) -> np.ndarray:
    """Triangles [T, 3] as landmark indices, from a Delaunay triangulation of `points` [68, 2]."""
    x0, y0 = points.min(0) - 10
    x1, y1 = points.max(0) + 10
    subdiv = cv2.Subdiv2D((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    for x, y in points:
        subdiv.insert((float(x), float(y)))
    triangles = []
    for triangle in subdiv.getTriangleList().reshape(-1, 3, 2):
        distances = np.linalg.norm(points[None] - triangle[:, None], axis=-1)
        if distances.min(1).max() < 1.0:  # drop triangles touching Subdiv2D's outer virtual vertices
            triangles.append(distances.argmin(1))
    return np.array(triangles, np.int32)


def warp_face(source: np.ndarray, source_points: np.ndarray, target_points: np.ndarray,
              triangles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Piecewise-affine warp of `source` so its landmarks land on `target_points`; float32 [H, W, 3]."""
    out = np.zeros((*shape, 3), np.float32)
    height, width = shape
    for triangle in triangles:
        src, dst = source_points[triangle], target_points[triangle]
        x, y, w, h = cv2.boundingRect(dst.astype(np.float32))
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            continue
        matrix = cv2.getAffineTransform(src.astype(np.float32), (dst - (x0, y0)).astype(np.float32))
        patch = cv2.warpAffine(source, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round(dst - (x0, y0)).astype(np.int32), 1, lineType=cv2.LINE_8)
        region = out[y0:y1, x0:x1]
        region[mask > 0] = patch[mask > 0]
    return out


def reinhard_transfer(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match `image`'s LAB mean and spread inside `mask` to `reference`'s (Reinhard et al. 2001)."""
    inside = mask > 0.5 * mask.max()
    lab = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean, std = lab[inside].mean(0), lab[inside].std(0) + 1e-3
    ref_mean, ref_std = ref[inside].mean(0), ref[inside].std(0) + 1e-3
    # The spread may shrink freely (a greyscale target takes a greyscale face) but at most doubles.
    lab = (lab - mean) * np.minimum(ref_std / std, 2.0) + ref_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)


def hull_mask(shape: tuple[int, int], points: np.ndarray, grow: float = 1.0, feather: float = 0.08
              ) -> np.ndarray:
    """A soft mask [H, W] (float32, 0..1) of the convex hull of `points`, scaled by `grow` about its centre
    and feathered by `feather` x the hull size (square root of its area)."""
    center = points.mean(0)
    hull = cv2.convexHull(((points - center) * grow + center).astype(np.float32))
    mask = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1.0, lineType=cv2.LINE_AA)
    sigma = max(1.0, feather * float(np.sqrt(cv2.contourArea(hull))))
    # Erode by about one sigma first so the feathered edge stays inside the hull.
    kernel = np.ones((2 * int(sigma) + 1,) * 2, np.uint8)
    mask = cv2.erode(mask, kernel)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _blend(target: np.ndarray, fake: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = fake * mask[..., None] + target.astype(np.float32) * (1 - mask[..., None])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask > 0.05)
    if not len(xs):
        return np.zeros(4, np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _face_region(points: np.ndarray, shape: tuple[int, ...], margin: float = 0.35,
                 ) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the face's landmark box grown by `margin` x its size: all the work happens there."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    pad = margin * max(x1 - x0, y1 - y0)
    return (int(max(0, x0 - pad)), int(max(0, y0 - pad)),
            int(min(shape[1], x1 + pad + 1)), int(min(shape[0], y1 + pad + 1)))


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [N, H, W, 3], raw
    landmarks: np.ndarray  # float32 [N, 68, 2]


def poisson_blend(crop: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Seamless (Poisson) cloning of `warped` into `crop` inside the mask's core, so the swapped face takes
    the target's lighting at its boundary instead of showing a colour seam; float32 [H, W, 3]."""
    core = (mask > 0.5).astype(np.uint8) * 255
    ys, xs = np.nonzero(core)
    if len(xs) < 16 or xs.min() == 0 or ys.min() == 0 or xs.max() >= crop.shape[1] - 1 \
            or ys.max() >= crop.shape[0] - 1:
        return warped  # touching the crop border: OpenCV's solver needs a margin, keep the plain warp
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    source = np.clip(warped + 0.5, 0, 255).astype(np.uint8)
    return cv2.seamlessClone(source, crop, core, centre, cv2.NORMAL_CLONE).astype(np.float32)


def _transplant(target: Clip, source: Clip, region: np.ndarray, grow: float, feather: float,
                seamless: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Warp the source face onto the target in every frame and blend it inside the hull of `region`."""
    triangles = delaunay_triangles(target.landmarks.mean(0))
    frames, boxes = target.frames.copy(), np.zeros((len(target.frames), 4), np.float32)
    for index, (frame, points) in enumerate(zip(frames, target.landmarks, strict=True)):
        x0, y0, x1, y1 = _face_region(points, frame.shape)
        crop, local = frame[y0:y1, x0:x1], points - (x0, y0)
        src_index = min(index, len(source.frames) - 1)
        warped = warp_face(source.frames[src_index], source.landmarks[src_index], local, triangles,
                           crop.shape[:2])
        mask = hull_mask(crop.shape[:2], local[region], grow, feather)
        warped = reinhard_transfer(warped, crop, mask)
        if seamless:
            warped = poisson_blend(crop, warped, mask)
        frame[y0:y1, x0:x1] = _blend(crop, warped, mask)
        boxes[index] = _mask_box(mask) + (x0, y0, x0, y0)
    return frames, boxes


def face_swap(target: Clip, source: Clip, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inside a hull shrunk towards the centre, so the target keeps its own jaw line and face shape, with
    Poisson blending at the seam."""
    return _transplant(target, source, OUTER_FACE, grow=0.9, feather=0.06, seamless=True)


def mouth_reenact(target: Clip, source: Clip, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _transplant(target, source, MOUTH, grow=1.6, feather=0.12)


def self_blend(target: Clip, source: Clip, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SBI: one set of jitter parameters per video, so the blended face is temporally consistent."""
    brightness = rng.choice([-1, 1]) * rng.uniform(10, 22)
    contrast = rng.uniform(0.85, 1.15)
    saturation = rng.uniform(0.7, 1.3)
    sharpen = rng.random() < 0.5  # else blur
    scale = rng.uniform(1.03, 1.07)
    shift = rng.uniform(-0.03, 0.03, size=2)
    grow = rng.uniform(0.9, 1.05)
    frames, boxes = target.frames.copy(), np.zeros((len(target.frames), 4), np.float32)
    for index, (frame, points) in enumerate(zip(frames, target.landmarks, strict=True)):
        x0, y0, x1, y1 = _face_region(points, frame.shape)
        crop, face = frame[y0:y1, x0:x1], points[OUTER_FACE] - (x0, y0)
        hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        image = (image - 128) * contrast + 128 + brightness
        blurred = cv2.GaussianBlur(image, (0, 0), 1.2)
        image = image + 1.0 * (image - blurred) if sharpen else blurred
        size = float(np.ptp(face, axis=0).max())
        matrix = cv2.getRotationMatrix2D(tuple(face.mean(0).tolist()), 0.0, scale)
        matrix[:, 2] += shift * size
        image = cv2.warpAffine(image, matrix, crop.shape[1::-1], flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        mask = hull_mask(crop.shape[:2], face, grow, feather=0.06)
        frame[y0:y1, x0:x1] = _blend(crop, image, mask)
        boxes[index] = _mask_box(mask) + (x0, y0, x0, y0)
    return frames, boxes


Manipulation = Callable[[Clip, Clip, np.random.Generator], tuple[np.ndarray, np.ndarray]]

# Method folder name -> manipulation; SelfBlend ignores its source (its fakes are named <id>_<id>).
METHODS: dict[str, Manipulation] = {
    "FaceSwap": face_swap,
    "MouthReenact": mouth_reenact,
    "SelfBlend": self_blend,
}
SELF_METHODS = {"SelfBlend"}
# Families that change the sound, not the pixels: the fake is made of the target's frames and the source's
# audio track (`build.py`).
AUDIO_METHODS = ("VoiceSwap",)
