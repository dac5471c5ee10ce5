"""The automatic half of Emu's curation funnel, without Django.

Emu narrows billions of images to a few thousand "photogenic needles": automatic
filters first (offensive content, aesthetic score, OCR text, CLIP image-text
score, resolution and aspect ratio), then people in two stages. This module is
the automatic part for a local candidate collection; the Django side (models,
Celery tasks, the human stages in the annotation app, pages) calls it.

1. ``scan_candidates(folder)`` imports a folder of images with a ``captions.csv``
   (``file,caption``) or ``captions.jsonl`` (``{"file": ..., "caption": ...}``;
   the imagefolder keys ``file_name``/``text`` of curated datasets are accepted
   too). Every image is decoded fully; each problem is reported in words with its
   file name or caption line, and good files import regardless. It only reads.
2. ``run_funnel(candidates, stages, scorer=..., aesthetic_head=...)`` passes the
   candidates through configurable stages (frozen dataclasses), recording counts
   in and out, each stage's configuration, each rejection's reason and
   per-candidate scores. CLIP embeddings are computed once per candidate, in
   batches, only for candidates that reach a stage needing them, and shared by
   ``NearDuplicateStage`` (when an aesthetic head is given), ``ClipScoreStage``
   and ``AestheticStage``.
3. ``FunnelResult.report()`` summarises it (JSON-ready), ``contact_sheet`` draws
   a grid of kept or rejected examples.

Score conventions: CLIP score = ``100 * cos`` (see ``training.clip_scoring``);
aesthetic score = LAION head output on the 1-10 scale (``training.aesthetic``).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import importlib.util
import io
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from training.atomic import atomic_write

log = logging.getLogger(__name__)

CAPTION_FILES = ("captions.csv", "captions.jsonl")
SUPPORTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}
SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Image files Needle sees but does not take: reported, so a researcher knows to convert them.
UNSUPPORTED_IMAGE_SUFFIXES = (
    ".gif", ".heic", ".heif", ".avif", ".svg", ".jxl", ".ico", ".psd", ".dng", ".cr2", ".nef", ".arw", ".jp2",
)
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class CurationError(ValueError):
    """The funnel cannot run as configured (or a candidate became unreadable); the message says what to fix."""


# --- candidates and their import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
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
    candidates: tuple[Candidate, ...]
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
                problems.append(ImportProblem("malformed_caption_line", f"is not valid JSON ({exc.msg} at column {exc.colno})", caption_file=name, line=number))
                continue
            if not isinstance(record, dict):
                problems.append(ImportProblem("malformed_caption_line", f'is a JSON {type(record).__name__}, not an object like {{"file": "a.jpg", "caption": "..."}}', caption_file=name, line=number))
                continue
            file_value = record.get("file", record.get("file_name"))
            caption = record.get("caption", record.get("text"))
            if not isinstance(file_value, str) or not file_value.strip():
                problems.append(ImportProblem("malformed_caption_line", 'has no "file" string', caption_file=name, line=number))
                continue
            if caption is not None and not isinstance(caption, str):
                problems.append(ImportProblem("malformed_caption_line", f'has a "caption" that is a JSON {type(caption).__name__}, not a string', caption_file=name, line=number, file=file_value))
                continue
            rows.append((file_value, caption or "", number))
        return rows

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            problems.append(ImportProblem("malformed_caption_file", "is empty: it needs a header line file,caption", caption_file=name))
            return rows
        columns = [column.strip().lower() for column in header]
        if "file" not in columns or "caption" not in columns:
            problems.append(ImportProblem("malformed_caption_file", f"header must name the columns file and caption (found: {','.join(header)})", caption_file=name, line=1))
            return rows
        file_at, caption_at = columns.index("file"), columns.index("caption")
        start_line = reader.line_num + 1
        for record in reader:
            number, start_line = start_line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                problems.append(ImportProblem("malformed_caption_line", f"has {len(record)} field(s) but the header has {len(columns)} (quote captions that contain commas)", caption_file=name, line=number))
                continue
            if not record[file_at].strip():
                problems.append(ImportProblem("malformed_caption_line", "has an empty file column", caption_file=name, line=number))
                continue
            rows.append((record[file_at], record[caption_at], number))
    except csv.Error as exc:
        problems.append(ImportProblem("malformed_caption_line", f"cannot be parsed as CSV ({exc}); lines after it were not read", caption_file=name, line=reader.line_num))
    return rows


def _collect_captions(folder: Path, problems: list[ImportProblem]) -> dict[str, list[_CaptionRow]]:
    present = [folder / name for name in CAPTION_FILES if (folder / name).is_file()]
    if not present:
        problems.append(ImportProblem("caption_file_missing", f"no captions.csv (columns file,caption) or captions.jsonl ({{\"file\": ..., \"caption\": ...}} per line) in {folder}: no image can be imported without captions"))
        return {}
    captions: dict[str, list[_CaptionRow]] = defaultdict(list)
    for path in present:
        for raw, caption, number in _read_caption_file(path, problems):
            reference = _normalise_reference(raw)
            if reference is None:
                problems.append(ImportProblem("malformed_caption_line", f"file {raw!r} is absolute or contains '..': give the path relative to the collection folder", caption_file=path.name, line=number))
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
            problems.append(ImportProblem("missing_file", f"captions {reference}, which is not in the folder{hint}", file=reference, caption_file=row.caption_file, line=row.line))

    candidates: list[Candidate] = []
    first_by_hash: dict[str, str] = {}
    for file in sorted(set(images) | (set(captions) & on_disk)):
        path = folder / file
        rows = captions.get(file, [])
        if file.lower().endswith(UNSUPPORTED_IMAGE_SUFFIXES):
            problems.append(ImportProblem("unsupported_format", f"unsupported format {path.suffix.lower()}: convert it to JPEG, PNG or WebP", file=file))
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(ImportProblem("unreadable_image", f"cannot be read ({exc})", file=file))
            continue
        try:
            image_format, width, height = _decode(data)
        except _Unsupported as exc:
            problems.append(ImportProblem("unsupported_format", f"is a {exc.args[0]} image, which Needle does not take: convert it to JPEG, PNG or WebP", file=file))
            continue
        except UnidentifiedImageError:
            problems.append(ImportProblem("unreadable_image", f"is not an image file (Pillow cannot identify it){' although named ' + path.suffix if path.suffix else ''}", file=file))
            continue
        except Image.DecompressionBombError as exc:
            problems.append(ImportProblem("unreadable_image", f"is too large to decode safely ({exc})", file=file))
            continue
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            message = str(exc) or type(exc).__name__
            truncated = any(word in message.lower() for word in ("truncat", "broken", "end of file", "eof", "incomplete"))
            kind = "truncated_image" if truncated else "unreadable_image"
            what = "is truncated or corrupt" if truncated else "cannot be decoded"
            problems.append(ImportProblem(kind, f"{what} ({message}): re-download or re-export it", file=file))
            continue

        if not rows:
            problems.append(ImportProblem("missing_caption", "has no caption: add a row for it to the caption file", file=file))
            continue
        texts = [row.caption.strip() for row in rows]
        if len(rows) > 1:
            where = ", ".join(f"{row.caption_file} line {row.line}" for row in rows)
            if len(set(texts)) == 1:
                problems.append(ImportProblem("duplicate_caption", f"has {len(rows)} identical caption rows ({where}); imported once", file=file, severity="warning"))
            else:
                problems.append(ImportProblem("duplicate_caption", f"has {len(rows)} different caption rows ({where}): keep exactly one; not imported", file=file))
                continue
        if not texts[0]:
            problems.append(ImportProblem("empty_caption", "has an empty caption", file=file, caption_file=rows[0].caption_file, line=rows[0].line))
            continue

        digest = hashlib.sha256(data).hexdigest()
        if digest in first_by_hash:
            original = first_by_hash[digest]
            problems.append(ImportProblem("exact_duplicate", f"is byte-identical to {original} (same SHA-256); only {original} is imported", file=file, duplicate_of=original))
            continue
        first_by_hash[digest] = file
        candidates.append(Candidate(file, path.resolve(), texts[0], width, height, digest, image_format, len(data)))

    return CandidateScan(folder, tuple(candidates), tuple(problems), tuple(sorted(set(others) - set(captions))))


# --- perceptual hash and near-duplicate search ------------------------------------------------------------------


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (the pHash/imagehash construction).

    Grey 32x32 (Lanczos) -> 2-D DCT-II -> the 8x8 lowest frequencies -> one bit per
    coefficient: above their median. Bits are row-major, most significant first.
    Robust to resizing, recompression and global brightness/contrast changes;
    featureless (flat) images all hash alike.
    """
    from scipy.fft import dctn

    grey = ImageOps.exif_transpose(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coefficients = dctn(np.asarray(grey, dtype=np.float64), type=2, norm="ortho")[:8, :8]
    coefficients = np.round(coefficients, 6)  # float noise must not flip bits of flat regions
    bits = (coefficients > np.median(coefficients)).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def near_duplicate_pairs(hashes: Sequence[int] | np.ndarray, max_hamming: int, method: str = "auto") -> np.ndarray:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``max_hamming``, sorted.

    Two exact methods:

    * ``"all_pairs"``: XOR + ``np.bitwise_count`` over blocks of rows: O(N^2) popcounts
      (vectorised, ~1e8/s), O(block x N) memory; fine up to tens of thousands of images.
    * ``"multi_index"`` (multi-index hashing): split the 64 bits into ``max_hamming + 1``
      bands; by pigeonhole, two hashes within ``max_hamming`` agree exactly on at least
      one band. Bucket by each band (sort, O(N log N) per band) and verify only pairs
      sharing a bucket: about O(m N log N + N^2 m / 2^(64/m)) for m bands with
      uniform hashes; degrades towards all-pairs when bands get narrow or many
      images share a band value.

    ``"auto"`` takes multi-index for N > 2048 when bands are at least 8 bits wide
    (``max_hamming <= 7``), all-pairs otherwise.
    """
    values = np.asarray([int(h) for h in hashes], dtype=np.uint64)
    n = len(values)
    if not 0 <= max_hamming <= 64:
        raise ValueError(f"max_hamming must be 0-64, got {max_hamming}")
    bands = max_hamming + 1
    if method == "auto":
        method = "multi_index" if n > 2048 and 64 // bands >= 8 else "all_pairs"
    empty = np.zeros((0, 3), dtype=np.int64)
    if n < 2:
        return empty

    if method == "all_pairs":
        found = []
        block = max(1, min(n, 4_000_000 // max(n, 1)))
        columns = np.arange(n)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            distances = np.bitwise_count(values[rows, None] ^ values[None, :]).astype(np.int64)
            mask = (distances <= max_hamming) & (columns[None, :] > rows[:, None])
            i, j = np.nonzero(mask)
            if len(i):
                found.append(np.stack([rows[i], j, distances[i, j]], axis=1))
        return np.concatenate(found) if found else empty

    if method != "multi_index":
        raise ValueError(f"unknown method {method!r}: 'auto', 'all_pairs' or 'multi_index'")
    widths = [64 // bands + (1 if k < 64 % bands else 0) for k in range(bands)]
    candidates = []
    offset = 0
    for width in widths:
        keys = (values >> np.uint64(offset)) & np.uint64((1 << width) - 1)
        offset += width
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        edges = np.flatnonzero(np.diff(sorted_keys)) + 1
        for group in np.split(order, edges):
            if len(group) > 1:
                i, j = np.triu_indices(len(group), k=1)
                a, b = group[i], group[j]
                candidates.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not candidates:
        return empty
    codes = np.unique(np.concatenate(candidates))
    i, j = codes // n, codes % n
    distances = np.bitwise_count(values[i] ^ values[j]).astype(np.int64)
    keep = distances <= max_hamming
    return np.stack([i[keep], j[keep], distances[keep]], axis=1)


# --- features shared by the stages ------------------------------------------------------------------------------


class FunnelFeatures:
    """Per-candidate features computed lazily, once, and shared by the stages.

    ``scores[candidate_id]`` collects everything computed (``phash``, ``aspect_ratio``,
    ``ocr_words``, ``clip_score``, ``aesthetic_score``). Image embeddings are computed in
    batches of ``batch_size`` images (one ``scorer.embed_images`` call per batch) only for
    the candidates that reach a stage needing them; captions are embedded once per
    distinct caption.
    """

    def __init__(self, scorer=None, aesthetic_head=None, batch_size: int = 32):
        self.scorer = scorer
        self.aesthetic_head = aesthetic_head
        self.batch_size = batch_size
        self.scores: dict[str, dict[str, Any]] = defaultdict(dict)
        self.image_embeddings_by_id: dict[str, np.ndarray] = {}
        self._text_embeddings: dict[str, np.ndarray] = {}

    @property
    def has_clip(self) -> bool:
        return self.scorer is not None

    @property
    def has_aesthetic(self) -> bool:
        return self.scorer is not None and self.aesthetic_head is not None

    def record(self, candidate: Candidate, key: str, value: Any) -> None:
        self.scores[candidate.id][key] = value

    def image_embeddings(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.scorer is None:
            raise CurationError("image embeddings need a CLIP scorer: pass scorer=load_clip(...) to run_funnel")
        missing = [c for c in candidates if c.id not in self.image_embeddings_by_id]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            embeddings = self.scorer.embed_images([c.open_image() for c in batch])
            for candidate, embedding in zip(batch, embeddings):
                self.image_embeddings_by_id[candidate.id] = embedding
        return np.stack([self.image_embeddings_by_id[c.id] for c in candidates]) if candidates else np.zeros((0, 0), np.float32)

    def text_embeddings(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.scorer is None:
            raise CurationError("text embeddings need a CLIP scorer: pass scorer=load_clip(...) to run_funnel")
        missing = list(dict.fromkeys(c.caption for c in candidates if c.caption not in self._text_embeddings))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            for caption, embedding in zip(batch, self.scorer.embed_texts(batch)):
                self._text_embeddings[caption] = embedding
        return np.stack([self._text_embeddings[c.caption] for c in candidates]) if candidates else np.zeros((0, 0), np.float32)

    def clip_scores(self, candidates: Sequence[Candidate]) -> np.ndarray:
        todo = [c for c in candidates if "clip_score" not in self.scores[c.id]]
        if todo:
            from training.clip_scoring import ClipScorer  # imports torch: only when CLIP scores are asked for

            values = ClipScorer.cosine_scores(self.image_embeddings(todo), self.text_embeddings(todo))
            for candidate, value in zip(todo, values):
                self.record(candidate, "clip_score", float(value))
        return np.array([self.scores[c.id]["clip_score"] for c in candidates], dtype=np.float64)

    def aesthetic_scores(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.aesthetic_head is None:
            raise CurationError("aesthetic scores need an aesthetic head: pass aesthetic_head=AestheticHead.load(...)")
        todo = [c for c in candidates if "aesthetic_score" not in self.scores[c.id]]
        if todo:
            values = self.aesthetic_head.predict(self.image_embeddings(todo))
            for candidate, value in zip(todo, values):
                self.record(candidate, "aesthetic_score", float(value))
        return np.array([self.scores[c.id]["aesthetic_score"] for c in candidates], dtype=np.float64)

    def phashes(self, candidates: Sequence[Candidate]) -> list[int]:
        out = []
        for candidate in candidates:
            if "phash" not in self.scores[candidate.id]:
                self.record(candidate, "phash", f"{perceptual_hash(candidate.open_image()):016x}")
            out.append(int(self.scores[candidate.id]["phash"], 16))
        return out


# --- stages -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    candidate: Candidate
    stage: str
    reason: str
    duplicate_of: str | None = None


class FunnelStage:
    """Base of the funnel stages: frozen dataclasses whose fields are their thresholds.

    ``apply(candidates, features) -> (kept, rejections)`` must account for every candidate
    exactly once. ``unavailable_reason`` returns a sentence when the stage cannot run here
    (it is then recorded as skipped); ``configuration_problem`` one when it can never run
    with the funnel's inputs (``run_funnel`` then refuses to start).
    """

    name: str

    def unavailable_reason(self, features: FunnelFeatures) -> str | None:
        return None

    def configuration_problem(self, features: FunnelFeatures) -> str | None:
        return None

    def config(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "name" and f.metadata.get("config", True)
        }

    def apply(self, candidates: Sequence[Candidate], features: FunnelFeatures) -> tuple[list[Candidate], list[Rejection]]:
        raise NotImplementedError

    def _threshold(self, candidates, values, minimum: float, label: str) -> tuple[list[Candidate], list[Rejection]]:
        kept, rejected = [], []
        for candidate, value in zip(candidates, values):
            if np.isfinite(value) and value >= minimum:
                kept.append(candidate)
            else:
                rejected.append(Rejection(candidate, self.name, f"{label} {value:.2f} < minimum {minimum:g}"))
        return kept, rejected


@dataclass(frozen=True)
class ResolutionStage(FunnelStage):
    """Emu's resolution and aspect-ratio filter. Keeps ``min(w, h) >= min_side`` and
    ``max(w, h) / min(w, h) <= max_aspect_ratio`` (both bounds inclusive; sizes are upright)."""

    min_side: int = 512
    max_aspect_ratio: float = 2.0
    name: str = "resolution"

    def __post_init__(self):
        if self.min_side < 1 or self.max_aspect_ratio < 1:
            raise ValueError("min_side must be >= 1 and max_aspect_ratio >= 1 (long side / short side)")

    def apply(self, candidates, features):
        kept, rejected = [], []
        for candidate in candidates:
            short, ratio = min(candidate.width, candidate.height), candidate.aspect_ratio
            features.record(candidate, "aspect_ratio", ratio)
            if short < self.min_side:
                rejected.append(Rejection(candidate, self.name, f"short side {short} px < minimum {self.min_side} px ({candidate.width}x{candidate.height})"))
            elif ratio > self.max_aspect_ratio * (1 + 1e-9):  # tolerance: 4/3 computed as 400/300 equals 4/3
                rejected.append(Rejection(candidate, self.name, f"aspect ratio {ratio:.3f} > maximum {self.max_aspect_ratio:g} ({candidate.width}x{candidate.height})"))
            else:
                kept.append(candidate)
        return kept, rejected


def ocr_unavailable_reason() -> str | None:
    """None when pytesseract and the tesseract binary are both installed, else what is missing."""
    missing = []
    command = "tesseract"
    if importlib.util.find_spec("pytesseract") is None:
        missing.append("the Python package pytesseract is not installed (pip install pytesseract)")
    else:
        import pytesseract

        command = getattr(pytesseract.pytesseract, "tesseract_cmd", "tesseract")
    if shutil.which(command) is None:
        missing.append(f"the '{command}' binary is not on PATH (e.g. apt-get install tesseract-ocr)")
    if missing:
        return "OCR is unavailable: " + " and ".join(missing) + "; the text-in-image filter did not run"
    return None


def count_words(text: str) -> int:
    """Words in OCR output: whitespace-separated tokens with at least two letters or digits (OCR noise is single characters)."""
    return sum(1 for token in text.split() if sum(ch.isalnum() for ch in token) >= 2)


@dataclass(frozen=True)
class TextInImageStage(FunnelStage):
    """Emu's OCR filter: rejects images showing more than ``max_words`` words.

    Uses pytesseract + the tesseract binary when both are installed; otherwise the stage
    is skipped and recorded as skipped with the reason. ``ocr`` (image -> text) replaces
    tesseract, e.g. with another OCR engine; it is not part of the recorded config.
    """

    max_words: int = 5
    language: str = "eng"
    name: str = "text_in_image"
    ocr: Callable[[Image.Image], str] | None = field(default=None, compare=False, repr=False, metadata={"config": False})

    def unavailable_reason(self, features):
        return None if self.ocr is not None else ocr_unavailable_reason()

    def config(self):
        config = super().config()
        config["ocr_engine"] = "tesseract" if self.ocr is None else getattr(self.ocr, "__name__", "custom")
        return config

    def apply(self, candidates, features):
        if self.ocr is not None:
            read = self.ocr
        else:
            import pytesseract

            def read(image):
                return pytesseract.image_to_string(image, lang=self.language)

        kept, rejected = [], []
        for candidate in candidates:
            words = count_words(read(candidate.open_image()))
            features.record(candidate, "ocr_words", words)
            if words > self.max_words:
                rejected.append(Rejection(candidate, self.name, f"{words} words of text in the image > maximum {self.max_words}"))
            else:
                kept.append(candidate)
        return kept, rejected


@dataclass(frozen=True)
class NearDuplicateStage(FunnelStage):
    """Groups near duplicates by 64-bit DCT perceptual hash (Hamming distance <= ``max_hamming``)
    and keeps the best of each group.

    "Best": highest aesthetic score when the funnel has an aesthetic head (computed here
    for the candidates that have near duplicates, and reused by later stages), then
    most pixels, then largest file, then id. Greedy, best first: a kept candidate
    rejects every not-yet-decided candidate within ``max_hamming`` of it, naming it; so
    each rejected image is within the threshold of the one that replaced it (no chains).
    Pair search: ``near_duplicate_pairs`` (see its complexity notes).
    """

    max_hamming: int = 6
    name: str = "near_duplicate"

    def __post_init__(self):
        if not 0 <= self.max_hamming <= 64:
            raise ValueError("max_hamming must be 0-64 bits")

    def apply(self, candidates, features):
        candidates = list(candidates)
        pairs = near_duplicate_pairs(features.phashes(candidates), self.max_hamming)
        if len(pairs) == 0:
            return candidates, []
        neighbours: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, j, distance in pairs.tolist():
            neighbours[i].append((j, distance))
            neighbours[j].append((i, distance))
        involved = sorted(neighbours)
        aesthetic = {}
        if features.has_aesthetic:
            values = features.aesthetic_scores([candidates[i] for i in involved])
            aesthetic = dict(zip(involved, values.tolist()))

        def quality(i: int):
            c = candidates[i]
            return (aesthetic.get(i, 0.0), c.pixels, c.size_bytes)

        order = sorted(involved, key=lambda i: (tuple(-v for v in quality(i)), candidates[i].id))
        decided: dict[int, tuple[int, int] | None] = {}  # index -> None (kept) or (keeper, distance)
        for i in order:
            if i in decided:
                continue
            decided[i] = None
            for j, distance in neighbours[i]:
                if j not in decided:
                    decided[j] = (i, distance)

        kept, rejected = [], []
        for index, candidate in enumerate(candidates):
            verdict = decided.get(index)
            if verdict is None:
                kept.append(candidate)
                continue
            keeper_index, distance = verdict
            keeper = candidates[keeper_index]
            if aesthetic:
                why = f"aesthetic {aesthetic[keeper_index]:.2f} vs {aesthetic[index]:.2f}"
            else:
                why = f"{keeper.width}x{keeper.height} vs {candidate.width}x{candidate.height}"
            reason = f"near duplicate of {keeper.id} (hash distance {distance} <= {self.max_hamming}; kept the better one: {why})"
            rejected.append(Rejection(candidate, self.name, reason, duplicate_of=keeper.id))
        return kept, rejected


@dataclass(frozen=True)
class ClipScoreStage(FunnelStage):
    """Emu's CLIP image-text filter: keeps ``100 * cos(image, caption) >= min_score`` (inclusive).

    28 is LAION-5B's cutoff (cosine 0.28 with ViT-B/32); calibrate per CLIP model."""

    min_score: float = 28.0
    name: str = "clip_score"

    def configuration_problem(self, features):
        return None if features.has_clip else f"stage '{self.name}' needs a CLIP model: pass scorer=load_clip(...)"

    def apply(self, candidates, features):
        return self._threshold(candidates, features.clip_scores(candidates), self.min_score, "CLIP score")


@dataclass(frozen=True)
class AestheticStage(FunnelStage):
    """Emu's aesthetic filter: keeps aesthetic score (LAION head on CLIP image embeddings,
    1-10 scale) ``>= min_score`` (inclusive). LAION-Aesthetics V2 subsets cut at 4.5, 5, 6, 6.5."""

    min_score: float = 5.0
    name: str = "aesthetic"

    def configuration_problem(self, features):
        if not features.has_aesthetic:
            return f"stage '{self.name}' needs a CLIP model and an aesthetic head: pass scorer=... and aesthetic_head=..."
        return None

    def apply(self, candidates, features):
        return self._threshold(candidates, features.aesthetic_scores(candidates), self.min_score, "aesthetic score")


def default_stages() -> list[FunnelStage]:
    """Emu's automatic filters in a sensible order: cheap ones first, CLIP-based ones last."""
    return [ResolutionStage(), TextInImageStage(), NearDuplicateStage(), ClipScoreStage(), AestheticStage()]


# --- running the funnel and reporting -------------------------------------------------------------------------


@dataclass
class StageRecord:
    name: str
    kind: str
    config: dict[str, Any]
    status: str  # "ran" or "skipped"
    count_in: int
    count_out: int
    rejections: list[Rejection] = field(default_factory=list)
    skipped_reason: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "config": _jsonable(self.config),
            "status": self.status,
            "skipped_reason": self.skipped_reason,
            "count_in": self.count_in,
            "count_out": self.count_out,
            "rejected": len(self.rejections),
            "seconds": round(self.seconds, 4),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def histogram(values: Iterable[float], bins: int = 10) -> dict[str, Any] | None:
    """``{"bin_edges", "counts", "n"}`` over the finite values (numpy's right-closed last bin), None if none."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        return None
    counts, edges = np.histogram(values, bins=bins)
    return {"bin_edges": edges.tolist(), "counts": counts.tolist(), "n": int(len(values))}


@dataclass
class FunnelResult:
    count_in: int
    stages: list[StageRecord]
    kept: list[Candidate]
    scores: dict[str, dict[str, Any]]
    image_embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def rejected(self) -> list[Rejection]:
        return [rejection for stage in self.stages for rejection in stage.rejections]

    def stage(self, name: str) -> StageRecord:
        for record in self.stages:
            if record.name == name:
                return record
        raise KeyError(name)

    def report(self, bins: int = 10) -> dict[str, Any]:
        """Counts per stage in/out, configs, skips, and histograms of CLIP and aesthetic scores (JSON-ready)."""
        return {
            "count_in": self.count_in,
            "count_kept": len(self.kept),
            "count_rejected": len(self.rejected),
            "stages": [record.as_dict() for record in self.stages],
            "histograms": {
                key: histogram((s[key] for s in self.scores.values() if key in s), bins=bins)
                for key in ("clip_score", "aesthetic_score")
            },
        }

    def candidate_table(self) -> list[dict[str, Any]]:
        """One JSON-ready row per candidate: verdict, rejecting stage and reason, scores."""
        rows = []
        for candidate in self.kept:
            rows.append({"id": candidate.id, "caption": candidate.caption, "kept": True, "stage": None, "reason": None, "duplicate_of": None, "scores": _jsonable(self.scores.get(candidate.id, {}))})
        for rejection in self.rejected:
            c = rejection.candidate
            rows.append({"id": c.id, "caption": c.caption, "kept": False, "stage": rejection.stage, "reason": rejection.reason, "duplicate_of": rejection.duplicate_of, "scores": _jsonable(self.scores.get(c.id, {}))})
        return rows


def run_funnel(
    candidates: Sequence[Candidate],
    stages: Sequence[FunnelStage],
    *,
    scorer=None,
    aesthetic_head=None,
    batch_size: int = 32,
    features: FunnelFeatures | None = None,
) -> FunnelResult:
    """Pass ``candidates`` through ``stages`` in order (see the module docstring).

    ``scorer``: a ``training.clip_scoring.ClipScorer``; ``aesthetic_head``: a
    ``training.aesthetic.AestheticHead`` on that scorer's embeddings. Unavailable stages
    (OCR without tesseract) are recorded as skipped with their reason; a stage that can
    never run with these inputs (CLIP stage without a scorer) stops the funnel before
    anything is computed.
    """
    features = features or FunnelFeatures(scorer=scorer, aesthetic_head=aesthetic_head, batch_size=batch_size)
    names = [stage.name for stage in stages]
    problems = [f"stage name '{n}' is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [p for stage in stages if (p := stage.configuration_problem(features))]
    if features.has_aesthetic and stages:
        head_dim, clip_dim = features.aesthetic_head.input_dim, features.scorer.embed_dim
        if head_dim != clip_dim:
            problems.append(f"the aesthetic head takes {head_dim}-d embeddings but the CLIP model gives {clip_dim}-d")
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        problems.append("candidate ids are not unique")
    if problems:
        raise CurationError("; ".join(problems))

    surviving = list(candidates)
    records = []
    for stage in stages:
        kind = type(stage).__name__
        reason = stage.unavailable_reason(features)
        if reason:
            log.warning("Curation stage %s skipped: %s", stage.name, reason)
            records.append(StageRecord(stage.name, kind, stage.config(), "skipped", len(surviving), len(surviving), skipped_reason=reason))
            continue
        started = time.perf_counter()
        kept, rejected = stage.apply(surviving, features)
        kept_ids, rejected_ids = [c.id for c in kept], [r.candidate.id for r in rejected]
        if sorted(kept_ids + rejected_ids) != sorted(c.id for c in surviving):
            raise RuntimeError(f"stage {stage.name} did not account for each of its {len(surviving)} candidates exactly once")
        records.append(StageRecord(stage.name, kind, stage.config(), "ran", len(surviving), len(kept), list(rejected), seconds=time.perf_counter() - started))
        surviving = list(kept)
    return FunnelResult(
        count_in=len(candidates),
        stages=records,
        kept=surviving,
        scores={c.id: dict(features.scores.get(c.id, {})) for c in candidates},
        image_embeddings=dict(features.image_embeddings_by_id),
    )


# --- contact sheet ------------------------------------------------------------------------------------------------

SHEET_PADDING = 6
SHEET_LINE_HEIGHT = 13
SHEET_LABEL_LINES = 4
SHEET_HEADER_HEIGHT = 28


def contact_sheet_size(count: int, columns: int = 6, thumb: int = 160, label_lines: int = SHEET_LABEL_LINES) -> tuple[int, int]:
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
        items = [(c, f"{c.id} " + " ".join(f"{short}={result.scores.get(c.id, {})[key]:.2f}" for key, short in (("aesthetic_score", "aes"), ("clip_score", "clip")) if key in result.scores.get(c.id, {}))) for c in result.kept[:n]]
        title = f"kept: {min(n, len(result.kept))} shown of {len(result.kept)} kept ({result.count_in} candidates)"
    else:
        rejections = result.rejected
        items = [(r.candidate, f"[{r.stage}] {r.reason} | {r.candidate.id}") for r in rejections[:n]]
        title = f"rejected: {min(n, len(rejections))} shown of {len(rejections)} rejected ({result.count_in} candidates)"
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
        sheet.paste(image, (x0 + SHEET_PADDING + (thumb - image.width) // 2, y0 + SHEET_PADDING + (thumb - image.height) // 2))
        colour = (0, 0, 0) if kept else (170, 0, 0)
        for line_number, line in enumerate(_wrap(draw, label, font, thumb, SHEET_LABEL_LINES)):
            draw.text((x0 + SHEET_PADDING, y0 + thumb + SHEET_PADDING + 2 + line_number * SHEET_LINE_HEIGHT), line, fill=colour, font=font)
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise CurationError(f"cannot tell the image format of {path}: use .png or .jpg")
    return atomic_write(path, lambda temp: sheet.save(temp, format=image_format))
