"""Why a verdict was given: which frames drove it, and where in those faces the RGB embedder looked.

Both are computed for the face that decided the verdict, on the clips `Detector.forward` scored.

- Frames: Integrated Gradients (captum) of each clip's logit with respect to the temporal head's inputs,
  every frame's embeddings of both streams, from an all-zero baseline, summed over the features, turned
  towards the verdict (the logit for "fake" and "uncertain", its negative for "real"), so a positive value
  means "pushed towards what was decided". By completeness a clip's frame attributions add up to its
  logit minus the baseline's.
- Where: Grad-CAM (captum's `LayerGradCam`) on the RGB embedder's last spatial feature map. The target is
  the clip's fake logit with that frame's crop going through the embedder and every other frame held at
  its features, so the map shows where this face looks manipulated, whatever the verdict. (Turned towards a
  "real" verdict it would map the evidence for "real", which is mostly the absence of fake evidence:
  negative everywhere, so the ReLU left all-zero maps on real videos.) Negative evidence is cut (ReLU), the
  map is upsampled to the crop and scaled to a maximum of 1 per frame; a zero peak says the face shows no
  fake evidence at all.

`explain` writes, into its folder: the crop and its heat map side by side for the deciding frames
(`frame-<n>.png`), the per-frame attribution plot (`attribution.png`) and every frame's heat map with its
crop window in the frame (`heatmaps.npz`, read by `load_heatmaps`), which `annotate_video` overlays.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..core.cache import atomic_path
from ..core.extras import extra_imports
from ..models.heads import TemporalHead
from ..preprocessing.batching import to_unit_tensor
from ..preprocessing.embed import Embedder
from ..preprocessing.faces import VideoFaces, crop_window
from ..visualization.annotate import heat_overlay
from ..visualization.plots import plot_frame_attribution
from .results import ExplainConfig, Explanation, Prediction

with extra_imports("explain"):
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

HEATMAPS_FILE = "heatmaps.npz"
ATTRIBUTION_PLOT = "attribution.png"


def spatial_layer(model: nn.Module, input_size: int, device: torch.device | str = "cpu"
                  ) -> tuple[str, nn.Module]:
    """(name, module) whose output is the network's last spatial feature map (more than 1 x 1), found by
    running it once: the map that global pooling turns into the embedding, where Grad-CAM is taken."""
    found: list[tuple[str, nn.Module]] = []

    def record(name: str, module: nn.Module, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            found.append((name, module))

    hooks = [module.register_forward_hook(lambda m, _i, out, name=name: record(name, m, out))
             for name, module in model.named_modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError(f"{type(model).__name__} has no spatial feature map to take Grad-CAM at")
    return found[-1]  # forward hooks fire as modules finish: the last one is the deepest map


def grad_cam(forward: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, pixels: torch.Tensor
             ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of `forward` (pixels [N, 3, H, W] -> a score per image) at `layer`: maps float32 [N, H, W]
    upsampled to the pixels' size and scaled to a maximum of 1, and each map's peak before scaling [N]
    (0: the image holds no positive evidence, and its map is all zero)."""
    with torch.enable_grad():
        maps = LayerGradCam(forward, layer).attribute(pixels, relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach().float(), tuple(pixels.shape[-2:]),
                                            interpolate_mode="bilinear")[:, 0]
    peak = maps.flatten(1).amax(1)
    scaled = maps / peak.clamp_min(1e-12).view(-1, 1, 1)
    return scaled.clamp(0, 1).cpu().numpy(), peak.cpu().numpy()


def frame_attributions(head: TemporalHead, clips: dict[str, torch.Tensor], valid: torch.Tensor, sign: float,
                       steps: int) -> dict[str, np.ndarray]:
    """Integrated Gradients of `sign` x each clip's logit: {stream: float32 [C, T]}, summed over features."""
    streams = head.stream_names

    def target(*inputs: torch.Tensor) -> torch.Tensor:
        *features, mask = inputs
        return sign * head(**dict(zip(streams, features, strict=True)), valid=mask)[:, 0].float()

    inputs = tuple(clips[name] for name in streams)
    with torch.enable_grad():
        attributions = IntegratedGradients(target).attribute(
            inputs, baselines=tuple(torch.zeros_like(x) for x in inputs), additional_forward_args=(valid,),
            n_steps=steps, internal_batch_size=max(steps, 8))
    return {name: a.sum(-1).detach().float().cpu().numpy() for name, a in zip(streams, attributions,
                                                                                  strict=True)}


def _write_image(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:  # the temporary keeps the suffix, which tells OpenCV the format
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cannot write the image")


def explain(head: TemporalHead, embedder: Embedder, video: VideoFaces, prediction: Prediction,
            clips: dict[str, np.ndarray], margin: float, out_dir: str | os.PathLike,
            config: ExplainConfig | None = None) -> Explanation:
    """Explain a scored video's verdict (see the module docstring); `clips` are the deciding face's clips as
    `Detector.track_clips` lays them out, `margin` the faces stage's crop margin. Writes into `out_dir` and
    returns the record that `Prediction.explanation` holds (file names relative to `out_dir`)."""
    config = config or ExplainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    track = video.tracks[prediction.face]
    device = next(head.parameters()).device
    sign = -1.0 if prediction.verdict == "real" else 1.0
    valid = torch.from_numpy(clips["valid"]).to(device)
    inputs = {name: torch.from_numpy(clips[name]).to(device).float() for name in head.stream_names}

    # Frames: one attribution per (clip, position), then per video frame (mean over the clips holding it).
    per_stream = frame_attributions(head, inputs, valid, sign, config.ig_steps)
    positions = np.argwhere(clips["valid"])  # (clip, position) of every real frame, in clip order
    frames = clips["frame_index"][clips["valid"]]
    frame_index = sorted(set(frames.tolist()))
    column = {frame: i for i, frame in enumerate(frame_index)}
    totals = {name: np.zeros(len(frame_index)) for name in ("rgb", "depth", *per_stream)}
    counts = np.zeros(len(frame_index))
    for (clip, position), frame in zip(positions, frames, strict=True):
        counts[column[frame]] += 1
        for name, values in per_stream.items():
            totals[name][column[frame]] += values[clip, position]
    rgb, depth = (totals[name] / counts for name in ("rgb", "depth"))
    attribution = sum(totals.values()) / counts  # with an audio stream, what was heard counts too

    # Where: Grad-CAM of each frame's crop inside its clip (the first clip holding the frame).
    row_of = {int(f): row for row, f in enumerate(track.frame_index)}
    holder = {int(frame): (int(clip), int(position)) for (clip, position), frame
              in zip(positions[::-1], frames[::-1], strict=True)}  # reversed: the first clip wins
    # Grad-CAM hooks its layer: on a private copy, so concurrent predictions on the shared model never
    # trigger them (the service scores jobs in threads sharing one model).
    network = copy.deepcopy(embedder.rgb.model)
    layer_name, layer = spatial_layer(network, embedder.input_size(embedder.rgb), device)
    maps, peaks = [], []
    for start in range(0, len(frame_index), config.batch_size):
        chunk = frame_index[start:start + config.batch_size]
        where = torch.tensor([holder[f] for f in chunk], device=device)

        def clip_logit(pixels: torch.Tensor, where: torch.Tensor = where) -> torch.Tensor:
            frame_features = {name: x[where[:, 0]].clone() for name, x in inputs.items()}
            rows = torch.arange(len(where), device=device)
            frame_features["rgb"][rows, where[:, 1]] = embedder.embed_pixels("rgb", pixels, network)
            return head(**frame_features, valid=valid[where[:, 0]])[:, 0].float()  # the fake evidence

        pixels = to_unit_tensor(track.crops[[row_of[f] for f in chunk]], device)
        frame_maps, frame_peaks = grad_cam(clip_logit, layer, pixels)
        maps.append(frame_maps)
        peaks.append(frame_peaks)
    heatmaps, heat_peak = np.concatenate(maps), np.concatenate(peaks)

    # Files: the deciding frames' pictures, the attribution plot, every heat map with its crop window.
    order = np.argsort(-attribution, kind="stable")
    deciding = [frame_index[i] for i in order[:config.deciding_frames]]
    images = {}
    for frame in deciding:
        crop = track.crops[row_of[frame]]
        picture = np.concatenate([crop, heat_overlay(crop, heatmaps[column[frame]])], 1)
        images[str(frame)] = name = f"frame-{frame:06d}.png"
        _write_image(out_dir / name, picture)
    box_of = {int(f): box for f, box in zip(track.frame_index, track.boxes, strict=True)}
    windows = np.array([crop_window((video.height, video.width), box_of[f], margin) for f in frame_index],
                       np.int32)
    with atomic_path(out_dir / HEATMAPS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, frame_index=np.array(frame_index, np.int32),
                            heatmaps=heatmaps.astype(np.float16), windows=windows)
    plot_frame_attribution(frame_index, rgb, depth, deciding, prediction.verdict, out_dir / ATTRIBUTION_PLOT)
    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in values]

    return Explanation(
        folder=str(out_dir), track=prediction.face, frame_index=frame_index, attribution=rounded(attribution),
        rgb_attribution=rounded(rgb), depth_attribution=rounded(depth), deciding_frames=deciding,
        heat_peak=rounded(heat_peak), images=images, heatmaps=HEATMAPS_FILE, plot=ATTRIBUTION_PLOT,
        methods={"frames": f"captum IntegratedGradients, zero baseline, {config.ig_steps} steps, towards "
                           f"the verdict",
                 "heatmaps": f"captum LayerGradCam at {layer_name or 'the output'} "
                             f"({type(layer).__name__}) of the rgb embedder {embedder.rgb.name}, towards "
                             f"the verdict"})


