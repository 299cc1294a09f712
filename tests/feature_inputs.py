"""Real inputs for the depth and embed tests: face crops of real photos and video frames, cut with the
faces stage's own detector and cropper, written as a `faces` stage cache in exactly the format of
docs/ARCHITECTURE.md (crops encoded by the stage's `encode_faces`), and a tiny random-weight depth model
saved to a local folder."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from megatron_utils.core.cache import StageCache
from megatron_utils.preprocessing.faces import FaceConfig, FaceDetector, encode_faces, square_crop
from megatron_utils.preprocessing.video import read_frames, read_image

CROP = 112  # small crops keep the tests fast; the format is the same at 224


@functools.cache
def face_detector() -> FaceDetector:
    return FaceDetector(FaceConfig(upsample=0, fallback=None))


def face_crop(image: np.ndarray, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """The largest HOG-detected face, cropped as the faces stage crops it; and its box."""
    boxes, _, _ = face_detector()(image)
    assert len(boxes), "test photo without a detectable face"
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return square_crop(image, box, margin=1.3, size=size), box.astype(np.float32)


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
        cache.write(item_id, encode_faces(tensors))
    return cache


def save_tiny_depth_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight Depth Anything (4-layer DINOv2 backbone, 56 px) with its image processor,
    saved with save_pretrained so tests load it through the local-folder code path."""
    import torch
    import transformers
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from megatron_utils.models.backbones import depth_anything_tiny_config

    config = depth_anything_tiny_config()
    torch.manual_seed(seed)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    processor = transformers.DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))
    processor.save_pretrained(folder)
    return folder
