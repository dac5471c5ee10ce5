"""manage.py campaign: create, invite, status, pause/resume/close, api-token; refusals are CommandErrors in plain words."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotation import services
from annotation.models import Campaign
from core.api_tokens import user_for_api_token

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    from io import StringIO

    out, err = StringIO(), StringIO()
    call_command("campaign", *args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def test_create_makes_a_draft_campaign(two_models, prompt_set):
    out = run(
        *(
            "create --name emu --models tuned base --pairing vs_baseline --baseline base --prompt-set four --seeds 0-3 "
            "--criteria visual_appeal --gold-share 0.2 --quota 50 --completion-url "
            "https://app.prolific.com/submissions/complete?cc=X"
        ).split(),
    )
    campaign = Campaign.objects.get()
    assert "Created draft campaign 'emu'" in out and "base vs tuned" in out and "16 comparisons" in out
    assert campaign.ordered_models() == [two_models[1], two_models[0]] and campaign.baseline == two_models[0]
    assert (campaign.seeds, campaign.gold_share, campaign.quota_per_rater) == ([0, 1, 2, 3], 0.2, 50)
    assert list(campaign.criteria.values_list("criterion", "votes_per_item")) == [("visual_appeal", 5)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "base"], "models: Choose at least two models to compare."),
        (["--models", "base", "ghost"], "models: There is no registered model named ghost."),
        (["--seeds", "three"], "seeds: Cannot read seeds 'three'"),
        (["--pairing", "vs_baseline"], "baseline: With 'each model vs the baseline', choose the baseline."),
        (["--prompt-set", "nope"], "prompt_set: There is no prompt set by that name."),
        (["--gold-share", "0.7"], "gold_share: The gold share must be between 0 and 0.5."),
        (["--pairing", "round_robin"], "invalid choice: 'round_robin'"),
    ],
)
def test_create_refuses_bad_input_with_a_clear_message(two_models, prompt_set, args, message):
    base = {"--name": "x", "--models": ["base", "tuned"], "--prompt-set": "four", "--seeds": "0"}
    overridden = {args[0]: args[1:]}
    argv = ["create"]
    for flag, value in {**base, **overridden}.items():
        argv += [flag, *(value if isinstance(value, list) else [value])]
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(*argv)
    assert not Campaign.objects.exists()


def test_invite_status_and_status_changes(live_campaign, make_rater):
    out = run("invite", "c", "--label", "Prolific 1", "--max-raters", "20", "--base-url", "https://needle.example.org")
    link = live_campaign.invite_links.get()
    assert (link.label, link.max_raters) == ("Prolific 1", 20)
    assert f"https://needle.example.org/join/{link.token}/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID=" in out

    rater = make_rater()
    for task in services.open_tasks(live_campaign, rater):
        services.submit_vote(rater, task.token, "left")
    out = run("status", "c")
    assert "c (id" in out and ": live" in out and "Votes: 2 / 160 (1%)" in out
    assert "Raters: 1 joined, 0 excluded" in out and "Win rates (item level" in out
    assert "no complete comparisons yet" in out and "manage.py report c --format html" in out
    assert out.count("base") >= 2 and "visual appeal" in out and "text faithfulness" in out

    assert "c: paused" in run("pause", "c")
    assert "c: live" in run("resume", str(live_campaign.pk))  # a campaign id works too
    with pytest.raises(CommandError, match="A live campaign cannot become live."):
        run("resume", "c")
    assert "c: closed" in run("close", "c")
    assert Campaign.objects.get().status == "closed"


def test_unknown_campaign_refused_launch_and_base_url(live_campaign):
    with pytest.raises(CommandError, match=r"There is no campaign named 'nope' \(known: 'c'\)"):
        run("pause", "nope")
    with pytest.raises(CommandError, match="Only a draft campaign can be launched; this one is live."):
        run("launch", "c")
    with pytest.raises(CommandError, match="--base-url must start with http"):
        run("invite", "c", "--base-url", "needle.example.org")


def test_api_token_for_staff_only():
    staff = get_user_model().objects.create_user("ada", password="pw-long-enough-1", is_staff=True)
    get_user_model().objects.create_user("bob", password="pw-long-enough-1")
    out = run("api-token", "ada")
    token = out.strip().splitlines()[0]
    assert user_for_api_token(token) == staff and "valid 90 days" in out
    with pytest.raises(CommandError, match="bob is not an active staff account"):
        run("api-token", "bob")
    with pytest.raises(CommandError, match="There is no account named 'carol'"):
        run("api-token", "carol")


def test_launch_wait_hints_at_a_missing_worker_and_gives_up_at_the_timeout(two_models, prompt_set, monkeypatch, capsys):
    from analysis.management.commands import campaign as command

    monkeypatch.setattr(command, "NO_PROGRESS_HINT_SECONDS", 0.2)
    services.create_campaign(name="waiting", models=two_models, prompt_set=prompt_set, seeds=[0])
    # Inside the test's transaction nothing reaches the broker: exactly what a launch with no worker looks like.
    with pytest.raises(CommandError, match=r"Gave up waiting after 1s: 'waiting' is still launching \(0/8 images\)"):
        call_command("campaign", "launch", "waiting", "--wait", "--timeout", "1")
    out = capsys.readouterr().out
    assert (
        "Is a worker consuming the 'generation' queue? Start one with: celery -A evalsite worker -Q generation,default"
        in out
    )
    assert Campaign.objects.get().status == "launching"
