"""Hostile image files for the data set fuzz tests, made with PIL (or by hand, for the huge headers).

Every maker writes one file at `path` and returns it. `KINDS` maps a name to (maker, readable): whether
graft should read the file as an image (True) or report it as unreadable/corrupt (False).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def _pixels(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def good_jpeg(path: Path) -> Path:
    Image.fromarray(_pixels(12, 16)).save(path, format="JPEG")
    return path


def good_png(path: Path) -> Path:
    Image.fromarray(_pixels(12, 16)).save(path, format="PNG")
    return path


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(_pixels(64, 64)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(_pixels(64, 64)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def text_as_jpeg(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


def one_pixel(path: Path) -> Path:
    Image.fromarray(_pixels(1, 1)).save(path, format="PNG")
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.frombytes("CMYK", (16, 12), _pixels(12, 16, 4).tobytes()).save(path, format="JPEG")
    return path


def png16(path: Path) -> Path:
    arr = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16)
    Image.fromarray(arr).save(path, format="PNG")  # uint16: mode I;16
    return path


def palette_png(path: Path) -> Path:
    Image.fromarray(_pixels(12, 16)).convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")
    return path


def animated_gif(path: Path) -> Path:
    frames = [Image.fromarray(_pixels(12, 16, seed=k)).convert("P") for k in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, rows: bytes, colour: int = 2) -> bytes:
    """A PNG with the given IHDR size (8-bit, colour type `colour`) and `rows` (compressed) as IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def huge_declared_png(path: Path) -> Path:
    """A few hundred bytes whose header claims 20000 x 20000 RGB (1.2 GB decoded); data for 2 rows."""
    path.write_bytes(png_header(20000, 20000, b"\x00" * (2 * (1 + 3 * 20000))))
    return path


def huge_complete_png(path: Path) -> Path:
    """A complete, valid 10000 x 10000 grayscale PNG of zeros: about 100 KB on disk, 100 M pixels
    (above PIL's decompression-bomb limit of 89.5 M); decoded to float32 RGB it would take 1.2 GB."""
    width = height = 10000
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def huge_declared_gif(path: Path) -> Path:
    """A GIF whose screen and frame claim 65535 x 65535, with a one-pixel image stream."""
    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    at = data.index(b",")  # image descriptor
    data[at + 5 : at + 9] = struct.pack("<HH", 65535, 65535)
    path.write_bytes(bytes(data))
    return path


#: name -> (maker, file extension, whether graft should read it as an image)
KINDS: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    "zero_byte": (zero_byte, ".jpg", False),
    "truncated_jpeg": (truncated_jpeg, ".jpg", False),
    "truncated_png": (truncated_png, ".png", False),
    "text_as_jpeg": (text_as_jpeg, ".jpg", False),
    "one_pixel": (one_pixel, ".png", True),
    "cmyk_jpeg": (cmyk_jpeg, ".jpg", True),
    "png16": (png16, ".png", True),
    "palette_png": (palette_png, ".png", True),
    "animated_gif": (animated_gif, ".gif", True),
    "huge_declared_png": (huge_declared_png, ".png", False),
    "huge_complete_png": (huge_complete_png, ".png", False),
    "huge_declared_gif": (huge_declared_gif, ".gif", False),
}
