"""The researcher's dashboard in Debian's Chromium, driven by Playwright, with a real worker behind it."""

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from generation import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def browser_page(browser):
    return browser.new_page(viewport={"width": 1280, "height": 900})


def test_dashboard_shows_live_progress_and_the_pairs(live_server, celery_worker, browser_page, two_models, prompt_set):
    get_user_model().objects.create_user("researcher", password="a-long-test-password", is_staff=True)
    batch = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[0, 1], name="browser check")
    shots = settings.VAR_DIR / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page

    page.goto(f"{live_server.url}/generation/")
    page.fill("#id_username", "researcher")
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    row = page.locator(f'[data-batch="{batch.pk}"]')
    assert row.locator(".status").inner_text() == "created"
    assert row.locator(".count").inner_text() == "0 / 16"

    services.dispatch_batch(batch)  # the page is not reloaded: its script polls progress.json
    row.locator(".status", has_text="complete").wait_for(timeout=120_000)
    assert row.locator(".count").inner_text() == "16 / 16"
    assert row.locator("progress").evaluate("el => el.value") == 16
    page.screenshot(path=str(shots / "generation-dashboard.png"), full_page=True)

    page.click("text=browser check")
    images = page.locator(".pairs img")
    assert images.count() == 16
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.pairs img')).every(i => i.complete && i.naturalWidth === 64)"
    )
    header = page.locator(".pairs thead").inner_text()
    assert "base" in header and "tuned" in header
    page.screenshot(path=str(shots / "generation-batch.png"), full_page=True)
