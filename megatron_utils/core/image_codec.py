"""Lossless image stacks inside stage-cache entries.

A stack of N images is stored as two tensors: `<name>_bytes` uint8 [B], the N encoded files laid end to
end, and `<name>_offsets` int64 [N + 1], where image i spans bytes offsets[i]:offsets[i + 1]. Each image
is encoded on its own (WebP or PNG, by Pillow), so a single one decodes without reading the others: a
training DataLoader reads one crop at a time. Decoding checks the format, the dtype and the channel count,
so a damaged or mismatched entry fails with the item's name instead of returning wrong pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageCodec:
    """One lossless Pillow format and what its images hold: `dtype` uint8 or uint16, `channels` 3 (RGB)
    or 1 (grey). `options` are Pillow's save options (e.g. WebP's effort)."""

    format: str
    dtype: str
    channels: int
    options: tuple[tuple[str, Any], ...] = ()

    def identity(self) -> dict[str, Any]:
        """Everything that changes the stored bytes, for a stage's cache key."""
        return {"format": self.format, "dtype": self.dtype, "channels": self.channels,
                "options": dict(self.options)}

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The shape of one pixel in the arrays: (3,) for RGB, () for grey."""
        return (3,) if self.channels == 3 else ()

    def encode(self, image: np.ndarray) -> bytes:
        if image.dtype != self.dtype or image.ndim != 2 + len(self.pixel_shape) \
                or image.shape[2:] != self.pixel_shape:
            raise ValueError(f"{self.format} codec takes {self.dtype} images with {self.channels} channels, "
                             f"got {image.dtype} {list(image.shape)}")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, self.format, **dict(self.options))
        return buffer.getvalue()

    def decode(self, data: bytes | np.ndarray, where: str) -> np.ndarray:
        """One image; `where` names it in the error raised for data that is not such an image."""
        try:
            with Image.open(io.BytesIO(memoryview(data))) as image:
                image.load()
                found = image.format
                array = np.asarray(image)
        except (OSError, ValueError, SyntaxError, EOFError) as error:  # Pillow's ways to say "corrupt"
            raise ValueError(f"{where}: cannot be decoded as {self.format} ({type(error).__name__}: "
                             f"{error})") from error
        channels = array.shape[2] if array.ndim == 3 else 1
        # Pillow opens 16-bit grey PNGs as int32 "I" in some versions, as uint16 "I;16" in others.
        fits = array.max(initial=0) <= np.iinfo(self.dtype).max
        if found != self.format or channels != self.channels or not fits:
            raise ValueError(f"{where}: holds a {found} image {array.dtype} {list(array.shape)}, expected "
                             f"{self.format} {self.dtype} with {self.channels} channels")
        return array.astype(self.dtype, copy=False)


def encode_images(name: str, images: np.ndarray, codec: ImageCodec) -> dict[str, np.ndarray]:
    """Images [N, H, W(, 3)] -> {`<name>_bytes`: uint8 [B], `<name>_offsets`: int64 [N + 1]}."""
    files = [codec.encode(image) for image in images]
    offsets = np.zeros(len(files) + 1, np.int64)
    np.cumsum([len(data) for data in files], out=offsets[1:])
    data_name, offsets_name = encoded_names(name)
    return {data_name: np.frombuffer(b"".join(files), np.uint8), offsets_name: offsets}


def encoded_names(name: str) -> tuple[str, str]:
    """The two tensors that hold the stack `name`: its bytes and its offsets."""
    return f"{name}_bytes", f"{name}_offsets"


def _checked_offsets(offsets: np.ndarray, size: int, where: str) -> np.ndarray:
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != size \
            or np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{where}: offsets {offsets.tolist()[:8]}... do not split {size} bytes into images")
    return offsets


def decode_images(name: str, tensors: dict[str, np.ndarray], codec: ImageCodec, where: str) -> np.ndarray:
    """The whole stack `name` of an entry's tensors -> [N, H, W(, 3)]; `where` names the entry in errors."""
    data, offsets = (tensors[key] for key in encoded_names(name))
    offsets = _checked_offsets(offsets, len(data), f"{where}: {name}")
    images = [codec.decode(data[start:stop], f"{where}: {name} image {row} of {len(offsets) - 1}")
              for row, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"{where}: {name} images differ in shape: {sorted(shapes)}")
    return np.stack(images) if images else np.zeros((0, 0, 0, *codec.pixel_shape), codec.dtype)


def decode_image_row(handle: Any, name: str, codec: ImageCodec, row: int, where: str) -> np.ndarray:
    """Image `row` of the stack `name`, read alone from an open safetensors file (`StageCache.entry`)."""
    data_name, offsets_name = encoded_names(name)
    offsets = handle.get_slice(offsets_name)
    count = offsets.get_shape()[0] - 1
    if not 0 <= row < count:
        raise IndexError(f"{where}: {name} has {count} images, no row {row}")
    start, stop = (int(v) for v in offsets[row:row + 2])
    data = handle.get_slice(data_name)
    where = f"{where}: {name} image {row} of {count}"
    if not 0 <= start < stop <= data.get_shape()[0]:
        raise ValueError(f"{where}: bytes {start}:{stop} lie outside the {data.get_shape()[0]} stored")
    return codec.decode(data[start:stop], where)
