"""What scoring a video returns: the prediction, each face's score and its windows. Kept apart from
`predict.py` so annotation, visualisation and services use them without importing the models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, FAILED = "ok", "failed"


@dataclass
class WindowScore:
    first_frame: int  # first and last sampled frame of the window (video frame numbers)
    last_frame: int
    probability: float
    frames: int  # frames of the window in which this face has a crop


@dataclass
class FaceScore:
    track: int  # 0 = the person with the largest summed face area
    probability: float  # mean of the window probabilities
    frames_used: int  # sampled frames of this face inside its scored windows
    windows: list[WindowScore]
    frame_index: list[int]  # those frames (video frame numbers), ascending
    boxes: list[list[float]]  # (x0, y0, x1, y1) in frame pixels, one per frame_index
    timeline: list[float]  # per frame_index: the mean probability of the windows covering the frame


@dataclass
class ExplainConfig:
    deciding_frames: int = 4  # heat-map images written for the frames that pushed hardest
    ig_steps: int = 32  # Integrated Gradients' path steps
    batch_size: int = 16  # crops per Grad-CAM batch

    def __post_init__(self) -> None:
        for name in ("deciding_frames", "ig_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Explanation:
    """Why the verdict (see `explain.py`): values are towards the verdict, files relative to `folder`."""

    folder: str
    track: int  # the face explained: the one that decided the verdict
    frame_index: list[int]  # its scored frames (video frame numbers), ascending
    attribution: list[float]  # per frame: its push on the clip logit (rgb + depth)
    rgb_attribution: list[float]
    depth_attribution: list[float]
    deciding_frames: list[int]  # the frames that pushed hardest, strongest first
    heat_peak: list[float]  # per frame: its Grad-CAM map's peak before scaling; 0: no positive evidence
    images: dict[str, str]  # deciding frame -> its crop and heat map side by side
    heatmaps: str  # npz: every frame's Grad-CAM map and crop window, for overlays
    plot: str  # the per-frame attribution plot
    methods: dict[str, str]  # how each part was computed, in words


@dataclass
class Prediction:
    path: str
    status: str  # "ok" or "failed"
    error: str | None = None  # why it failed, naming the file
    fake_probability: float | None = None  # the highest face probability
    verdict: str | None = None  # "fake" at or above threshold, "uncertain" from uncertain_below, else "real"
    threshold: float | None = None
    uncertain_below: float | None = None
    decision: str | None = None  # what the threshold and the band mean, in words (checkpoint.Decision)
    face: int | None = None  # track id of the face that decided the score
    face_box: list[float] | None = None  # its box on its first scored frame
    faces: list[FaceScore] = field(default_factory=list)  # every scored face, by track id
    frames_used: int = 0  # sampled frames decoded and searched for faces
    sample_every: int | None = None  # typical video frames between the frames of a clip
    frame_count: int = 0
    fps: float = 0.0
    media: str | None = None  # "video" or "image"
    source: str = "file"  # what was scored: "file" (`path` is it), "bytes" or "frames" (`path` is a name)
    weights: dict[str, str] = field(default_factory=dict)  # checkpoint, depth model, backbones, in words
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode_faces, depth, embed, ...
    explanation: Explanation | None = None  # with `explain=`: which frames and regions drove the verdict

    @property
    def ok(self) -> bool:
        return self.status == OK

    def deciding_face(self) -> FaceScore:
        return next(face for face in self.faces if face.track == self.face)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        faces = [FaceScore(**{**face, "windows": [WindowScore(**w) for w in face["windows"]]})
                 for face in data.get("faces", [])]
        explanation = data.get("explanation")
        return cls(**{**data, "faces": faces,
                      "explanation": Explanation(**explanation) if explanation else None})
