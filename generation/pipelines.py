"""Diffusers pipelines: checking a directory, fingerprinting it, loading it, running it.

(About 540 lines, kept whole: the one place that knows the diffusers code paths, so that generation,
training and the world load and run every pipeline the same way.)

This module does not import Django, so training code and the mini-Emu world
can reuse it. Every path here is the one a real SD 1.x/2.x or SDXL checkpoint
takes: ``AutoPipelineForText2Image.from_pretrained`` on a local directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
# Components that hold no weights of their own.
_WEIGHTLESS_CLASS_MARKERS = ("Tokenizer", "Scheduler", "FeatureExtractor", "ImageProcessor", "Processor")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")

# Needle's scheduler names -> (diffusers class, extra config).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


class PipelineDirectoryError(ValueError):
    """The directory is not a loadable text-to-image pipeline; the message says why and what to do."""


class WeightsChangedError(RuntimeError):
    """The files on disk are no longer the ones that were registered."""


@dataclass(frozen=True)
class PipelineInfo:
    path: Path
    class_name: str
    components: dict[str, str]
    fingerprint: str
    total_bytes: int
    native_resolution: int | None


def text_to_image_pipeline_classes() -> set[str]:
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    return {cls.__name__ for cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}


def _pipeline_files(path: Path) -> list[Path]:
    # Hidden entries (.cache from hub downloads, editor files) are not part of the model.
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return files


def fingerprint_directory(path: str | Path) -> tuple[str, int]:
    """sha256 over every file's relative path, size and contents; returns (hex, total bytes)."""
    path = Path(path)
    outer = hashlib.sha256()
    total = 0
    for file in _pipeline_files(path):
        inner = hashlib.sha256()
        size = 0
        with open(file, "rb") as fh:
            while block := fh.read(8 * 1024 * 1024):
                inner.update(block)
                size += len(block)
        total += size
        rel = file.relative_to(path).as_posix()
        outer.update(f"{rel}\0{size}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest(), total


def _native_resolution(path: Path) -> int | None:
    """unet sample size x VAE scale factor: 512 for SD 1.5, 768 for SD 2, 1024 for SDXL."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_model_index(index_file: Path) -> dict:
    """model_index.json as a dict with a string _class_name, or PipelineDirectoryError saying what is wrong with it."""
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipelineDirectoryError(
            f"{index_file} is not a valid diffusers model index: not valid JSON ({exc}); save the pipeline again "
            "with save_pretrained."
        ) from None
    if not isinstance(index, dict):
        raise PipelineDirectoryError(
            f"{index_file} must hold a JSON object (the diffusers model index), not a {type(index).__name__}."
        )
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or not class_name:
        raise PipelineDirectoryError(
            f"{index_file}: _class_name must be the pipeline's class name as a string, e.g. "
            f'"StableDiffusionPipeline", not {class_name!r}.'
        )
    return index


def _pipeline_class(class_name: str):
    import diffusers

    return getattr(diffusers, class_name, None)


def _component_names(class_name: str) -> set[str]:
    cls = _pipeline_class(class_name)
    if cls is None:
        return set()
    expected, _ = cls._get_signature_keys(cls)
    return set(expected)


def _required_components(class_name: str) -> list[str]:
    cls = _pipeline_class(class_name)
    if cls is None:
        return []
    return sorted(_component_names(class_name) - set(getattr(cls, "_optional_components", [])))


# Bytes per element of each safetensors dtype.
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def safetensors_problem(file: str | Path) -> str | None:
    """What is wrong with a .safetensors file's structure, or None: header length, header JSON, every tensor's
    byte range inside the file and of the size its dtype and shape need. Reads the header only."""
    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        return f"is {size} bytes long, too short for a safetensors file (empty or truncated)"
    with open(file, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        if header_length > min(size - 8, _SAFETENSORS_MAX_HEADER):
            return (
                f"is truncated or not a safetensors file: its header claims {header_length:,} bytes but the file "
                f"has {size:,}"
            )
        raw = handle.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "has a header that is not valid JSON (not a safetensors file, or damaged)"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object (not a safetensors file, or damaged)"
    data_bytes = size - 8 - header_length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            return f"describes tensor {name!r} without a valid shape and data_offsets (damaged header)"
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            return (
                f"is truncated or damaged: tensor {name!r} lies at bytes {begin:,}-{end:,} of the data, but the "
                f"file holds {data_bytes:,} bytes of data"
            )
        per_element = _SAFETENSORS_DTYPE_BYTES.get(info.get("dtype"))
        if per_element is not None and end - begin != per_element * math.prod(shape):
            return (
                f"is damaged: tensor {name!r} ({info.get('dtype')} {shape}) needs {per_element * math.prod(shape):,} "
                f"bytes but its range holds {end - begin:,}"
            )
    return None


def inspect_pipeline_directory(path: str | Path) -> PipelineInfo:
    """Check that ``path`` holds a complete text-to-image pipeline and fingerprint it.

    Raises PipelineDirectoryError listing every problem found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PipelineDirectoryError(
            f"{path} does not exist. Give the directory that diffusers' save_pretrained wrote."
        )
    if not path.is_dir():
        raise PipelineDirectoryError(
            f"{path} is a file, not a pipeline directory. A single-file checkpoint must first be converted: "
            "StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR)."
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise PipelineDirectoryError(
            f"{path} is not a diffusers pipeline: it has no model_index.json. "
            "Point at the folder that holds model_index.json, unet/, vae/, text_encoder/ and so on."
        )
    index = _read_model_index(index_file)
    class_name = index["_class_name"]
    supported = text_to_image_pipeline_classes()
    if class_name not in supported:
        raise PipelineDirectoryError(
            f"{path} holds a {class_name}, which is not a text-to-image pipeline that "
            "AutoPipelineForText2Image can load (e.g. StableDiffusionPipeline, StableDiffusionXLPipeline)."
        )

    problems = []
    components = {}
    for name in _required_components(class_name):
        if name not in index:
            problems.append(f"model_index.json lists no {name} (a {class_name} needs one)")
    for name, spec in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, list):
            if name in _component_names(class_name):
                problems.append(
                    f'model_index.json: {name} should be [library, class], e.g. ["diffusers", "UNet2DConditionModel"], '
                    f"not {spec!r}"
                )
            continue  # a setting such as requires_safety_checker
        if len(spec) != 2 or not all(part is None or isinstance(part, str) for part in spec):
            problems.append(
                f"model_index.json: {name} should be [library, class] (two strings, or null for an absent "
                f"optional component), not {spec!r}"
            )
            continue
        library, component_class = spec
        if component_class is None:
            continue
        components[name] = component_class
        component_dir = path / name
        if not component_dir.is_dir():
            problems.append(f"{name}/ is missing (model_index.json lists a {component_class})")
            continue
        if "Scheduler" in component_class:
            if not (component_dir / "scheduler_config.json").is_file():
                problems.append(f"{name}/scheduler_config.json is missing")
        elif "Tokenizer" in component_class:
            if not any((component_dir / f).is_file() for f in _TOKENIZER_FILES):
                problems.append(f"{name}/ has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
        elif not any(marker in component_class for marker in _WEIGHTLESS_CLASS_MARKERS):
            if not (component_dir / "config.json").is_file():
                problems.append(f"{name}/config.json is missing")
            if not any(f.suffix in WEIGHT_SUFFIXES for f in component_dir.iterdir() if f.is_file()):
                problems.append(f"{name}/ has no weights (expected *.safetensors or *.bin)")
    if problems:
        raise PipelineDirectoryError(f"{path} is an incomplete {class_name}: " + "; ".join(problems) + ".")
    damaged = [
        f"{file.relative_to(path).as_posix()} {problem}"
        for file in _pipeline_files(path)
        if file.suffix == ".safetensors" and (problem := safetensors_problem(file))
    ]
    if damaged:
        raise PipelineDirectoryError(
            f"{path} has damaged weights: " + "; ".join(damaged) + ". Copy the files again, or save the pipeline "
            "again with save_pretrained."
        )

    fingerprint, total_bytes = fingerprint_directory(path)
    return PipelineInfo(path, class_name, components, fingerprint, total_bytes, _native_resolution(path))


# --- Loading ---------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        raise ValueError(f"unknown torch dtype {name!r}; use auto, float32, float16 or bfloat16") from None


@dataclass
class LoadedPipeline:
    pipe: object
    original_scheduler: object
    device: str
    fingerprint: str
    scheduler_name: str = "default"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def use_scheduler(self, name: str) -> None:
        if name == self.scheduler_name:
            return
        if name == "default":
            self.pipe.scheduler = self.original_scheduler
        else:
            import diffusers

            try:
                class_name, extra = SCHEDULERS[name]
            except KeyError:
                raise ValueError(
                    f"unknown scheduler {name!r}; choose one of default, {', '.join(SCHEDULERS)}"
                ) from None
            cls = getattr(diffusers, class_name)
            self.pipe.scheduler = cls.from_config(self.original_scheduler.config, **extra)
        self.scheduler_name = name


def load_pipeline(
    path: str | Path, *, expected_fingerprint: str | None, device: str = "auto", dtype: str = "auto"
) -> LoadedPipeline:
    """Load a pipeline from a local directory, refusing weights that changed since registration."""
    import torch
    from diffusers import AutoPipelineForText2Image

    path = Path(path)
    if not path.is_dir():
        raise PipelineDirectoryError(
            f"{path} no longer exists on this worker. Mount the model directory here or register the model again."
        )
    if expected_fingerprint is not None:
        actual, _ = fingerprint_directory(path)
        if actual != expected_fingerprint:
            raise WeightsChangedError(
                f"the files in {path} changed since the model was registered "
                f"(fingerprint {actual[:12]} != {expected_fingerprint[:12]}); register the new weights as a new model."
            )
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    _quiet_progress_bars()
    started = time.perf_counter()
    pipe = AutoPipelineForText2Image.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels per run: not reproducible
    logger.info("loaded %s from %s on %s in %.1fs", type(pipe).__name__, path, device, time.perf_counter() - started)
    return LoadedPipeline(
        pipe=pipe, original_scheduler=pipe.scheduler, device=device, fingerprint=expected_fingerprint or ""
    )


def _quiet_progress_bars() -> None:
    # Loading bars would flood worker logs, one line per component per load.
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class PipelineCache:
    """Keeps the last few pipelines a worker process used, so each loads once."""

    def __init__(self, capacity: int = 2):
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[tuple[str, str], LoadedPipeline] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str, fingerprint: str, *, device: str = "auto", dtype: str = "auto") -> LoadedPipeline:
        key = (str(path), fingerprint)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self.capacity:
                _, evicted = self._entries.popitem(last=False)
                del evicted
                _free_accelerator_memory()
            loaded = load_pipeline(path, expected_fingerprint=fingerprint, device=device, dtype=dtype)
            self._entries[key] = loaded
            self.loads += 1
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- Running ---------------------------------------------------------------------------------


def render(
    loaded: LoadedPipeline, prompts: list[str], seeds: list[int], parameters: dict
) -> tuple[list[np.ndarray], float]:
    """Run one forward pass over ``prompts`` with one generator per image.

    Each image's initial noise comes from its own CPU generator seeded with its
    seed, so the noise for (prompt, seed) is the same whatever else is in the
    batch and whichever model or device runs it. Returns uint8 HxWx3 arrays and
    the seconds the pass took.
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    with loaded.lock:
        loaded.use_scheduler(parameters["scheduler"])
        started = time.perf_counter()
        with torch.inference_mode():
            output = loaded.pipe(
                prompt=list(prompts),
                num_inference_steps=parameters["steps"],
                guidance_scale=parameters["guidance_scale"],
                width=parameters["width"],
                height=parameters["height"],
                generator=generators,
                output_type="np",
            )
        seconds = time.perf_counter() - started
    images = [(np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8) for img in output.images]
    return images, seconds


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes with no metadata chunks: nothing in the file names the model or the settings."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A private ancillary chunk (lower-case first letter: decoders skip it; lower-case second: private; upper-case
# third: the reserved bit; lower-case fourth: safe to copy) that holds nothing but filler bytes.
PNG_PADDING_CHUNK = b"paDd"
# Length, type and CRC around a chunk's data: what padding costs beyond its filler bytes.
PNG_CHUNK_OVERHEAD = 12


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def padded_png(data: bytes, length: int) -> bytes:
    """The same image as exactly ``length`` bytes of PNG, laid out like every other image padded to that length.

    Only the critical chunks are kept (IHDR, PLTE, the image data, IEND: no metadata of any kind), the image data
    is merged into one IDAT chunk (how an encoder split it says how large it was), and a ``paDd`` chunk of random
    bytes fills up to ``length``. Random rather than zero, so compression on the way (a proxy's gzip) cannot
    shrink the filler and bring the real size back. Decoders skip the unknown ancillary chunk, so the pixels are
    unchanged. Any image no longer than ``length - PNG_CHUNK_OVERHEAD`` bytes fits; a longer one is a ValueError.
    """
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    kept, idat, offset = [], [], 8
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + size]
        offset += PNG_CHUNK_OVERHEAD + size
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif kind[:1].isupper():  # critical: IHDR, PLTE
            kept.append(_png_chunk(kind, body))
    head = PNG_SIGNATURE + b"".join(kept) + _png_chunk(b"IDAT", b"".join(idat))
    tail = _png_chunk(b"IEND", b"")
    filler = length - len(head) - len(tail) - PNG_CHUNK_OVERHEAD
    if filler < 0:
        raise ValueError(f"the image needs {len(head) + len(tail) + PNG_CHUNK_OVERHEAD} bytes, more than {length}")
    return head + _png_chunk(PNG_PADDING_CHUNK, os.urandom(filler)) + tail


def png_chunk_types(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order (for checking that no metadata is present)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    types, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        types.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return types
