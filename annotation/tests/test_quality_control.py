"""Gold items, per-rater exclusion and the rules that keep excluded votes out of the counts without losing them."""

import io
from collections import Counter

import pytest
from PIL import Image

from annotation import services
from annotation.models import Assignment, Campaign, ComparisonItem, GoldImage, Participation, Vote
from annotation.tests.campaign_fixtures import CAMPAIGN_FORM, built
from generation import services as generation_services
from generation.models import GeneratedImage

pytestmark = pytest.mark.django_db


@pytest.fixture
def gold_campaign(make_campaign):
    """Live, appeal only, 4 prompts x 5 seeds = 20 regular items, 20% gold."""
    return make_campaign(
        name="gold",
        seeds=[0, 1, 2, 3, 4],
        criteria={"visual_appeal": {}},
        gold_share=0.2,
        gold_min_answers=3,
        gold_min_accuracy=0.7,
    )


def answer(campaign, rater, pick):
    """Answer the rater's next task with pick(assignment) -> choice; None when done."""
    a = services.next_assignment(campaign, rater)
    if a is None:
        return None
    return services.submit_vote(rater, a.token, pick(a), seconds_on_task=1.5).vote


def intact_side(a):
    return "left" if a.a_on_left else "right"


def test_gold_items_are_degraded_copies_of_campaign_images(gold_campaign):
    gold = list(
        ComparisonItem.objects.filter(campaign=gold_campaign, gold_image__isnull=False).select_related(
            "gold_image", "image_a"
        )
    )
    assert len(gold) == services.gold_items_needed(20, 0.2) == 5
    assert {g.gold_image.degradation for g in gold} == {"blur", "noise"}
    for item in gold:
        assert item.image_a_id == item.image_b_id == item.gold_image.source_id and item.remaining == 0
        with item.image_a.file.open("rb") as f:
            intact = Image.open(io.BytesIO(f.read())).convert("L")
        with item.gold_image.file.open("rb") as f:
            degraded = Image.open(io.BytesIO(f.read())).convert("L")
        assert degraded.size == intact.size
        # Visibly degraded: a large mean pixel change (blur smears, noise buries).
        diff = sum(abs(x - y) for x, y in zip(intact.getdata(), degraded.getdata())) / (intact.width * intact.height)
        assert diff > 8, diff
    # Rebuilding is idempotent: no second copy of anything.
    services.build_items(gold_campaign, gold_campaign.generation_batch or services.generation_batch_for(gold_campaign))
    assert ComparisonItem.objects.filter(campaign=gold_campaign).count() == 25 and GoldImage.objects.count() == 5


@pytest.fixture
def two_criteria_gold_campaign(make_campaign):
    """Both criteria, 4 prompts x 2 seeds = 8 items each, 20% gold (3 gold items each); built, not live."""
    return make_campaign(name="gold both", seeds=[0, 1], gold_share=0.2, live=False)


def test_text_faithfulness_gold_pairs_the_prompts_image_with_another_prompts_image(two_criteria_gold_campaign):
    campaign = two_criteria_gold_campaign
    gold = ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=False).select_related(
        "criterion", "gold_image", "image_a__prompt"
    )
    faithfulness = [g for g in gold if g.criterion.criterion == "text_faithfulness"]
    appeal = [g for g in gold if g.criterion.criterion == "visual_appeal"]
    assert len(faithfulness) == len(appeal) == 3
    # A blurred copy still shows what the text asks for: degraded copies are for visual appeal only.
    assert {g.gold_image.degradation for g in appeal} == {"blur", "noise"}
    assert {g.gold_image.degradation for g in faithfulness} == {"other_prompt"}
    models = {m.pk for m in campaign.ordered_models()}
    for item in faithfulness:
        shown = item.image_a  # the prompt shown with the pair is image A's: the right answer
        assert item.image_b_id == shown.pk == item.gold_image.source_id and item.remaining == 0
        decoy = GeneratedImage.objects.select_related("prompt").get(sha256=item.gold_image.sha256)
        assert item.gold_image.file.name == decoy.file.name  # the very image, not a copy
        # Another prompt (of another category), the same seed, and the other model: a pair like any other.
        assert decoy.prompt_id != shown.prompt_id and decoy.prompt.category != shown.prompt.category
        assert decoy.seed == shown.seed and {decoy.model_id, shown.model_id} == models
        assert decoy.prompt.prompt_set_id == campaign.prompt_set_id
    # Rebuilding is idempotent.
    services.build_items(campaign, campaign.generation_batch or services.generation_batch_for(campaign))
    assert ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=False).count() == 6


def test_a_one_prompt_campaign_has_no_faithfulness_gold_rather_than_a_wrong_one(two_models):
    one, _ = generation_services.import_prompt_set(name="one", data=b"Prompt\na red apple\n", filename="one.tsv")
    campaign = built(
        services.create_campaign(name="one prompt", models=two_models, prompt_set=one, seeds=[0, 1, 2], gold_share=0.2),
        live=False,
    )
    gold = ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=False).select_related("criterion")
    assert {g.criterion.criterion for g in gold} == {"visual_appeal"}


def test_gold_is_mixed_in_at_the_configured_share_and_scored(gold_campaign, make_rater):
    rater = make_rater()
    votes = [answer(gold_campaign, rater, intact_side) for _ in range(20)]
    gold_votes = [v for v in votes if v.gold_correct is not None]
    assert len(gold_votes) == 4  # exactly 20% of 20 tasks, at a per-rater random phase
    assert all(v.gold_correct and v.winner == "a" for v in gold_votes)
    assert not Participation.objects.get(rater=rater).excluded


def test_a_rater_failing_gold_is_excluded_and_their_votes_are_kept_flagged_and_reopened(gold_campaign, make_rater):
    careless = make_rater()
    # Always picks the degraded image on gold, "left" otherwise.
    pick = lambda a: ("right" if a.a_on_left else "left") if a.item.is_gold else "left"  # noqa: E731
    answered = 0
    while not Participation.objects.filter(rater=careless, excluded=True).exists():
        assert answer(gold_campaign, careless, pick) is not None
        answered += 1
    participation = Participation.objects.get(rater=careless)
    assert participation.exclusion_reason.startswith("automatic: gold accuracy 0/3")
    votes = Vote.objects.filter(assignment__rater=careless)
    assert votes.count() == answered and all(v.excluded for v in votes)  # kept, flagged
    # None of their regular votes counts any more: every item is back to full capacity.
    for item in ComparisonItem.objects.filter(campaign=gold_campaign, gold_image__isnull=True):
        assert (item.votes, item.open_leases, item.remaining) == (0, 0, 5)
    assert services.next_assignment(gold_campaign, careless) is None  # no more tasks for them
    # Others can still fill every item to k.
    for _ in range(5):
        rater = make_rater()
        while answer(gold_campaign, rater, intact_side) is not None:
            pass
    counted = Counter(
        Vote.objects.filter(excluded=False, assignment__item__gold_image__isnull=True).values_list(
            "assignment__item_id", flat=True
        )
    )
    assert set(counted.values()) == {5} and len(counted) == 20


def test_excluding_by_hand_is_idempotent_and_releases_open_tasks(live_campaign, make_rater):
    rater = make_rater()
    first = services.next_assignment(live_campaign, rater)
    services.submit_vote(rater, first.token, "left")
    held = services.open_tasks(live_campaign, rater)
    assert len(held) == 2
    participation = Participation.objects.get(rater=rater)
    assert services.exclude_rater(participation, "straight-lining") == 1
    assert services.exclude_rater(participation, "again") == 0
    assert set(Assignment.objects.filter(rater=rater).values_list("state", flat=True)) == {"voted", "expired"}
    for item in ComparisonItem.objects.all():
        assert item.votes == 0 and item.open_leases == 0 and item.remaining == item.criterion.votes_per_item
    participation.refresh_from_db()
    assert participation.exclusion_reason == "straight-lining"


def test_lookahead_leases_two_distinct_items_and_keeps_votes_within_k(live_campaign, make_rater):
    raters = [make_rater() for _ in range(8)]
    for rater in raters:
        held = services.open_tasks(live_campaign, rater)
        assert len(held) == 2 and held[0].item_id != held[1].item_id
        assert [a.pk for a in services.open_tasks(live_campaign, rater)] == [
            a.pk for a in held
        ]  # a reload leases nothing new
    while True:
        progressed = False
        for rater in raters:
            held = services.open_tasks(live_campaign, rater)
            if held:
                services.submit_vote(rater, held[0].token, "left")
                progressed = True
        if not progressed:
            break
    for item in ComparisonItem.objects.select_related("criterion"):
        assert item.votes == item.criterion.votes_per_item and item.open_leases == 0 and item.remaining == 0


@pytest.fixture
def three_models(two_models, tiny_pipeline_dir):
    third = generation_services.register_model(
        name="third", pipeline_path=str(tiny_pipeline_dir("sd", 2)), steps=4, guidance_scale=5.0
    )
    return [*two_models, third]


@pytest.mark.parametrize(
    "pairing,expected_pairs",
    [
        ("all_pairs", {("base", "tuned"), ("base", "third"), ("tuned", "third")}),
        ("vs_baseline", {("base", "tuned"), ("base", "third")}),
    ],
)
def test_n_model_campaigns_compare_all_pairs_or_each_against_the_baseline(
    three_models, prompt_set, pairing, expected_pairs
):
    campaign = services.create_campaign(
        name=pairing,
        models=three_models,
        prompt_set=prompt_set,
        seeds=[7],
        pairing=pairing,
        baseline=three_models[0],
        criteria={"visual_appeal": {}},
        gold_share=0,
    )
    assert {(a.name, b.name) for a, b in campaign.model_pairs()} == expected_pairs
    batch = services.generation_batch_for(campaign)
    generation_services.generate_batch_in_process(batch)
    assert services.build_items(campaign, batch) == 4 * len(expected_pairs)
    items = ComparisonItem.objects.filter(campaign=campaign).select_related(
        "image_a__model", "image_b__model", "image_a__prompt"
    )
    assert Counter((i.image_a.model.name, i.image_b.model.name) for i in items) == {p: 4 for p in expected_pairs}
    for item in items:  # both images of an item share prompt and seed: the pair differs only by model
        assert (item.image_a.prompt_id, item.image_a.seed) == (item.image_b.prompt_id, item.image_b.seed)


def test_invite_links_enrol_crowd_workers_once_and_respect_limits(live_campaign):
    link = services.create_invite_link(live_campaign, label="prolific", max_raters=2)
    params = {"PROLIFIC_PID": "5f00aa", "STUDY_ID": "study-1", "SESSION_ID": "s-1"}
    first = services.join_with_invite(link.token, params)
    assert (first.prolific_pid, first.study_id, first.session_id, first.external_id) == (
        "5f00aa",
        "study-1",
        "s-1",
        "5f00aa",
    )
    assert services.join_with_invite(link.token, dict(params)).pk == first.pk  # same worker resumes
    with pytest.raises(services.ParticipationTaken, match="already started this study in another session"):
        services.join_with_invite(link.token, {**params, "SESSION_ID": "s-2"})  # the same PID alone resumes nothing
    services.join_with_invite(link.token, {"external_id": "mturk-7"})
    with pytest.raises(services.AnnotationError, match="full"):
        services.join_with_invite(link.token, {"PROLIFIC_PID": "other"})
    with pytest.raises(services.AnnotationError, match="not valid"):
        services.join_with_invite(link.token[:-2], params)
    link.active = False
    link.save()
    with pytest.raises(services.AnnotationError, match="not valid"):
        services.join_with_invite(link.token, params)
    assert len(link.token) >= 43 and Participation.objects.count() == 2


def test_raters_joining_through_a_simulated_link_are_recorded_and_exported_as_simulated(live_campaign):
    from annotation.selectors import VOTE_EXPORT_COLUMNS, vote_export_rows

    people = services.create_invite_link(live_campaign, label="people")
    programs = services.create_invite_link(live_campaign, label="programs", simulated=True)
    person = services.join_with_invite(people.token, {"external_id": "p1"})
    program = services.join_with_invite(programs.token, {"external_id": "s1"})
    assert (person.rater.simulated, program.rater.simulated) == (False, True)
    for participation in (person, program):
        services.record_consent(participation)
        task = services.open_tasks(live_campaign, participation.rater)[0]
        services.submit_vote(participation.rater, task.token, "left", 3.0, campaign=live_campaign)
    column = VOTE_EXPORT_COLUMNS.index("simulated")
    by_rater = {row[VOTE_EXPORT_COLUMNS.index("rater_id")]: row[column] for row in vote_export_rows(live_campaign)}
    assert by_rater == {person.rater_id: False, program.rater_id: True}


# --- Gold must be able to exclude: a quota that cannot reach the minimum gold answers is refused -----------------

DEMO_BEFORE = {"quota_per_rater": 20, "gold_share": 0.1, "gold_min_answers": 4}  # 2 gold answers: gold never fires


def test_a_quota_too_small_for_gold_to_ever_exclude_anyone_is_refused_saying_what_to_change(two_models, prompt_set):
    with pytest.raises(services.AnnotationError) as refused:
        services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], **DEMO_BEFORE)
    message = str(refused.value)
    assert "a quota of 20 tasks at a gold share of 0.1 gives each rater 2 gold answers, fewer than the 4" in message
    for fix in (
        "raise the quota to at least 40",
        "raise the gold share to at least 0.2",
        "lower the gold answers needed before exclusion to 2",
    ):
        assert fix in message
    assert not Campaign.objects.exists()


@pytest.mark.parametrize(
    "fix",
    [
        {"quota_per_rater": 40},
        {"gold_share": 0.2},
        {"gold_min_answers": 2},
        {"quota_per_rater": 0},
        {"gold_share": 0},
        {"gold_min_accuracy": 0},
    ],
    ids=["bigger quota", "more gold", "fewer answers needed", "no quota", "no gold", "never exclude"],
)
def test_settings_where_gold_can_exclude_or_is_off_are_accepted(two_models, prompt_set, fix):
    services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], **{**DEMO_BEFORE, **fix})


def test_an_update_that_leaves_gold_unable_to_exclude_is_refused_and_changes_nothing(two_models, prompt_set):
    draft = services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], gold_share=0.1)
    with pytest.raises(services.AnnotationError, match="raise the quota to at least 40"):
        services.update_campaign(draft, quota_per_rater=20)
    assert Campaign.objects.get(pk=draft.pk).quota_per_rater == 0
    services.update_campaign(Campaign.objects.get(pk=draft.pk), quota_per_rater=20, gold_share=0.2)
    # A campaign saved before this rule existed can still be renamed; the rule speaks when its gold settings change.
    Campaign.objects.filter(pk=draft.pk).update(gold_share=0.1)
    services.update_campaign(Campaign.objects.get(pk=draft.pk), name="renamed")
    assert Campaign.objects.get(pk=draft.pk).name == "renamed"


def test_the_command_the_api_the_form_and_the_admin_all_refuse_it_with_the_message(two_models, prompt_set, client):
    from django.contrib.auth import get_user_model
    from django.core.management import CommandError, call_command
    from django.urls import reverse

    from core.api_tokens import issue_api_token

    why = "Gold could never exclude anyone"
    create = "campaign create --name cli --models base tuned --prompt-set four --seeds 0 --quota 20 --gold-share 0.1"
    with pytest.raises(CommandError, match=why):
        call_command(*create.split())
    # and the command can now say how many gold answers are needed
    call_command(*create.split(), "--gold-min-answers", "2", stdout=io.StringIO())
    assert Campaign.objects.get(name="cli").gold_min_answers == 2

    researcher = get_user_model().objects.create_user(
        "r", password="pw-long-enough-1", is_staff=True, is_superuser=True
    )
    body = {
        "name": "api",
        "models": ["base", "tuned"],
        "prompt_set": "four",
        "seeds": "0",
        "quota_per_rater": 20,
        "gold_share": 0.1,
    }
    response = client.post(
        "/annotation/api/campaigns/",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {issue_api_token(researcher)}"},
    )
    assert response.status_code == 400 and why in response.json()["error"]

    client.force_login(researcher)
    form = {**CAMPAIGN_FORM, "name": "page", "seeds": "0", "quota_per_rater": "20"}
    response = client.post(reverse("annotation:campaign_new"), form)
    assert response.status_code == 200 and why in response.content.decode()
    assert not Campaign.objects.filter(name="page").exists()

    cli = Campaign.objects.get(name="cli")
    change = reverse("admin:annotation_campaign_change", args=[cli.pk])
    admin_form = {
        "name": "cli",
        "gold_share": "0.1",
        "gold_min_accuracy": "0.7",
        "gold_min_answers": "4",
        "quota_per_rater": "20",
        "lease_seconds": "600",
        "rater_title": cli.rater_title,
        "consent_text": cli.consent_text,
        "contact": "",
        "completion_code": cli.completion_code,
        "completion_url": "",
        "screen_out_code": cli.screen_out_code,
        "screen_out_url": "",
        "speeder_seconds": "1.0",
        "pair_selection": "uniform",
        **{
            f"{prefix}-{k}": v
            for prefix in ("campaign_models", "criteria")
            for k, v in {
                "TOTAL_FORMS": "0",
                "INITIAL_FORMS": "0",
                "MIN_NUM_FORMS": "0",
                "MAX_NUM_FORMS": "1000",
            }.items()
        },
    }
    response = client.post(change, admin_form, follow=True)
    assert response.status_code == 200 and why in response.content.decode()
    assert Campaign.objects.get(pk=cli.pk).gold_min_answers == 2  # not saved
