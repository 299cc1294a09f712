"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made online from one REAL face crop.

A "source" copy of the crop is jittered in colour and sharpness (source-target generator) and slightly
shifted and rescaled (source-target augmentation), then blended back into the untouched crop inside a
soft, randomly deformed landmark-hull mask. The fake carries only generic blending artefacts (a boundary,
colour and resolution mismatch), which a classifier trained on it must learn to see. `augment` is the
real-world degradation applied equally to reals and fakes while fine-tuning.

All images are RGB uint8; landmarks are dlib's 68 points (x, y) in crop pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.cache import atomic_path
from ..datasets.mini.contact_sheet import CELL, HEADER, ROW_LABEL, _text, sheet_size
from ..preprocessing.landmarks import BROWS, JAW, N_LANDMARKS, OUTER_FACE
from ..preprocessing.video import h264_roundtrip

log = logging.getLogger(__name__)

CHIN = 8  # dlib index of the chin tip
SHEET_COLUMNS = ("real", "self-blended", "mask", "|fake - real| x4")
DIFF_GAIN = 4  # the difference column is amplified so a subtle blend is visible


@dataclass(frozen=True)
class SBIConfig:
    """Defaults follow the paper and its official code unless noted. Probabilities are per op."""

    # Mask
    forehead_p: float = 0.5  # chance the hull is extended over the forehead (the paper's 81-point hull)
    forehead_lift: float = 0.25  # brow lift as a fraction of the chin-to-brow height (see forehead_hull)
    hull_scale: tuple[float, float] = (0.9, 1.05)  # per-axis resize of the hull around its centre
    hull_jitter: float = 0.02  # per-vertex Gaussian shift, fraction of the face size (a cheap elastic)
    erode_dilate: tuple[float, float] = (-0.08, 0.03)  # kernel radius / face size; < 0 erodes, > 0 dilates
    blur_kernel: tuple[float, float] = (0.02, 0.1)  # Gaussian kernel / crop side (paper: 5-25 px at 256)
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # paper; 1 repeated to favour it
    # Source-target generator: jitter of the source only, so the fake equals the real outside the mask
    rgb_shift_p: float = 0.3
    rgb_shift: float = 20.0  # grey levels, per channel
    hsv_p: float = 0.3
    hue_shift: float = 10.0  # degrees (the paper's albumentations limit is a near no-op on uint8)
    sat_val_scale: float = 0.2  # saturation and value multiplied by 1 +- this
    brightness_contrast_p: float = 1.0
    brightness: float = 0.1  # +- fraction of 255
    contrast: float = 0.1  # +- fraction, around the image mean
    sharpen_blur_p: float = 0.5  # then sharpen or blur, equally likely
    sharpen_amount: tuple[float, float] = (0.2, 1.0)  # unsharp-mask gain
    blur_sigma: tuple[float, float] = (0.5, 1.2)  # px
    downscale_p: float = 0.5
    downscale: tuple[float, float] = (0.25, 0.5)  # paper: 2x or 4x down, then back up
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (60, 95)
    # Source-target augmentation (paper: Affine translate x 3 %, y 1.5 %, scale 0.95 .. 1/0.95)
    shift: tuple[float, float] = (0.03, 0.015)  # most |dx|, |dy| as a fraction of the crop side
    scale: tuple[float, float] = (0.95, 1 / 0.95)


@dataclass(frozen=True)
class AugmentConfig:
    """Real-world degradations for training, each with its own probability; JPEG comes last, as online."""

    flip_p: float = 0.5
    colour_p: float = 0.3
    brightness: float = 0.1  # +- fraction of 255
    contrast: float = 0.1  # +- fraction
    saturation: float = 0.1  # +- fraction
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    downscale_p: float = 0.2
    downscale: tuple[float, float] = (0.35, 1.0)
    noise_p: float = 0.1
    noise_sigma: tuple[float, float] = (2.0, 8.0)  # grey levels
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    h264_p: float = 0.3  # video compression (one intra frame); JPEG (jpeg_p) is drawn only when it is not
    h264_qp: tuple[int, int] = (18, 40)  # x264 quantiser; FF++'s c23 and c40 are crf 23 and 40


# Landmarks and mask -----------------------------------------------------------------------------------
def _checked_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks as float32 [68, 2], or a ValueError saying why they cannot outline a face."""
    points = np.asarray(landmarks, np.float32)
    if points.shape != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [{N_LANDMARKS}, 2], got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or inf (no face fitted?)")
    if not points.any():
        raise ValueError("landmarks are all zero (no face fitted)")
    outline = points[OUTER_FACE]
    size = float(np.ptp(outline, axis=0).max())
    area = cv2.contourArea(cv2.convexHull(outline))
    if size < 8 or area < 0.1 * size**2:  # a face outline covers ~0.6 size^2; less is collapsed points
        raise ValueError(f"landmarks are degenerate: face outline {size:.1f} px across, area {area:.1f} px^2")
    return points


def forehead_hull(landmarks: np.ndarray, lift: float = SBIConfig.forehead_lift) -> np.ndarray:
    """The face outline (jaw 0-16, then brows 26-17) with the brows raised over the forehead; [27, 2].

    "Up" is the chin-to-brow-centre axis and h that distance. Each brow point moves up by
    lift * h * (1 - t^2 / 2), t running from -1 to 1 along the brows: the middle of the forehead rises by
    lift * h, the temples by half of that, following the rounded hairline. lift = 0 gives the plain outline.
    """
    points = _checked_landmarks(landmarks)
    up = points[BROWS].mean(0) - points[CHIN]
    height = float(np.linalg.norm(up))
    t = np.linspace(-1.0, 1.0, len(BROWS))
    raised = points[BROWS] + (up / height) * (lift * height * (1 - t**2 / 2))[:, None]
    return np.concatenate([points[JAW], raised[::-1]]).astype(np.float32)


def blend_mask(shape: tuple[int, ...], landmarks: np.ndarray, rng: np.random.Generator,
               config: SBIConfig | None = None) -> np.ndarray:
    """Soft blending mask float32 [H, W]: the (forehead-extended or plain) hull, resized per axis and
    jittered, eroded or dilated, Gaussian-blurred, then scaled so its maximum is a drawn blend ratio."""
    config = config or SBIConfig()
    height, width = shape[:2]
    lift = config.forehead_lift if rng.random() < config.forehead_p else 0.0
    hull = cv2.convexHull(forehead_hull(landmarks, lift)).reshape(-1, 2).astype(np.float64)
    size = float(np.ptp(hull, axis=0).max())
    centre = hull.mean(0)
    hull = centre + (hull - centre) * rng.uniform(*config.hull_scale, size=2)
    hull += rng.normal(0.0, config.hull_jitter * size, hull.shape)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(hull).astype(np.int32)], 1)  # fillPoly: the jitter may break convexity
    radius = round(rng.uniform(*config.erode_dilate) * size)
    if radius:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1,) * 2)
        mask = (cv2.dilate if radius > 0 else cv2.erode)(mask, kernel)
    kernel_side = 2 * round(rng.uniform(*config.blur_kernel) * max(height, width) / 2) + 1  # odd
    soft = cv2.GaussianBlur(mask.astype(np.float32), (kernel_side, kernel_side), 0)
    peak = soft.max()
    if peak <= 0:
        raise ValueError("landmarks outline no face inside the crop (empty blending mask)")
    return soft / peak * np.float32(rng.choice(config.blend_ratios))


# Image operations on float32 [0, 255] RGB -------------------------------------------------------------
def _brightness_contrast(image: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    return (image - image.mean()) * (1 + contrast) + image.mean() + 255 * brightness


def _downscale(image: np.ndarray, factor: float) -> np.ndarray:
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor(_to_uint8(image), cv2.COLOR_RGB2BGR)  # the encoder expects BGR for its YCbCr
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _checked_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")


# Self-blending ----------------------------------------------------------------------------------------
def _source(crop: np.ndarray, rng: np.random.Generator, config: SBIConfig) -> np.ndarray:
    """The crop with the source-target generator's colour and quality jitter, then a small affine."""
    image = crop.astype(np.float32)
    if rng.random() < config.rgb_shift_p:
        image = image + rng.uniform(-config.rgb_shift, config.rgb_shift, 3).astype(np.float32)
    if rng.random() < config.hsv_p:
        hsv = cv2.cvtColor(np.clip(image, 0, 255) / 255, cv2.COLOR_RGB2HSV)  # float: H in degrees
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-config.hue_shift, config.hue_shift)) % 360
        hsv[..., 1:] *= (1 + rng.uniform(-config.sat_val_scale, config.sat_val_scale, 2)).astype(np.float32)
        image = cv2.cvtColor(np.clip(hsv, 0, [360, 1, 1]).astype(np.float32), cv2.COLOR_HSV2RGB) * 255
    if rng.random() < config.brightness_contrast_p:
        image = _brightness_contrast(image, rng.uniform(-config.brightness, config.brightness),
                                     rng.uniform(-config.contrast, config.contrast))
    if rng.random() < config.sharpen_blur_p:
        if rng.random() < 0.5:
            detail = image - cv2.GaussianBlur(image, (0, 0), 1.0)
            image = image + rng.uniform(*config.sharpen_amount) * detail
        else:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.blur_sigma))
    if rng.random() < config.downscale_p:
        image = _downscale(image, rng.uniform(*config.downscale))
    if rng.random() < config.jpeg_p:
        image = _jpeg(image, rng.integers(config.jpeg_quality[0], config.jpeg_quality[1], endpoint=True))
    side = max(crop.shape[:2])
    scale = rng.uniform(*config.scale)
    shift = rng.uniform(-1, 1, 2) * np.array(config.shift) * side
    centre = np.array(crop.shape[1::-1], np.float64) / 2
    matrix = np.hstack([np.eye(2) * scale, ((1 - scale) * centre + shift)[:, None]])
    return cv2.warpAffine(image, matrix, crop.shape[1::-1], flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT101)


def self_blend(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               config: SBIConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake uint8 [S, S, 3] of a real crop and its mask float32 [S, S]:
    fake = mask * source + (1 - mask) * crop, so pixels where mask == 0 keep the crop's exact values.
    Raises ValueError for missing or degenerate landmarks (the caller skips that crop)."""
    config = config or SBIConfig()
    _checked_image(crop)
    mask = blend_mask(crop.shape, landmarks, rng, config)
    return blend(crop, mask, rng, config), mask


def blend(crop: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: SBIConfig | None = None
          ) -> np.ndarray:
    """uint8 [S, S, 3]: the crop blended, inside the soft `mask` float [S, S] in [0, 1], with a copy of
    itself jittered by the source-target generator (colour, quality, a small affine)."""
    config = config or SBIConfig()
    _checked_image(crop)
    alpha = mask[..., None]
    return _to_uint8(alpha * _source(crop, rng, config) + (1 - alpha) * crop.astype(np.float32))


# Real-world augmentation ------------------------------------------------------------------------------
def augment(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None) -> np.ndarray:
    """`image` (uint8 [H, W, 3]) flipped, colour-jittered, blurred, rescaled, noised, each with its own
    probability, then recompressed once: as H.264 with probability h264_p, else as JPEG with jpeg_p (so
    JPEG overall (1 - h264_p) x jpeg_p); uint8 of the same shape."""
    config = config or AugmentConfig()
    _checked_image(image)
    out = image.astype(np.float32)
    if rng.random() < config.flip_p:
        out = np.ascontiguousarray(out[:, ::-1])
    if rng.random() < config.colour_p:
        out = _brightness_contrast(out, rng.uniform(-config.brightness, config.brightness),
                                   rng.uniform(-config.contrast, config.contrast))
        grey = out.mean(2, keepdims=True)
        out = grey + (out - grey) * (1 + rng.uniform(-config.saturation, config.saturation))
    if rng.random() < config.blur_p:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*config.blur_sigma))
    if rng.random() < config.downscale_p:
        out = _downscale(out, rng.uniform(*config.downscale))
    if rng.random() < config.noise_p:
        out = out + rng.normal(0.0, rng.uniform(*config.noise_sigma), out.shape).astype(np.float32)
    if rng.random() < config.h264_p:
        qp = rng.integers(config.h264_qp[0], config.h264_qp[1], endpoint=True)
        out = h264_roundtrip(_to_uint8(out), qp).astype(np.float32)
    elif rng.random() < config.jpeg_p:
        out = _jpeg(out, rng.integers(config.jpeg_quality[0], config.jpeg_quality[1], endpoint=True))
    return _to_uint8(out)


# Contact sheet ----------------------------------------------------------------------------------------
def contact_sheet(crops: Sequence[np.ndarray], landmarks: Sequence[np.ndarray], out_path: str | Path,
                  rng: np.random.Generator, config: SBIConfig | None = None, n: int = 8) -> Path:
    """A PNG grid for a person to judge the fakes: per crop (the first `n` with usable landmarks) the real
    crop, its self-blended fake, the mask in grey and |fake - real| x 4. Same layout as the mini sheets."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for index, (crop, points) in enumerate(zip(crops, landmarks, strict=True)):
        if len(rows) == n:
            break
        try:
            fake, mask = self_blend(crop, points, rng, config)
        except ValueError as error:
            log.warning("contact sheet: crop %d skipped: %s", index, error)
            continue
        grey = np.repeat(_to_uint8(mask * 255)[..., None], 3, axis=2)
        diff = _to_uint8(np.abs(fake.astype(np.float32) - crop) * DIFF_GAIN)
        rows.append((f"crop {index}\nblend {mask.max():.2f}", [crop, fake, grey, diff]))
    if not rows:
        raise ValueError("contact sheet: no crop with usable landmarks")
    height, width = sheet_size(len(rows), len(SHEET_COLUMNS))
    sheet = np.full((height, width, 3), 32, np.uint8)
    for column, title in enumerate(SHEET_COLUMNS):
        _text(sheet, title, (ROW_LABEL + column * CELL + 6, HEADER - 9), 0.5)
    for row_index, (label, cells) in enumerate(rows):
        top = HEADER + row_index * CELL
        for line, part in enumerate(label.split("\n")):
            _text(sheet, part, (6, top + 22 + 18 * line))
        for column, cell in enumerate(cells):
            left = ROW_LABEL + column * CELL
            sheet[top:top + CELL, left:left + CELL] = cv2.resize(cell, (CELL, CELL),
                                                                 interpolation=cv2.INTER_AREA)
    path = Path(out_path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the SBI contact sheet")
    return path
