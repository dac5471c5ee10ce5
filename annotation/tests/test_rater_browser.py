"""A rater's whole visit in Debian's Chromium, driven by Playwright: invite link, consent, twelve pairs, the code.

Once at a laptop size, by keyboard alone, and once at a phone size, by tapping; the layout at the smallest laptop
screens (1366x768, 1280x720) and on a touch screen. Screenshots go to VAR_DIR/screenshots.
"""

from urllib.parse import urlencode

import pytest
from django.conf import settings

from annotation import services
from annotation.models import Participation, Vote

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_rate_limits")]

# Every pair of the campaign: a rater's blocks of five start with two of appeal for a quarter of raters, so ten
# pairs could miss the faithfulness question; twelve never do.
PAIRS = 12
# A key for every choice, varied so that each key binding gets pressed.
KEYS = {"left": ["1", "ArrowLeft"], "right": ["2", "ArrowRight"], "tie": ["3", "t"], "both": ["b"], "neither": ["n"]}


@pytest.fixture
def campaign(make_campaign):
    """Both criteria over 4 prompts x 3 seeds (12 pairs, 24 items); a rater meets each pair once, so 12 tasks each."""
    return make_campaign(
        name="browser", seeds=[0, 1, 2], gold_share=0, quota_per_rater=PAIRS, rater_title="Which picture is better?"
    )


def new_context(browser, **options):
    """A browser context with waits long enough for a machine busy with other work (a page load can take seconds)."""
    context = browser.new_context(**options)
    context.set_default_timeout(60_000)
    context.set_default_navigation_timeout(120_000)
    return context


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
        arg=number,
        timeout=60_000,
    )


def expect_text(locator, text):
    """Waits (up to a minute) until ``locator`` reads ``text``."""
    from playwright.sync_api import expect

    expect(locator).to_have_text(text, timeout=60_000)


def offered_choices(page):
    return page.eval_on_selector_all("#rater-choices button", "buttons => buttons.map(b => b.dataset.choice)")


def on_screen(page, locator) -> bool:
    """Wholly inside the viewport as the page is now (not merely somewhere on a page one could scroll)."""
    box = locator.bounding_box()
    size = page.viewport_size
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and (box["x"] + box["width"] <= size["width"] + 0.5 and box["y"] + box["height"] <= size["height"] + 0.5)
    )


def shown_criterion(page) -> str:
    """Text faithfulness shows the prompt; visual appeal hides it."""
    return "text_faithfulness" if page.locator("#rater-prompt").is_visible() else "visual_appeal"


def assert_pair_fits_without_scrolling(page, min_image: float):
    """The question (and text), both images, large, and every answer button: all on screen, the page unscrolled."""
    assert page.evaluate("window.scrollY") == 0, "a new pair starts at the top of the page"
    assert on_screen(page, page.locator("#rater-question")), "the question is on screen"
    if shown_criterion(page) == "text_faithfulness":
        assert on_screen(page, page.locator("#rater-prompt")), "the text is on screen"
    for side in ("left", "right"):
        image = page.locator(f"#rater-{side} img")
        assert on_screen(page, image), f"the {side} image is on screen"
        box = image.bounding_box()
        # The square image is drawn as large as its frame allows: the frame's shorter side.
        assert min(box["width"], box["height"]) >= min_image, f"the {side} image is large enough: {box}"
    buttons = page.locator("#rater-choices button")
    assert buttons.count() >= 3
    for i in range(buttons.count()):
        assert on_screen(page, buttons.nth(i)), f"button {buttons.nth(i).inner_text()!r} is on screen"


def key_hints_visible(page) -> list[bool]:
    return page.eval_on_selector_all(
        ".choice .hints, .key-hint", "nodes => nodes.map(n => n.getClientRects().length > 0)"
    )


def assert_votes_recorded(campaign, pid):
    participation = Participation.objects.get(campaign=campaign, prolific_pid=pid)
    assert (participation.study_id, participation.session_id, participation.external_id) == (
        "study-browser",
        f"session-{pid}",
        pid,
    )
    assert participation.consented_at is not None and participation.completed_at is not None
    votes = Vote.objects.filter(assignment__rater=participation.rater)
    assert votes.count() == PAIRS
    assert all(seconds is not None and seconds > 0 for seconds in votes.values_list("seconds_on_task", flat=True))


def test_a_prolific_rater_consents_and_answers_ten_pairs_by_keyboard_alone(live_server, browser, campaign):
    context = new_context(
        browser, viewport={"width": 1280, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, "kbd-worker-1"))
    assert page.locator("h1").first.inner_text() == "Which picture is better?"
    for criterion in campaign.criteria.all():
        assert page.get_by_text(criterion.instructions).is_visible()
    assert on_screen(page, page.locator("#agree")), "on a laptop the whole consent page fits on one screen"
    page.screenshot(path=str(screenshots_dir() / "rater-consent-desktop.png"), full_page=True)
    # The answer keys and the worked examples are folded away until asked for.
    example = page.locator(".worked-example .example").nth(0)
    assert not example.is_visible()
    page.locator(".how-to summary").nth(0).press("Enter")
    assert example.inner_text().startswith("Answer: Left (press 1): the left picture")
    assert all(key_hints_visible(page)[:3]), "with a keyboard the keys are shown"

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
        # The next pair shows at once; the progress follows when the server has recorded the vote.
        expect_text(page.locator("#rater-progress"), f"{number - 1} of {PAIRS}")
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

    page.locator("#rater-done").wait_for(state="visible", timeout=60_000)
    assert page.locator("#rater-code").inner_text() == campaign.completion_code
    expect_text(page.locator("#rater-progress"), f"{PAIRS} of {PAIRS}")
    # "Copy the code", by keyboard too: the code lands on the clipboard, and is selected either way.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('copy-code')"):
            break
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('.copy-code').dataset.copied === 'true'", timeout=15_000)
    assert page.evaluate("navigator.clipboard.readText()") == campaign.completion_code
    assert page.evaluate("window.getSelection().toString().trim()") == campaign.completion_code
    assert page.locator(".copied").inner_text() == "Copied."
    page.screenshot(path=str(screenshots_dir() / "rater-done-desktop.png"))
    context.close()
    assert_votes_recorded(campaign, "kbd-worker-1")
    assert {"1", "2"} & set(used) and {"ArrowLeft", "ArrowRight"} & set(used), used


def test_a_rater_on_a_phone_sees_the_images_stacked_and_answers_by_tapping(live_server, browser, campaign):
    context = new_context(
        browser, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, "phone-worker-1"))
    # Short: the instructions and the consent summary, the details folded away; the button within two screens.
    page.screenshot(path=str(screenshots_dir() / "rater-consent-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollHeight") <= 2 * 844
    assert page.locator("#agree").bounding_box()["y"] < 2 * 844 - 60
    summaries = page.locator(".how-to summary")
    for i in range(summaries.count()):
        summaries.nth(i).tap()
    examples = page.locator(".worked-example img")
    assert examples.count() == 4
    for i in range(4):
        # Loaded (naturalWidth > 0) and inside the phone's width.
        examples.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=examples.nth(i).element_handle())
        assert examples.nth(i).evaluate("img => img.naturalWidth") == 256
        box = examples.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    # The pair is stacked on a phone, on this page as on the voting page, and the words follow the layout.
    first, second = examples.nth(0).bounding_box(), examples.nth(1).bounding_box()
    assert first["y"] + first["height"] <= second["y"]
    answers = page.locator(".worked-example .example")
    # No keys on a touch screen: "(press 1)" is not there.
    assert answers.nth(0).inner_text().startswith("Answer: Top: the top picture is sharp")
    assert answers.nth(1).inner_text().startswith("Answer: Bottom: only the bottom picture shows")
    assert not any(key_hints_visible(page)), "no key hints on a touch screen"
    page.screenshot(path=str(screenshots_dir() / "rater-consent-phone-open.png"), full_page=True)
    page.tap("#agree")
    page.wait_for_url("**/rate/*/")

    shot = set()
    for number in range(1, PAIRS + 1):
        wait_for_pair(page, number)
        left = page.locator("#rater-left img").bounding_box()
        right = page.locator("#rater-right img").bounding_box()
        assert left["y"] + left["height"] <= right["y"], "on a phone the right image sits below the left one"
        # Every pair, including each after "How to judge" was opened and the page scrolled to read it.
        assert_pair_fits_without_scrolling(page, min_image=200)
        assert not any(key_hints_visible(page)), "no key hints on a touch screen"
        buttons = page.locator("#rater-choices button")
        for i in range(buttons.count()):
            assert buttons.nth(i).bounding_box()["height"] >= 44, "buttons are tap-sized"
        criterion = shown_criterion(page)
        if criterion not in shot:
            shot.add(criterion)
            page.screenshot(path=str(screenshots_dir() / f"rater-vote-phone-{criterion}.png"))
        if number == 1:
            # The rater opens "How to judge" (below the buttons) and scrolls down to read it.
            page.locator("#rater-help summary").tap()
            page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
            page.screenshot(path=str(screenshots_dir() / "rater-vote-phone-help.png"))
        offered = offered_choices(page)
        page.tap(f'#rater-choices button[data-choice="{offered[number % len(offered)]}"]')
    assert shot == {"visual_appeal", "text_faithfulness"}

    page.locator("#rater-done").wait_for(state="visible", timeout=60_000)
    assert page.locator("#rater-code").inner_text() == campaign.completion_code
    page.screenshot(path=str(screenshots_dir() / "rater-done-phone.png"))
    context.close()
    assert_votes_recorded(campaign, "phone-worker-1")


@pytest.mark.parametrize("width, height", [(1366, 768), (1280, 720)])
def test_on_a_laptop_both_images_and_every_button_fit_without_scrolling_for_both_questions(
    live_server, browser, campaign, width, height
):
    context = new_context(browser, viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, f"laptop-{width}"))
    assert on_screen(page, page.locator("#agree")), "the consent page fits on one laptop screen"
    page.click("#agree")
    page.wait_for_url("**/rate/*/")
    shot = set()
    for number in range(1, PAIRS + 1):
        wait_for_pair(page, number)
        assert_pair_fits_without_scrolling(page, min_image=300)
        assert all(key_hints_visible(page)), "with a mouse and keyboard the key hints are shown"
        criterion = shown_criterion(page)
        if criterion not in shot:
            shot.add(criterion)
            page.screenshot(path=str(screenshots_dir() / f"rater-vote-{width}x{height}-{criterion}.png"))
        offered = offered_choices(page)
        page.click(f'#rater-choices button[data-choice="{offered[number % len(offered)]}"]')
    assert shot == {"visual_appeal", "text_faithfulness"}, "both questions were on screen (12 comparisons of each)"
    context.close()


def test_key_hints_are_hidden_on_a_touch_screen_of_any_width(live_server, browser, campaign):
    # A tablet in landscape: as wide as a laptop, but no keyboard to press the keys on.
    context = new_context(browser, viewport={"width": 1180, "height": 820}, has_touch=True)
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, "tablet-1"))
    page.locator(".how-to summary").first.tap()
    assert page.locator(".key-list").first.is_visible()
    assert not any(key_hints_visible(page)), "no keys on the instructions"
    page.tap("#agree")
    page.wait_for_url("**/rate/*/")
    wait_for_pair(page, 1)
    hints = key_hints_visible(page)
    assert hints and not any(hints), "no keys on the buttons"
    assert page.locator("#rater-choices button").first.is_visible()
    page.screenshot(path=str(screenshots_dir() / "rater-vote-tablet-touch.png"))
    context.close()


# Each image drawn to a canvas and hashed in the page: what the rater sees, pixel for pixel (the bytes sent differ
# every time, padded with random bytes, so they could not tell two showings of one image apart).
PIXELS_OF_SHOWN_PAIR = """async () => {
  const digest = async img => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const hash = await crypto.subtle.digest("SHA-256", pixels);
    return Array.from(new Uint8Array(hash), b => b.toString(16).padStart(2, "0")).join("");
  };
  const images = ["#rater-left img", "#rater-right img"].map(s => document.querySelector(s));
  return Promise.all(images.map(digest));
}"""


@pytest.mark.parametrize("size", ["laptop", "phone"])
def test_a_rater_of_both_questions_never_meets_the_same_pair_twice(live_server, browser, campaign, size):
    # The sizes: the smallest common laptop screen, and a phone answering by tapping.
    options = {
        "laptop": {"viewport": {"width": 1366, "height": 768}},
        "phone": {
            "viewport": {"width": 390, "height": 844},
            "device_scale_factor": 2,
            "is_mobile": True,
            "has_touch": True,
        },
    }
    context = new_context(browser, **options[size])
    page = context.new_page()
    page.goto(invite_url(live_server, campaign, f"pairs-{size}"))
    page.tap("#agree") if size == "phone" else page.click("#agree")
    page.wait_for_url("**/rate/*/")
    met, questions, number = [], set(), 1
    while True:
        page.wait_for_function(
            "n => { const r = document.getElementById('rater'); const done = document.getElementById('rater-done');"
            " return !done.hidden || (r.dataset.state === 'ready' && r.dataset.shown === String(n)); }",
            arg=number,
            timeout=60_000,
        )
        if page.locator("#rater-done").is_visible():
            break
        page.wait_for_function(
            "() => [...document.querySelectorAll('#rater-pair img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert_pair_fits_without_scrolling(page, min_image=200 if size == "phone" else 300)
        met.append(frozenset(page.evaluate(PIXELS_OF_SHOWN_PAIR)))
        questions.add(shown_criterion(page))
        offered = offered_choices(page)
        button = f'#rater-choices button[data-choice="{offered[number % len(offered)]}"]'
        page.tap(button) if size == "phone" else page.click(button)
        number += 1
    page.screenshot(path=str(screenshots_dir() / f"rater-pairs-once-{size}.png"))
    context.close()
    assert questions == {"visual_appeal", "text_faithfulness"}, "the rater answered both questions"
    # Every pair, under whichever question, once: two images seen together before are never shown together again.
    assert len(set(met)) == len(met) == 12, met
