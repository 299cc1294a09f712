"""Self-blended pseudo-fakes on real faces: crops cut by the faces stage's detector and cropper, 68 landmarks
fitted on each crop with dlib's predictor given the detector's box mapped into the crop."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from feature_inputs import face_detector

from megatron_utils.datasets.mini.contact_sheet import sheet_size
from megatron_utils.preprocessing.faces import FaceConfig, box_in_crop, square_crop
from megatron_utils.preprocessing.landmarks import BROWS, JAW, OUTER_FACE, fit_landmarks
from megatron_utils.preprocessing.video import h264_roundtrip, read_image
from megatron_utils.training.sbi import (
    AugmentConfig,
    SBIConfig,
    augment,
    blend_mask,
    contact_sheet,
    forehead_hull,
    self_blend,
)

SIZE = 160
PHOTOS = ("obama", "biden", "grace_hopper", "pyfeat_single_face")  # four identities
SEEDS = range(6)
FULL = SBIConfig(blend_ratios=(1.0,))  # every mask at full strength, so coverage is comparable


@pytest.fixture(scope="module")
def faces(asset) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop uint8 [SIZE, SIZE, 3], landmarks float32 [68, 2] in crop pixels) per photo."""
    margin = FaceConfig().margin
    out = []
    for name in PHOTOS:
        image = read_image(asset(name))
        boxes, _, _ = face_detector()(image)
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        crop = square_crop(image, box, margin, SIZE)
        out.append((crop, fit_landmarks(crop, box_in_crop(image.shape, box, margin, SIZE))))
    return out


def region(shape: tuple[int, ...], polygon: np.ndarray) -> np.ndarray:
    """Boolean [H, W]: the pixels inside `polygon`."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


def test_fake_changes_only_the_masked_face(faces):
    for crop, points in faces:
        for seed in SEEDS:
            fake, mask = self_blend(crop, points, np.random.default_rng(seed))
            assert fake.shape == crop.shape and fake.dtype == np.uint8
            assert mask.shape == crop.shape[:2] and mask.dtype == np.float32
            outside = mask == 0
            assert outside.mean() > 0.2  # the background is untouched, and there is background to check
            np.testing.assert_array_equal(fake[outside], crop[outside])
            inside = mask > 0.2
            assert (fake[inside] != crop[inside]).any(-1).mean() > 0.3


def test_mask_covers_the_face_hull_and_nothing_far_from_it(faces):
    for crop, points in faces:
        hull = region(crop.shape, cv2.convexHull(points[OUTER_FACE]).reshape(-1, 2))
        grown = cv2.dilate(region(crop.shape, forehead_hull(points)).astype(np.uint8), np.ones((41, 41)))
        for seed in SEEDS:
            mask = blend_mask(crop.shape, points, np.random.default_rng(seed), FULL)
            assert mask[hull].mean() > 0.5
            assert mask[grown == 0].max(initial=0) == 0


def test_forehead_extension_covers_the_forehead(faces):
    on, off = replace(FULL, forehead_p=1.0), replace(FULL, forehead_p=0.0)
    for crop, points in faces:
        # A band above the brows, from 0.1 to 0.2 of the chin-to-brow height.
        band = region(crop.shape, np.concatenate([forehead_hull(points, 0.2)[len(JAW):],
                                                  forehead_hull(points, 0.1)[len(JAW):][::-1]]))
        assert band.sum() > 500
        gains = [blend_mask(crop.shape, points, np.random.default_rng(seed), on)[band].mean()
                 - blend_mask(crop.shape, points, np.random.default_rng(seed), off)[band].mean()
                 for seed in SEEDS]
        assert min(gains) > 0 and np.mean(gains) > 0.4


def test_forehead_hull_raises_the_brows_along_the_face_axis(faces):
    _, points = faces[0]
    plain, raised = forehead_hull(points, 0.0), forehead_hull(points, 0.25)
    assert plain.shape == raised.shape == (len(JAW) + len(BROWS), 2) and raised.dtype == np.float32
    np.testing.assert_allclose(plain, np.concatenate([points[JAW], points[BROWS][::-1]]), atol=1e-4)
    np.testing.assert_array_equal(raised[:len(JAW)], points[JAW])
    step = raised[len(JAW):] - plain[len(JAW):]
    assert (step[:, 1] < 0).all()  # upright face: up is -y
    lift = np.linalg.norm(step, axis=1)
    chin_to_brows = np.linalg.norm(points[BROWS].mean(0) - points[8])
    assert lift.max() == pytest.approx(0.25 * chin_to_brows, rel=0.01)  # the middle of the forehead
    assert lift[[0, -1]] / lift.max() == pytest.approx([0.5, 0.5], abs=0.01)  # the temples: half


@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_mask_peak_is_the_drawn_blend_ratio(faces, ratio):
    crop, points = faces[1]
    for seed in SEEDS:
        mask = blend_mask(crop.shape, points, np.random.default_rng(seed), SBIConfig(blend_ratios=(ratio,)))
        assert mask.min() >= 0
        assert mask.max() == pytest.approx(ratio, abs=1e-6)
    peaks = {round(float(blend_mask(crop.shape, points, np.random.default_rng(seed)).max()), 6)
             for seed in range(40)}
    assert peaks == set(SBIConfig().blend_ratios)


def test_same_seed_same_fake_other_seed_other_fake(faces):
    crop, points = faces[2]
    fake, mask = self_blend(crop, points, np.random.default_rng(7))
    again, mask_again = self_blend(crop, points, np.random.default_rng(7))
    other, mask_other = self_blend(crop, points, np.random.default_rng(8))
    np.testing.assert_array_equal(fake, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert not np.array_equal(fake, other) and not np.array_equal(mask, mask_other)


@pytest.mark.parametrize("landmarks, problem", [
    (np.zeros((68, 2), np.float32), "all zero"),
    (np.full((68, 2), np.nan, np.float32), "NaN"),
    (np.stack([np.linspace(10, 150, 68), np.linspace(20, 140, 68)], 1), "degenerate"),  # on a line
    (np.zeros((5, 2), np.float32), r"\[68, 2\]"),
])
def test_unusable_landmarks_raise(faces, landmarks, problem):
    crop, _ = faces[0]
    with pytest.raises(ValueError, match=problem):
        self_blend(crop, landmarks, np.random.default_rng(0))


NONE = AugmentConfig(flip_p=0, colour_p=0, blur_p=0, downscale_p=0, noise_p=0, jpeg_p=0, h264_p=0)


def test_augment_keeps_shape_and_each_op_acts(faces):
    crop, _ = faces[3]
    outputs = [augment(crop, np.random.default_rng(seed)) for seed in range(8)]
    assert all(out.shape == crop.shape and out.dtype == np.uint8 for out in outputs)
    assert any(not np.array_equal(out, crop) for out in outputs)
    np.testing.assert_array_equal(augment(crop, np.random.default_rng(0), NONE), crop)
    np.testing.assert_array_equal(augment(crop, np.random.default_rng(0), replace(NONE, flip_p=1)),
                                  crop[:, ::-1])
    jpeg = augment(crop, np.random.default_rng(0), replace(NONE, jpeg_p=1, jpeg_quality=(30, 30)))
    assert np.abs(jpeg.astype(np.float32) - crop).mean() > 1.0
    lighter = augment(crop, np.random.default_rng(0), replace(NONE, jpeg_p=1, jpeg_quality=(95, 95)))
    assert np.abs(lighter.astype(np.float32) - crop).mean() < np.abs(jpeg.astype(np.float32) - crop).mean()


def test_h264_recompression_degrades_with_the_quantiser_and_keeps_images_apart(faces):
    crop, _ = faces[3]
    error = {qp: np.abs(augment(crop, np.random.default_rng(0), replace(NONE, h264_p=1, h264_qp=(qp, qp)))
                         .astype(np.float32) - crop).mean() for qp in (18, 30, 40)}
    assert 0.5 < error[18] < error[30] < error[40], error
    # All-intra: an image's round trip does not depend on the images encoded before it.
    other, _ = faces[0]
    first = h264_roundtrip(crop, 30)
    h264_roundtrip(other, 30)
    np.testing.assert_array_equal(h264_roundtrip(crop, 30), first)
    odd = h264_roundtrip(crop[:63, :61], 30)  # yuv420p needs even sides: padded, then cut back
    assert odd.shape == (63, 61, 3)


def test_contact_sheet_is_a_png_with_a_row_per_usable_crop(faces, tmp_path):
    crops = [crop for crop, _ in faces]
    landmarks = [points for _, points in faces]
    crops.insert(1, crops[0])
    landmarks.insert(1, np.zeros((68, 2), np.float32))  # skipped, not fatal
    path = contact_sheet(crops, landmarks, tmp_path / "sbi.png", np.random.default_rng(0), n=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sheet = cv2.imread(str(path))
    assert sheet.shape == (*sheet_size(3, 4), 3)
