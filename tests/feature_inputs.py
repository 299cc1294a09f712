"""Real inputs for the depth and embed tests: face crops cut with dlib's HOG detector from real photos
and video frames, written as a `faces` stage cache in exactly the format of docs/ARCHITECTURE.md, and a
tiny random-weight depth model saved to a local folder."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import dlib
import numpy as np

from megatron_utils.cache import StageCache
from megatron_utils.video import read_frames, read_image

CROP = 112  # small crops keep the tests fast; the format is the same at 224


@functools.cache
def hog_detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


def face_crop(image: np.ndarray, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """The largest HOG-detected face, widened by 30% and squared, resized to `size`; and its box."""
    detections = hog_detector()(image, 0)
    assert detections, "test photo without a detectable face"
    face = max(detections, key=lambda r: r.area())
    cx, cy = (face.left() + face.right()) / 2, (face.top() + face.bottom()) / 2
    half = 0.65 * max(face.width(), face.height())
    x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
    x1, y1 = int(min(cx + half, image.shape[1])), int(min(cy + half, image.shape[0]))
    crop = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size), interpolation=cv2.INTER_AREA)
    return crop, np.array([x0, y0, x1, y1], np.float32)


def faces_entry(images: list[np.ndarray], frame_index: list[int],
                clip_index: list[int]) -> dict[str, np.ndarray]:
    crops, boxes = zip(*(face_crop(image) for image in images), strict=True)
    count = len(images)
    return {"crops": np.stack(crops), "frame_index": np.array(frame_index, np.int32),
            "clip_index": np.array(clip_index, np.int32), "boxes": np.stack(boxes),
            "scores": np.ones(count, np.float32), "detected": np.ones(count, bool)}


def real_faces_entries(asset) -> dict[str, dict[str, np.ndarray]]:
    """Four items of different lengths: a 7-frame video in two clips (4 + 3 frames) and three photos."""
    frame_ids, frames = read_frames(asset("single_face_video"), [0, 5, 10, 15, 20, 25, 30])
    return {
        "video/single_face": faces_entry(list(frames), frame_ids, [0, 0, 0, 0, 1, 1, 1]),
        "photo/obama": faces_entry([read_image(asset("obama"))], [0], [0]),
        "photo/obama2": faces_entry([read_image(asset("obama2"))], [0], [0]),
        "photo/biden": faces_entry([read_image(asset("biden"))], [0], [0]),
    }


def write_faces_cache(entries: dict[str, dict[str, np.ndarray]], root: Path,
                      name: str = "dlib HOG") -> StageCache:
    """A faces cache whose key differs by `name`, as caches of different faces configurations do."""
    cache = StageCache("faces", {"test": name, "size": CROP}, root=root)
    for item_id, tensors in entries.items():
        cache.write(item_id, tensors)
    return cache


def save_tiny_depth_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight Depth Anything (4-layer DINOv2 backbone, 56 px) with its image processor,
    saved with save_pretrained so tests load it through the local-folder code path."""
    import torch
    import transformers
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from megatron_utils.backbones import depth_anything_tiny_config

    config = depth_anything_tiny_config()
    torch.manual_seed(seed)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    processor = transformers.DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))
    processor.save_pretrained(folder)
    return folder
