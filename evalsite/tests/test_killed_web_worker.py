"""Web workers SIGKILLed while raters vote over real HTTP (gunicorn, PostgreSQL): no acknowledged vote is lost."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection, connections
from django.urls import reverse

from annotation import services
from annotation.models import Assignment, ComparisonItem, Vote
from evalsite.simulated_people import Browser, RaterBrowser

pytestmark = pytest.mark.django_db(transaction=True)

RATERS = 6
KILLS = 4
LOST = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def gunicorn():
    if connection.vendor != "postgresql":
        pytest.skip("the web workers share the test database over the network: PostgreSQL")
    db = connection.settings_dict
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE": "100000",
        "NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE": "100000",
        "DEBUG": "1",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "evalsite.wsgi:application",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--timeout",
            "60",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            Browser(base, timeout=5).get("/rate/")
            break
        except LOST:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gunicorn did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.3)
    yield base, server
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def test_web_workers_killed_mid_vote_lose_no_acknowledged_vote(live_campaign, gunicorn):
    base, server = gunicorn
    link = services.create_invite_link(live_campaign, label="load")
    acknowledged: dict[str, str] = {}  # task token -> choice the server said it recorded
    errors: list[BaseException] = []
    done = threading.Event()

    def rater(index: int):
        browser = RaterBrowser(base, timeout=30)
        try:
            for attempt in range(20):
                try:
                    page = browser.join(base + reverse("rate:join", args=[link.token]), f"worker-{index}")
                    break
                except LOST:
                    time.sleep(0.2)
            else:
                raise AssertionError("could not join through restarting workers")
            tasks_url, vote_url = page.rstrip("/") + "/tasks.json", page.rstrip("/") + "/vote"
            while True:
                try:
                    reply = browser.get(tasks_url, Accept="application/json")
                except LOST:
                    continue
                if reply.status != 200:
                    continue
                body = reply.json()
                if body["done"]:
                    return
                task = body["tasks"][0]["id"]
                for _ in range(20):  # as rater.js does: a vote lost on the way is sent again
                    try:
                        answer = browser.post_json(vote_url, {"task": task, "choice": "left", "seconds": 1.0})
                    except LOST:
                        continue
                    if answer.status == 200 and answer.json()["recorded"]:
                        acknowledged[task] = "left"
                    break
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(RATERS)]
    for t in threads:
        t.start()

    def killer():
        for _ in range(KILLS):
            time.sleep(0.7)
            workers = _children(server.pid)
            if workers and not done.is_set():
                os.kill(workers[0], signal.SIGKILL)  # the master starts a new one

    kills = threading.Thread(target=killer)
    kills.start()
    for t in threads:
        t.join(timeout=600)
    done.set()
    kills.join()
    assert not errors, errors[:3]
    assert server.poll() is None, "the gunicorn master itself died"

    stored = dict(Vote.objects.values_list("assignment__token", "choice"))
    assert acknowledged and all(stored.get(token) == choice for token, choice in acknowledged.items())
    # Nothing half-written either: every item's counters match its votes and open leases.
    votes = Counter(Vote.objects.filter(excluded=False).values_list("assignment__item_id", flat=True))
    leases = Counter(Assignment.objects.filter(state="leased").values_list("item_id", flat=True))
    for item in ComparisonItem.objects.select_related("criterion"):
        assert (item.votes, item.open_leases) == (votes[item.pk], leases[item.pk])
        assert item.votes + item.open_leases + item.remaining == item.criterion.votes_per_item
        assert item.votes <= item.criterion.votes_per_item
