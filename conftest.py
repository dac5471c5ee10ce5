"""Fixtures shared by every app's tests: tiny real pipelines and a real Celery worker."""

import contextlib
import shutil

import pytest
from django.conf import settings

from evalsite.workers import WorkerProcess, database_url_for

# Fixtures several apps' tests share (a campaign with votes).
pytest_plugins = ["annotation.tests.campaign_fixtures"]

# Seconds after which the broker hands an unacknowledged task to another
# worker: short in tests, so the kill test does not wait an hour.
TEST_VISIBILITY_TIMEOUT = 4


@pytest.fixture(scope="session", autouse=True)
def _clean_media():
    shutil.rmtree(settings.MEDIA_ROOT, ignore_errors=True)
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    yield


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """tiny_pipeline_dir(kind="sd", seed=0) -> a saved random-weight pipeline directory, built once per session."""
    from generation.tiny_pipelines import save_tiny_pipeline

    built = {}

    def make(kind: str = "sd", seed: int = 0):
        if (kind, seed) not in built:
            built[kind, seed] = save_tiny_pipeline(tmp_path_factory.mktemp(f"{kind}-{seed}"), seed=seed, kind=kind)
        return built[kind, seed]

    return make


# What the tiny pipelines drew, by (weights, batch, parameters): campaign fixtures in most apps render the same
# batches test after test. Rendering is deterministic (one seeded generator per image), so a repeat is served from
# here. Keyed on the whole batch, so a test that renders other batch compositions still runs the pipeline; and off
# for generation's own tests, which are about rendering itself.
_RENDERED: dict = {}


@pytest.fixture(autouse=True)
def _render_once_per_batch(request, monkeypatch):
    if request.node.path.is_relative_to(settings.BASE_DIR / "generation"):
        yield
        return
    from generation import pipelines

    real = pipelines.render

    def render(loaded, prompts, seeds, parameters):
        key = (
            loaded.fingerprint,
            loaded.device,
            tuple(prompts),
            tuple(int(s) for s in seeds),
            repr(sorted(parameters.items())),
        )
        if key not in _RENDERED:
            _RENDERED[key] = real(loaded, prompts, seeds, parameters)
        images, seconds = _RENDERED[key]
        return [image.copy() for image in images], seconds

    monkeypatch.setattr(pipelines, "render", render)
    yield


PROMPTS_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "a red apple\tFood\tBasic\t\n"
    "a lighthouse at dusk\tOutdoor Scenes\tBasic\t\n"
    "three blue birds\tAnimals\tQuantity\tcounting\n"
    'a sign that says "hi"\tArtifacts\tWriting & Symbols\t\n'
)


@pytest.fixture
def two_models(tiny_pipeline_dir):
    """Two registered tiny SD models with different weights: "base" and "tuned" (4 steps)."""
    from generation import services as generation_services

    base = generation_services.register_model(
        name="base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=4, guidance_scale=5.0
    )
    tuned = generation_services.register_model(
        name="tuned", pipeline_path=str(tiny_pipeline_dir("sd", 1)), steps=4, guidance_scale=5.0
    )
    return base, tuned


@pytest.fixture
def prompt_set():
    """A PartiPrompts-style set of four prompts named "four"."""
    from generation import services as generation_services

    prompt_set, _ = generation_services.import_prompt_set(name="four", data=PROMPTS_TSV.encode(), filename="four.tsv")
    return prompt_set


@pytest.fixture
def live_campaign(make_campaign):
    """A live two-model campaign over 4 prompts x 5 seeds: 20 appeal items (k=5) and 20 faithfulness items (k=3).

    Its images are really generated (in this process) by the tiny pipelines. No gold
    items, so counts are exact; gold has its own tests.
    """
    campaign = make_campaign(name="c", seeds=[0, 1, 2, 3, 4], gold_share=0)
    assert campaign.items.count() == 40
    return campaign


@pytest.fixture
def staff_client(client):
    """The test client, signed in as a researcher (staff, superuser)."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        "researcher", password="pw-long-enough-1", is_staff=True, is_superuser=True
    )
    client.force_login(user)
    return client


@pytest.fixture
def researcher():
    """A researcher's account: staff (not superuser)."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True)


@pytest.fixture
def api(researcher):
    """A test client that calls the researcher API with the researcher's bearer token."""
    from django.test import Client

    from core.api_tokens import issue_api_token

    return Client(headers={"Authorization": f"Bearer {issue_api_token(researcher)}"})


@pytest.fixture
def make_rater():
    from annotation.models import Rater

    return lambda: Rater.objects.create()


def all_at_once(work, args, *, timeout: float) -> None:
    """``work(arg)`` for each of ``args``, each in its own thread, all let go together; fails with the first errors.

    Each thread closes its database connections when done (transactional tests: each has its own).
    """
    import threading

    from django.db import connections

    start = threading.Barrier(len(args))
    errors: list[BaseException] = []

    def run(arg):
        try:
            start.wait()
            work(arg)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not errors, errors[:3]


CHROMIUM = "/usr/bin/chromium"  # Debian's
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def browser(monkeypatch):
    """Debian's Chromium, headless, driven by Playwright's sync API; the test is skipped where it is not installed."""
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _purge_queues():
    from evalsite.celery import app

    with app.connection_for_write() as conn:
        for queue in ("generation", "training", "default"):
            conn.default_channel.queue_purge(queue)


@contextlib.contextmanager
def worker_process(django_db_blocker, queues: str, **env: str):
    """A real worker process consuming ``queues`` against the test database, the queues emptied first; stopped after.

    ``env`` adds to its environment (its visibility timeout is the tests' short one).
    """
    from django.db import connection

    with django_db_blocker.unblock():
        url = database_url_for(connection.settings_dict)
    try:
        _purge_queues()
    except Exception as exc:  # noqa: BLE001 - a missing queue is fine, a dead broker is not
        if "NOT_FOUND" not in str(exc):
            raise
    worker = WorkerProcess(
        queues=queues,
        database_url=url,
        env={"CELERY_VISIBILITY_TIMEOUT": str(TEST_VISIBILITY_TIMEOUT), **env},
        log_dir=settings.VAR_DIR / "logs",
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """A real worker process consuming the generation and default queues against the test database.

    Session-wide (starting one imports torch: seconds). Tests that use it need
    ``transactional_db`` so the worker sees their rows. ``celery_worker.kill()``
    and ``.start()`` let a test lose and replace it.
    """
    with worker_process(django_db_blocker, "generation,default") as worker:
        yield worker


@pytest.fixture(scope="session", autouse=True)
def _close_stray_test_database_sessions(django_db_setup, django_db_blocker):
    """Let the test database be dropped at the end: live-server request threads can leave a session open."""
    yield
    from django.db import OperationalError, connection

    if connection.vendor != "postgresql":
        return
    try:
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    except OperationalError:  # a run with no database test never created the test database: nothing to let go of
        pass


def pytest_terminal_summary(terminalreporter):
    """The bad-input corpus's size and outcome counts (evalsite/bad_input.py), when any of it ran."""
    from evalsite import bad_input

    if not bad_input.RESULTS:
        return
    data = bad_input.write_summary(settings.VAR_DIR / "bad-input-corpus.json")
    outcomes = ", ".join(f"{name} {count}" for name, count in data["outcomes"].items())
    surfaces = ", ".join(f"{name} {count}" for name, count in data["surfaces"].items())
    terminalreporter.write_line(f"bad-input corpus: {data['inputs']} inputs ({surfaces}); outcomes: {outcomes}")
    for case in data["cases"]:
        if case["outcome"] != "clear":
            terminalreporter.write_line(
                f"  {case['outcome']}: {case['case']} ({case['surface']}): {case['detail'][:200]}"
            )
