import os
import re
import secrets
import subprocess
import sys

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
