"""The MediaPipe face mesh depth fallback on real face crops, cut as the faces stage cuts them."""

from __future__ import annotations

import cv2
import dlib
import numpy as np
import pytest
from feature_inputs import face_crop

from megatron_utils.core.cache import sha256_file
from megatron_utils.preprocessing.facemesh import FAR, FaceMeshDepth
from megatron_utils.preprocessing.video import read_image

SIDE = 224  # the faces stage's default crop size
PHOTOS = ["obama", "biden", "astronaut", "grace_hopper"]
NOSE_TIP, EAR_SIDES, CHEEKS = 1, [234, 454], [50, 280]  # face mesh vertex indices
MESH_TO_DLIB = {1: 30, 33: 36, 263: 45, 133: 39, 362: 42, 61: 48, 291: 54, 152: 8}  # same points


@pytest.fixture(scope="module")
def mesh() -> FaceMeshDepth:
    return FaceMeshDepth(output_size=128)


@pytest.fixture(scope="module")
def crops(asset) -> np.ndarray:
    return np.stack([face_crop(read_image(asset(name)), SIDE)[0] for name in PHOTOS])


def test_identity(mesh: FaceMeshDepth, asset) -> None:
    assert mesh.fingerprint == f"sha256:{sha256_file(asset('facemesh_landmarks'))}"
    assert "face_landmark.tflite" in mesh.weights and "mediapipe==0.10.14" in mesh.weights


def test_landmarks_lie_on_the_face(mesh: FaceMeshDepth, crops: np.ndarray) -> None:
    points = mesh.landmarks(crops)
    assert points.shape == (len(PHOTOS), 468, 3) and points.dtype == np.float32
    assert ((points[..., :2] >= 0) & (points[..., :2] <= SIDE)).all()
    assert (np.linalg.norm(points[:, NOSE_TIP, :2] - SIDE / 2, axis=1) < 0.15 * SIDE).all()
    # z: smaller is nearer; the nose tip is well in front of the sides of the face by the ears
    assert (points[:, NOSE_TIP, 2] < points[:, EAR_SIDES, 2].min(1) - 0.2 * SIDE).all()


def test_landmarks_agree_with_dlib(mesh: FaceMeshDepth, crops: np.ndarray, asset) -> None:
    predictor = dlib.shape_predictor(str(asset("dlib_landmarks_68")))
    points = mesh.landmarks(crops)[:, list(MESH_TO_DLIB), :2]
    for crop, mine in zip(crops, points, strict=True):
        shape = predictor(crop, dlib.get_frontal_face_detector()(crop, 0)[0])
        theirs = np.array([[shape.part(i).x, shape.part(i).y] for i in MESH_TO_DLIB.values()])
        assert np.linalg.norm(mine - theirs, axis=1).mean() < 0.04 * SIDE


def test_depth_maps(mesh: FaceMeshDepth, crops: np.ndarray) -> None:
    maps = mesh(crops)
    size = mesh.output_size
    assert maps.shape == (len(PHOTOS), size, size) and maps.dtype == np.float32
    for depth, points in zip(maps, mesh.landmarks(crops) * (size / SIDE), strict=True):
        hull = np.zeros((size, size), np.uint8)  # pixel i's centre is at i + 0.5; 4 fractional bits
        cv2.fillConvexPoly(hull, cv2.convexHull(((points[:, :2] - 0.5) * 16).round().astype(np.int32)), 1,
                           shift=4)
        assert (depth[cv2.dilate(hull, np.ones((3, 3), np.uint8)) == 0] == 0).all()  # background
        inner = cv2.erode(hull, np.ones((7, 7), np.uint8)).astype(bool)  # eyes and mouth included
        assert (depth[inner] >= FAR).all() and depth.max() == 1
        x, y = points[..., 0].astype(int), points[..., 1].astype(int)
        nose, cheeks = depth[y[NOSE_TIP], x[NOSE_TIP]], depth[y[CHEEKS], x[CHEEKS]]
        assert nose > 0.9 and (nose > cheeks + 0.1).all()
    assert mesh(crops[:0]).shape == (0, size, size)


def test_flipped_crop_gives_the_flipped_map(mesh: FaceMeshDepth, crops: np.ndarray) -> None:
    maps, flipped = mesh(crops), mesh(np.ascontiguousarray(crops[:, :, ::-1]))
    for depth, mirror in zip(maps, flipped, strict=True):
        assert np.corrcoef(depth[:, ::-1].ravel(), mirror.ravel())[0, 1] > 0.9


def test_face_presence_score(mesh: FaceMeshDepth, crops: np.ndarray) -> None:
    grey = np.full((1, SIDE, SIDE, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (1, SIDE, SIDE, 3), dtype=np.uint8)
    faces = mesh.detect(crops).score
    others = mesh.detect(np.concatenate([grey, noise])).score
    assert faces.min() > 0.9 and others.max() < 0.1


def test_threads_sharing_one_mesh_get_the_same_landmarks(mesh: FaceMeshDepth, crops: np.ndarray) -> None:
    # one TFLite interpreter per thread: two threads in one interpreter overwrite each other's tensors
    from concurrent.futures import ThreadPoolExecutor

    expected = mesh.landmarks(crops)
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda crop: mesh.landmarks(crop[None])[0], list(crops) * 4))
    np.testing.assert_array_equal(np.stack(found), np.concatenate([expected] * 4))
