"""A labelled PNG grid for eyeballing the fakes: one row per target, its original beside each method's fake,
all cropped around the target's face at the clip's middle frame."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ...core.cache import atomic_path
from ...preprocessing.video import MediaError, read_frames

log = logging.getLogger(__name__)

CELL = 160  # px, each cell is square
HEADER = 28  # px, column titles
ROW_LABEL = 150  # px, row titles on the left
MAX_ROWS = 12
FACE_MARGIN = 1.7  # crop side / face size


@dataclass
class SheetRow:
    label: str
    face_box: np.ndarray  # x0, y0, x1, y1 of the target face in the middle frame
    middle_frame: int
    videos: list[Path | None]  # one per column; None where that method has no fake of this target


def sheet_size(n_rows: int, n_columns: int) -> tuple[int, int]:
    """(height, width) of a sheet with this many rows and columns."""
    return HEADER + n_rows * CELL, ROW_LABEL + n_columns * CELL


def _crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = FACE_MARGIN * max(box[2] - box[0], box[3] - box[1]) / 2
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(frame.shape[1], cx + half)), int(min(frame.shape[0], cy + half))
    return cv2.resize(frame[y0:y1, x0:x1], (CELL, CELL), interpolation=cv2.INTER_AREA)


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def write_contact_sheet(path: Path, columns: list[str], rows: list[SheetRow]) -> Path:
    height, width = sheet_size(len(rows), len(columns))
    sheet = np.full((height, width, 3), 32, np.uint8)
    for column, title in enumerate(columns):
        _text(sheet, title, (ROW_LABEL + column * CELL + 6, HEADER - 9), 0.5)
    for row_index, row in enumerate(rows):
        top = HEADER + row_index * CELL
        for line, part in enumerate(row.label.split("\n")):
            _text(sheet, part, (6, top + 22 + 18 * line))
        for column, video in enumerate(row.videos):
            left = ROW_LABEL + column * CELL
            if video is None:
                _text(sheet, "none", (left + CELL // 2 - 18, top + CELL // 2))
                continue
            try:
                _, frames = read_frames(video, [row.middle_frame])
            except MediaError as error:
                _text(sheet, "unreadable", (left + 10, top + CELL // 2))
                log.warning("contact sheet: %s", error)
                continue
            sheet[top:top + CELL, left:left + CELL] = _crop(frames[0], row.face_box)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the contact sheet")
    return path
