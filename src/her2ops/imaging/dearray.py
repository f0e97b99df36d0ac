"""TMA dearraying: find the cores on a tissue-microarray slide image and give each its grid spot.

As in Selcuk et al. 2024, cores are found with a Hough circle transform, here on a low-resolution
copy of the slide (at most ``max_side`` px): tissue is separated from glass by optical density,
each core's mask is closed and filled, and circles are fitted to the mask outlines
(``skimage.transform.hough_circle`` / ``hough_circle_peaks``). A circle is kept only if tissue
fills most of it, so dust and label text are not taken for cores.

Grid rows and columns (1-based, row 1 at the top, column 1 at the left) come from clustering the
centres' y and then x coordinates: values closer than half the spot pitch share a row (column),
and a whole missing row or column is recognised from the gap between neighbours. Given
``rows``/``cols``, the clustering is forced to that many groups. The grid is assumed axis-aligned
(a slight rotation is tolerated like jitter), and a row or column missing at the border of the
grid cannot be seen from the image: the first row found is row 1.

Crops are cut from the full-resolution slide; pixels outside the fitted circle (with a margin)
are set to white so no piece of a neighbouring core comes along.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from her2ops.config import get_settings
from her2ops.errors import InvalidRequest
from her2ops.imaging.readers import TIFF_MAGIC, ImageError, pillow_pixel_limit
from her2ops.progress import Progress, no_progress, track

__all__ = [
    "FoundCore",
    "SlideImage",
    "assign_grid",
    "crop_core",
    "dearray",
    "find_circles",
    "found_to_dicts",
    "write_cores",
]

DEFAULT_MAX_SIDE = 2000
CROP_MARGIN = 1.15
MANIFEST_COLUMNS = ("patient", "core", "image", "slide", "row", "col", "site")

U8 = NDArray[np.uint8]


@dataclass(frozen=True)
class FoundCore:
    """A core found on a slide: grid spot (1-based) and circle in full-resolution pixels."""

    row: int
    col: int
    cx: float
    cy: float
    radius: float
    score: float = 0.0  # Hough accumulator: fraction of the circle's outline on tissue edges

    @property
    def spot(self) -> str:
        return f"r{self.row}_c{self.col}"


# --- slide input --------------------------------------------------------------------------------


def _to_rgb(arr: NDArray[Any]) -> U8:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255:
            arr = (arr / 257).astype(np.uint8)  # 16-bit scans
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InvalidRequest(f"expected an RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SlideImage:
    """A slide image read from PNG/JPEG/TIFF (pyramidal TIFF: the overview comes from a low
    level), or wrapped around an RGB array.

    The full-resolution image is read only when crops are cut, as one array, so a slide read from
    a file is bounded: its size is read from the header (TIFF tags, PNG IHDR, JPEG frame header)
    without decoding anything, and more than ``max_pixels`` pixels (default
    ``HER2OPS_MAX_SLIDE_PIXELS``) is refused. A file holding several images (a multi-page TIFF,
    an animated PNG, a multi-picture JPEG; pyramid levels and a slide's label or macro images do
    not count) is refused unless ``page`` chooses one, as at ingest. The pixels are read as at
    ingest, strictly and with the same conversions to RGB: a TIFF's (the overview level
    included) by ``tiff_reader.decode_tiff``, each JPEG tile or strip checked; a PNG's or JPEG's
    by ``readers.decode_pillow`` (a JPEG cut short is refused).
    """

    def __init__(
        self,
        source: str | Path | NDArray[Any],
        *,
        max_pixels: int | None = None,
        page: int | None = None,
    ) -> None:
        self.path: Path | None = None
        self._full: U8 | None = None
        self._levels: list[tuple[int, int]] = []
        self._kind = "array"
        self._page: int | None = None  # the chosen image of a file holding several
        self.max_pixels = 0
        if isinstance(source, np.ndarray):
            self._full = _to_rgb(source)
            self.name = "slide"
            return
        self.path = Path(source)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such slide image: {self.path}")
        self.name = self.path.stem
        if page is not None and page < 0:
            raise ImageError(f"{self.path}: page must be >= 0, got {page}")
        self.max_pixels = max_pixels or get_settings().max_slide_pixels
        with open(self.path, "rb") as fh:
            magic = fh.read(8)
        try:
            if magic[:4] in TIFF_MAGIC:
                self._kind = "tiff"
                self._read_tiff_header(page)
            elif magic == _PNG_SIGNATURE or magic[:2] == b"\xff\xd8":
                self._kind = "pillow"
                self._read_pillow_header(magic, page)
            else:
                raise ImageError(f"{self.path}: not a PNG, JPEG or TIFF slide image")
        except ImageError:
            raise
        except Exception as exc:  # any reader error on an untrusted header is the file's fault
            raise ImageError(f"{self.path}: not a readable image ({exc})") from None

    def _check_size(self, height: int, width: int) -> None:
        if height <= 0 or width <= 0:
            raise ImageError(f"{self.path}: invalid image size {width}x{height}")
        if height * width > self.max_pixels:
            raise ImageError(
                f"{self.path}: {width:,} x {height:,} px is more than HER2OPS_MAX_SLIDE_PIXELS "
                f"({self.max_pixels:,}); refused before decoding"
            )

    def _choose(self, count: int, page: int | None, what: str) -> int:
        if count > 1 and page is None:
            raise ImageError(
                f"{self.path}: holds {count} {what}; choose one (page 0 to {count - 1}) "
                "instead of taking the first"
            )
        index = page or 0
        if index >= count:
            raise ImageError(f"{self.path}: page {index} asked, the file holds {count} image(s)")
        return index

    def _read_tiff_header(self, page: int | None) -> None:
        import tifffile

        from her2ops.imaging.tiff_reader import image_pages

        assert self.path is not None
        with tifffile.TiffFile(self.path) as tf:
            pages = image_pages(tf)
            if not pages:
                raise ImageError(f"{self.path}: TIFF holds no image")
            index = self._choose(len(pages), page, "pages (images)")
            if len(pages) == 1:
                self._levels = [self._hw(lv.shape, lv.axes) for lv in tf.series[0].levels]
            else:  # a chosen page: read as it is, without its pyramid
                self._page = index
                self._levels = [(int(pages[index].imagelength), int(pages[index].imagewidth))]
        self._check_size(*self._levels[0])

    def _read_pillow_header(self, magic: bytes, page: int | None) -> None:
        assert self.path is not None
        if magic == _PNG_SIGNATURE:
            with open(self.path, "rb") as fh:
                ihdr = fh.read(24)[16:24]
            if len(ihdr) < 8:
                raise ImageError(f"{self.path}: truncated PNG (no image header)")
            height, width = int.from_bytes(ihdr[4:8], "big"), int.from_bytes(ihdr[:4], "big")
            what = "frames (an animated PNG)"
        else:
            from her2ops.imaging.jpeg_reader import jpeg_header_size

            height, width = jpeg_header_size(self.path)
            what = "pictures (a multi-picture JPEG)"
        self._check_size(height, width)  # before Pillow parses more than the header
        with self._open_pil() as im:
            frames = int(getattr(im, "n_frames", 1))
            if (im.height, im.width) != (height, width):
                raise ImageError(f"{self.path}: image header read two ways disagrees")
        index = self._choose(frames, page, what)
        self._page = index if frames > 1 else None
        self._levels = [(height, width)]

    @property
    def _is_tiff(self) -> bool:
        return self._kind == "tiff"

    @staticmethod
    def _hw(shape: Sequence[int], axes: str) -> tuple[int, int]:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])

    def _open_pil(self) -> Image.Image:
        """Open (header only); Pillow's bomb limit is our bound, never off."""
        assert self.path is not None
        with pillow_pixel_limit(self.max_pixels):
            return Image.open(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """Full-resolution (height, width)."""
        if self._full is not None:
            return self._full.shape[0], self._full.shape[1]
        return self._levels[0]

    def full(self) -> U8:
        """The full-resolution RGB image (read once, then kept)."""
        if self._full is None:
            assert self.path is not None
            if self._is_tiff:
                self._full = self._read_tiff(level=0)
            else:  # PNG or JPEG, decoded as ingest decodes it (strict, same conversions)
                from her2ops.imaging.readers import decode_pillow

                self._full = decode_pillow(self.path, self.max_pixels, self._page)[3]
        return self._full

    def _read_tiff(self, level: int) -> U8:
        """One level of the TIFF, read as ingest reads it (strict, same conversions to RGB)."""
        from her2ops.imaging.tiff_reader import decode_tiff

        assert self.path is not None
        return decode_tiff(self.path, self.max_pixels, self._page, level=level)[3]

    def thumbnail(self, max_side: int = DEFAULT_MAX_SIDE) -> tuple[U8, float]:
        """An RGB overview at most ``max_side`` px on its long side, and its downsampling factor
        (full-resolution px per overview px)."""
        h0, w0 = self.shape
        if self._is_tiff and len(self._levels) > 1 and self._full is None:  # a pyramid
            # the smallest pyramid level still at least max_side, to resample from
            level = 0
            for i, (h, w) in enumerate(self._levels):
                if max(h, w) >= max_side:
                    level = i
            src = self._read_tiff(level)
        else:
            src = self.full()
        factor = max(h0, w0) / max_side
        if factor <= 1.0:
            return src, 1.0
        th, tw = max(1, round(h0 / factor)), max(1, round(w0 / factor))
        img = Image.fromarray(src).resize((tw, th), Image.Resampling.BOX)
        return np.asarray(img), w0 / tw


# --- detection ------------------------------------------------------------------------------------


#: tissue threshold on the smoothed optical density summed over R, G, B (relative to glass):
#: pale stroma sums to ~0.05-0.1, noise on glass stays well below after smoothing.
TISSUE_OD = 0.04


def tissue_mask_od(rgb: U8, threshold: float = TISSUE_OD) -> NDArray[np.bool_]:
    """Tissue (vs glass) by optical density summed over R, G, B, relative to the glass.

    The glass level is each channel's 95th percentile (a TMA slide is mostly glass); the
    density is smoothed (Gaussian, 1.5 px) before the threshold so sensor noise does not count.
    """
    arr = np.maximum(rgb.astype(np.float32), 1.0)
    sample = arr.reshape(-1, 3)[:: max(1, arr.size // 3 // 200_000)]
    glass = np.maximum(np.percentile(sample, 95, axis=0), 1.0)
    od = np.maximum(-np.log(arr / glass), 0.0).sum(axis=-1)
    return ndimage.gaussian_filter(od, 1.5) > threshold


def _core_masks(mask: NDArray[np.bool_], close_px: int) -> NDArray[np.bool_]:
    """Close gaps inside cores (lumina, stroma, fragments) and fill holes."""
    from skimage.morphology import disk

    if close_px > 0:
        mask = ndimage.binary_closing(mask, structure=disk(close_px), border_value=0)
    return ndimage.binary_fill_holes(mask)


def _radius_range(mask: NDArray[np.bool_], expected: float | None) -> tuple[float, float]:
    if expected is not None:
        return 0.75 * expected, 1.2 * expected
    labels, n = ndimage.label(mask)
    if n == 0:
        return 0.0, 0.0
    areas = np.bincount(labels.ravel())[1:]
    big = areas[areas >= 0.25 * areas.max()]
    r = np.sqrt(np.median(big) / np.pi)
    return 0.7 * r, 1.35 * r


def _nms(cands: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
    """Keep the strongest circle among overlapping ones (TMA cores do not overlap)."""
    kept: list[tuple[float, float, float, float]] = []
    for acc, x, y, r in sorted(cands, key=lambda c: -c[0]):
        if all(np.hypot(x - kx, y - ky) > 0.9 * max(r, kr) for _, kx, ky, kr in kept):
            kept.append((acc, x, y, r))
    return kept


def _convex_blobs(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Each connected blob replaced by its convex hull (computed in its bounding box)."""
    from skimage.morphology import convex_hull_image

    labels, _ = ndimage.label(mask)
    out = np.zeros_like(mask)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        blob = labels[box] == i
        out[box] |= convex_hull_image(blob) if blob.sum() > 2 else blob
    return out


def find_circles(
    thumb: U8,
    *,
    expected_radius: float | None = None,
    min_support: float = 0.5,
    min_fill: float = 0.6,
    hough_radius: float = 30.0,
) -> list[tuple[float, float, float, float]]:
    """Circles around the tissue blobs of an overview: ``(support, cx, cy, r)`` in its pixels.

    The Hough transform runs where a core's radius is about ``hough_radius`` px (the overview
    is reduced further if its cores are larger), on the outlines of the convex hulls of the
    closed, filled tissue blobs, widened by a few px: core outlines are ragged, and with a
    widened outline the normalised accumulator is the fraction of a circle that follows the
    outline (its *support*). A circle is kept with at least ``min_support`` and tissue filling
    at least ``min_fill`` of its disc.
    """
    from skimage.feature import canny
    from skimage.transform import hough_circle, hough_circle_peaks

    raw = tissue_mask_od(thumb)
    r_lo, r_hi = _radius_range(raw, expected_radius)
    if r_hi < 3:
        return []
    k = max(1, int((r_lo + r_hi) / 2 / hough_radius))
    if k > 1:
        raw = tissue_mask_od(np.asarray(Image.fromarray(thumb).reduce(k)))
    mask = _core_masks(raw, max(1, round(0.1 * r_lo / k)))
    r_lo, r_hi = _radius_range(mask, None if expected_radius is None else expected_radius / k)
    r_lo = max(r_lo, 3.0)
    if r_hi <= r_lo:
        return []
    # drop dust before it votes, then round off notches
    mask = _remove_small(mask, 0.25 * np.pi * r_lo * r_lo)
    mask = _convex_blobs(mask)
    n_blobs = int(ndimage.label(mask)[1])
    if n_blobs == 0:
        return []
    radii = np.arange(r_lo, r_hi + 1.0, max(1.0, (r_hi - r_lo) / 24))
    outline = canny(mask.astype(np.float32), sigma=1.0)
    outline = ndimage.binary_dilation(outline, iterations=max(1, round(0.04 * (r_lo + r_hi))))
    hspaces = hough_circle(outline, radii, normalize=True)
    supports, xs, ys, rs = hough_circle_peaks(
        hspaces,
        radii,
        min_xdistance=max(1, int(r_lo * 0.7)),
        min_ydistance=max(1, int(r_lo * 0.7)),
        threshold=min_support,
        total_num_peaks=3 * n_blobs,
    )
    hgt, wid = mask.shape
    yy, xx = np.ogrid[:hgt, :wid]
    cands = []
    for support, x, y, r in zip(supports, xs, ys, rs, strict=True):
        inside = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        if mask[inside].mean() >= min_fill:
            # back to overview pixels (pixel centres scale about the half-pixel offset)
            cx, cy = (float(x) + 0.5) * k - 0.5, (float(y) + 0.5) * k - 0.5
            cands.append((float(support), cx, cy, float(r) * k))
    return _nms(cands)


def _remove_small(mask: NDArray[np.bool_], min_area: float) -> NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def _grid_index(values: NDArray[np.float64], pitch: float, count: int | None) -> NDArray[np.int64]:
    """1-based grid index of 1-D centre coordinates (rows from y, or columns from x)."""
    order = np.argsort(values)
    v = values[order]
    gaps = np.diff(v)
    breaks = gaps > 0.5 * pitch
    if count is not None and breaks.sum() + 1 > count:
        # more groups than grid lines given: jitter may have split a line, so keep only the
        # count-1 widest gaps, unless a dropped gap is as wide as a kept one (a real line)
        widest = np.argsort(gaps)[len(gaps) - (count - 1) :] if count > 1 else np.array([], int)
        kept = np.zeros_like(breaks)
        kept[widest] = True
        dropped = gaps[breaks & ~kept]
        floor = gaps[kept].min() if count > 1 else 0.0
        if dropped.size and dropped.max() > 0.6 * floor:
            raise InvalidRequest(
                f"found {int(breaks.sum()) + 1} grid lines, more than the {count} given"
            )
        breaks = kept
    group = np.concatenate([[0], np.cumsum(breaks)]).astype(np.int64)
    means = np.array([v[group == g].mean() for g in range(group[-1] + 1)])
    if len(means) == 1 or (count is not None and len(means) == count):
        slots = np.arange(len(means), dtype=np.int64)
    else:
        # a whole missing row (column) shows as a gap of two pitches between group means
        d = np.diff(means)
        slots = np.concatenate([[0], np.cumsum(np.rint(d / d.min()))]).astype(np.int64)
    index = np.empty(len(values), dtype=np.int64)
    index[order] = slots[group] + 1
    if count is not None and index.max() > count:
        raise InvalidRequest(f"found {index.max()} grid lines, more than the {count} given")
    return index


def assign_grid(
    centres: NDArray[np.float64], *, rows: int | None = None, cols: int | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """1-based (row, col) for each ``(x, y)`` centre of a roughly axis-aligned grid."""
    if len(centres) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(centres) == 1:
        return np.ones(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(centres).query(centres, k=2)
    pitch = float(np.median(dist[:, 1]))
    row = _grid_index(centres[:, 1], pitch, rows)
    col = _grid_index(centres[:, 0], pitch, cols)
    return row, col


def dearray(
    slide: str | Path | NDArray[Any] | SlideImage,
    *,
    rows: int | None = None,
    cols: int | None = None,
    expected_diameter: float | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> list[FoundCore]:
    """Find the cores of a TMA slide and their grid spots, sorted by (row, col).

    ``expected_diameter`` is the core diameter in full-resolution px (estimated from the tissue
    blobs when None). Where two circles claim the same spot, the stronger one is kept.
    """
    img = slide if isinstance(slide, SlideImage) else SlideImage(slide)
    thumb, factor = img.thumbnail(max_side)
    expected_r = None if expected_diameter is None else expected_diameter / 2 / factor
    circles = find_circles(thumb, expected_radius=expected_r)
    if not circles:
        return []
    centres = np.array([[x, y] for _, x, y, _ in circles], dtype=np.float64)
    row, col = assign_grid(centres, rows=rows, cols=cols)
    best: dict[tuple[int, int], FoundCore] = {}
    for (acc, x, y, r), rr, cc in zip(circles, row, col, strict=True):
        found = FoundCore(
            int(rr), int(cc), (x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5, r * factor, acc
        )
        key = (found.row, found.col)
        if key not in best or best[key].score < found.score:
            best[key] = found
    return [best[k] for k in sorted(best)]


# --- crops and manifest --------------------------------------------------------------------------


def crop_core(full: U8, core: FoundCore, *, margin: float = CROP_MARGIN) -> U8:
    """The square around a found core at full resolution, white outside the (margin) circle."""
    h, w = full.shape[:2]
    half = core.radius * margin
    x0, x1 = max(0, int(core.cx - half)), min(w, int(np.ceil(core.cx + half)) + 1)
    y0, y1 = max(0, int(core.cy - half)), min(h, int(np.ceil(core.cy + half)) + 1)
    crop = full[y0:y1, x0:x1].copy()
    yy, xx = np.ogrid[y0:y1, x0:x1]
    crop[(yy - core.cy) ** 2 + (xx - core.cx) ** 2 > half * half] = 255
    return crop


def write_cores(
    slide: str | Path | NDArray[Any] | SlideImage,
    found: Iterable[FoundCore],
    out_dir: str | Path,
    *,
    slide_name: str | None = None,
    progress: Progress = no_progress,
) -> Path:
    """Write each core as ``<slide>_r{row}_c{col}.png`` and a ``manifest.csv`` for ingest.

    The slide does not know its patients, so each spot is its own placeholder patient (patient
    and core codes are both the spot id ``<slide>_r{row}_c{col}``); replace the patient column
    from the TMA map before ingesting when one exists. Returns the manifest's path.
    """
    img = slide if isinstance(slide, SlideImage) else SlideImage(slide)
    name = slide_name or img.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = img.full()
    cores = list(found)
    rows_out = []
    for core in track(cores, progress, "writing cores"):
        spot = f"{name}_{core.spot}"
        Image.fromarray(crop_core(full, core)).save(out / f"{spot}.png", compress_level=3)
        rows_out.append(
            {
                "patient": spot,
                "core": spot,
                "image": f"{spot}.png",
                "slide": name,
                "row": core.row,
                "col": core.col,
                "site": "",
            }
        )
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows_out)
    return manifest


def found_to_dicts(found: Iterable[FoundCore]) -> list[dict[str, Any]]:
    """Plain dicts (for JSON output)."""
    return [asdict(f) for f in found]
