"""CLIP image-text scores and image embeddings from an open_clip model on local disk.

Emu's automatic funnel keeps pairs whose CLIP image-text score is high enough and
feeds CLIP image embeddings to an aesthetic predictor. This module loads an
open_clip model **only from local files** (never a download) and computes both.

Where the weights come from (``load_clip``):

* a weights file (``.pt``/``.pth``/``.bin``/``.safetensors``, a plain state dict
  or one wrapped in ``{"state_dict": ...}``) plus an open_clip architecture name,
  either built in (``"ViT-L-14"``) or registered with
  ``open_clip.add_model_config(json_path)``;
* a directory in the layout open_clip's hub exports use: ``open_clip_config.json``
  (``{"model_cfg": ..., "preprocess_cfg": ...}``) beside the weights
  (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ...); the
  architecture then comes from the directory and ``model_name`` may be ``None``.

The model is built with random weights and the state dict is then loaded
strictly, so any missing, unexpected or wrongly shaped tensor is an error that
names them (``ClipLoadError``), never a half-random model.

Score convention: ``score = 100 * cos(image_embedding, text_embedding)``, without
clamping (negative values are possible), i.e. the CLIPScore of torchmetrics
before its ``max(., 0)``. LAION-5B kept English pairs with cosine >= 0.28 under
ViT-B/32, i.e. a score of 28; thresholds must be calibrated per CLIP model.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

#: cosine similarity is multiplied by this to give the CLIP score.
SCORE_SCALE = 100.0

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
CONFIG_FILE = "open_clip_config.json"
# open_clip's own preference order for a weights file inside an exported directory (plus ``.pt``).
_PREFERRED_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


class ClipLoadError(ValueError):
    """The CLIP model cannot be loaded from the given files; the message says which file and what is wrong."""


@dataclass
class ClipScorer:
    """An open_clip model in eval mode with its eval preprocessing and tokenizer.

    All embeddings are L2-normalised float32 numpy arrays of shape ``(N, embed_dim)``.
    Model calls are batched (``batch_size`` images or texts per forward pass).
    """

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    model_name: str
    weights_path: Path
    batch_size: int = 32

    @property
    def embed_dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        if isinstance(projection, torch.Tensor):
            return int(projection.shape[-1])
        return int(self.embed_texts([""]).shape[1])

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (preprocessed as the model was evaluated)."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(image) for image in images[start : start + self.batch_size]])
            features = self.model.encode_image(batch.to(self.device), normalize=True)
            chunks.append(features.float().cpu().numpy())
        return _stack(chunks, self)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, one row per text (truncated to the model's context length)."""
        texts = list(texts)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size])
            features = self.model.encode_text(tokens.to(self.device), normalize=True)
            chunks.append(features.float().cpu().numpy())
        return _stack(chunks, self)

    @staticmethod
    def cosine_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """Row-wise ``100 * cos`` of already normalised embeddings (image i with text i)."""
        image_embeddings = np.asarray(image_embeddings, dtype=np.float64)
        text_embeddings = np.asarray(text_embeddings, dtype=np.float64)
        if image_embeddings.shape != text_embeddings.shape:
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings but {text_embeddings.shape[0]} text embeddings"
            )
        return SCORE_SCALE * np.sum(image_embeddings * text_embeddings, axis=1)

    def scores(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """CLIP score (``100 * cos``) of image i with text i."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: scores pair image i with text i")
        return self.cosine_scores(self.embed_images(images), self.embed_texts(texts))


def _stack(chunks: list[np.ndarray], scorer: ClipScorer) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks).astype(np.float32, copy=False)
    projection = getattr(scorer.model, "text_projection", None)
    dim = int(projection.shape[-1]) if isinstance(projection, torch.Tensor) else 0
    return np.zeros((0, dim), dtype=np.float32)


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" for the model load_clip fills with weights right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def find_weights_in_directory(directory: Path) -> Path:
    """The weights file of an exported open_clip directory, by open_clip's preference order."""
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not found:
        raise ClipLoadError(
            f"{directory} has {CONFIG_FILE} but no weights file ({', '.join(WEIGHT_SUFFIXES)}); "
            "copy the exported open_clip_model.safetensors next to it."
        )
    by_name = {p.name: p for p in found}
    for name in _PREFERRED_WEIGHT_FILES:
        if name in by_name:
            return by_name[name]
    found.sort(key=lambda p: WEIGHT_SUFFIXES.index(p.suffix))
    if len(found) > 1:
        log.warning("Several weight files in %s: using %s", directory, found[0].name)
    return found[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import open_clip

    try:
        return open_clip.factory.load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many kinds for a bad file
        raise ClipLoadError(f"{path} cannot be read as a weights file ({type(exc).__name__}: {exc})") from exc


def _describe_mismatch(model: torch.nn.Module, state_dict: dict, path: Path, model_name: str, error: Exception) -> str:
    """Which tensors of the checkpoint do not fit the model, in words (called only once loading failed)."""
    import open_clip

    try:
        state_dict = open_clip.factory.convert_state_dict(model, dict(state_dict))
    except Exception:  # noqa: BLE001 - compare the raw keys then
        pass
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if hasattr(state_dict[key], "shape") and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:3])})")
    detail = "; ".join(parts) or f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return (
        f"The weights in {path} do not fit the open_clip architecture '{model_name}': {detail}. "
        "Check that the file was trained with this architecture (same model name / open_clip_config.json)."
    )


def _check_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith("hf-hub:"):
        raise ClipLoadError(
            f"'{model_name}' would download from the Hugging Face hub; Needle loads CLIP only from local files: "
            "pass the exported directory (with open_clip_config.json) as checkpoint_path instead."
        )
    if open_clip.get_model_config(model_name.replace("/", "-")) is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ClipLoadError(
            f"Unknown open_clip architecture '{model_name}'.{hint} Use a built-in name (open_clip.list_models()), "
            "register a config JSON with open_clip.add_model_config(path), or pass a directory with "
            f"{CONFIG_FILE}."
        )


def load_clip(
    model_name: str | None,
    checkpoint_path: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> ClipScorer:
    """An open_clip model with weights from a local file or exported directory (see the module docstring).

    Raises ``ClipLoadError`` for a missing path, an unknown architecture, an unreadable
    file, or weights that do not fit the architecture.
    """
    import open_clip

    path = Path(checkpoint_path).expanduser()
    if not path.exists():
        raise ClipLoadError(f"CLIP weights not found: {path} does not exist")
    path = path.resolve()
    if path.is_dir():
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise ClipLoadError(
                f"{path} is a directory without {CONFIG_FILE}: pass the weights file itself together with its "
                "architecture name, or a directory exported by open_clip (open_clip_config.json + weights)."
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClipLoadError(f"{config_path} is not valid JSON ({exc})") from exc
        if not isinstance(config, dict) or "model_cfg" not in config:
            raise ClipLoadError(f"{config_path} has no 'model_cfg' object: it is not an open_clip export")
        weights = find_weights_in_directory(path)
        architecture = f"local-dir:{path}"
        display_name = model_name or path.name
    else:
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ClipLoadError(f"{path} is not a weights file: expected one of {', '.join(WEIGHT_SUFFIXES)}")
        if not model_name:
            raise ClipLoadError(f"{path} is a bare weights file: give the open_clip architecture name it belongs to")
        _check_model_name(model_name)
        weights = path
        architecture = display_name = model_name

    device = torch.device(device)
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        # Random init, no weights and no base-tower downloads: the local state dict is loaded below, strictly.
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture,
            pretrained=None,
            load_weights=False,
            pretrained_text=False,
            pretrained_image=False,
            device="cpu",
        )
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ClipLoadError(f"open_clip cannot build the architecture '{display_name}': {exc}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, open_clip's converters others
        # Only on failure: read the file again to say which tensors do not fit (or that it is unreadable).
        state_dict = _read_state_dict(weights)
        raise ClipLoadError(_describe_mismatch(model, state_dict, weights, display_name, exc)) from exc
    model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(architecture)
    return ClipScorer(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        model_name=display_name,
        weights_path=weights,
        batch_size=batch_size,
    )


# --- tiny random-weight model for tests, benchmarks and the offline mini-Emu world -----------------------------


def tiny_clip_config(embed_dim: int = 32, width: int = 64, layers: int = 2) -> dict:
    """A very small open_clip ViT config (64 px images, 16 px patches, the real 49,408-token BPE vocabulary)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 64, "layers": layers, "width": width, "patch_size": 16, "head_width": 32},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": max(1, width // 32),
            "layers": layers,
        },
    }


def save_tiny_clip(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Build a random-weight tiny open_clip model (seeded) and export it in the hub layout:
    ``directory/open_clip_config.json`` + ``directory/open_clip_model.safetensors``. No download."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_clip_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**config)
    state_dict = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state_dict, str(directory / "open_clip_model.safetensors"))
    export = {
        "model_cfg": config,
        "preprocess_cfg": {
            "mean": list(OPENAI_DATASET_MEAN),
            "std": list(OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (directory / CONFIG_FILE).write_text(json.dumps(export, indent=2), encoding="utf-8")
    return directory
