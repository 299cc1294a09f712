"""dlib's 68-point facial landmarks, shared by the faces stage and the mini-dataset builder.

The predictor ships in the `face-recognition-models` package (`assets.fetch`). It needs a face box; the
faces stage gives it the detector's box mapped into the crop, so landmarks are fitted on exactly the
pixels later stages see.
"""

from __future__ import annotations

import dlib
import numpy as np

from ..core.assets import fetch
from ..core.threads import per_thread

N_LANDMARKS = 68
# The 68-point layout's regions, used to build blending masks.
JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
OUTER_FACE = np.arange(0, 27)  # jaw + brows: the face outline
MOUTH = np.arange(48, 60)


_predictors = per_thread(dict)  # asset -> dlib.shape_predictor of this thread


def _predictor(asset: str) -> dlib.shape_predictor:
    predictors = _predictors()
    if asset not in predictors:
        predictors[asset] = dlib.shape_predictor(str(fetch(asset)))
    return predictors[asset]


def fit_landmarks(image: np.ndarray, box: np.ndarray | tuple[float, ...],
                  asset: str = "dlib_landmarks_68") -> np.ndarray:
    """68 points float32 [68, 2] (x, y in `image` pixels) of the face inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    shape = _predictor(asset)(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
