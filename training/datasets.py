"""Curated datasets: the few thousand very aesthetic images that quality-tuning trains on.

On disk a curated dataset is a flat folder of images plus ``captions.jsonl``,
one JSON object per line, in the Hugging Face imagefolder convention::

    {"file_name": "0001.png", "text": "a lighthouse at dusk, long exposure"}

Every image in the folder needs exactly one caption and every caption an
image. The dataset is frozen: its content hash (sha256 over the sorted
(file name, file sha256, caption) triples) names it in caches and run records,
so a changed image or caption is a different dataset.

Nothing here imports Django or torch: the curation pages and the mini-Emu world
use it too.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CAPTIONS_FILE = "captions.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class CuratedDatasetError(ValueError):
    """The curated dataset cannot be used as it is; the message names the file and says what to do."""


@dataclass(frozen=True)
class CuratedImage:
    file_name: str
    caption: str
    sha256: str


@dataclass(frozen=True)
class CuratedDataset:
    path: Path
    images: tuple[CuratedImage, ...]
    content_hash: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def captions(self) -> list[str]:
        return [image.caption for image in self.images]

    def open_image(self, index: int) -> Image.Image:
        """The image as RGB, upright (EXIF orientation applied: phone photos are often stored sideways)."""
        file_name = self.images[index].file_name
        try:
            with Image.open(self.path / file_name) as image:
                return ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise CuratedDatasetError(
                f"{self.path / file_name} cannot be decoded ({exc}). Re-export the image or remove it and its line "
                f"from {CAPTIONS_FILE}."
            ) from None


def content_hash(entries: list[tuple[str, str, str]]) -> str:
    """sha256 over sorted (file name, file sha256, caption) triples."""
    digest = hashlib.sha256()
    for file_name, file_sha, caption in sorted(entries):
        digest.update(json.dumps([file_name, file_sha, caption], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _read_captions(path: Path) -> dict[str, str]:
    captions_file = path / CAPTIONS_FILE
    if not captions_file.is_file():
        raise CuratedDatasetError(
            f"{path} has no {CAPTIONS_FILE}. Add one line per image: "
            '{"file_name": "0001.png", "text": "the caption"}.'
        )
    captions: dict[str, str] = {}
    for number, line in enumerate(captions_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{captions_file} line {number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise CuratedDatasetError(f"{where} is not valid JSON ({exc}).") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise CuratedDatasetError(f'{where} needs a "file_name" string naming an image in {path}.')
        file_name = entry["file_name"]
        caption = entry.get("text")
        if not isinstance(caption, str) or not caption.strip():
            raise CuratedDatasetError(f'{where}: the caption of {file_name} is missing; give it a non-empty "text".')
        if Path(file_name).name != file_name:
            raise CuratedDatasetError(f"{where}: {file_name!r} must be a plain file name in {path} (no folders).")
        if file_name in captions:
            raise CuratedDatasetError(f"{where}: {file_name} has a second caption; keep one line per image.")
        captions[file_name] = caption
    return captions


def load_curated_dataset(path: str | Path) -> CuratedDataset:
    """Read and hash a curated dataset folder, checking that every image is readable and captioned."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CuratedDatasetError(f"{path} is not a folder. Give the folder that holds the images and {CAPTIONS_FILE}.")
    captions = _read_captions(path)
    image_files = {
        f.name
        for f in path.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
    }
    uncaptioned = sorted(image_files - captions.keys())
    if uncaptioned:
        raise CuratedDatasetError(
            f"caption missing for {path / uncaptioned[0]}"
            + (f" and {len(uncaptioned) - 1} more" if len(uncaptioned) > 1 else "")
            + f": add a line to {CAPTIONS_FILE} or remove the image."
        )
    images = []
    for file_name in sorted(captions):
        file = path / file_name
        if not file.is_file():
            raise CuratedDatasetError(
                f"{CAPTIONS_FILE} names {file_name}, which is not in {path}; add it or remove the line."
            )
        data = file.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()  # structure and checksums, without decoding every pixel
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            raise CuratedDatasetError(
                f"{file} is not a readable image ({type(exc).__name__}: {exc}). Re-export it or remove it and its line "
                f"from {CAPTIONS_FILE}."
            ) from None
        images.append(CuratedImage(file_name, captions[file_name], hashlib.sha256(data).hexdigest()))
    if not images:
        raise CuratedDatasetError(f"{path} holds no captioned images.")
    digest = content_hash([(i.file_name, i.sha256, i.caption) for i in images])
    return CuratedDataset(path=path, images=tuple(images), content_hash=digest)


# --- Preprocessing -------------------------------------------------------------------------------


def crop_mode(center_crop: bool, seed: int) -> str:
    """The name of a crop policy, as it appears in cache keys.

    Latents are cached, so a "random" crop cannot be redrawn every step as an
    uncached loop would: each image gets one crop position drawn from
    (seed, file name), fixed for the whole run. The seed is part of the name
    so that runs with other seeds get their own crops and caches. SDXL's crop
    conditioning therefore sees the same fixed position per image (and flip
    variant), which ``size_conditioning`` reports and the cache stores.
    """
    return "center" if center_crop else f"random-{seed}"


def crop_box(width: int, height: int, resolution: int, mode: str, file_name: str) -> tuple[int, int, int, int]:
    if mode == "center":
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        rng = random.Random(f"{mode}:{file_name}")
        left, top = rng.randint(0, width - resolution), rng.randint(0, height - resolution)
    return left, top, left + resolution, top + resolution


def _resized_size(image_size: tuple[int, int], resolution: int) -> tuple[int, int]:
    width, height = image_size
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def preprocess(image: Image.Image, *, resolution: int, mode: str, file_name: str, flip: bool) -> np.ndarray:
    """Resize the shortest side to ``resolution``, crop a square, optionally mirror; float32 CHW in [-1, 1]."""
    size = _resized_size(image.size, resolution)
    image = image.resize(size, Image.Resampling.LANCZOS).crop(crop_box(*size, resolution, mode, file_name))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def size_conditioning(
    image_size: tuple[int, int], *, resolution: int, mode: str, file_name: str, flip: bool
) -> tuple[int, ...]:
    """SDXL's micro-conditioning for what ``preprocess`` makes of an image of ``image_size`` (width, height).

    (original height, original width, crop top, crop left, target height,
    target width), as diffusers' train_text_to_image_sdxl.py computes it: the
    original size before resizing, the crop's corner in the resized image. That
    script mirrors before cropping, so for the mirrored variant the corner is
    measured in the mirrored image: mirroring a crop at ``left`` is the crop at
    ``width - left - resolution`` of the mirrored image.
    """
    width, height = image_size
    resized_width, _ = _resized_size(image_size, resolution)
    left, top, right, _ = crop_box(*_resized_size(image_size, resolution), resolution, mode, file_name)
    if flip:
        left = resized_width - right
    return height, width, top, left, resolution, resolution
