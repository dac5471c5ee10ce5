"""A rater's whole visit in Debian's Chromium, driven by Playwright: invite link, consent, ten pairs, the code.

Once at a laptop size, by keyboard alone, and once at a phone size, by tapping.
Screenshots of the voting page at both sizes go to VAR_DIR/screenshots.
"""

import shutil
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.core.cache import cache

from annotation import services
from annotation.models import Participation, Vote
from generation import services as generation_services

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAIRS = 10
# A key for every choice, varied so that each key binding gets pressed.
KEYS = {"left": ["1", "ArrowLeft"], "right": ["2", "ArrowRight"], "tie": ["3", "t"], "both": ["b"], "neither": ["n"]}


@pytest.fixture
def browser(monkeypatch):
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    cache.clear()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def campaign(two_models, prompt_set):
    """Both criteria over 4 prompts x 2 seeds (16 items), ten pairs per rater."""
    campaign = services.create_campaign(
        name="browser", models=two_models, prompt_set=prompt_set, seeds=[0, 1], gold_share=0,
        quota_per_rater=PAIRS, rater_title="Which picture is better?",
    )
    batch = services.generation_batch_for(campaign)
    generation_services.generate_batch_in_process(batch)
    services.build_items(campaign, batch)
    services.set_status(campaign, "live")
    return campaign


def screenshots_dir():
    path = settings.VAR_DIR / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def invite_url(live_server, campaign, pid):
    link = services.create_invite_link(campaign, label="Prolific study")
    query = urlencode({"PROLIFIC_PID": pid, "STUDY_ID": "study-browser", "SESSION_ID": f"session-{pid}"})
    return f"{live_server.url}/join/{link.token}/?{query}"


def wait_for_pair(page, number):
    """Until the number-th pair is on screen and takes answers."""
    page.wait_for_function(
        "n => { const r = document.getElementById('rater'); return r.dataset.state === 'ready' && r.dataset.shown === String(n); }",
        arg=number, timeout=15_000,
    )


def offered_choices(page):
    return page.eval_on_selector_all("#rater-choices button", "buttons => buttons.map(b => b.dataset.choice)")


def assert_votes_recorded(campaign, pid):
    participation = Participation.objects.get(campaign=campaign, prolific_pid=pid)
    assert (participation.study_id, participation.session_id, participation.external_id) == ("study-browser", f"session-{pid}", pid)
    assert participation.consented_at is not None and participation.completed_at is not None
    votes = Vote.objects.filter(assignment__rater=participation.rater)
    assert votes.count() == PAIRS
    assert all(seconds is not None and seconds > 0 for seconds in votes.values_list("seconds_on_task", flat=True))


def test_a_prolific_rater_consents_and_answers_ten_pairs_by_keyboard_alone(live_server, browser, campaign):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(invite_url(live_server, campaign, "kbd-worker-1"))
    assert page.locator("h1").first.inner_text() == "Which picture is better?"
    for criterion in campaign.criteria.all():
        assert page.get_by_text(criterion.instructions).is_visible()
    assert page.locator(".worked-example .example").nth(0).inner_text().startswith("Answer: Left (press 1): the left picture")
    page.screenshot(path=str(screenshots_dir() / "rater-consent-desktop.png"), full_page=True)

    # Tab to "I agree, start" and press Enter: no mouse anywhere in this test.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "agree":
            break
    page.keyboard.press("Enter")
    page.wait_for_url("**/rate/*/")

    used = []
    for number in range(1, PAIRS + 1):
        wait_for_pair(page, number)
        assert page.locator("#rater-progress").inner_text() == f"{number - 1} of {PAIRS}"
        images = page.locator("#rater-pair img")
        assert [images.nth(i).get_attribute("alt") for i in range(2)] == ["left image", "right image"]
        # Chromium decodes the padded PNGs (the private paDd chunk is skipped): loaded, at the image's own width.
        widths = [images.nth(i).evaluate("img => img.complete ? img.naturalWidth : 0") for i in range(2)]
        assert widths[0] == widths[1] > 0, widths
        if number == 1:
            page.screenshot(path=str(screenshots_dir() / "rater-vote-desktop.png"))
        offered = offered_choices(page)
        choice = offered[number % len(offered)]
        key = KEYS[choice][number % len(KEYS[choice])]
        used.append(key)
        page.keyboard.press(key)

    page.locator("#rater-done").wait_for(state="visible", timeout=15_000)
    assert page.locator("#rater-code").inner_text() == campaign.completion_code
    assert page.locator("#rater-progress").inner_text() == f"{PAIRS} of {PAIRS}"
    page.screenshot(path=str(screenshots_dir() / "rater-done-desktop.png"))
    assert_votes_recorded(campaign, "kbd-worker-1")
    assert {"1", "2"} & set(used) and {"ArrowLeft", "ArrowRight"} & set(used), used


def test_a_rater_on_a_phone_sees_the_images_stacked_and_answers_by_tapping(live_server, browser, campaign):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, "phone-worker-1"))
    examples = page.locator(".worked-example img")
    assert examples.count() == 4
    for i in range(4):
        # Loaded (naturalWidth > 0) and inside the phone's width.
        assert examples.nth(i).evaluate("img => img.complete && img.naturalWidth") == 256
        box = examples.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    # The pair is stacked on a phone, on this page as on the voting page, and the words follow the layout.
    first, second = examples.nth(0).bounding_box(), examples.nth(1).bounding_box()
    assert first["y"] + first["height"] <= second["y"]
    answers = page.locator(".worked-example .example")
    assert answers.nth(0).inner_text().startswith("Answer: Top (press 1): the top picture is sharp")
    assert answers.nth(1).inner_text().startswith("Answer: Bottom (press 2): only the bottom picture shows")
    page.screenshot(path=str(screenshots_dir() / "rater-consent-phone.png"), full_page=True)
    page.tap("#agree")
    page.wait_for_url("**/rate/*/")

    for number in range(1, PAIRS + 1):
        wait_for_pair(page, number)
        left = page.locator("#rater-left img").bounding_box()
        right = page.locator("#rater-right img").bounding_box()
        assert left["y"] + left["height"] <= right["y"], "on a phone the right image sits below the left one"
        assert min(left["width"], right["width"]) >= 250, "images stay large on a phone"
        if number == 1:
            buttons = page.locator("#rater-choices button")
            for i in range(buttons.count()):
                box = buttons.nth(i).bounding_box()
                assert box["height"] >= 44 and box["y"] + box["height"] <= 844, "buttons are tap-sized and on screen"
            page.screenshot(path=str(screenshots_dir() / "rater-vote-phone.png"))
        offered = offered_choices(page)
        page.tap(f'#rater-choices button[data-choice="{offered[number % len(offered)]}"]')

    page.locator("#rater-done").wait_for(state="visible", timeout=15_000)
    assert page.locator("#rater-code").inner_text() == campaign.completion_code
    page.screenshot(path=str(screenshots_dir() / "rater-done-phone.png"))
    context.close()
    assert_votes_recorded(campaign, "phone-worker-1")
