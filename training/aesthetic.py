"""Aesthetic score head on CLIP image embeddings, in the LAION aesthetic-predictor format.

The LAION ``improved-aesthetic-predictor`` (``sac+logos+ava1-l14-linearMSE.pth``,
the model behind LAION-Aesthetics V2) is an MLP on **L2-normalised** CLIP image
embeddings (768-d for ViT-L/14)::

    layers.0  Linear(d, 1024)
    layers.1  Dropout(0.2)
    layers.2  Linear(1024, 128)
    layers.3  Dropout(0.2)
    layers.4  Linear(128, 64)
    layers.5  Dropout(0.1)
    layers.6  Linear(64, 16)
    layers.7  Linear(16, 1)

with no activation between the layers (the published code has its ReLUs
commented out), so the head is an affine function of the normalised embedding
at inference time. Its output is directly the score on the AVA 1-10 scale. The
file is a plain ``torch.save(model.state_dict())`` with exactly the keys
``layers.{0,2,4,6,7}.{weight,bias}``; ``AestheticHead.save`` writes the same
layout, so heads trained in Needle load in LAION's code and the other way round.

``train_aesthetic_head`` fits such a head from ratings collected in Needle:

* absolute ratings on a 1-5 scale (one value per image, ``NaN`` for unrated;
  average several raters first): MSE regression on the rating rescaled to 1-10
  (``1 + (r - 1) * 9 / 4``), as LAION fitted AVA means;
* pairwise preferences ``(preferred, other)`` index pairs, optionally with a
  third column giving the probability that the first is preferred (0.5 = tie):
  Bradley-Terry, i.e. logistic loss on score differences. Preferences fix scores
  only up to an offset and a scale, so the trained head is then rescaled
  affinely (ranking unchanged) so that the training images score mean 5.5 and
  standard deviation 1.5 on the 1-10 scale; ``metrics["logits_per_point"]``
  converts a score difference back into Bradley-Terry log-odds.

Training is deterministic for a given ``seed`` (and thread count): the split,
the initialisation, the batch order and dropout all draw from seeded generators
without touching the global RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.atomic import atomic_write

HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)
LINEAR_INDICES = (0, 2, 4, 6, 7)
RATING_MIN, RATING_MAX = 1.0, 5.0
SCORE_MIN, SCORE_MAX = 1.0, 10.0
PAIRWISE_MEAN, PAIRWISE_STD = 5.5, 1.5


class AestheticHeadError(ValueError):
    """A file or a set of ratings cannot be used as an aesthetic head / training data; the message says why."""


class AestheticMLP(nn.Module):
    """The LAION aesthetic-predictor MLP (see the module docstring for the layer list)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, HIDDEN[0]),
            nn.Dropout(DROPOUT[0]),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.Dropout(DROPOUT[1]),
            nn.Linear(HIDDEN[1], HIDDEN[2]),
            nn.Dropout(DROPOUT[2]),
            nn.Linear(HIDDEN[2], HIDDEN[3]),
            nn.Linear(HIDDEN[3], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


def expected_shapes(input_dim: int) -> dict[str, tuple[int, ...]]:
    """The LAION layout: state dict key -> tensor shape, for embeddings of size ``input_dim``."""
    dims = (input_dim, *HIDDEN, 1)
    shapes = {}
    for index, fan_in, fan_out in zip(LINEAR_INDICES, dims[:-1], dims[1:]):
        shapes[f"layers.{index}.weight"] = (fan_out, fan_in)
        shapes[f"layers.{index}.bias"] = (fan_out,)
    return shapes


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise AestheticHeadError(f"embeddings must be a 2-D array (images x dims), got shape {embeddings.shape}")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        bad = np.flatnonzero((norms[:, 0] == 0) | ~np.isfinite(norms[:, 0]))
        raise AestheticHeadError(f"embedding rows {bad[:5].tolist()} are zero or not finite: cannot be normalised")
    return embeddings / norms


class AestheticHead:
    """A LAION-layout aesthetic MLP: ``predict(clip_image_embeddings) -> scores`` on the 1-10 scale."""

    def __init__(self, module: AestheticMLP, device: str | torch.device = "cpu"):
        self.module = module.to(device).eval()
        self.device = torch.device(device)

    @property
    def input_dim(self) -> int:
        return self.module.input_dim

    # --- files -----------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], source: str = "state dict", device: str | torch.device = "cpu"
    ) -> AestheticHead:
        """A head from a LAION-layout state dict; ``AestheticHeadError`` naming what differs otherwise."""
        if not isinstance(state_dict, dict):
            raise AestheticHeadError(f"{source} holds a {type(state_dict).__name__}, not a state dict")
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
            state_dict = state_dict["state_dict"]
        if state_dict and all(str(key).startswith("module.") for key in state_dict):
            state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
        first = state_dict.get("layers.0.weight")
        if not isinstance(first, torch.Tensor) or first.ndim != 2:
            keys = ", ".join(sorted(map(str, state_dict))[:6]) or "none"
            raise AestheticHeadError(
                f"{source} is not a LAION aesthetic-predictor head: no 2-D 'layers.0.weight' (keys: {keys}). "
                "Expected keys layers.{0,2,4,6,7}.{weight,bias} of Linear(d,1024)-Linear(1024,128)-Linear(128,64)-"
                "Linear(64,16)-Linear(16,1)."
            )
        input_dim = int(first.shape[1])
        shapes = expected_shapes(input_dim)
        problems = []
        missing = sorted(set(shapes) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(shapes))
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {', '.join(map(str, unexpected[:6]))}")
        for key in sorted(set(shapes) & set(state_dict)):
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{key} is a {type(value).__name__}, not a tensor")
            elif tuple(value.shape) != shapes[key]:
                problems.append(f"{key} has shape {tuple(value.shape)}, expected {shapes[key]}")
        if problems:
            raise AestheticHeadError(
                f"{source} does not have the LAION aesthetic-predictor layout for {input_dim}-d embeddings: "
                + "; ".join(problems)
            )
        module = AestheticMLP(input_dim)
        module.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
        return cls(module, device=device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> AestheticHead:
        """Load a ``.pth``/``.pt``/``.bin`` (torch.save of the state dict) or ``.safetensors`` head."""
        path = Path(path)
        if not path.is_file():
            raise AestheticHeadError(f"aesthetic head not found: {path} does not exist or is not a file")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state_dict = load_file(str(path), device="cpu")
            else:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling / safetensors errors of a foreign file
            raise AestheticHeadError(f"{path} cannot be read as a state dict ({type(exc).__name__}: {exc})") from exc
        return cls.from_state_dict(state_dict, source=str(path), device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the LAION keys, as contiguous float32 CPU tensors."""
        return {
            key: value.detach().to("cpu", torch.float32).contiguous() for key, value in self.module.state_dict().items()
        }

    def save(self, path: str | Path) -> Path:
        """Write the LAION layout (``.safetensors`` by suffix, else ``torch.save``), atomically."""
        state_dict = self.state_dict()
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            return atomic_write(path, lambda temp: save_file(state_dict, str(temp)))
        return atomic_write(path, lambda temp: torch.save(state_dict, temp))

    # --- scoring ---------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Scores (1-10 scale for LAION-style heads) of CLIP image embeddings, L2-normalised here."""
        embeddings = l2_normalise(embeddings)
        if embeddings.shape[1] != self.input_dim:
            raise AestheticHeadError(
                f"the aesthetic head takes {self.input_dim}-d CLIP embeddings but got {embeddings.shape[1]}-d: "
                "use the CLIP model the head was trained on"
            )
        self.module.eval()
        out = [
            self.module(torch.from_numpy(embeddings[start : start + batch_size]).to(self.device)).float().cpu().numpy()
            for start in range(0, len(embeddings), batch_size)
        ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    __call__ = predict


# --- training --------------------------------------------------------------------


@dataclass
class AestheticTraining:
    """What ``train_aesthetic_head`` returns: the head, final metrics and per-epoch history."""

    head: AestheticHead
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def rating_to_score(ratings: np.ndarray) -> np.ndarray:
    """1-5 ratings onto the LAION 1-10 scale (1 -> 1, 3 -> 5.5, 5 -> 10)."""
    return SCORE_MIN + (np.asarray(ratings, dtype=np.float64) - RATING_MIN) * (SCORE_MAX - SCORE_MIN) / (
        RATING_MAX - RATING_MIN
    )


def _ratings_kind(ratings: np.ndarray, n: int, kind: str) -> str:
    if kind not in ("auto", "absolute", "pairwise"):
        raise AestheticHeadError(f"kind must be 'auto', 'absolute' or 'pairwise', not {kind!r}")
    if kind != "auto":
        return kind
    if ratings.ndim == 1:
        return "absolute"
    if ratings.ndim == 2 and ratings.shape[1] in (2, 3):
        return "pairwise"
    raise AestheticHeadError(
        f"ratings of shape {ratings.shape} are neither absolute (one 1-5 value per image, length {n}) nor pairwise "
        "((preferred, other) index pairs, shape (M, 2) or (M, 3) with a preference probability)"
    )


def _split(count: int, validation_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(count)
    n_val = int(round(validation_fraction * count)) if validation_fraction > 0 else 0
    n_val = min(n_val, count - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def train_aesthetic_head(
    embeddings: np.ndarray,
    ratings: np.ndarray,
    *,
    kind: str = "auto",
    epochs: int = 200,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.2,
    patience: int | None = None,
    seed: int = 0,
) -> AestheticTraining:
    """Fit a LAION-layout head on CLIP image ``embeddings`` (N x d) from Needle ratings.

    ``ratings``: a length-N array of absolute 1-5 ratings (``NaN`` = unrated), or an
    (M, 2) array of ``(preferred, other)`` image indices, or (M, 3) with the
    probability that the first is preferred in the last column (see module docstring).
    A random ``validation_fraction`` of the rated images (absolute) or of the pairs
    (pairwise) is held out; the epoch with the lowest validation loss is kept
    (the last one without validation data). ``patience`` stops after that many
    epochs without improvement.
    """
    x_all = l2_normalise(embeddings)
    n, dim = x_all.shape
    ratings = np.asarray(ratings)
    kind = _ratings_kind(ratings, n, kind)
    rng = np.random.default_rng(seed)

    if kind == "absolute":
        values = ratings.astype(np.float64).reshape(-1)
        if len(values) != n:
            raise AestheticHeadError(
                f"{len(values)} absolute ratings for {n} embeddings: give one per image (NaN = unrated)"
            )
        rated = np.flatnonzero(~np.isnan(values))
        out_of_range = rated[(values[rated] < RATING_MIN) | (values[rated] > RATING_MAX)]
        if len(out_of_range):
            raise AestheticHeadError(
                f"ratings must lie in {RATING_MIN:g}-{RATING_MAX:g}; image(s) {out_of_range[:5].tolist()} have "
                f"{values[out_of_range[:5]].tolist()}"
            )
        if len(rated) < 2:
            raise AestheticHeadError(f"need at least 2 rated images to train, got {len(rated)}")
        train_rows, val_rows = _split(len(rated), validation_fraction, rng)
        train_idx, val_idx = rated[train_rows], rated[val_rows]
        targets = rating_to_score(values)
    else:
        pairs = ratings.astype(np.float64)
        if pairs.ndim != 2 or pairs.shape[1] not in (2, 3):
            raise AestheticHeadError(f"pairwise ratings must have shape (M, 2) or (M, 3), got {pairs.shape}")
        first, second = pairs[:, 0], pairs[:, 1]
        if np.any(first != np.round(first)) or np.any(second != np.round(second)):
            raise AestheticHeadError("the first two columns of pairwise ratings must be integer image indices")
        first, second = first.astype(np.int64), second.astype(np.int64)
        bad = np.flatnonzero((first < 0) | (first >= n) | (second < 0) | (second >= n) | (first == second))
        if len(bad):
            raise AestheticHeadError(
                f"pair rows {bad[:5].tolist()} have an index outside 0-{n - 1} or compare an image with itself"
            )
        probability = pairs[:, 2] if pairs.shape[1] == 3 else np.ones(len(pairs))
        if np.any((probability < 0) | (probability > 1)) or np.any(np.isnan(probability)):
            raise AestheticHeadError(
                "the preference probability column must lie in 0-1 (1 = first preferred, 0.5 = tie)"
            )
        if len(pairs) < 2:
            raise AestheticHeadError(f"need at least 2 preference pairs to train, got {len(pairs)}")
        train_idx, val_idx = _split(len(pairs), validation_fraction, rng)

    x = torch.from_numpy(x_all)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AestheticMLP(dim)
        if kind == "absolute":
            # Start at the mean target so the first epochs fit the direction, not the offset.
            with torch.no_grad():
                module.layers[7].bias.fill_(float(targets[train_idx].mean()))
        optimiser = torch.optim.AdamW(module.parameters(), lr=learning_rate, weight_decay=weight_decay)
        shuffle = torch.Generator().manual_seed(seed)

        if kind == "absolute":
            y = torch.from_numpy(targets.astype(np.float32))

            def batch_loss(rows: torch.Tensor) -> torch.Tensor:
                return nn.functional.mse_loss(module(x[rows]), y[rows])

        else:
            a_all, b_all = torch.from_numpy(first), torch.from_numpy(second)
            p_all = torch.from_numpy(probability.astype(np.float32))

            def batch_loss(rows: torch.Tensor) -> torch.Tensor:
                margin = module(x[a_all[rows]]) - module(x[b_all[rows]])
                return nn.functional.binary_cross_entropy_with_logits(margin, p_all[rows])

        train_rows_t, val_rows_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state = math.inf, -1, None
        for epoch in range(epochs):
            module.train()
            order = train_rows_t[torch.randperm(len(train_rows_t), generator=shuffle)]
            total = 0.0
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                loss = batch_loss(rows)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(rows)
            record = {"epoch": epoch, "train_loss": total / len(order)}
            if len(val_rows_t):
                module.eval()
                with torch.no_grad():
                    record["val_loss"] = float(batch_loss(val_rows_t))
            history.append(record)
            monitored = record.get("val_loss", record["train_loss"])
            if monitored < best_loss - 1e-9:
                best_loss, best_epoch = monitored, epoch
                best_state = {key: value.clone() for key, value in module.state_dict().items()}
            elif patience is not None and epoch - best_epoch >= patience:
                break
        if len(val_rows_t) == 0:
            best_epoch, best_state = len(history) - 1, module.state_dict()
        module.load_state_dict(best_state)
        module.eval()

    metrics: dict[str, float] = {"epochs_run": len(history), "best_epoch": best_epoch}
    with torch.no_grad():
        scores = module(x).numpy().astype(np.float64)
    if kind == "absolute":
        metrics.update(n_train=len(train_idx), n_validation=len(val_idx))
        metrics["train_mse"] = float(np.mean((scores[train_idx] - targets[train_idx]) ** 2))
        metrics["train_spearman"] = _spearman(scores[train_idx], targets[train_idx])
        if len(val_idx):
            metrics["validation_mse"] = float(np.mean((scores[val_idx] - targets[val_idx]) ** 2))
            metrics["validation_spearman"] = _spearman(scores[val_idx], targets[val_idx])
    else:
        # Affine rescale onto the 1-10 scale (ranking unchanged); see the module docstring.
        involved = np.unique(np.concatenate([first[train_idx], second[train_idx]]))
        mean, std = float(scores[involved].mean()), float(scores[involved].std())
        scale = PAIRWISE_STD / std if std > 0 else 1.0
        with torch.no_grad():
            last = module.layers[7]
            last.weight.mul_(scale)
            last.bias.copy_((last.bias - mean) * scale + PAIRWISE_MEAN)
        metrics["logits_per_point"] = 1.0 / scale
        margin = scores[first] - scores[second]

        def accuracy(rows: np.ndarray) -> float:
            decided = rows[probability[rows] != 0.5]
            if len(decided) == 0:
                return float("nan")
            return float(np.mean((margin[decided] > 0) == (probability[decided] > 0.5)))

        def log_loss(rows: np.ndarray) -> float:
            logits = torch.from_numpy(margin[rows])
            return float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(probability[rows])))

        metrics.update(n_train_pairs=len(train_idx), n_validation_pairs=len(val_idx))
        metrics["train_loss"], metrics["train_accuracy"] = log_loss(train_idx), accuracy(train_idx)
        if len(val_idx):
            metrics["validation_loss"], metrics["validation_accuracy"] = log_loss(val_idx), accuracy(val_idx)
    return AestheticTraining(head=AestheticHead(module), kind=kind, metrics=metrics, history=history)
