"""Campaign reports: numbers against an independent count, exclusions, reproducibility, exports, pages, API, command.

The campaigns are built once for the module (really generated images, votes
cast through the assignment engine) inside a transaction that is rolled back
at the end; every test runs in a savepoint within it, so what a test adds or
excludes is gone for the next one (``world_is_untouched`` checks that before
every test, and clears the cache around each). The build is
deterministic: the engine's tokens (which set each rater's criterion schedule)
and first placements come from seeded generators, so every run, in any test
order, sees the same votes.
"""

import json
import random
import re
import secrets
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass
from io import StringIO
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import fleiss_kappa

from analysis import services, stats
from annotation import services as annotation_services
from annotation.models import Campaign, ComparisonItem, Participation, Rater, Vote
from annotation.tests.campaign_fixtures import built
from core.api_tokens import issue_api_token
from generation import services as generation_services

pytestmark = pytest.mark.django_db

ROUNDS = 200  # the tests check bookkeeping and determinism, not interval quality
CRITERIA = ("visual_appeal", "text_faithfulness")
# Ten prompts, so the campaign's win rates have intervals (from six prompts on); no category or challenge has six.
TEN_PROMPTS_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "a red apple\tFood\tBasic\t\n"
    "a lighthouse at dusk\tOutdoor Scenes\tBasic\t\n"
    "three blue birds\tAnimals\tQuantity\tcounting\n"
    'a sign that says "hi"\tArtifacts\tWriting & Symbols\t\n'
    "a bowl of tomato soup\tFood\tBasic\t\n"
    "a harbour in the fog\tOutdoor Scenes\tBasic\t\n"
    "two cats on a sofa\tAnimals\tQuantity\t\n"
    'a mug that says "tea"\tArtifacts\tWriting & Symbols\t\n'
    "a stack of pancakes\tFood\tQuantity\t\n"
    "a fox in the snow\tAnimals\tBasic\t\n"
)
SEEDS = [0, 1]
ITEMS_PER_CRITERION = 10 * len(SEEDS)


# --- Building the campaigns once -------------------------------------------------------------------------------------


def answer(task, winner: str, rng) -> str:
    """The click that makes ``winner`` ("a", "b" or "tie") win, wherever the engine placed the images."""
    if winner == "tie":
        choices = task.item.criterion.choices
        return "tie" if "tie" in choices else str(rng.choice(["both", "neither"]))
    a_side, b_side = ("left", "right") if task.a_on_left else ("right", "left")
    return a_side if winner == "a" else b_side


def cast_votes(campaign, raters, rng, preference, budget=10**6) -> int:
    """Raters take turns answering their open tasks, each drawn from ``preference(task) -> (P(b), P(tie))``.

    Stops after ``budget`` votes (tasks still on screen stay leased) or when no rater gets a task.
    """
    cast = 0
    while cast < budget:
        progressed = False
        for rater in raters:
            for task in annotation_services.open_tasks(campaign, rater):
                p_b, p_tie = preference(task)
                draw = rng.random()
                winner = "b" if draw < p_b else "tie" if draw < p_b + p_tie else "a"
                annotation_services.submit_vote(
                    rater, task.token, answer(task, winner, rng), seconds_on_task=float(rng.uniform(1, 9))
                )
                cast += 1
                progressed = True
                if cast >= budget:
                    return cast
        if not progressed:
            return cast
    return cast


def by_criterion(task):
    """Model B (tuned) wins most visual-appeal votes and somewhat more text-faithfulness votes.

    Except on the lighthouse prompt, where base's images are preferred: complete comparisons fill prompt by
    prompt, so the appeal win rate is never a degenerate 100% (which has no bootstrap interval), whatever order
    the raters' criterion schedules (random per participation) happen to give.
    """
    if task.item.criterion.criterion == "visual_appeal":
        return (0.3, 0.1) if task.item.image_a.prompt.position == 1 else (0.8, 0.1)
    return (0.55, 0.15)


THREE_MODEL_PREFERENCE = {("base", "tuned"): (0.6, 0.1), ("base", "third"): (0.4, 0.1), ("tuned", "third"): (0.3, 0.1)}


def by_pair(task):
    """tuned > base > third, with upsets, so every model wins some comparisons."""
    return THREE_MODEL_PREFERENCE[task.item.image_a.model.name, task.item.image_b.model.name]


@dataclass
class World:
    campaign: Campaign  # 10 prompts x 2 seeds: 20 appeal items (k=5), 20 faithfulness items (k=3)
    raters: list
    spammer: Participation  # excluded, 6 votes kept and flagged
    three: Campaign  # base, tuned, third; all pairs; visual appeal, k=3; every item complete
    empty: Campaign  # a draft without votes
    staff: object
    member: object  # an ordinary account


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tiny_pipeline_dir):
    tokens = random.Random(20240607)
    with django_db_blocker.unblock(), transaction.atomic():
        state = random.getstate()
        random.seed(11)  # the engine's first placements
        try:
            with mock.patch.object(secrets, "token_urlsafe", lambda n=32: tokens.randbytes(n).hex()):
                built = build_world(tiny_pipeline_dir)
        finally:
            random.setstate(state)
        yield built
        transaction.set_rollback(True)


def build_world(tiny_pipeline_dir) -> World:
    base = generation_services.register_model(
        name="base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=4, guidance_scale=5.0
    )
    tuned = generation_services.register_model(
        name="tuned", pipeline_path=str(tiny_pipeline_dir("sd", 1)), steps=4, guidance_scale=5.0
    )
    third = generation_services.register_model(
        name="third", pipeline_path=str(tiny_pipeline_dir("sd", 2)), steps=4, guidance_scale=5.0
    )
    prompt_set, _ = generation_services.import_prompt_set(name="ten", data=TEN_PROMPTS_TSV.encode(), filename="ten.tsv")

    campaign = built(
        annotation_services.create_campaign(
            name="c", models=[base, tuned], prompt_set=prompt_set, seeds=SEEDS, gold_share=0
        )
    )
    rng = np.random.default_rng(7)
    spammer = Rater.objects.create(external_id="spam-1")
    assert cast_votes(campaign, [spammer], rng, lambda task: (0.0, 0.0), budget=6) == 6  # always model A
    spammer_participation = Participation.objects.get(campaign=campaign, rater=spammer)
    annotation_services.exclude_rater(spammer_participation, "answered in under a second")
    # Eight raters: a pair needs 5 + 3 distinct ones, since nobody judges one pair under both criteria.
    raters = [Rater.objects.create(external_id=f"pid-{i}") for i in range(8)]
    # 160 counting votes would fill every comparison; 137 leave both criteria with complete and incomplete
    # comparisons (the engine advances them together, depth-first within each), over at least six prompts.
    cast_votes(campaign, raters, rng, by_criterion, budget=137)

    three = built(
        annotation_services.create_campaign(
            name="three",
            models=[base, tuned, third],
            prompt_set=prompt_set,
            seeds=[0],
            gold_share=0,
            criteria={"visual_appeal": {"votes_per_item": 3}},
        )
    )
    cast_votes(three, [Rater.objects.create() for _ in range(4)], np.random.default_rng(3), by_pair)

    empty = annotation_services.create_campaign(
        name="empty draft", models=[base, tuned], prompt_set=prompt_set, seeds=[0], gold_share=0
    )
    users = get_user_model().objects
    staff = users.create_user("researcher", password="pw-long-enough-1", is_staff=True)
    member = users.create_user("member", password="pw-long-enough-2")
    return World(campaign, raters, spammer_participation, three, empty, staff, member)


def snapshot(world) -> tuple:
    """What a test must leave as it found it: counting votes, exclusions, leases, items' counters, users."""
    votes = Vote.objects.filter(assignment__campaign__in=[world.campaign, world.three])
    return (
        votes.count(),
        votes.filter(excluded=True).count(),
        sorted(Participation.objects.filter(excluded=True).values_list("pk", flat=True)),
        sorted(ComparisonItem.objects.filter(campaign=world.campaign).values_list("pk", "votes", "remaining")),
        get_user_model().objects.count(),
        Rater.objects.count(),
    )


@pytest.fixture(scope="module")
def world_snapshot(world, django_db_blocker):
    with django_db_blocker.unblock():
        return snapshot(world)


@pytest.fixture(autouse=True)
def world_is_untouched(world, world_snapshot, django_db_blocker):
    """Tests share the world read-only: each starts from the snapshot and its changes are rolled back after it."""
    cache.clear()
    with django_db_blocker.unblock():
        assert snapshot(world) == world_snapshot
    yield
    cache.clear()


@pytest.fixture
def staff_client(world):
    client = Client()
    client.force_login(world.staff)
    return client


# --- An independent count, straight from the Vote rows ---------------------------------------------------------------


def counted_votes(campaign, criterion):
    return Vote.objects.filter(
        assignment__campaign=campaign,
        assignment__item__criterion__criterion=criterion,
        excluded=False,
        assignment__item__gold_image__isnull=True,
    )


def item_counts(campaign, criterion) -> dict[int, Counter]:
    counts = defaultdict(Counter)
    for item_id, winner in counted_votes(campaign, criterion).values_list("assignment__item_id", "winner"):
        counts[item_id][winner] += 1
    return counts


def strict_majority(votes: Counter) -> str:
    total = sum(votes.values())
    for side in ("a", "b"):
        if 2 * votes[side] > total:
            return side
    return "tie"


def independent(campaign, criterion):
    k = campaign.criteria.get(criterion=criterion).votes_per_item
    counts = item_counts(campaign, criterion)
    complete = {item: c for item, c in counts.items() if sum(c.values()) >= k}
    outcomes = Counter(strict_majority(c) for c in complete.values())
    votes = sum((c for c in complete.values()), Counter())
    return {
        "complete": len(complete),
        "incomplete": len(counts) - len(complete),
        "wins": outcomes["b"],
        "ties": outcomes["tie"],
        "losses": outcomes["a"],
        "votes": votes,
        "complete_items": set(complete),
    }


def prompt_sums(campaign, criterion, items) -> dict[int, tuple[int, int]]:
    """Per prompt: (complete items B won by strict majority, complete items), counted from the Vote rows."""
    counts = item_counts(campaign, criterion)
    prompt_of = dict(ComparisonItem.objects.filter(pk__in=items).values_list("pk", "image_a__prompt_id"))
    sums = defaultdict(lambda: [0, 0])
    for item in items:
        sums[prompt_of[item]][0] += strict_majority(counts[item]) == "b"
        sums[prompt_of[item]][1] += 1
    return {prompt: tuple(value) for prompt, value in sorted(sums.items())}


def comparison(report, criterion, pair=("base", "tuned")):
    return next(c for c in report.comparisons if c.criterion == criterion and (c.model_a, c.model_b) == pair)


# --- Numbers -----------------------------------------------------------------------------------------------------------


def test_headline_numbers_equal_an_independent_count_of_the_votes(world):
    report = services.build_report(world.campaign, rounds=ROUNDS)
    assert [(c.criterion, c.model_a, c.model_b) for c in report.comparisons] == [
        ("visual_appeal", "base", "tuned"),
        ("text_faithfulness", "base", "tuned"),
    ]
    for criterion in CRITERIA:
        c, truth = comparison(report, criterion), independent(world.campaign, criterion)
        n = truth["complete"]
        assert n > 0 and c.compared == n
        assert (c.item_outcomes.wins, c.item_outcomes.ties, c.item_outcomes.losses) == (
            truth["wins"],
            truth["ties"],
            truth["losses"],
        )
        assert c.win_rate == pytest.approx(truth["wins"] / n) and c.item_outcomes.tie_share == pytest.approx(
            truth["ties"] / n
        )
        assert c.win_rate_half_ties == pytest.approx((truth["wins"] + truth["ties"] / 2) / n)
        assert c.statement == f"tuned preferred in {100 * truth['wins'] / n:.1f}% of comparisons"
        assert c.sign_test_p == pytest.approx(
            binomtest(truth["wins"], truth["wins"] + truth["losses"]).pvalue, rel=1e-9
        )
        per_prompt = prompt_sums(world.campaign, criterion, truth["complete_items"])
        assert c.prompts == len(per_prompt) >= 6
        expected = stats.clustered_score_interval(
            [w for w, _ in per_prompt.values()], [n for _, n in per_prompt.values()]
        )
        assert (c.interval.low, c.interval.high) == (expected.low, expected.high) and c.interval_note == ""
        votes = truth["votes"]
        assert (c.vote_outcomes.wins, c.vote_outcomes.ties, c.vote_outcomes.losses) == (
            votes["b"],
            votes["tie"],
            votes["a"],
        )
        used = counted_votes(world.campaign, criterion).filter(assignment__item_id__in=truth["complete_items"])
        assert c.raters == used.values("assignment__rater_id").distinct().count()
        assert c.prompts == len({p for p in used.values_list("assignment__item__image_a__prompt_id", flat=True)})
        assert c.interval.method == stats.HEADLINE_INTERVAL and c.interval.low <= c.win_rate <= c.interval.high
        assert [t.half_width_points for t in c.planner] == [5, 3, 2]
        needed = [t.comparisons_needed for t in c.planner]
        assert needed == sorted(needed) and needed[-1] > 0 and c.design_effect >= 1
    appeal = comparison(report, "visual_appeal")
    assert appeal.win_rate > 0.5  # the simulated raters prefer tuned's images
    assert {g.group for g in appeal.by_category} <= {"Food", "Outdoor Scenes", "Animals", "Artifacts"}
    assert sum(g.comparisons for g in appeal.by_category) == appeal.compared
    assert sum(g.comparisons for g in appeal.by_challenge) == appeal.compared
    # No category or challenge has six prompts: their win rates stand without an interval, saying why.
    for group in appeal.by_category + appeal.by_challenge:
        assert group.interval is None and group.interval_note.startswith(f"no interval: {group.prompts} prompt")
    assert {a.criterion for a in report.agreement} == set(CRITERIA) and all(not a.message for a in report.agreement)
    assert {b.rater_id for b in report.position_bias} == {r.pk for r in world.raters}
    assert report.rankings == ()  # two models: the win rate says it all


def test_incomplete_comparisons_are_counted_not_mixed_in_and_excluded_votes_are_left_out(world):
    report = services.build_report(world.campaign, rounds=ROUNDS)
    appeal, truth = comparison(report, "visual_appeal"), independent(world.campaign, "visual_appeal")
    assert truth["incomplete"] > 0 and appeal.incomplete_items == truth["incomplete"]
    assert appeal.unvoted_items == ITEMS_PER_CRITERION - truth["complete"] - truth["incomplete"]
    assert appeal.compared == truth["complete"]
    with_incomplete = comparison(
        services.build_report(world.campaign, rounds=ROUNDS, include_incomplete=True), "visual_appeal"
    )
    assert with_incomplete.compared == truth["complete"] + truth["incomplete"]

    spammer = world.spammer
    assert Vote.objects.filter(assignment__rater=spammer.rater, excluded=True).count() == 6
    excluded = report.exclusions
    assert [(x.rater_id, x.external_id, x.reason, x.excluded_votes) for x in excluded.raters] == [
        (spammer.rater_id, "spam-1", "answered in under a second", 6),
    ]
    assert (
        excluded.excluded_votes == 6
        and excluded.rule["gold_min_accuracy"] == 0.7
        and excluded.rule["gold_min_answers"] == 4
    )
    counting = Vote.objects.filter(assignment__campaign=world.campaign, excluded=False).count()
    assert (
        report.reproducibility.votes == counting == Vote.objects.filter(assignment__campaign=world.campaign).count() - 6
    )
    assert spammer.rater_id not in {b.rater_id for b in report.position_bias}


def test_a_criterion_without_complete_comparisons_says_so_and_the_rest_still_reports(world):
    for rater in world.raters[:-4]:  # 4 raters left: no appeal comparison can reach its 5 votes
        annotation_services.exclude_rater(Participation.objects.get(campaign=world.campaign, rater=rater), "test")
    report = services.build_report(world.campaign, rounds=ROUNDS)
    appeal, faithfulness = comparison(report, "visual_appeal"), comparison(report, "text_faithfulness")
    incomplete = independent(world.campaign, "visual_appeal")["incomplete"]
    assert appeal.message == f"no complete comparisons yet ({incomplete} incomplete)" and appeal.win_rate is None
    assert (
        faithfulness.has_numbers
        and faithfulness.compared == independent(world.campaign, "text_faithfulness")["complete"]
    )
    assert "no complete" in next(a for a in report.agreement if a.criterion == "visual_appeal").message
    assert f"no complete comparisons yet ({incomplete} incomplete)" in services.report_html(report)
    assert services.report_json(report)
    rows = {w["criterion"]: w for w in services.campaign_win_rates(world.campaign)}
    assert rows["visual_appeal"]["win_rate"] is None and rows["visual_appeal"]["win_rate_text"] == appeal.message
    assert rows["text_faithfulness"]["win_rate"] == pytest.approx(faithfulness.win_rate)
    assert rows["visual_appeal"]["half_ties_text"] == "" and rows["visual_appeal"]["low_half_ties"] is None
    half = rows["text_faithfulness"]
    assert half["win_rate_half_ties"] == pytest.approx(faithfulness.win_rate_half_ties)
    bounds = faithfulness.interval_half_ties
    assert (half["low_half_ties"], half["high_half_ties"]) == ((bounds.low, bounds.high) if bounds else (None, None))
    assert half["half_ties_interval_text"] == faithfulness.half_ties_interval_text


def test_agreement_counts_both_and_neither_as_different_answers(world):
    report = services.build_report(world.campaign, rounds=ROUNDS)
    faithfulness = next(a for a in report.agreement if a.criterion == "text_faithfulness")
    appeal = next(a for a in report.agreement if a.criterion == "visual_appeal")
    assert set(appeal.categories) <= {"a", "b", "tie"} and {"both", "neither"} & set(faithfulness.categories)
    # Independently, from what raters clicked: left / right mapped to models, both and neither kept apart.
    k = world.campaign.criteria.get(criterion="text_faithfulness").votes_per_item
    answers = defaultdict(Counter)
    for item, choice, winner in counted_votes(world.campaign, "text_faithfulness").values_list(
        "assignment__item_id", "choice", "winner"
    ):
        answers[item][winner if winner in ("a", "b") else choice] += 1
    rows = [[c[name] for name in ("a", "b", "both", "neither")] for c in answers.values() if sum(c.values()) == k]
    assert faithfulness.fleiss_items == len(rows)
    assert faithfulness.fleiss_kappa == pytest.approx(fleiss_kappa(np.array(rows), method="fleiss"), abs=1e-12)
    assert f"answers {faithfulness.categories_text}" in services.report_html(report)


def test_the_headline_colour_follows_the_interval_not_the_point_estimate(world):
    bounds = services.Bounds
    assert services.verdict(bounds(0.51, 0.7, 0.95, "cluster_score")) == "above"
    assert services.verdict(bounds(0.2, 0.49, 0.95, "cluster_score")) == "below"
    assert (
        services.verdict(bounds(0.45, 0.9, 0.95, "cluster_score")) == "unclear"
    )  # a win rate of 0.7 that may be a loss
    assert services.verdict(bounds(0.1, 0.55, 0.95, "cluster_score")) == "unclear"
    assert services.verdict(None) == "unclear"
    report = services.build_report(world.campaign, rounds=ROUNDS)
    html = services.report_html(report)
    for c in report.comparisons:
        expected = "above" if c.interval.low > 0.5 else "below" if c.interval.high < 0.5 else "unclear"
        assert c.verdict == expected and f'class="headline verdict-{expected}"' in html
    styles = re.findall(r"\.report \.headline(?:\.verdict-(\w+))? strong \{ color: var\(--(\w+)\); \}", html)
    assert sorted(styles) == [("", "fg"), ("above", "good"), ("below", "bad")]  # neutral unless the interval decides


# --- Reproducibility ---------------------------------------------------------------------------------------------------


def differences(left, right, path=""):
    if isinstance(left, dict):
        return [
            d for key in left.keys() | right.keys() for d in differences(left.get(key), right.get(key), f"{path}.{key}")
        ]
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [d for i, (a, b) in enumerate(zip(left, right, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if left == right else [path]


def test_same_votes_and_seed_give_the_same_report_and_the_seed_moves_nothing_in_a_two_model_report(world):
    first = services.build_report(world.campaign, seed=0, rounds=ROUNDS)
    assert services.report_json(first) == services.report_json(
        services.build_report(world.campaign, seed=0, rounds=ROUNDS)
    )
    for seed in (1, 2, 3, 12345):
        other = services.build_report(world.campaign, seed=seed, rounds=ROUNDS)
        # The win-rate intervals are deterministic: only the recorded seed differs.
        assert differences(first.as_dict(), other.as_dict()) == [".reproducibility.seed"]


@pytest.mark.xfail(
    raises=RuntimeError,
    strict=False,
    reason="open bug: fit_bradley_terry does not converge on some degenerate bootstrap resamples of this 10-prompt "
    "three-model campaign at 2,000 rounds (found by this test; the fit is unchanged by issue 9)",
)
def test_printed_intervals_are_stable_across_seeds_or_carry_their_monte_carlo_error(world):
    """Win rates: identical to the printed digit whatever the seed. Bradley–Terry: the ends move, by about their printed MC error."""
    reports = [services.build_report(world.three, seed=seed) for seed in range(4)]  # default rounds
    for first, other in zip(reports, reports[1:], strict=False):
        assert [c.interval.text for c in first.comparisons] == [c.interval.text for c in other.comparisons]
        assert [c.interval_half_ties.text for c in first.comparisons] == [
            c.interval_half_ties.text for c in other.comparisons
        ]
    ends = np.array([[[m.low, m.high] for m in sorted(r.rankings[0].models, key=lambda m: m.model)] for r in reports])
    errors = np.array([[m.mc_error for m in sorted(r.rankings[0].models, key=lambda m: m.model)] for r in reports])
    assert (errors >= 0).all() and (errors < 0.05).all()
    # An end moves between seeds by about its Monte Carlo error, never by many (0 where the replicates are tied there).
    assert (ends.max(axis=0) - ends.min(axis=0)).max() <= 6 * errors.max()
    html = services.report_html(reports[0])
    for m in reports[0].rankings[0].models:
        assert f'{m.low:.3f} – {m.high:.3f} <small class="muted">(± {m.mc_error:.3f} Monte Carlo)</small>' in html


def test_the_snapshot_hash_identifies_the_votes(world):
    before = services.build_report(world.campaign, rounds=ROUNDS).reproducibility
    assert re.fullmatch(r"[0-9a-f]{64}", before.votes_sha256)
    assert before.interval_method == "cluster_score" and (before.seed, before.rounds) == (0, ROUNDS)
    assert before.min_prompts_for_interval == 6
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True)
    assert before.code_version == (head.stdout.strip() if head.returncode == 0 else "unknown")

    newcomer = Rater.objects.create()
    task = annotation_services.open_tasks(world.campaign, newcomer, want=1)[0]
    annotation_services.submit_vote(newcomer, task.token, "left")
    after = services.build_report(world.campaign, rounds=ROUNDS).reproducibility
    assert after.votes == before.votes + 1 and after.votes_sha256 != before.votes_sha256


# --- Exports -----------------------------------------------------------------------------------------------------------


def test_csv_exports_have_one_row_per_vote_and_per_comparison(world):
    votes = pd.read_csv(StringIO("".join(services.votes_csv(world.campaign))))
    everything = Vote.objects.filter(assignment__campaign=world.campaign)
    assert len(votes) == everything.count() and votes["vote_id"].is_unique
    assert votes["excluded"].sum() == 6 and votes["counted"].sum() == everything.filter(excluded=False).count()
    assert set(votes.loc[votes["excluded"], "rater_id"]) == {world.spammer.rater_id}

    items = pd.read_csv(StringIO("".join(services.items_csv(world.campaign))), keep_default_na=False)
    assert (
        len(items)
        == ComparisonItem.objects.filter(campaign=world.campaign, gold_image__isnull=True).count()
        == 2 * ITEMS_PER_CRITERION
    )
    assert list(items.columns) == services.ITEMS_CSV_COLUMNS
    for criterion in CRITERIA:
        counts = item_counts(world.campaign, criterion)
        rows = items[items["criterion"] == criterion].set_index("item_id")
        for item_id, row in rows.iterrows():
            c = counts.get(item_id, Counter())
            assert (row["votes_a"], row["votes_b"], row["votes_tie"]) == (c["a"], c["b"], c["tie"])
            assert row["majority"] == (strict_majority(c) if c else "")
        assert rows["complete"].sum() == independent(world.campaign, criterion)["complete"]
    assert set(items["model_a"]) == {"base"} and set(items["seed"]) == set(SEEDS)


def test_json_html_and_pdf_renderings(world):
    report = services.build_report(world.campaign, rounds=ROUNDS)
    data = json.loads(services.report_json(report))
    appeal = next(c for c in data["comparisons"] if c["criterion"] == "visual_appeal")
    assert appeal["item_outcomes"]["wins"] == comparison(report, "visual_appeal").item_outcomes.wins
    assert appeal["win_rate"] == comparison(report, "visual_appeal").win_rate and appeal["interval"]["low"] is not None
    assert data["reproducibility"]["votes_sha256"] == report.reproducibility.votes_sha256

    page = services.report_html(report)
    assert page.startswith("<!doctype html>") and "tuned preferred in" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert page.count('<img src="data:image/png;base64,') == 2  # the outcome bars and the category breakdown

    pdf = services.report_pdf(report)
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= 4


# --- Pages, API, command -----------------------------------------------------------------------------------------------


def test_the_report_page_and_its_downloads_are_for_staff(world, staff_client):
    url = reverse("analysis:report", args=[world.campaign.pk])
    response = staff_client.get(url, {"rounds": ROUNDS})
    page = response.content.decode()
    assert response.status_code == 200 and "tuned preferred in" in page and 'src="data:image/png;base64,' in page
    assert "answered in under a second" in page and "sha256" in page and "±5 points" in page
    assert f'href="/analysis/campaigns/{world.campaign.pk}/report.pdf?rounds={ROUNDS}"' in page

    expected = {
        "csv": ("text/csv", "c-votes.csv"),
        "items.csv": ("text/csv", "c-items.csv"),
        "json": ("application/json", "c-report.json"),
        "html": ("text/html", "c-report.html"),
        "pdf": ("application/pdf", "c-report.pdf"),
    }
    for fmt, (content_type, filename) in expected.items():
        response = staff_client.get(
            reverse("analysis:report_download", args=[world.campaign.pk, fmt]), {"rounds": ROUNDS}
        )
        assert response.status_code == 200, fmt
        assert (
            response["Content-Type"].startswith(content_type)
            and f'filename="{filename}"' in response["Content-Disposition"]
        )
    assert staff_client.get(url, {"rounds": "10"}).status_code == 400  # below the minimum: says so

    member = Client()
    member.force_login(world.member)
    for client in (member, Client()):
        for target in (url, reverse("analysis:report_download", args=[world.campaign.pk, "csv"])):
            response = client.get(target)
            assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_report_api_takes_a_bearer_token_or_a_staff_session(world):
    url = reverse("api:report", args=[world.campaign.pk])
    assert url == f"/analysis/api/campaigns/{world.campaign.pk}/report"
    api = Client(headers={"Authorization": f"Bearer {issue_api_token(world.staff)}"})
    response = api.get(url, {"rounds": ROUNDS})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert {c["criterion"] for c in response.json()["comparisons"]} == set(CRITERIA)
    csv = api.get(url, {"format": "csv"})
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert api.get(url, {"format": "pdf", "rounds": ROUNDS}).content.startswith(b"%PDF")
    assert api.get(url, {"format": "xml"}).status_code == 400
    assert api.get(reverse("api:report", args=[world.empty.pk])).status_code == 409
    assert api.get(reverse("api:report", args=[999_999])).status_code == 404

    assert Client().get(url).status_code == 401
    member = Client()
    member.force_login(world.member)
    assert member.get(url).status_code == 403


def test_the_report_command_writes_the_file_in_one_piece(world, tmp_path):
    out = tmp_path / "report.pdf"
    stdout = StringIO()
    call_command("report", "c", "--format", "pdf", "--out", str(out), "--rounds", str(ROUNDS), stdout=stdout)
    assert out.read_bytes().startswith(b"%PDF") and "Wrote" in stdout.getvalue()
    call_command(
        "report",
        str(world.campaign.pk),
        "--format",
        "items-csv",
        "--out",
        str(tmp_path / "items.csv"),
        stdout=StringIO(),
    )
    assert len(pd.read_csv(tmp_path / "items.csv")) == 2 * ITEMS_PER_CRITERION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.csv", "report.pdf"]  # no temporary file left

    with pytest.raises(CommandError, match="There is no campaign named 'nope'"):
        call_command("report", "nope", "--format", "json", "--out", str(tmp_path / "x.json"))
    with pytest.raises(CommandError, match="rounds"):
        call_command("report", "c", "--format", "json", "--out", str(tmp_path / "x.json"), "--rounds", "5")


def test_a_campaign_without_votes_gets_a_clear_message(world, staff_client, tmp_path):
    with pytest.raises(services.ReportError, match="has no votes yet"):
        services.build_report(world.empty)
    response = staff_client.get(reverse("analysis:report", args=[world.empty.pk]))
    assert response.status_code == 200 and "has no votes yet" in response.content.decode()
    with pytest.raises(CommandError, match="has no votes yet"):
        call_command("report", "empty draft", "--format", "pdf", "--out", str(tmp_path / "r.pdf"))
    assert not list(tmp_path.iterdir())
    page = staff_client.get(reverse("campaigns:detail", args=[world.empty.pk])).content.decode()
    assert page.count(">no votes yet</td>") == 2  # one win-rate row per criterion, nothing to compute yet


def test_three_models_get_bradley_terry_scores_and_a_ranking(world):
    report = services.build_report(world.three, rounds=ROUNDS)
    assert [(c.model_a, c.model_b) for c in report.comparisons] == [
        ("base", "tuned"),
        ("base", "third"),
        ("tuned", "third"),
    ]
    assert all(c.has_numbers and c.incomplete_items == 0 for c in report.comparisons)
    (ranking,) = report.rankings
    assert ranking.message == "" and ranking.criterion == "visual_appeal" and ranking.battles == 30
    assert sorted(m.model for m in ranking.models) == ["base", "third", "tuned"]
    assert [m.rank for m in ranking.models] == [1, 2, 3] and ranking.models[0].model == "tuned"
    assert all(m.low <= m.score <= m.high and m.mc_error > 0 for m in ranking.models)
    assert sum(m.score for m in ranking.models) == pytest.approx(0, abs=1e-9) and ranking.interval_note == ""
    assert len(ranking.win_fractions) == 3 and all(ranking.win_fractions[i][i] is None for i in range(3))
    assert ranking.win_fractions[0][1] + ranking.win_fractions[1][0] == pytest.approx(1)
    html = services.report_html(report)
    assert "Bradley–Terry" in html and 'data-model="third"' in html
    pdf = services.report_pdf(report)
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= 5  # title, bars, categories, ranking, details


def test_the_campaign_page_shows_win_rates_with_the_report_numbers(world, staff_client):
    report = services.build_report(world.campaign)  # the page uses the report's defaults
    page = staff_client.get(reverse("campaigns:detail", args=[world.campaign.pk])).content.decode()
    appeal = comparison(report, "visual_appeal")
    assert f'data-win-rate="{appeal.key}"' in page and appeal.win_rate_text in page and appeal.interval.text in page
    assert f'href="/analysis/campaigns/{world.campaign.pk}/report/"' in page
    state = staff_client.get(reverse("campaigns:progress", args=[world.campaign.pk])).json()
    rows = {w["criterion"]: w for w in state["win_rates"]}
    assert rows["visual_appeal"]["win_rate"] == pytest.approx(appeal.win_rate)
    assert (rows["visual_appeal"]["low"], rows["visual_appeal"]["high"]) == (
        pytest.approx(appeal.interval.low),
        pytest.approx(appeal.interval.high),
    )
    assert (
        rows["visual_appeal"]["compared"] == appeal.compared
        and rows["visual_appeal"]["wins"] == appeal.item_outcomes.wins
    )
    listing = staff_client.get(reverse("annotation:campaign_list")).content.decode()
    assert f'href="/analysis/campaigns/{world.campaign.pk}/report/"' in listing


def test_csv_exports_neutralise_formulas_that_strangers_wrote_and_keep_numbers(world):
    from generation.models import Prompt

    formulas = ['=HYPERLINK("http://x")', "\tx", "\rx", "@SUM(A1)", "+1", "-2+3"]
    written = set()
    for i, prompt in enumerate(world.campaign.prompt_set.prompts.order_by("position")):
        text = f"{formulas[i % len(formulas)]} {i}"
        written.add(text)
        Prompt.objects.filter(pk=prompt.pk).update(text=text, category="+1", challenge="-2+3")
    Rater.objects.filter(assignments__campaign=world.campaign).update(external_id="@SUM(A1)")

    votes = pd.read_csv(StringIO("".join(services.votes_csv(world.campaign)), newline=""), keep_default_na=False)
    items = pd.read_csv(StringIO("".join(services.items_csv(world.campaign)), newline=""), keep_default_na=False)
    for frame in (votes, items):
        assert set(frame["prompt"]) == {"'" + text for text in written}
        assert set(frame["category"]) == {"'+1"} and set(frame["challenge"]) == {"'-2+3"}
        assert frame["seed"].dtype.kind == "i" and frame["prompt_id"].dtype.kind == "i"  # numbers stay numbers
    assert set(votes["external_id"]) == {"'@SUM(A1)"} and votes["seconds_on_task"].dtype.kind == "f"
