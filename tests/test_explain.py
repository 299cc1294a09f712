"""Explanations: Grad-CAM localises a blend it was trained to see, frame attributions add up to the logit,
and `megatron predict --explain` writes pictures, heat maps and JSONL fields that the annotated video uses."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from megatron_utils.cli import main
from megatron_utils.inference.explain import frame_attributions, grad_cam, spatial_layer
from megatron_utils.inference.predict import Detector, Prediction, annotate_video, load_heatmaps
from megatron_utils.preprocessing.batching import to_unit_tensor
from megatron_utils.preprocessing.video import iter_frames, probe
from megatron_utils.training.sbi import SBIConfig, blend

SIDE = 64
PHOTOS = ["lenna", "einstein", "obama", "biden", "grace_hopper", "obama2"]
VISIBLE_BLEND = SBIConfig(  # colour only, strong and certain, so a small CNN learns it in seconds
    rgb_shift_p=1.0, rgb_shift=40.0, hsv_p=1.0, hue_shift=30.0, sat_val_scale=0.4, brightness=0.2,
    contrast=0.2, sharpen_blur_p=0.0, downscale_p=0.0, jpeg_p=0.0, shift=(0.0, 0.0), scale=(1.0, 1.0))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def patches(photo: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Random square crops of a photo, resized to SIDE."""
    height, width = photo.shape[:2]
    out = []
    for _ in range(count):
        side = int(rng.integers(min(height, width) // 3, min(height, width)))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        square = photo[top:top + side, left:left + side]
        out.append(cv2.resize(square, (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def ellipse_mask(rng: np.random.Generator) -> np.ndarray:
    """A soft ellipse a quarter to a third of the side across, anywhere in the image."""
    mask = np.zeros((SIDE, SIDE), np.float32)
    axes = rng.integers(SIDE // 6, SIDE // 4, size=2, endpoint=True)
    centre = [int(rng.integers(a + 2, SIDE - a - 2)) for a in axes]
    cv2.ellipse(mask, centre, tuple(int(a) for a in axes), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (5, 5), 0)


def pseudo_fakes(reals: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    masks = np.stack([ellipse_mask(rng) for _ in reals])
    fakes = [blend(real, mask, rng, VISIBLE_BLEND) for real, mask in zip(reals, masks, strict=True)]
    return np.stack(fakes), masks


class PatchNet(nn.Module):
    """A small CNN: 16 x 16 feature map, pooled, then one logit."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))[:, 0]


def test_grad_cam_puts_more_heat_inside_a_known_blended_region(asset):
    """A CNN trained to tell real crops from ones with a self-blended patch anywhere: on new crops and
    patches, the fakes it calls fake (above 90 % of the reals) get Grad-CAM maps denser inside the patch
    than outside it. Patches are anywhere, so a map centred on the crop fails; an untrained CNN fails too
    (measured: ratio 1.0, AUC 0.50)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    photos = [cv2.cvtColor(cv2.imread(str(asset(name))), cv2.COLOR_BGR2RGB) for name in PHOTOS]
    train_reals = np.concatenate([patches(photo, 100, rng) for photo in photos])
    test_reals = np.concatenate([patches(photo, 10, rng) for photo in photos])
    model = PatchNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        reals = train_reals[rng.choice(len(train_reals), 16, replace=False)]
        fakes, _ = pseudo_fakes(reals, rng)
        pixels = to_unit_tensor(np.concatenate([reals, fakes]), torch.device("cpu"))
        labels = torch.cat([torch.zeros(16), torch.ones(16)])
        loss = nn.functional.binary_cross_entropy_with_logits(model(pixels), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()

    fakes, masks = pseudo_fakes(test_reals, rng)
    with torch.no_grad():
        real_scores = model(to_unit_tensor(test_reals, torch.device("cpu")))
        fake_scores = model(to_unit_tensor(fakes, torch.device("cpu")))
    assert (fake_scores[:, None] > real_scores[None, :]).float().mean() > 0.65  # measured 0.75: it learnt
    detected = (fake_scores > torch.quantile(real_scores, 0.9)).numpy()
    assert detected.sum() >= 12  # measured 31 of 60

    name, layer = spatial_layer(model.features, SIDE)
    assert name == "5" and isinstance(layer, nn.ReLU)  # the last ReLU, before pooling
    heat, peak = grad_cam(model, layer, to_unit_tensor(fakes[detected], torch.device("cpu")))
    assert heat.shape == (detected.sum(), SIDE, SIDE) and heat.max() <= 1 and (peak > 0).all()
    inside = np.array([h[m > 0.5].mean() for h, m in zip(heat, masks[detected], strict=True)])
    outside = np.array([h[m < 0.05].mean() for h, m in zip(heat, masks[detected], strict=True)])
    assert (inside > outside).mean() >= 0.8  # measured 0.94
    assert np.median(inside / np.maximum(outside, 1e-6)) > 2  # measured 37


def test_frame_attributions_add_up_to_the_logit(tiny_run):
    """Integrated Gradients' completeness: per clip, the frames' attributions sum to logit(x) - logit(0)."""
    detector = Detector.from_pretrained(tiny_run[0], clips_per_video=2)
    head = detector.model
    rng = np.random.default_rng(1)
    clips = {"rgb": torch.from_numpy(rng.normal(size=(3, 8, head.config.rgb_dim)).astype(np.float32)),
             "depth": torch.from_numpy(rng.normal(size=(3, 8, head.config.depth_dim)).astype(np.float32))}
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[2, 5:] = False
    for sign in (1.0, -1.0):
        values = frame_attributions(head, clips, valid, sign, steps=64)
        with torch.no_grad():
            logit = head(**clips, valid=valid)[:, 0]
            baseline = head(**{k: torch.zeros_like(v) for k, v in clips.items()}, valid=valid)[:, 0]
        total = values["rgb"].sum(1) + values["depth"].sum(1)
        np.testing.assert_allclose(total, sign * (logit - baseline).numpy(), atol=0.02 * float(
            (logit - baseline).abs().max()) + 1e-4)
        assert (values["rgb"][2, 5:] == 0).all() and (values["depth"][2, 5:] == 0).all()  # padding: nothing


def test_predict_explain_writes_pictures_heat_maps_and_jsonl(tiny_run, tmp_path, capsys):
    video = Path(tiny_run[1]["path"].iloc[0])
    out = tmp_path / "explain"
    code = main(["predict", str(video), "--run", str(tiny_run[0]), "--clips-per-video", "2", "--explain",
                 str(out), "--annotate", str(tmp_path / "annotated"), "--jsonl", str(tmp_path / "p.jsonl")])
    assert code == 0, capsys.readouterr()
    record = json.loads((tmp_path / "p.jsonl").read_text())
    prediction = Prediction.from_dict(record)
    explanation = prediction.explanation
    face = prediction.deciding_face()
    assert explanation.track == face.track and explanation.frame_index == face.frame_index
    assert len(explanation.attribution) == len(explanation.heat_peak) == len(face.frame_index)
    np.testing.assert_allclose(explanation.attribution, np.add(explanation.rgb_attribution,
                                                                explanation.depth_attribution), atol=1e-5)
    # the deciding frames are the ones that pushed hardest towards the verdict, strongest first
    order = sorted(face.frame_index, key=lambda f: -explanation.attribution[face.frame_index.index(f)])
    assert explanation.deciding_frames == order[:4]
    folder = out / video.stem
    assert explanation.folder == str(folder)
    for frame, name in explanation.images.items():
        image = cv2.imread(str(folder / name))
        assert image.shape == (64, 128, 3)  # the crop and its heat map side by side
        assert int(frame) in explanation.deciding_frames
    assert (folder / explanation.plot).stat().st_size > 5000
    maps = load_heatmaps(folder / explanation.heatmaps)
    assert maps["frame_index"].tolist() == face.frame_index and maps["heatmaps"].shape == (16, 64, 64)
    # each crop window holds its face box
    for (left, top, side), box in zip(maps["windows"], face.boxes, strict=True):
        assert left <= box[0] + 1 and top <= box[1] + 1
        assert left + side >= box[2] - 1 and top + side >= box[3] - 1
    assert "LayerGradCam" in explanation.methods["heatmaps"]
    assert "IntegratedGradients" in explanation.methods["frames"]
    assert probe(tmp_path / "annotated" / f"{video.stem}.mp4").frame_count == probe(video).frame_count


def test_annotated_video_overlays_the_heat_map_inside_the_face(tiny_run, tmp_path):
    """With heat maps, the annotated video changes only inside the explained face's crop windows."""
    detector = Detector.from_pretrained(tiny_run[0], clips_per_video=2)
    video = Path(tiny_run[1]["path"].iloc[0])
    prediction = detector.predict(video, explain=tmp_path / "explain")
    maps = load_heatmaps(tmp_path / "explain" / prediction.explanation.heatmaps)
    maps["heatmaps"][:] = 1.0  # the strongest overlay everywhere in the windows: every changed pixel shows
    np.savez(tmp_path / "strong.npz", **maps)
    plain = [image for _, image in iter_frames(annotate_video(prediction, tmp_path / "plain.mp4", crf=0))]
    hot = [image for _, image in iter_frames(annotate_video(prediction, tmp_path / "hot.mp4", crf=0,
                                                            heatmaps=tmp_path / "strong.npz"))]
    frame = maps["frame_index"][0]
    left, top, side = maps["windows"][0]
    difference = np.abs(hot[frame].astype(int) - plain[frame].astype(int)).sum(-1)
    assert difference[top:top + side, left:left + side].mean() > 40
    outside = difference.copy()
    outside[max(top - 4, 0):top + side + 4, max(left - 4, 0):left + side + 4] = 0
    assert outside.mean() < 2
