"""Neural face detectors whose weights install from the registries, registered beside dlib_hog and
opencv_haar (`FaceConfig(detector="mtcnn")`):

- `mtcnn`: MTCNN (P-, R- and O-Net cascade) from facenet-pytorch, whose wheel carries the weights. Its
  pins are old, so it is installed without its dependencies (`pip install --no-deps facenet-pytorch`).
- `blazeface`: MediaPipe's BlazeFace short-range model (`face_detection_short_range.tflite` from the
  mediapipe==0.10.14 wheel), run by the TFLite runtime with MediaPipe's own anchors and decoding.

Boxes are mapped onto dlib HOG's convention (as the Haar fallback's are), so a clip's crops keep one
scale whichever detector found a frame's face: the scales and shifts were measured on the real faces of
the asset photos where dlib HOG and the detector each found one face (`bench/bench_face_detectors.py
--calibrate` prints them).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ..core.assets import fetch
from ..core.extras import extra_imports
from ..core.threads import per_thread
from .faces import DetectFn, FaceConfig, register_detector

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


@register_detector
def mtcnn(config: FaceConfig) -> DetectFn:
    """MTCNN (facenet-pytorch, weights inside its wheel), on the CPU, every face above 0.9."""
    with extra_imports("mtcnn"):  # its weights ship in the wheel; its own pins are too old to follow
        from facenet_pytorch import MTCNN

    model = per_thread(lambda: MTCNN(keep_all=True, device="cpu", min_face_size=20))
    model()

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = model().detect(np.ascontiguousarray(image))
        if boxes is None:
            return no_faces()
        scores = np.asarray(scores, np.float32)
        keep = scores >= MIN_SCORE["mtcnn"]
        return to_hog_convention(np.asarray(boxes, np.float32)[keep], "mtcnn"), scores[keep]

    return detect


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
