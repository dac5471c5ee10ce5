"""Candidates and their import: a folder of images with captions, scanned and decoded, each problem in words."""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CurationError

log = logging.getLogger(__name__)


CAPTION_FILES = ("captions.csv", "captions.jsonl")
SUPPORTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}
SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Image files Needle sees but does not take: reported, so a researcher knows to convert them.
UNSUPPORTED_IMAGE_SUFFIXES = (
    ".gif",
    ".heic",
    ".heif",
    ".avif",
    ".svg",
    ".jxl",
    ".ico",
    ".psd",
    ".dng",
    ".cr2",
    ".nef",
    ".arw",
    ".jp2",
)
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


# --- candidates and their import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelCandidate:
    """One imported image-caption pair. ``id`` is the image path relative to the collection folder (POSIX)."""

    id: str
    path: Path
    caption: str
    width: int
    height: int
    sha256: str
    format: str
    size_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def aspect_ratio(self) -> float:
        """Long side / short side (>= 1), orientation-independent."""
        return max(self.width, self.height) / min(self.width, self.height)

    def open_image(self) -> Image.Image:
        """The image as RGB, upright (EXIF orientation applied), transparency flattened onto white."""
        try:
            with Image.open(self.path) as image:
                return to_rgb(ImageOps.exif_transpose(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise CurationError(f"{self.path} can no longer be decoded ({exc}); re-import the collection") from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImportProblem:
    """A problem found while scanning. ``severity`` "error": that file or line was not imported;
    "warning": imported anyway (e.g. a repeated identical caption row)."""

    kind: str
    message: str
    file: str | None = None
    caption_file: str | None = None
    line: int | None = None
    severity: str = "error"
    duplicate_of: str | None = None

    def __str__(self) -> str:
        where = []
        if self.caption_file:
            where.append(f"{self.caption_file} line {self.line}" if self.line else self.caption_file)
        if self.file and (not self.caption_file or self.file not in self.message):
            where.append(self.file)
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


@dataclass(frozen=True)
class CandidateScan:
    folder: Path
    candidates: tuple[FunnelCandidate, ...]
    problems: tuple[ImportProblem, ...]
    ignored_files: tuple[str, ...] = ()

    @property
    def errors(self) -> list[ImportProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ImportProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    def problems_for(self, file: str) -> list[ImportProblem]:
        return [p for p in self.problems if p.file == file]

    def summary(self) -> str:
        lines = [f"{len(self.candidates)} candidate(s) imported from {self.folder}, {len(self.problems)} problem(s)"]
        lines += [f"  [{p.severity}] {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class _CaptionRow:
    caption: str
    caption_file: str
    line: int


def _normalise_reference(raw: str) -> str | None:
    """A caption's ``file`` value as a relative POSIX path inside the folder, or None if it points outside."""
    text = raw.strip().replace("\\", "/")
    if not text:
        return None
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [part for part in path.parts if part not in ("", ".")]
    return "/".join(parts) if parts else None


def _read_caption_file(path: Path, problems: list[ImportProblem]) -> list[tuple[str, str, int]]:
    """(raw file value, caption, line) rows of one caption file; malformed lines go to ``problems``."""
    name = path.name
    rows: list[tuple[str, str, int]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(ImportProblem("malformed_caption_file", f"is not UTF-8 text ({exc})", caption_file=name))
        return rows
    except OSError as exc:
        problems.append(ImportProblem("malformed_caption_file", f"cannot be read ({exc})", caption_file=name))
        return rows

    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    ImportProblem(
                        "malformed_caption_line",
                        f"is not valid JSON ({exc.msg} at column {exc.colno})",
                        caption_file=name,
                        line=number,
                    )
                )
                continue
            if not isinstance(record, dict):
                problems.append(
                    ImportProblem(
                        "malformed_caption_line",
                        f'is a JSON {type(record).__name__}, not an object like {{"file": "a.jpg", "caption": "..."}}',
                        caption_file=name,
                        line=number,
                    )
                )
                continue
            file_value = record.get("file", record.get("file_name"))
            caption = record.get("caption", record.get("text"))
            if not isinstance(file_value, str) or not file_value.strip():
                problems.append(
                    ImportProblem("malformed_caption_line", 'has no "file" string', caption_file=name, line=number)
                )
                continue
            if caption is not None and not isinstance(caption, str):
                problems.append(
                    ImportProblem(
                        "malformed_caption_line",
                        f'has a "caption" that is a JSON {type(caption).__name__}, not a string',
                        caption_file=name,
                        line=number,
                        file=file_value,
                    )
                )
                continue
            rows.append((file_value, caption or "", number))
        return rows

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            problems.append(
                ImportProblem(
                    "malformed_caption_file", "is empty: it needs a header line file,caption", caption_file=name
                )
            )
            return rows
        columns = [column.strip().lower() for column in header]
        if "file" not in columns or "caption" not in columns:
            problems.append(
                ImportProblem(
                    "malformed_caption_file",
                    f"header must name the columns file and caption (found: {','.join(header)})",
                    caption_file=name,
                    line=1,
                )
            )
            return rows
        file_at, caption_at = columns.index("file"), columns.index("caption")
        start_line = reader.line_num + 1
        for record in reader:
            number, start_line = start_line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                problems.append(
                    ImportProblem(
                        "malformed_caption_line",
                        f"has {len(record)} field(s) but the header has {len(columns)} (quote captions that contain commas)",
                        caption_file=name,
                        line=number,
                    )
                )
                continue
            if not record[file_at].strip():
                problems.append(
                    ImportProblem("malformed_caption_line", "has an empty file column", caption_file=name, line=number)
                )
                continue
            rows.append((record[file_at], record[caption_at], number))
    except csv.Error as exc:
        problems.append(
            ImportProblem(
                "malformed_caption_line",
                f"cannot be parsed as CSV ({exc}); lines after it were not read",
                caption_file=name,
                line=reader.line_num,
            )
        )
    return rows


def _collect_captions(folder: Path, problems: list[ImportProblem]) -> dict[str, list[_CaptionRow]]:
    present = [folder / name for name in CAPTION_FILES if (folder / name).is_file()]
    if not present:
        problems.append(
            ImportProblem(
                "caption_file_missing",
                f'no captions.csv (columns file,caption) or captions.jsonl ({{"file": ..., "caption": ...}} per line) in {folder}: no image can be imported without captions',
            )
        )
        return {}
    captions: dict[str, list[_CaptionRow]] = defaultdict(list)
    for path in present:
        for raw, caption, number in _read_caption_file(path, problems):
            reference = _normalise_reference(raw)
            if reference is None:
                problems.append(
                    ImportProblem(
                        "malformed_caption_line",
                        f"file {raw!r} is absolute or contains '..': give the path relative to the collection folder",
                        caption_file=path.name,
                        line=number,
                    )
                )
                continue
            captions[reference].append(_CaptionRow(caption, path.name, number))
    return captions


def _image_files(folder: Path) -> tuple[list[str], list[str]]:
    """(image-like files, other files) under ``folder`` as sorted relative POSIX paths; hidden entries skipped."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if relative.as_posix() in CAPTION_FILES:
            continue
        suffix = path.suffix.lower()
        (images if suffix in SUPPORTED_SUFFIXES + UNSUPPORTED_IMAGE_SUFFIXES else others).append(relative.as_posix())
    return images, others


def _decode(data: bytes) -> tuple[str, int, int]:
    """(PIL format, upright width, upright height) after decoding every pixel; raises on a bad file."""
    with Image.open(io.BytesIO(data)) as image:
        image_format = image.format or "unknown"
        if image_format not in SUPPORTED_FORMATS:
            raise _Unsupported(image_format)
        image.verify()  # PNG: chunk CRCs and a missing IEND
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # every pixel: truncated JPEG/WebP data fails here
        width, height = image.size
        if image.getexif().get(0x0112) in _ROTATED_ORIENTATIONS:
            width, height = height, width
    return image_format, width, height


class _Unsupported(Exception):
    pass


def scan_candidates(folder: str | Path) -> CandidateScan:
    """Import a candidate collection (see the module docstring); never writes anything.

    Problems (``ImportProblem.kind``): ``caption_file_missing``, ``malformed_caption_file``,
    ``malformed_caption_line`` (with its line number), ``missing_file`` (caption for a file
    that is not there), ``missing_caption`` (image without a caption row), ``empty_caption``,
    ``duplicate_caption`` (the same file captioned twice: a warning when the captions agree,
    an error when they differ), ``unreadable_image``, ``truncated_image``,
    ``unsupported_format`` and ``exact_duplicate`` (same SHA-256 as an earlier file in
    name order, which is the one imported).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CurationError(f"candidate folder not found: {folder} is not a directory")
    problems: list[ImportProblem] = []
    captions = _collect_captions(folder, problems)
    images, others = _image_files(folder)
    on_disk = set(images) | set(others)

    for reference in sorted(set(captions) - on_disk):
        for row in captions[reference]:
            close = difflib.get_close_matches(reference, images, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                ImportProblem(
                    "missing_file",
                    f"captions {reference}, which is not in the folder{hint}",
                    file=reference,
                    caption_file=row.caption_file,
                    line=row.line,
                )
            )

    candidates: list[FunnelCandidate] = []
    first_by_hash: dict[str, str] = {}
    for file in sorted(set(images) | (set(captions) & on_disk)):
        path = folder / file
        rows = captions.get(file, [])
        if file.lower().endswith(UNSUPPORTED_IMAGE_SUFFIXES):
            problems.append(
                ImportProblem(
                    "unsupported_format",
                    f"unsupported format {path.suffix.lower()}: convert it to JPEG, PNG or WebP",
                    file=file,
                )
            )
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(ImportProblem("unreadable_image", f"cannot be read ({exc})", file=file))
            continue
        try:
            image_format, width, height = _decode(data)
        except _Unsupported as exc:
            problems.append(
                ImportProblem(
                    "unsupported_format",
                    f"is a {exc.args[0]} image, which Needle does not take: convert it to JPEG, PNG or WebP",
                    file=file,
                )
            )
            continue
        except UnidentifiedImageError:
            problems.append(
                ImportProblem(
                    "unreadable_image",
                    f"is not an image file (Pillow cannot identify it){' although named ' + path.suffix if path.suffix else ''}",
                    file=file,
                )
            )
            continue
        except Image.DecompressionBombError as exc:
            problems.append(ImportProblem("unreadable_image", f"is too large to decode safely ({exc})", file=file))
            continue
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            message = str(exc) or type(exc).__name__
            truncated = any(
                word in message.lower() for word in ("truncat", "broken", "end of file", "eof", "incomplete")
            )
            kind = "truncated_image" if truncated else "unreadable_image"
            what = "is truncated or corrupt" if truncated else "cannot be decoded"
            problems.append(ImportProblem(kind, f"{what} ({message}): re-download or re-export it", file=file))
            continue

        if not rows:
            problems.append(
                ImportProblem("missing_caption", "has no caption: add a row for it to the caption file", file=file)
            )
            continue
        texts = [row.caption.strip() for row in rows]
        if len(rows) > 1:
            where = ", ".join(f"{row.caption_file} line {row.line}" for row in rows)
            if len(set(texts)) == 1:
                problems.append(
                    ImportProblem(
                        "duplicate_caption",
                        f"has {len(rows)} identical caption rows ({where}); imported once",
                        file=file,
                        severity="warning",
                    )
                )
            else:
                problems.append(
                    ImportProblem(
                        "duplicate_caption",
                        f"has {len(rows)} different caption rows ({where}): keep exactly one; not imported",
                        file=file,
                    )
                )
                continue
        if not texts[0]:
            problems.append(
                ImportProblem(
                    "empty_caption",
                    "has an empty caption",
                    file=file,
                    caption_file=rows[0].caption_file,
                    line=rows[0].line,
                )
            )
            continue

        digest = hashlib.sha256(data).hexdigest()
        if digest in first_by_hash:
            original = first_by_hash[digest]
            problems.append(
                ImportProblem(
                    "exact_duplicate",
                    f"is byte-identical to {original} (same SHA-256); only {original} is imported",
                    file=file,
                    duplicate_of=original,
                )
            )
            continue
        first_by_hash[digest] = file
        candidates.append(
            FunnelCandidate(file, path.resolve(), texts[0], width, height, digest, image_format, len(data))
        )

    return CandidateScan(folder, tuple(candidates), tuple(problems), tuple(sorted(set(others) - set(captions))))
