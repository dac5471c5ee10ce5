"""The researcher API under schemathesis: every operation of /api/openapi.json, fuzzed against a running server.

Schemathesis reads the OpenAPI document, sends documented and deliberately malformed requests to each operation
(path ids drawn mostly from real campaigns and raters, so the fuzzing gets past the 404), and checks every answer:
never a 5xx, and always the status and body schema the document promises. A live campaign with votes makes the
report and win-rate answers real ones. Bounded (fixed seed, a few examples per operation) to stay well under
90 seconds on two slow cores.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth import get_user_model

from annotation import services, tasks
from annotation.models import InviteLink
from core.api_tokens import issue_api_token
from generation import tasks as generation_tasks

# What the fuzzing must have reached: every operation of the document.
OPERATIONS = 12
MAX_EXAMPLES = 20  # per operation and phase; with the coverage phase's own cases, about 700 requests


def schemathesis_config(campaign_ids: list[int], participation_ids: list[int]) -> str:
    """Ids and names that exist, drawn most of the time (the rest is fuzzed), so requests reach the services."""
    return f"""
[dictionaries]
campaign = {{ values = {campaign_ids} }}
participation = {{ values = {participation_ids} }}
model = {{ values = ["base", "tuned"] }}
prompt_set = {{ values = ["four"] }}

[parameters]
"path.pk" = {{ dictionary = "campaign", probability = 0.8 }}
"path.participation_pk" = {{ dictionary = "participation", probability = 0.8 }}
"body.models[*]" = {{ dictionary = "model", probability = 0.8 }}
"body.baseline" = {{ dictionary = "model", probability = 0.5 }}
"body.prompt_set" = {{ dictionary = "prompt_set", probability = 0.8 }}

[generation]
max-examples = {MAX_EXAMPLES}
"""


@pytest.fixture
def no_broker(monkeypatch):
    """A launch through the API queues its Celery tasks after a real commit here: keep them out of the test broker,
    where a later test's worker would pick them up."""
    sent = []
    monkeypatch.setattr(tasks.finish_launch, "delay", lambda *args: sent.append(("finish_launch", args)))
    monkeypatch.setattr(generation_tasks.generate_chunk, "delay", lambda *args: sent.append(("generate_chunk", args)))
    return sent


def test_schemathesis_finds_no_server_error_and_every_answer_is_as_documented(
    live_server, live_campaign, two_models, prompt_set, no_broker, tmp_path
):
    staff = get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True)
    link = services.create_invite_link(live_campaign, label="wave 1")
    participation = services.join_with_invite(link.token, {"external_id": "fuzz-1"})
    for task in services.open_tasks(live_campaign, participation.rater):
        services.submit_vote(participation.rater, task.token, "left", seconds_on_task=3.0)
    draft = services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0])

    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config([live_campaign.pk, draft.pk], [participation.pk]))
    junit = tmp_path / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{live_server.url}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {issue_api_token(staff)}",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20261201",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-shrink",
        "--generation-database",
        "none",
        "--generation-with-security-parameters",
        "false",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = run.stdout + run.stderr
    print(output[-4000:])  # schemathesis's summary, shown with pytest -s
    assert junit.exists(), output

    cases = ET.parse(junit).getroot().iter("testcase")
    tested = {
        case.get("name"): [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        for case in cases
    }
    assert len(tested) == OPERATIONS, (sorted(tested), output)  # every operation reached: it cannot pass vacuously
    assert not any(problems for problems in tested.values()), ({k: v for k, v in tested.items() if v}, output)
    assert run.returncode == 0, output
    assert "500 Internal Server Error" not in output
    assert InviteLink.objects.count() > 1, output  # requests got past validation into the services
