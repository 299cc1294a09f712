"""CPU cost of one fine-tuning training pair, as a DataLoader worker makes it: a real face crop's self-blended
pseudo-fake and the augmentation of both (`training/finetune.py`'s TrainingPairs), at the demo's 128 px and
FF++'s 224 px, on one core. On a GPU these workers, not the network, bound fine-tuning's speed; the FF++
estimate for notebook 02 in docs/GUIDE.md comes from this figure.

Run from the repository root: PYTHONPATH=. python bench/bench_sbi.py [--pairs 200]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from common import print_table, write_results

from megatron_utils.core.assets import fetch
from megatron_utils.preprocessing.faces import FaceConfig, FaceDetector, box_in_crop, square_crop
from megatron_utils.preprocessing.landmarks import fit_landmarks
from megatron_utils.preprocessing.video import read_image
from megatron_utils.training.finetune import FinetuneConfig, pseudo_fake
from megatron_utils.training.sbi import augment

PHOTOS = ("obama", "biden", "grace_hopper", "pyfeat_single_face")
SIZES = (128, 224)


def crops(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop, its 68 landmarks) of the largest face of each photo, cut as the faces stage cuts it."""
    config = FaceConfig()
    detector = FaceDetector(config)
    out = []
    for name in PHOTOS:
        image = read_image(fetch(name))
        boxes, _, _ = detector(image)
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        crop = square_crop(image, box, config.margin, size)
        out.append((crop, fit_landmarks(crop, box_in_crop(image.shape, box, config.margin, size))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200, help="pairs timed per size")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one DataLoader worker: one core
    config = FinetuneConfig()
    rows = []
    for size in SIZES:
        faces = crops(size)
        start = time.perf_counter()
        for i in range(args.pairs):
            crop, landmarks = faces[i % len(faces)]
            rng = np.random.default_rng([config.seed, 0, i])
            fake = pseudo_fake(crop, landmarks, rng, config.sbi)
            augment(crop, rng, config.augment)
            augment(fake if fake is not None else crop, rng, config.augment)
        seconds = (time.perf_counter() - start) / args.pairs
        rows.append({"crop px": size, "pairs": args.pairs, "ms per pair": 1000 * seconds,
                     "pairs/s per core": 1 / seconds})
    print_table(rows, "a fine-tuning training pair (pseudo-fake + augmentation of both), one core")
    write_results("bench_sbi", {"rows": rows})


if __name__ == "__main__":
    main()
