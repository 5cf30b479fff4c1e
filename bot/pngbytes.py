"""Deterministic, valid PNG files of a given size in pixels and (roughly) in bytes. Pure.

The emulator never stores image bytes: it regenerates them from a key (the blob's name) every
time, so the same key always yields the same bytes; the live trial (bot.trial) uploads such
files to its scratch project, which is why this lives in bot/ and not in the test rig.
Pixels are a two-colour checkerboard (1-bit indexed colour compresses to almost nothing; the
emulator makes one per blob download, about 0.3 ms at 1000x700, mostly zlib); the file is
padded to the wanted byte size with a `tEXt` comment of pseudo-random hex, which keeps it a
valid PNG that any decoder accepts.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, key: str, size: int = 0) -> bytes:
    """Return a valid `width` x `height` PNG derived from `key`, padded to about `size` bytes."""
    if width < 1 or height < 1:
        raise ValueError("a PNG needs at least one pixel")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    palette = digest[0:6]
    cell = 8 + digest[6] % 56
    row_bytes = (width + 7) // 8

    def row(phase: int) -> bytes:
        # Pixel x is set when ((x // cell) + phase) is odd, most significant bit first: built
        # as a string of bits (a loop over the pixels cost the emulator ~0.3 ms per image).
        unit = ("0" * cell + "1" * cell) if phase == 0 else ("1" * cell + "0" * cell)
        bits = (unit * (width // len(unit) + 1))[:width].ljust(row_bytes * 8, "0")
        return b"\x00" + int(bits, 2).to_bytes(row_bytes, "big")  # filter type 0 (None)

    rows = (row(0), row(1))
    band = rows[0] * cell + rows[1] * cell  # row y is rows[(y // cell) & 1]
    raw = (band * (height // (2 * cell) + 1))[: height * len(rows[0])]
    header = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)  # 1-bit indexed colour
    body = [
        _chunk(b"IHDR", header),
        _chunk(b"PLTE", palette),
        _chunk(b"IDAT", zlib.compress(raw, 6)),
    ]
    text_prefix = b"Comment\x00cv-dsr-bot emulator " + key.encode("ascii", "replace")
    bare = len(PNG_SIGNATURE) + sum(map(len, body)) + 12 + 12 + len(text_prefix)
    padding = max(0, size - bare)
    filler = hashlib.shake_256(digest).hexdigest((padding + 1) // 2)[:padding].encode("ascii")
    text = _chunk(b"tEXt", text_prefix + (b" " if padding else b"") + filler[1:])
    return PNG_SIGNATURE + body[0] + body[1] + text + body[2] + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR; raise ValueError when `data` is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
