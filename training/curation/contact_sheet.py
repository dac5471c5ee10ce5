"""Contact sheets: a grid of kept or rejected examples with their captions and scores."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from training.atomic import atomic_write

from .errors import CurationError
from .funnel import FunnelResult

log = logging.getLogger(__name__)


# --- contact sheet ------------------------------------------------------------------------------------------------

SHEET_PADDING = 6
SHEET_LINE_HEIGHT = 13
SHEET_LABEL_LINES = 4
SHEET_HEADER_HEIGHT = 28


def contact_sheet_size(
    count: int, columns: int = 6, thumb: int = 160, label_lines: int = SHEET_LABEL_LINES
) -> tuple[int, int]:
    """(width, height) of a sheet of ``count`` thumbnails: ``columns`` cells of
    ``thumb + 2 * SHEET_PADDING`` pixels across, ``ceil(count / columns)`` rows (at least one)
    of ``thumb + 2 * SHEET_PADDING + label_lines * SHEET_LINE_HEIGHT``, under a header."""
    rows = max(1, math.ceil(count / columns))
    cell_w = thumb + 2 * SHEET_PADDING
    cell_h = thumb + 2 * SHEET_PADDING + label_lines * SHEET_LINE_HEIGHT
    return columns * cell_w, SHEET_HEADER_HEIGHT + rows * cell_h


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, lines: int) -> list[str]:
    out: list[str] = []
    current = ""
    for word in text.split():
        while draw.textlength(word, font=font) > width and len(word) > 1:  # hard-split very long tokens (file names)
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            if current:
                out.append(current)
                current = ""
            out.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    if len(out) > lines:
        out = out[:lines]
        last = out[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        out[-1] = last + "…"
    return out


def contact_sheet(
    result: FunnelResult,
    path: str | Path,
    kept: bool = True,
    n: int = 24,
    *,
    columns: int = 6,
    thumb: int = 160,
) -> Path:
    """Draw up to ``n`` kept (or rejected, with stage and reason under each) candidates as a grid
    and write it to ``path`` (format from the suffix, written atomically). Size: ``contact_sheet_size``."""
    if kept:
        items = [
            (
                c,
                f"{c.id} "
                + " ".join(
                    f"{short}={result.scores.get(c.id, {})[key]:.2f}"
                    for key, short in (("aesthetic_score", "aes"), ("clip_score", "clip"))
                    if key in result.scores.get(c.id, {})
                ),
            )
            for c in result.kept[:n]
        ]
        title = f"kept: {min(n, len(result.kept))} shown of {len(result.kept)} kept ({result.count_in} candidates)"
    else:
        rejections = result.rejected
        items = [(r.candidate, f"[{r.stage}] {r.reason} | {r.candidate.id}") for r in rejections[:n]]
        title = (
            f"rejected: {min(n, len(rejections))} shown of {len(rejections)} rejected ({result.count_in} candidates)"
        )
    size = contact_sheet_size(len(items), columns, thumb)
    sheet = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=11)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw.text((SHEET_PADDING, SHEET_PADDING), title, fill=(0, 0, 0), font=font)
    cell_w = thumb + 2 * SHEET_PADDING
    cell_h = thumb + 2 * SHEET_PADDING + SHEET_LABEL_LINES * SHEET_LINE_HEIGHT
    for index, (candidate, label) in enumerate(items):
        x0 = (index % columns) * cell_w
        y0 = SHEET_HEADER_HEIGHT + (index // columns) * cell_h
        image = ImageOps.contain(candidate.open_image(), (thumb, thumb))
        sheet.paste(
            image, (x0 + SHEET_PADDING + (thumb - image.width) // 2, y0 + SHEET_PADDING + (thumb - image.height) // 2)
        )
        colour = (0, 0, 0) if kept else (170, 0, 0)
        for line_number, line in enumerate(_wrap(draw, label, font, thumb, SHEET_LABEL_LINES)):
            draw.text(
                (x0 + SHEET_PADDING, y0 + thumb + SHEET_PADDING + 2 + line_number * SHEET_LINE_HEIGHT),
                line,
                fill=colour,
                font=font,
            )
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise CurationError(f"cannot tell the image format of {path}: use .png or .jpg")
    return atomic_write(path, lambda temp: sheet.save(temp, format=image_format))
