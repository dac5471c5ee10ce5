import os
import re
import secrets
import subprocess
import sys

import pytest
from django.conf import settings

from evalsite.celery import app
from evalsite.workers import BASE_DIR


def manage(*args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_production_settings():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="needle.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", DEBUG="0", ALLOWED_HOSTS="needle.example.org")
    assert result.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_malformed_boolean_setting_is_a_clear_error():
    result = manage("check", DEBUG="maybe")
    assert result.returncode != 0 and "DEBUG='maybe' is not a boolean" in result.stderr


def test_generation_tasks_go_to_their_own_queue_and_survive_a_lost_worker():
    from generation.tasks import generate_chunk as task

    assert app.amqp.router.route({}, task.name)["queue"].name == "generation"
    assert task.acks_late and task.reject_on_worker_lost
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert not app.conf.task_always_eager


def test_the_readme_lists_every_environment_variable_the_code_reads():
    read = set()
    for package in ["core", "evalsite", "generation", "annotation", "analysis", "training"]:
        for path in (BASE_DIR / package).rglob("*.py"):
            if "tests" not in path.parts and "migrations" not in path.parts:
                read |= set(
                    re.findall(
                        r'(?:environ\.get|environ\[|getenv|env_int|env_bool|env_float|env_list)\(?\s*"([A-Z][A-Z0-9_]+)"',
                        path.read_text(),
                    )
                )
    read -= {"PYTHONPATH", "DJANGO_SETTINGS_MODULE"}  # passed on to processes, not settings
    assert {"DATABASE_URL", "DB_CONN_MAX_AGE", "SECRET_KEY"} <= read  # the pattern finds what it must
    readme = (BASE_DIR / "README.md").read_text()
    assert sorted(name for name in read if f"`{name}`" not in readme) == []


def _test_database_url() -> str:
    from django.db import connection

    d = connection.settings_dict
    return f"postgres://{d['USER']}:{d['PASSWORD']}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{d['NAME']}"


@pytest.mark.django_db
def test_database_connections_are_kept_and_checked_by_default_and_pooled_on_request():
    """Kept connections (DB_CONN_MAX_AGE 60, health-checked) by default; DB_POOL=1 swaps them for psycopg's pool,
    which then really serves queries; DB_PGBOUNCER=1 turns server-side cursors off."""
    show = (
        "from django.conf import settings; from django.db import connection; d = settings.DATABASES['default']; "
        "print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'], d.get('OPTIONS', {}).get('pool'), "
        "d['DISABLE_SERVER_SIDE_CURSORS']); "
        "c = connection.cursor(); c.execute('select 41 + 1'); print(c.fetchone()[0], type(connection.pool).__name__)"
    )
    url = _test_database_url()
    kept = manage("shell", "--no-imports", "-c", show, DATABASE_URL=url)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.split() == ["60", "True", "None", "False", "42", "NoneType"]
    pooled = manage(
        "shell", "--no-imports", "-c", show, DATABASE_URL=url, DB_POOL="1", DB_POOL_MAX_SIZE="3", DB_PGBOUNCER="1"
    )
    assert pooled.returncode == 0, pooled.stderr
    assert pooled.stdout.split()[:2] == ["0", "True"] and "'max_size': 3" in pooled.stdout
    assert pooled.stdout.split()[-3:] == ["True", "42", "ConnectionPool"]
