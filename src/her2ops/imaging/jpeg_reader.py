"""JPEG: structure check and strict decoding (part of :mod:`her2ops.imaging.readers`).

Every JPEG decoder installed here wraps libjpeg-turbo (Pillow, imagecodecs, tifffile through
imagecodecs), and libjpeg treats entropy-coded data that stops early as a *warning* ("Corrupt
JPEG data: premature end of data segment"): it fills the rest of the image with grey and
carries on. Pillow and imagecodecs drop the warning and offer no switch to make it an error, so a
JPEG that was cut short and then given an end-of-image marker again (some copy and repair tools
do that) would decode "successfully", partly grey. Two checks close that gap:

- **structure**, without decoding: every segment complete, an end-of-image marker after the last
  scan, every component in a scan (sequential) or every coefficient of every component refined
  to full precision (progressive), and in each scan as many restart markers as its MCU count asks
  for. These catch a cut between two scans or between two restart intervals, where the decoder
  misses nothing it could notice. Arithmetic-coded JPEGs are refused: their decoder reads past
  the end of complete data by design (zeros), so the probe below cannot tell a cut.
- **a probe decode**: the image is decoded twice, the second time with filler entropy data (a
  piece of the scan's own data, then 1-bits) placed after each scan's data. A Huffman decoder
  that had all the data it needed stops at the scan's last block and never reads the filler, so
  both decodes are identical; one that ran short reads the filler instead of zeros, and the
  pixels differ. Both decodes go into the same buffer and are compared by CRC, so memory stays
  at one decoded image plus the file.

Both checks apply as well to each tile or strip of a JPEG-compressed TIFF
(:func:`decode_jpeg_segment`, called by :mod:`her2ops.imaging.tiff_reader`): the stream is
checked without its tables (they may be in the TIFF's JPEGTables) and probed with tifffile's own
decoder, which brings the tables and colour spaces.

What the probe cannot promise (measured when this was written, on 127,639 cuts of small test
images at every byte of every scan): about 0.1 % of cuts, nearly all in the last few bytes of a
scan, decode the filler to the same pixels as libjpeg's zeros and pass; and corrupt (not missing)
entropy data is caught only when it makes the decoder run short, not when it still decodes to
the right number of blocks (about a third of random 4-byte corruptions were caught).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from her2ops.imaging.readers import ImageError

# Where the entropy-coded data of a JPEG scan ends: a 0xFF that is neither byte stuffing
# (0xFF00), a restart marker (0xFFD0-D7) nor a fill byte. (\xff\xff* rather than \xff+: the
# same bytes, but a literal first byte lets ``re`` skip to each 0xFF, about 10x faster.)
_SCAN_END = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOF_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2, 0xC3})
_SOF_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB})
_SOF_HIERARCHICAL = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})
_FILLER_SAMPLE = 4096  # bytes of the scan's own data used as filler
_ONES = b"\xff\x00" * 64  # 1-bits, byte-stuffed


@dataclass(frozen=True)
class _Scan:
    components: tuple[int, ...]
    spectral: tuple[int, int]  # Ss, Se
    low_bit: int  # Al: the scan brings coefficients to this precision (0 = full)
    restart_interval: int  # MCUs per restart interval in force for this scan (0: none)
    data: tuple[int, int]  # entropy-coded data [start, end) in the file


@dataclass(frozen=True)
class _Frame:
    marker: int  # SOFn
    height: int
    width: int
    sampling: dict[int, tuple[int, int]]  # component id: (h, v) sampling factors


@dataclass(frozen=True)
class JpegLayout:
    """What the structure check learnt: where each scan's entropy-coded data lies."""

    scans: tuple[_Scan, ...]
    end: int  # just past the end-of-image marker


def check_jpeg(path: Path | str, data: bytes | bytearray, start: int = 0) -> JpegLayout:
    """Every segment complete, an end-of-image marker after the last scan, every component and
    coefficient coded and every restart marker present: a JPEG cut short anywhere between
    scans or restart intervals (libjpeg would fill the rest in grey with a mere warning) is
    refused. ``start``: where the picture begins (a later picture of a multi-picture file).
    ``path``: how errors name the picture (the file, or a TIFF's file, page and tile).

    The tables (DQT, DHT) are not looked for: an abbreviated stream, such as a TIFF tile whose
    tables are in the TIFF's JPEGTables, is checked the same way."""
    size = len(data)
    if data[start : start + 2] != b"\xff\xd8":
        raise ImageError(f"{path}: corrupt JPEG (no start-of-image marker)")
    pos = start + 2
    frame: _Frame | None = None
    restart_interval = 0
    scans: list[_Scan] = []
    while True:
        if pos + 2 > size:
            raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise ImageError(f"{path}: corrupt JPEG (no marker at byte {pos:,})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            raise ImageError(f"{path}: truncated JPEG (segment header cut at byte {pos:,})")
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > size:
            raise ImageError(f"{path}: truncated JPEG (segment ends past the end of the file)")
        body = bytes(data[pos + 4 : end])
        if marker in _SOF_ARITHMETIC:
            raise ImageError(
                f"{path}: arithmetic-coded JPEG is not supported (a cut in it cannot be told "
                "from complete data); re-encode it with Huffman coding"
            )
        if marker in _SOF_HIERARCHICAL:
            raise ImageError(f"{path}: hierarchical JPEG is not supported")
        if marker in _SOF_HUFFMAN:
            frame = _frame(path, marker, body)
        elif marker == 0xDD:  # define restart interval
            if len(body) < 2:
                raise ImageError(f"{path}: corrupt JPEG (short DRI segment)")
            restart_interval = int.from_bytes(body[:2], "big")
        pos = end
        if marker == 0xDA:  # start of scan: skip its entropy-coded data
            if frame is None:
                raise ImageError(f"{path}: corrupt JPEG (scan before the frame header)")
            found = _SCAN_END.search(data, pos)
            if found is None:
                raise ImageError(f"{path}: truncated JPEG (scan data runs to the end of file)")
            scans.append(_scan(path, body, restart_interval, (pos, found.start())))
            pos = found.end() - 2
    if frame is None or not scans:
        raise ImageError(f"{path}: corrupt JPEG (no image data)")
    _check_complete(path, data, frame, scans)
    return JpegLayout(scans=tuple(scans), end=pos + 2)


def jpeg_header_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's frame header, reading only the segments before it."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            raise ImageError(f"{path}: corrupt JPEG (no start-of-image marker)")
        while True:
            head = fh.read(2)
            while head[:1] == b"\xff" and head[1:] == b"\xff":  # fill bytes
                head = head[1:] + fh.read(1)
            if len(head) < 2 or head[0] != 0xFF:
                raise ImageError(f"{path}: corrupt or truncated JPEG (no frame header)")
            if head[1] in _STANDALONE:
                continue
            if head[1] in (0xD9, 0xDA):
                raise ImageError(f"{path}: corrupt JPEG (no frame header before the image data)")
            length = int.from_bytes(fh.read(2), "big")
            body = fh.read(max(0, length - 2))
            if length < 2 or len(body) != length - 2:
                raise ImageError(f"{path}: truncated JPEG (segment ends past the end of the file)")
            if head[1] in _SOF_HUFFMAN | _SOF_ARITHMETIC | _SOF_HIERARCHICAL:
                frame = _frame(path, head[1], body)
                return frame.height, frame.width


def _frame(path: Path | str, marker: int, body: bytes) -> _Frame:
    if len(body) < 6 or len(body) < 6 + 3 * body[5]:
        raise ImageError(f"{path}: corrupt JPEG (short frame header)")
    components = [body[6 + 3 * i : 9 + 3 * i] for i in range(body[5])]
    sampling = {c[0]: (c[1] >> 4, c[1] & 15) for c in components}
    if not sampling or any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling.values()):
        raise ImageError(f"{path}: corrupt JPEG (bad components in the frame header)")
    height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
    return _Frame(marker, height, width, sampling)


def _scan(path: Path | str, body: bytes, restart_interval: int, data: tuple[int, int]) -> _Scan:
    count = body[0] if body else 0
    if count < 1 or len(body) < 4 + 2 * count:
        raise ImageError(f"{path}: corrupt JPEG (short scan header)")
    components = tuple(body[1 + 2 * i] for i in range(count))
    ss, se, approx = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count]
    return _Scan(components, (ss, se), approx & 15, restart_interval, data)


def _check_complete(
    path: Path | str,
    data: bytes | bytearray,
    frame: _Frame,
    scans: list[_Scan],
) -> None:
    height, width, sampling = frame.height, frame.width, frame.sampling
    hmax = max(h for h, _ in sampling.values())
    vmax = max(v for _, v in sampling.values())
    for number, scan in enumerate(scans, 1):
        if any(c not in sampling for c in scan.components):
            raise ImageError(f"{path}: corrupt JPEG (scan {number} names an unknown component)")
        if not scan.restart_interval or not height or frame.marker == 0xC3:
            continue  # (lossless: MCUs of single samples; left to the probe, untested here)
        if len(scan.components) > 1:  # interleaved: MCUs of hmax x vmax blocks
            mcus = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
        else:  # one component: one block per MCU
            h, v = sampling[scan.components[0]]
            mcus = math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(
                math.ceil(height * v / vmax) / 8
            )
        expected = math.ceil(mcus / scan.restart_interval) - 1
        found = len(_RESTART.findall(data, *scan.data))
        if found != expected:
            raise ImageError(
                f"{path}: truncated or corrupt JPEG (scan {number} holds {found} restart "
                f"markers, its {mcus:,} MCUs need {expected})"
            )
    if frame.marker == 0xC2:  # progressive: every coefficient of every component to full precision
        for component in sampling:
            done: set[int] = set()
            for scan in scans:
                if component in scan.components and scan.low_bit == 0:
                    done.update(range(scan.spectral[0], scan.spectral[1] + 1))
            if not done.issuperset(range(64)):
                raise ImageError(
                    f"{path}: truncated JPEG (progressive scans stop before component "
                    f"{component} is complete: scans missing)"
                )
    else:
        coded = {c for scan in scans for c in scan.components}
        if coded != set(sampling):
            raise ImageError(f"{path}: truncated JPEG (components without a scan: scans missing)")


def _with_filler(data: bytearray, layout: JpegLayout, offset: int) -> None:
    """Put filler entropy data after each scan's data, in place (last scan first, so that the
    earlier offsets stay valid)."""
    for scan in reversed(layout.scans):
        start, end = scan.data[0] - offset, scan.data[1] - offset
        sample = _RESTART.sub(b"", bytes(data[start : min(end, start + _FILLER_SAMPLE)]))
        data[end:end] = sample.rstrip(b"\xff") + _ONES


def _crc(samples: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(samples).data)


#: ``decode(picture)``: the samples of one JPEG stream, in a new array.
Decoder = Callable[[bytearray], np.ndarray]


def probe_decode(
    path: Path | str,
    picture: bytearray,
    layout: JpegLayout,
    offset: int,
    out: np.ndarray | None,
    decode: Decoder | None = None,
) -> np.ndarray:
    """Decode ``picture`` (one JPEG, as found at ``offset`` in the file) twice, the second time
    with filler after each scan, and refuse it if the two differ. Returns the decoded samples.
    ``picture`` is changed in place.

    Without ``decode``, libjpeg-turbo (through imagecodecs) decodes both times into the same
    buffer (``out`` when given), and the two are compared by CRC: memory stays at one image.
    ``decode`` is a caller's own decoder (a TIFF reader's, which brings the TIFF's JPEGTables
    and colour spaces) for small pictures such as tiles: two arrays, compared directly."""
    import imagecodecs

    try:
        if decode is None:
            first = imagecodecs.jpeg8_decode(picture, out=out)
            first_crc = _crc(first)
            _with_filler(picture, layout, offset)
            second = imagecodecs.jpeg8_decode(picture, out=first)
            same = _crc(second) == first_crc
        else:
            first = decode(picture)
            _with_filler(picture, layout, offset)
            second = decode(picture)
            same = np.array_equal(first, second)
    except Exception as exc:  # imagecodecs.Jpeg8Error
        raise ImageError(f"{path}: truncated or corrupt image data: {exc}") from None
    if not same:
        raise ImageError(
            f"{path}: truncated JPEG (the entropy-coded data of a scan stops before its last "
            "block; libjpeg would fill the rest in grey)"
        )
    return second


def decode_jpeg(path: Path, data: bytearray, shape: tuple[int, int], *, gray: bool) -> np.ndarray:
    """A one-picture 8-bit RGB or grayscale JPEG, checked and probed, straight into the
    ``(H, W, 3)`` output (libjpeg-turbo, the decoder Pillow wraps: same pixels). ``data`` is
    changed in place."""
    layout = check_jpeg(path, data)
    rgb = np.empty((*shape, 3), dtype=np.uint8)
    decoded = probe_decode(path, data, layout, 0, None if gray else rgb)
    if decoded is rgb:
        return rgb
    if decoded.shape[:2] != shape or decoded.dtype != np.uint8:
        raise ImageError(f"{path}: decoded size {decoded.shape[:2]} does not match header")
    rgb[...] = decoded.reshape(*shape, -1)[..., :1]
    return rgb


def verify_jpeg(path: Path, data: bytes | bytearray, start: int = 0) -> None:
    """Check and probe the picture at ``start`` without keeping its pixels (for the pictures
    Pillow decodes: CMYK/YCbCr, or a chosen picture of a multi-picture file)."""
    layout = check_jpeg(path, data, start)
    probe_decode(path, bytearray(data[start : layout.end]), layout, start, None)


def decode_jpeg_segment(name: str, data: bytes | bytearray, decode: Decoder) -> np.ndarray:
    """One tile or strip of a JPEG-compressed TIFF (a JPEG stream; its tables may be in the
    TIFF's JPEGTables, which ``decode`` brings), checked and probed like a JPEG file; its
    samples as ``decode``, the TIFF reader's own decoder, gives them. ``name``: how errors name
    the tile or strip (file, page, index)."""
    layout = check_jpeg(name, data)
    return probe_decode(name, bytearray(data), layout, 0, None, decode)
