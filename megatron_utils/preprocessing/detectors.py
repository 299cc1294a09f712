"""Neural face detectors whose weights install from the registries, registered beside dlib_hog and
opencv_haar (`FaceConfig(detector="mtcnn")`):

- `mtcnn`: MTCNN (P-, R- and O-Net cascade) from facenet-pytorch, whose wheel carries the weights. Its
  pins are old, so it is installed without its dependencies (`pip install --no-deps facenet-pytorch`).
  A batch detector: it runs on `FaceConfig.device` (a GPU where there is one) and takes a video's frames
  at once, finding the faces the library finds frame by frame (`mtcnn_detect`).
- `blazeface`: MediaPipe's BlazeFace short-range model (`face_detection_short_range.tflite` from the
  mediapipe==0.10.14 wheel), run by the TFLite runtime with MediaPipe's own anchors and decoding.

Boxes are mapped onto dlib HOG's convention (as the Haar fallback's are), so a clip's crops keep one
scale whichever detector found a frame's face: the scales and shifts were measured on the real faces of
the asset photos where dlib HOG and the detector each found one face (`bench/bench_face_detectors.py
--calibrate` prints them).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..core.assets import fetch
from ..core.extras import extra_imports
from ..core.threads import per_thread
from .faces import BatchDetector, DetectFn, FaceConfig, register_batch_detector, register_detector

if TYPE_CHECKING:
    import torch

# (scale, downward shift in side units) taking each detector's boxes onto dlib HOG's
TO_HOG = {"mtcnn": (0.889, 0.041), "blazeface": (0.938, -0.066)}  # 20 faces each
MIN_SCORE = {"mtcnn": 0.9, "blazeface": 0.5}


def to_hog_convention(boxes: np.ndarray, detector: str) -> np.ndarray:
    """Square boxes [K, 4] of dlib HOG's size and centre, from the detector's own boxes."""
    scale, shift = TO_HOG[detector]
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) * scale
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + shift * side
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1).astype(np.float32)


def no_faces() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)


# MTCNN finds faces down to this side (px at detect size), as facenet-pytorch's default and our calibration
MTCNN_MIN_FACE = 20


@register_batch_detector
def mtcnn(config: FaceConfig) -> BatchDetector:
    """MTCNN (facenet-pytorch's networks and weights) on `config.device`, whole batches of frames at once
    (`mtcnn_detect`), every face above 0.9."""
    with extra_imports("mtcnn"):  # its weights ship in the wheel; its own pins are too old to follow
        from facenet_pytorch import MTCNN
    import torch  # imported here, as torch is, so that the CPU detectors' workers start without it

    from ..core.precision import resolve_device

    device = resolve_device(config.device)
    # One model for every thread (`megatron serve`): a torch module keeps no state between forward passes.
    model = MTCNN(keep_all=True, device=device, min_face_size=MTCNN_MIN_FACE).eval()

    def detect_batch(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        with torch.inference_mode():
            found = mtcnn_detect(model, torch.from_numpy(images).to(device))
        kept = [scores >= MIN_SCORE["mtcnn"] for _, scores in found]
        return [(to_hog_convention(boxes[keep], "mtcnn"), scores[keep])
                for (boxes, scores), keep in zip(found, kept, strict=True)]

    return BatchDetector(detect_batch)


def mtcnn_detect(model: Any, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """facenet-pytorch's `detect_face` on equal-size RGB uint8 images [B, H, W, 3] (on the model's device):
    boxes float32 [K, 4] and scores [K] per image, before any score threshold of ours.

    Step for step the library's three stages (P-Net over the image pyramid, R-Net, O-Net, with its own
    helpers and non-maximum suppression), except that R-Net's and O-Net's inputs are cut for all candidate
    boxes at once (`area_crops`) where the library loops over the boxes: the loop was half the CPU time of a
    32-frame batch (1,600 boxes), and on a GPU each box costs kernel launches."""
    import torch
    from facenet_pytorch.models.utils.detect_face import (
        batched_nms,
        batched_nms_numpy,
        bbreg,
        fixed_batch_process,
        generateBoundingBox,
        imresample,
        rerec,
    )

    thresholds, factor = model.thresholds, model.factor
    pixels = images.permute(0, 3, 1, 2).float()
    batch, _, height, width = pixels.shape
    integral = integral_image(images)

    scales, scale, shortest = [], 12.0 / model.min_face_size, min(height, width) * 12.0 / model.min_face_size
    while shortest >= 12:
        scales.append(scale)
        scale, shortest = scale * factor, shortest * factor
    if not scales:  # smaller than the smallest face
        return [no_faces() for _ in range(batch)]
    boxes, image_index = [], []
    for scale in scales:  # stage 1: P-Net on each pyramid level, NMS within each level and image
        level = imresample(pixels, (int(height * scale + 1), int(width * scale + 1)))
        regression, probabilities = model.pnet((level - 127.5) * 0.0078125)
        found, index = generateBoundingBox(regression, probabilities[:, 1], scale, thresholds[0])
        keep = batched_nms(found[:, :4], found[:, 4], index, 0.5)
        boxes.append(found[keep])
        image_index.append(index[keep])
    boxes, image_index = torch.cat(boxes), torch.cat(image_index)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
    boxes, image_index = boxes[keep], image_index[keep]
    sides = boxes[:, 2:4] - boxes[:, 0:2]
    boxes = rerec(torch.cat([boxes[:, 0:2] + boxes[:, 5:7] * sides, boxes[:, 2:4] + boxes[:, 7:9] * sides,
                             boxes[:, 4:5]], dim=1))

    if len(boxes):  # stage 2: R-Net on 24-px crops
        boxes, image_index = inside(boxes, image_index, width, height)
        regression, probabilities = fixed_batch_process(
            area_crops(integral, boxes, image_index, 24), model.rnet)
        passed = probabilities[:, 1] > thresholds[1]
        boxes = torch.cat([boxes[passed, :4], probabilities[passed, 1:2]], dim=1)
        image_index, regression = image_index[passed], regression[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        boxes = rerec(bbreg(boxes[keep], regression[keep]))
        image_index = image_index[keep]

    if len(boxes):  # stage 3: O-Net on 48-px crops, NMS by the smaller box's area ("Min")
        boxes, image_index = inside(boxes, image_index, width, height)
        regression, _, probabilities = fixed_batch_process(
            area_crops(integral, boxes, image_index, 48), model.onet)
        passed = probabilities[:, 1] > thresholds[2]
        boxes = torch.cat([boxes[passed, :4], probabilities[passed, 1:2]], dim=1)
        image_index = image_index[passed]
        boxes = bbreg(boxes, regression[passed])
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_index, 0.7, "Min")
        boxes, image_index = boxes[keep], image_index[keep]

    boxes, image_index = boxes.cpu().numpy().astype(np.float32), image_index.cpu().numpy()
    return [(boxes[image_index == i, :4], boxes[image_index == i, 4]) for i in range(batch)]


def integral_image(images: torch.Tensor) -> torch.Tensor:
    """Summed-area table [B, H + 1, W + 1, 3] of uint8 images [B, H, W, 3]: exact sums of any rectangle
    from four look-ups. int32 holds the sums of images up to 4K (8.4 megapixels), at half int64's memory."""
    import torch

    batch, height, width, channels = images.shape
    dtype = torch.int32 if height * width * 255 < 2**31 else torch.int64
    integral = images.new_zeros((batch, height + 1, width + 1, channels), dtype=dtype)
    torch.cumsum(images.cumsum(1, dtype=dtype), 2, out=integral[:, 1:, 1:])
    return integral


def inside(boxes: torch.Tensor, image_index: torch.Tensor, width: int, height: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes whose pixel region (as the library's `pad` clips it) is not empty: the library would
    misalign the rest with their crops; boxes from inside the image are never empty."""
    x0, y0, x1, y1 = box_regions(boxes, width, height)
    keep = (x1 > x0) & (y1 > y0)
    return boxes[keep], image_index[keep]


def box_regions(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Each box's pixel region [x0, x1) x [y0, y1), as facenet-pytorch's `pad` cuts it: corners truncated to
    integers, then clipped to the image, with its 1-based left and top."""
    corners = boxes[:, :4].trunc().long()
    return (corners[:, 0].clamp(min=1) - 1, corners[:, 1].clamp(min=1) - 1,
            corners[:, 2].clamp(max=width), corners[:, 3].clamp(max=height))


def area_crops(integral: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, size: int
               ) -> torch.Tensor:
    """Every box's region resized to size x size by area averaging, normalised for the network: [K, 3,
    size, size]. The same bins as the library's per-box `interpolate(mode="area")` (adaptive average
    pooling: output cell i averages input rows floor(i L / size) to ceil((i + 1) L / size)), summed from
    the integral image, so all boxes take a few tensor operations."""
    import torch

    x0, y0, x1, y1 = box_regions(boxes, integral.shape[2] - 1, integral.shape[1] - 1)
    cells = torch.arange(size + 1, device=boxes.device)

    def edges(start: torch.Tensor, stop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = (stop - start)[:, None]
        return start[:, None] + cells[:-1] * length // size, start[:, None] + -(-cells[1:] * length // size)

    top, bottom = edges(y0, y1)
    left, right = edges(x0, x1)
    image = image_index[:, None, None]
    top, bottom, left, right = top[:, :, None], bottom[:, :, None], left[:, None, :], right[:, None, :]
    sums = (integral[image, bottom, right] - integral[image, top, right] - integral[image, bottom, left]
            + integral[image, top, left])
    means = sums.double() / ((bottom - top) * (right - left))[..., None]
    return (means.float().permute(0, 3, 1, 2) - 127.5) * 0.0078125


# BlazeFace short range, as MediaPipe configures it (face_detection_short_range.pbtxt): SSD anchors on
# a 16x16 grid (stride 8, 2 per cell) and an 8x8 grid (stride 16, 6 per cell), all of size 1, centred.
BLAZEFACE_INPUT = 128
BLAZEFACE_STRIDES = ((8, 2), (16, 6))
NMS_IOU = 0.3


@functools.cache
def blazeface_anchors() -> np.ndarray:
    """Anchor centres [896, 2] (x, y) in [0, 1]."""
    centres = []
    for stride, per_cell in BLAZEFACE_STRIDES:
        cells = BLAZEFACE_INPUT // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: each kept box is the score-weighted mean of the boxes
    that overlap it by more than `iou`."""
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    kept_boxes, kept_scores = [], []
    remaining = np.ones(len(boxes), bool)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in range(len(boxes)):
        if not remaining[i]:
            continue
        x0, y0 = np.maximum(boxes[i, :2], boxes[:, :2]).T
        x1, y1 = np.minimum(boxes[i, 2:], boxes[:, 2:]).T
        overlap = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        group = remaining & (overlap / (areas[i] + areas - overlap + 1e-9) > iou)
        weights = scores[group][:, None]
        kept_boxes.append((boxes[group] * weights).sum(0) / weights.sum())
        kept_scores.append(scores[i])
        remaining &= ~group
    return np.asarray(kept_boxes, np.float32).reshape(-1, 4), np.asarray(kept_scores, np.float32)


@register_detector
def blazeface(config: FaceConfig) -> DetectFn:
    """MediaPipe BlazeFace short range (TFLite, weights from the mediapipe==0.10.14 wheel): faces that fill
    a good part of the frame (selfie distance); small faces in wide shots are missed."""
    from ai_edge_litert.interpreter import Interpreter

    path = str(fetch("blazeface_short_range"))

    def load() -> Interpreter:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        return interpreter

    interpreter = per_thread(load)
    outputs = {d["name"]: d["index"] for d in interpreter().get_output_details()}
    input_index = interpreter().get_input_details()[0]["index"]
    anchors = blazeface_anchors()

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Letterbox to a square (MediaPipe pads, so faces keep their shape), then 128 px in [-1, 1].
        height, width = image.shape[:2]
        side = max(height, width)
        square = np.zeros((side, side, 3), np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top:top + height, left:left + width] = image
        pixels = cv2.resize(square, (BLAZEFACE_INPUT, BLAZEFACE_INPUT), interpolation=cv2.INTER_AREA)
        model = interpreter()
        model.set_tensor(input_index, (pixels[None].astype(np.float32) / 127.5 - 1.0))
        model.invoke()
        raw = model.get_tensor(outputs["regressors"])[0]
        logits = model.get_tensor(outputs["classificators"])[0, :, 0]
        scores = np.exp(-np.logaddexp(0, -logits))  # sigmoid without overflow
        keep = scores >= MIN_SCORE["blazeface"]
        if not keep.any():
            return no_faces()
        centre = raw[keep, :2] / BLAZEFACE_INPUT + anchors[keep]
        size = raw[keep, 2:4] / BLAZEFACE_INPUT
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * side
        boxes -= np.array([left, top, left, top], np.float32)
        boxes, scores = weighted_nms(boxes, scores[keep].astype(np.float32), NMS_IOU)
        return to_hog_convention(boxes, "blazeface"), scores

    return detect
