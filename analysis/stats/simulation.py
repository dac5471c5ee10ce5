"""Simulated campaigns from a known truth, for checking intervals by coverage (tests and bench/coverage.py).

The model: each prompt has its own chance ``v`` that a rater prefers B's
image, drawn from Beta(mu * c, (1 - mu) * c) (prompt effects; smaller
concentration ``c``, stronger effects). Each item of the prompt (one seed) gets
k votes: tie with probability ``tie_vote_share``, otherwise B with probability
``v`` (rater noise). The item's outcome is the strict majority of its votes,
as Needle counts it (:func:`analysis.stats.majority_outcomes`). ``mu`` is
solved so that the true item-level win rate, the expected share of items B wins
over the population of prompts, is the one asked for.

Pure numpy / SciPy, like the rest of ``analysis.stats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, special


def _item_outcome_probabilities(v: np.ndarray, k: int, tie_vote_share: float) -> tuple[np.ndarray, np.ndarray]:
    """P(B wins the item), P(no strict majority) at each ``v``: a vote is tie w.p. tau, else B w.p. v, else A.

    Both are polynomials of degree k in v (a sum over the vote counts).
    """
    v = np.asarray(v, dtype=np.float64)
    p_a, p_b, p_t = (1 - tie_vote_share) * (1 - v), (1 - tie_vote_share) * v, tie_vote_share
    win = np.zeros_like(v)
    tie = np.zeros_like(v)
    for b in range(k + 1):
        for t in range(k + 1 - b):
            a = k - b - t
            probability = math.comb(k, b) * math.comb(k - b, t) * p_a**a * p_b**b * p_t**t
            if 2 * b > k:
                win += probability
            elif 2 * a <= k:
                tie += probability
    return win, tie


def _beta_nodes(alpha: float, beta: float, nodes: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Jacobi nodes and weights for expectations under Beta(alpha, beta): exact for polynomials below degree 80."""
    x, w = special.roots_jacobi(nodes, beta - 1, alpha - 1)  # weight (1 - x)^(beta-1) (1 + x)^(alpha-1) on [-1, 1]
    return (1 + x) / 2, w / w.sum()


@lru_cache(maxsize=1024)
def _truth(mu: float, concentration: float, k: int, tie_vote_share: float) -> tuple[float, float, float]:
    """(item-level win rate, wins + ties / 2 rate, item-level ICC of a win) over the population of prompts."""
    v, weight = _beta_nodes(mu * concentration, (1 - mu) * concentration)
    win, tie = _item_outcome_probabilities(v, k, tie_vote_share)
    rate = float(weight @ win)
    between = float(weight @ (win - rate) ** 2)
    icc = between / (rate * (1 - rate)) if 0 < rate < 1 else 0.0
    return rate, float(weight @ (win + tie / 2)), icc


@dataclass(frozen=True)
class CampaignModel:
    """A truth to simulate campaigns from: see the module docstring."""

    true_rate: float  # item-level win rate of B (ties not won)
    true_rate_half_ties: float  # (wins + ties / 2) per item
    item_icc: float  # intraclass correlation of item wins within a prompt: Var(P(win | prompt)) / (rate (1 - rate))
    vote_mean: float  # mu: mean over prompts of a non-tie vote's chance of picking B
    concentration: float
    votes_per_item: int
    tie_vote_share: float


def campaign_model(
    true_rate: float, *, concentration: float = 4.0, votes_per_item: int = 5, tie_vote_share: float = 0.1
) -> CampaignModel:
    """The model whose true item-level win rate is ``true_rate`` (at the given prompt effects and rater noise)."""
    k, tau = int(votes_per_item), float(tie_vote_share)
    highest = _truth(1 - 1e-9, concentration, k, tau)[0]
    lowest = _truth(1e-9, concentration, k, tau)[0]
    if not lowest < true_rate < highest:
        raise ValueError(f"a true win rate of {true_rate} is out of reach here ({lowest:.3f}..{highest:.3f})")
    mu = optimize.brentq(lambda m: _truth(m, concentration, k, tau)[0] - true_rate, 1e-9, 1 - 1e-9, xtol=1e-12)
    win, half, icc = _truth(mu, concentration, k, tau)
    return CampaignModel(win, half, icc, mu, float(concentration), k, tau)


def null_campaign_model(
    *, concentration: float = 4.0, votes_per_item: int = 5, tie_vote_share: float = 0.1
) -> CampaignModel:
    """The symmetric null: neither model is better (a vote's chance of B is 1/2 on average), so wins + ties / 2 is 1/2."""
    k, tau = int(votes_per_item), float(tie_vote_share)
    win, half, icc = _truth(0.5, float(concentration), k, tau)
    return CampaignModel(win, half, icc, 0.5, float(concentration), k, tau)


def simulate_campaigns(model: CampaignModel, rng: np.random.Generator, campaigns: int, prompts: int, items_per_prompt):
    """Per-prompt sums of ``campaigns`` simulated campaigns: (wins, wins + ties / 2, items), each (campaigns, prompts).

    ``items_per_prompt``: an int, or (campaigns, prompts) ints (unequal prompts,
    for example incomplete items left out); at least 1 each.
    """
    sizes = np.broadcast_to(np.asarray(items_per_prompt, dtype=np.int64), (campaigns, prompts))
    if (sizes < 1).any():
        raise ValueError("every prompt needs at least one item")
    most = int(sizes.max())
    mu, c, k, tau = model.vote_mean, model.concentration, model.votes_per_item, model.tie_vote_share
    v = rng.beta(mu * c, (1 - mu) * c, size=(campaigns, prompts, 1))
    shape = (campaigns, prompts, most)
    b = rng.binomial(k, np.broadcast_to((1 - tau) * v, shape))
    rest = k - b
    # Of the votes that are not B, each is a tie with probability tau / (1 - (1 - tau) v).
    t = rng.binomial(rest, np.broadcast_to(np.minimum(1.0, tau / (1 - (1 - tau) * v)), shape))
    a = rest - t
    won = 2 * b > k
    tied = ~won & (2 * a <= k)
    present = np.arange(most) < sizes[..., None]
    wins = (won & present).sum(axis=2).astype(np.float64)
    half_ties = wins + 0.5 * (tied & present).sum(axis=2)
    return wins, half_ties, sizes.astype(np.float64)


# --- Campaigns with an automatic judge (prediction-powered inference) -------------------------------------------------


def _expected_item_score(latent, k: int, tie_vote_share: float) -> np.ndarray:
    """E[item score | latent]: a vote is a tie w.p. tau, else B w.p. expit(latent); majority, ties as half."""
    win, tie = _item_outcome_probabilities(special.expit(latent), k, tie_vote_share)
    return win + tie / 2


@dataclass(frozen=True)
class JudgedModel:
    """Items whose rater preference for B is expit(offset + prompt effect + item effect), both effects normal.

    Unlike :class:`CampaignModel`, items of one prompt differ too (seeds), so a
    judge that sees the images can predict more than the prompt's average.
    ``true_rate`` is the expected item score, wins + ties / 2 (Gauss-Hermite).
    """

    true_rate: float
    offset: float
    prompt_sd: float
    item_sd: float
    votes_per_item: int
    tie_vote_share: float


def judged_model(
    true_rate: float,
    *,
    prompt_sd: float = 1.0,
    item_sd: float = 1.0,
    votes_per_item: int = 5,
    tie_vote_share: float = 0.1,
) -> JudgedModel:
    x, w = special.roots_hermitenorm(60)
    w = w / w.sum()
    spread = math.hypot(prompt_sd, item_sd)

    def rate(offset):
        return float(w @ _expected_item_score(offset + spread * x, votes_per_item, tie_vote_share))

    offset = optimize.brentq(lambda o: rate(o) - true_rate, -30, 30, xtol=1e-13)
    return JudgedModel(rate(offset), offset, prompt_sd, item_sd, int(votes_per_item), float(tie_vote_share))


JUDGES = ("good", "useless", "biased", "inverted")


def simulate_judged(model: JudgedModel, rng: np.random.Generator, campaigns: int, prompts: int, items_per_prompt: int):
    """(human scores, latents) of simulated items, each (campaigns, prompts, items): majority of k votes, ties as half."""
    shape = (campaigns, prompts, items_per_prompt)
    latent = (
        model.offset
        + model.prompt_sd * rng.standard_normal((campaigns, prompts, 1))
        + model.item_sd * rng.standard_normal(shape)
    )
    k, tau = model.votes_per_item, model.tie_vote_share
    v = special.expit(latent)
    b = rng.binomial(k, (1 - tau) * v)
    t = rng.binomial(k - b, np.minimum(1.0, tau / (1 - (1 - tau) * v)))
    a = k - b - t
    human = np.where(2 * b > k, 1.0, np.where(2 * a > k, 0.0, 0.5))
    return human, latent


def judge_scores(kind: str, model: JudgedModel, latent: np.ndarray, rng: np.random.Generator, noise_sd: float = 0.5):
    """An automatic judge's scores of items with the given latents.

    ``good``: its estimate of the item's expected human score from the latent
    seen through noise (sd ``noise_sd``); ``useless``: uniform noise, unrelated to
    the items; ``biased``: the good judge's view shifted 2 logits toward B (it
    overrates B everywhere, as a judge trained on B's own reward might);
    ``inverted``: 1 - good (it prefers what humans dislike).
    """
    k, tau = model.votes_per_item, model.tie_vote_share
    seen = latent + noise_sd * rng.standard_normal(latent.shape)
    if kind == "good":
        return _expected_item_score(seen, k, tau)
    if kind == "useless":
        return rng.random(latent.shape)
    if kind == "biased":
        return _expected_item_score(seen + 2.0, k, tau)
    if kind == "inverted":
        return 1 - _expected_item_score(seen, k, tau)
    raise ValueError(f"judge must be one of {JUDGES}, not {kind!r}")
