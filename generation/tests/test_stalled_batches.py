"""A batch no worker reports on shows as stalled (not "running 16/64" forever) and offers resume."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from generation import selectors, services
from generation.models import GenerationBatch

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch(two_models, prompt_set):
    batch = services.create_batch(models=two_models, prompt_set=prompt_set, seeds=[0, 1])
    services.dispatch_batch(batch)  # in a test transaction nothing is sent: like a worker that died at once
    batch.refresh_from_db()
    return batch


def quiet_for(batch, seconds):
    GenerationBatch.objects.filter(pk=batch.pk).update(dispatched_at=timezone.now() - timedelta(seconds=seconds))
    batch.refresh_from_db()


def test_a_batch_no_worker_reports_on_is_stalled_after_the_configured_time(batch, settings):
    settings.NEEDLE_BATCH_STALL_SECONDS = 300
    assert selectors.batch_status(batch) == "running"
    quiet_for(batch, 299)
    assert selectors.batch_status(batch) == "running"
    quiet_for(batch, 301)
    assert selectors.batch_status(batch) == "stalled"
    message = selectors.stalled_message(batch, selectors.batch_progress(batch))
    assert "stalled at 0/16" in message and "5 min" in message and f"generate --resume {batch.pk}" in message


def test_a_worker_reporting_keeps_a_slow_batch_running(batch, settings):
    settings.NEEDLE_BATCH_STALL_SECONDS = 300
    quiet_for(batch, 3600)
    services.report_alive(batch.pk)  # what a worker does when it starts a chunk and after every forward pass
    batch.refresh_from_db()
    assert selectors.batch_status(batch) == "running"


def test_a_batch_never_queued_or_failed_is_not_stalled(two_models, prompt_set, settings):
    settings.NEEDLE_BATCH_STALL_SECONDS = 0
    created = services.create_batch(models=two_models, prompt_set=prompt_set, seeds=[0])
    assert selectors.batch_status(created) == "created"
    services.dispatch_batch(created)
    services.record_batch_failure(created.pk, "the model's files changed")
    created.refresh_from_db()
    assert selectors.batch_status(created) == "failed"


def test_resuming_a_stalled_batch_makes_it_running_again(batch, settings, client):
    settings.NEEDLE_BATCH_STALL_SECONDS = 300
    quiet_for(batch, 3600)
    staff = get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True)
    client.force_login(staff)
    page = client.get(reverse("generation:batch_detail", args=[batch.pk])).content.decode()
    assert "stalled" in page and "Queue missing images (start / resume)" in page
    polled = client.get(reverse("generation:progress_json"), {"id": batch.pk}).json()["batches"][0]
    assert polled["status"] == "stalled" and "generate --resume" in polled["stalled"]
    client.post(reverse("generation:batch_dispatch", args=[batch.pk]))
    batch.refresh_from_db()
    assert selectors.batch_status(batch) == "running"


def test_the_generate_command_stops_waiting_on_a_stalled_batch_and_says_how_to_resume(batch, settings):
    settings.NEEDLE_BATCH_STALL_SECONDS = 0
    with pytest.raises(CommandError, match=rf"stalled at 0/16: .* generate --resume {batch.pk}"):
        call_command("generate", "--resume", str(batch.pk))
