"""What a compressed frame's own header declares: its size, read before a native decoder sees it.

The decoders behind pydicom (openjpeg, libjpeg and CharLS, through pylibjpeg and pyjpegls)
allocate what the codestream declares, not what the DICOM header says. One changed byte in a
JPEG 2000 SIZ marker made openjpeg ask for 24 GB for a 1024 x 1024 image, and the kernel killed
the whole process: there is no exception to catch (tests/engine/test_fuzz_files.py keeps that
file). So :mod:`engine.dicom` compares the size a frame declares with the DICOM header's, which
is already held to Lantern's memory caps, and refuses the frame when it declares more.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

MAX_J2K_TILES = 65535  # a tile's index (Isot) is 16 bits: a valid codestream has no more

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
_J2K_START = b"\xff\x4f\xff\x51"  # SOC, then SIZ, which must come second
_SIZ = struct.Struct(">HHIIIIIIIIH")  # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
# Start-of-frame markers: JPEG's SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC); JPEG-LS's SOF55.
_SOF_MARKERS = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)} | {0xF7}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length follows


@dataclass(frozen=True)
class DeclaredSize:
    width: int
    height: int
    components: int
    tiles: int = 1

    @property
    def samples(self) -> int:
        return self.width * self.height * max(self.components, 1)


def is_checked(tsyntax: UID) -> bool:
    """True for the syntaxes whose frames declare their own size (JPEG, JPEG-LS, JPEG 2000)."""
    return tsyntax in JPEG2000TransferSyntaxes or tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes


def declared_size(frame: bytes, tsyntax: UID) -> DeclaredSize | None:
    """The size the frame's codestream declares; None when it cannot be found (the decoder then
    refuses the frame itself, before allocating anything for it)."""
    try:
        if tsyntax in JPEG2000TransferSyntaxes:
            return _j2k_size(frame)
        if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
            return _jpeg_size(frame)
    except (IndexError, struct.error):  # cut short: nothing declared
        return None
    return None


def _j2k_size(frame: bytes) -> DeclaredSize | None:
    offset = 0
    if frame.startswith(_JP2_SIGNATURE):  # a JP2 file: the codestream is in its 'jp2c' box
        offset = frame.find(b"jp2c") + 4
        if offset < 4:
            return None
    if frame[offset : offset + 4] != _J2K_START:
        return None
    _, _, x, y, x0, y0, tile_w, tile_h, tile_x0, tile_y0, components = _SIZ.unpack_from(frame, offset + 4)
    if tile_w == 0 or tile_h == 0 or x < x0 or y < y0:
        return DeclaredSize(x, y, components, tiles=MAX_J2K_TILES + 1)  # not a valid image grid
    tiles = -(-max(x - tile_x0, 0) // tile_w) * -(-max(y - tile_y0, 0) // tile_h)
    return DeclaredSize(x - x0, y - y0, components, tiles)


def _jpeg_size(frame: bytes) -> DeclaredSize | None:
    if frame[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            return None
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in _SOF_MARKERS:
            height, width, components = struct.unpack_from(">HHB", frame, offset + 5)
            return DeclaredSize(width, height, components)
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        offset += 2 + length
    return None
