"""What raters agree to and how they arrive: the researchers' consent text and contact (service, form, API,
command, page), invite links that work as printed, and links a script can ask for again without adding another."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from annotation import selectors, services
from annotation.models import DEFAULT_CONSENT_TEXT, Campaign, Participation

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_rate_limits")]

HOSTILE = '<script>alert("x")</script>'
CONSENT = (
    "Your answers are kept for five years by the Example Lab.\n\n"
    f"Details for the ethics board {HOSTILE}.\n"
    "A second line of the same paragraph.\n\n"
    "A third paragraph."
)


def open_campaign(campaign: Campaign) -> Campaign:
    """Open to raters at once. The consent page needs no comparisons, so none are generated (fast)."""
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.LIVE)
    campaign.refresh_from_db()
    return campaign


@pytest.fixture
def campaign(two_models, prompt_set):
    return services.create_campaign(
        name="consent",
        models=two_models,
        prompt_set=prompt_set,
        seeds=[0],
        gold_share=0,
        consent_text=CONSENT,
        contact=f"Dr A. Researcher {HOSTILE}, a.researcher@uni.example",
    )


def run_command(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("campaign", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- Consent text and contact ------------------------------------------------------------------


def test_a_campaign_keeps_Needles_short_consent_text_unless_the_researchers_write_their_own(two_models, prompt_set):
    campaign = services.create_campaign(name="default", models=two_models, prompt_set=prompt_set, seeds=[0])
    assert campaign.consent_text == DEFAULT_CONSENT_TEXT and campaign.contact == ""


def test_the_consent_page_shows_the_summary_folds_the_rest_away_and_escapes_the_researchers_text(client, campaign):
    link = services.create_invite_link(open_campaign(campaign))
    page = client.get(reverse("rate:join", args=[link.token])).content.decode()

    assert '<p class="consent-summary">Your answers are kept for five years by the Example Lab.</p>' in page
    details = page[
        page.index('<details class="consent-details">') : page.index(
            "</details>", page.index('<details class="consent-details">')
        )
    ]
    assert "<summary>Full information</summary>" in details
    assert "Details for the ethics board &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.<br>A second line" in details
    assert "<p>A third paragraph.</p>" in details
    assert "Questions about this study: Dr A. Researcher &lt;script&gt;" in page
    assert '<a href="mailto:a.researcher@uni.example">a.researcher@uni.example</a>' in page
    assert HOSTILE not in page and DEFAULT_CONSENT_TEXT not in page


def test_the_consent_page_folds_each_questions_keys_and_example_away_but_shows_its_instructions(client, campaign):
    link = services.create_invite_link(open_campaign(campaign))
    page = client.get(reverse("rate:join", args=[link.token])).content.decode()
    for criterion in campaign.criteria.all():
        head = page.index(f"<h3>{criterion.question}</h3>")
        folded = page.index('<details class="how-to">', head)
        assert head < page.index(criterion.instructions, head) < folded, "the instructions are shown, not folded"
        assert page.index('<ul class="key-list">', head) > folded, "the keys are in the folded part"
    # Key hints are marked, so touch screens can hide them.
    assert page.count('<span class="keys key-hint">') == sum(len(c.choices) for c in campaign.criteria.all())


def test_the_contact_shows_on_the_thank_you_page_too(client, campaign):
    open_campaign(campaign)
    link = services.create_invite_link(campaign)
    join = reverse("rate:join", args=[link.token])
    client.post(join)
    participation = Participation.objects.get()
    Participation.objects.filter(pk=participation.pk).update(completed_at=participation.created_at)
    page = client.get(reverse("rate:done", args=[participation.token])).content.decode()
    assert "Questions about this study: Dr A. Researcher &lt;script&gt;" in page
    assert 'data-copy="rater-code">Copy the code</button>' in page and "rater-copy.js" in page


def test_the_service_refuses_an_empty_consent_text_and_an_overlong_contact(two_models, prompt_set):
    with pytest.raises(services.AnnotationError, match="Give the consent text"):
        services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], consent_text=" \n ")
    with pytest.raises(services.AnnotationError, match="contact can be at most 200"):
        services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], contact="x" * 201)
    assert not Campaign.objects.exists()


def test_consent_text_and_contact_can_be_changed_before_any_vote(campaign):
    services.update_campaign(campaign, consent_text="New text.\r\n\r\nMore.", contact="lab@uni.example")
    campaign.refresh_from_db()
    assert (campaign.consent_text, campaign.contact) == ("New text.\n\nMore.", "lab@uni.example")
    # What the raters who voted agreed to freezes with the other rules once votes exist; a contact never does.
    assert "consent_text" in services.OPERATIONAL_FIELDS and "contact" in services.FREE_FIELDS


def test_the_api_takes_and_returns_the_consent_text_and_contact(two_models, prompt_set, api):
    body = {
        "name": "api",
        "models": ["base", "tuned"],
        "prompt_set": "four",
        "seeds": [0],
        "consent_text": CONSENT,
        "contact": "lab@uni.example",
    }
    response = api.post("/annotation/api/campaigns/", json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    assert (response.json()["consent_text"], response.json()["contact"]) == (CONSENT, "lab@uni.example")
    campaign = Campaign.objects.get()
    assert (campaign.consent_text, campaign.contact) == (CONSENT, "lab@uni.example")

    body = {**body, "name": "api-2", "consent_text": "", "contact": "x" * 201}
    refused = api.post("/annotation/api/campaigns/", json.dumps(body), content_type="application/json")
    assert (
        refused.status_code == 400
        and "contact: Ensure this value has at most 200 characters" in refused.json()["error"]
    )
    body = {**body, "contact": ""}
    assert api.post("/annotation/api/campaigns/", json.dumps(body), content_type="application/json").status_code == 201
    assert Campaign.objects.get(name="api-2").consent_text == DEFAULT_CONSENT_TEXT, "left empty: Needle's text"


def test_the_command_takes_the_consent_text_from_a_file_and_a_contact(two_models, prompt_set, tmp_path):
    consent_file = tmp_path / "consent.txt"
    consent_file.write_text(CONSENT + "\n", encoding="utf-8")
    run_command(
        *"create --name cmd --models base tuned --prompt-set four --seeds 0 --consent-file".split(),
        str(consent_file),
        "--contact",
        "lab@uni.example",
    )
    campaign = Campaign.objects.get()
    assert (campaign.consent_text, campaign.contact) == (CONSENT, "lab@uni.example")
    with pytest.raises(CommandError, match="not both"):
        run_command(
            *"create --name cmd-2 --models base tuned --prompt-set four --seeds 0 --consent-file".split(),
            str(consent_file),
            "--consent-text",
            "x",
        )


def test_the_researchers_form_offers_the_consent_text_prefilled_and_the_contact(client):
    researcher = get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True)
    client.force_login(researcher)
    page = client.get(reverse("annotation:campaign_new")).content.decode()
    assert 'name="consent_text"' in page and 'name="contact"' in page
    assert "Taking part is voluntary" in page


# --- Invite links -----------------------------------------------------------------------------------------


def test_the_prolific_link_opened_as_printed_makes_each_browser_its_own_rater(campaign):
    """Opened with its placeholders unfilled, the link must not give every browser the same crowd id."""
    open_campaign(campaign)
    link = services.create_invite_link(campaign)
    printed = selectors.invite_url("http://testserver", link)
    path, query = printed.removeprefix("http://testserver").split("?")
    params = dict(part.split("=") for part in query.split("&"))
    assert params["PROLIFIC_PID"] == "{{%PROLIFIC_PID%}}"
    first, second = Client(), Client()
    first.post(path, params)
    second.post(path, params)
    participations = list(Participation.objects.order_by("pk"))
    assert len(participations) == 2 and participations[0].rater_id != participations[1].rater_id
    assert all(p.prolific_pid == p.external_id == p.study_id == "" for p in participations)
    first.post(path, params)  # the same browser agreeing again (back button) is still one rater
    assert Participation.objects.count() == 2


def test_the_plain_link_has_no_placeholders(campaign):
    link = services.create_invite_link(campaign)
    assert selectors.join_url("https://needle.example.org/", link) == f"https://needle.example.org/join/{link.token}/"


def test_invite_with_reuse_prints_the_same_link_every_time_plain_or_for_prolific(campaign):
    open_campaign(campaign)
    args = ["invite", "consent", "--label", "demo link", "--reuse", "--base-url", "http://127.0.0.1:8000"]
    plain, about = run_command(*args, "--plain")
    again, _ = run_command(*args, "--plain")
    prolific, _ = run_command(*args)
    link = campaign.invite_links.get()
    assert plain == again == f"http://127.0.0.1:8000/join/{link.token}/\n"
    assert "each browser that opens it is a new anonymous rater" in about
    assert prolific.startswith(f"http://127.0.0.1:8000/join/{link.token}/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&")
    run_command("invite", "consent", "--label", "demo link", "--base-url", "http://127.0.0.1:8000")
    assert campaign.invite_links.count() == 2, "without --reuse each call makes a new link"


def test_a_reused_link_is_never_a_deactivated_one(campaign):
    old = services.invite_link_for(campaign, label="demo link")
    old.active = False
    old.save()
    fresh = services.invite_link_for(campaign, label="demo link")
    assert fresh.pk != old.pk and fresh.active
    assert services.invite_link_for(campaign, label="demo link").pk == fresh.pk
