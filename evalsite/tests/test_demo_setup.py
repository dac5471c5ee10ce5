import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from generation.models import PromptSet, TextToImageModel

pytestmark = pytest.mark.django_db


def test_demo_setup_is_idempotent_and_prints_a_working_login(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("demo_setup")
    first = capsys.readouterr().out
    call_command("demo_setup")
    second = capsys.readouterr().out
    password = first.strip().splitlines()[-1].split(" / ")[1]
    assert f"researcher / {password}" in second  # same login the second time
    user = get_user_model().objects.get(username="researcher")
    assert user.is_staff and user.check_password(password)
    assert set(TextToImageModel.objects.values_list("name", flat=True)) == {"tiny-base", "tiny-tuned"}
    assert PromptSet.objects.get(name="demo").prompts.count() == 16
    assert (tmp_path / "demo-login.txt").stat().st_mode & 0o077 == 0


def test_the_demo_campaign_gives_every_rater_enough_gold_answers_to_be_excluded(settings, tmp_path):
    from annotation.models import Campaign
    from annotation.services import guaranteed_gold_answers

    settings.VAR_DIR = tmp_path
    call_command("demo_setup")
    call_command("demo_setup")  # idempotent: still one
    campaign = Campaign.objects.get(name="demo")
    assert campaign.status == "draft" and [m.name for m in campaign.ordered_models()] == ["tiny-base", "tiny-tuned"]
    assert campaign.criteria.count() == 2 and campaign.seeds == [0, 1, 2, 3]  # the seeds scripts/demo.sh generates
    # Was 20 tasks x 10% = 2 gold answers against 4 needed: gold could never exclude anyone.
    assert guaranteed_gold_answers(campaign.quota_per_rater, campaign.gold_share) >= campaign.gold_min_answers


def test_demo_setup_creates_var_when_the_database_is_not_sqlite(settings, tmp_path):
    # The settings make var/ only for the SQLite default; a fresh clone pointed at PostgreSQL has none.
    settings.VAR_DIR = tmp_path / "fresh-clone" / "var"
    call_command("demo_setup")
    assert (settings.VAR_DIR / "demo-login.txt").exists()
    assert (settings.VAR_DIR / "models" / "tiny-base" / "model_index.json").exists()
