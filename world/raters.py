"""Simulated raters and reviewers: they judge pixels (and, for faithfulness, the caption shown), nothing else.

A :class:`SimulatedRater` sees exactly what a person on the voting page sees: two images, left and right, and the
prompt when the question shows it. It never sees model names, database state or which image is which model.

* **Visual appeal**: the hidden :func:`world.appeal.appeal_score` of each image, plus the rater's own noise; a
  difference within the rater's tie margin is a tie.
* **Text faithfulness**: the oracle's :func:`world.oracle.faithfulness` of each image for the caption, plus noise;
  close scores answer "both" when both images match well, "neither" when neither does.
* **Position bias**: a small pull towards the left image, different for every rater.
* **Careless raters** answer at random and fast; gold items are there to catch them.

Raters differ in noise, tie margin, bias and speed (drawn per rater from the crowd's seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from world.appeal import appeal_score
from world.oracle import faithfulness

APPEAL_ANSWERS = ("left", "right", "tie")
FAITHFULNESS_ANSWERS = ("left", "right", "both", "neither")


@dataclass(frozen=True)
class SimulatedRater:
    name: str
    noise: float  # judgement noise, in appeal-score units
    tie_margin: float
    left_bias: float  # added to the left image's score
    careless: bool
    seconds_per_vote: float
    seed: int

    def rng(self, salt: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, *salt.encode()])

    def judge_appeal(self, left: np.ndarray, right: np.ndarray, salt: str = "") -> str:
        rng = self.rng("appeal" + salt)
        if self.careless:
            return str(rng.choice(APPEAL_ANSWERS))
        difference = appeal_score(left) - appeal_score(right) + self.left_bias + rng.normal(0.0, self.noise)
        if abs(difference) < self.tie_margin:
            return "tie"
        return "left" if difference > 0 else "right"

    def judge_faithfulness(self, left: np.ndarray, right: np.ndarray, caption: str, salt: str = "") -> str:
        rng = self.rng("faith" + salt)
        if self.careless:
            return str(rng.choice(FAITHFULNESS_ANSWERS))
        fl = faithfulness(left, caption) + rng.normal(0.0, self.noise)
        fr = faithfulness(right, caption) + rng.normal(0.0, self.noise)
        difference = fl - fr + self.left_bias
        if abs(difference) < max(self.tie_margin, 0.1):
            return "both" if min(fl, fr) >= 0.7 else "neither"
        return "left" if difference > 0 else "right"


def crowd(size: int, seed: int = 0, careless_share: float = 0.1) -> list[SimulatedRater]:
    """``size`` raters: mostly careful and different from each other, a ``careless_share`` answering at random."""
    rng = np.random.default_rng(seed)
    careless = set(rng.choice(size, size=int(round(size * careless_share)), replace=False).tolist()) if size else set()
    raters = []
    for i in range(size):
        raters.append(
            SimulatedRater(
                name=f"sim-{seed}-{i:03d}",
                noise=float(rng.uniform(0.02, 0.08)),
                tie_margin=float(rng.uniform(0.005, 0.03)),
                left_bias=float(rng.normal(0.0, 0.01)),
                careless=i in careless,
                seconds_per_vote=float(rng.uniform(0.4, 1.0) if i in careless else rng.uniform(2.5, 7.0)),
                seed=int(rng.integers(2**31)),
            )
        )
    return raters


@dataclass(frozen=True)
class SimulatedReviewer:
    """A curation reviewer: keeps what looks photogenic to them (the hidden appeal, with their own noise)."""

    keep_above: float
    noise: float
    seed: int

    def keep(self, pixels: np.ndarray, salt: str = "") -> bool:
        rng = np.random.default_rng([self.seed, *salt.encode()])
        return appeal_score(pixels) + rng.normal(0.0, self.noise) >= self.keep_above

    def rating(self, pixels: np.ndarray, salt: str = "") -> float:
        """A 1-10 aesthetic rating, for training the aesthetic head from reviewers' ratings."""
        rng = np.random.default_rng([self.seed, *salt.encode()])
        return float(np.clip(1 + 9 * (appeal_score(pixels) + rng.normal(0.0, self.noise)), 1, 10))
