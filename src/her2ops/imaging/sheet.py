"""Contact sheets: one PSS laid out as thumbnails, one band per pyramid level, for people to see
what the model sees."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from her2ops.imaging.pss import PSSConfig

_LABEL_W = 150
_GAP = 4
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)


def contact_sheet(
    pss_set: np.ndarray, cfg: PSSConfig, *, thumb: int = 128, columns: int = 10, title: str = ""
) -> Image.Image:
    """Lay a (C, size, size) set out as a labelled grid: a band of up to ``columns`` thumbnails
    per row for each level (level 0 first), then the whole-core patch."""
    if pss_set.ndim != 3 or pss_set.shape[0] != cfg.channels:
        raise ValueError(f"expected a ({cfg.channels}, H, W) set, got {pss_set.shape}")
    bands: list[tuple[str, list[np.ndarray]]] = []
    slot = 0
    for level in sorted(cfg.patches_per_level):
        count = cfg.patches_per_level[level]
        if count <= 0:
            continue
        patches = [pss_set[3 * (slot + i) : 3 * (slot + i) + 3] for i in range(count)]
        bands.append((f"level {level} (1/{2**level})\n{count} patches", patches))
        slot += count
    if cfg.whole_core:
        bands.append(("whole core", [pss_set[-3:]]))

    cell = thumb + _GAP
    title_h = 24 if title else 0
    rows = [max(1, -(-len(patches) // columns)) for _, patches in bands]
    width = _LABEL_W + columns * cell + _GAP
    height = title_h + sum(rows) * cell + len(bands) * _GAP + _GAP
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    if title:
        draw.text((_GAP, 4), title, fill=_TEXT, font=font)
    top = title_h + _GAP
    for (label, patches), band_rows in zip(bands, rows, strict=True):
        draw.multiline_text((_GAP, top + 4), label, fill=_TEXT, font=font)
        for i, patch in enumerate(patches):
            image = Image.fromarray(np.ascontiguousarray(patch.transpose(1, 2, 0)))
            image = image.resize((thumb, thumb), Image.Resampling.BILINEAR)
            row, col = divmod(i, columns)
            sheet.paste(image, (_LABEL_W + col * cell, top + row * cell))
        top += band_rows * cell + _GAP
    return sheet
