"""scripts/test_services.sh, the set-up `make test` and CI share: run on a PATH of stand-in commands, mostly in its
dry-run mode, so nothing on this machine is installed, started or stopped."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test_services.sh"
BASH = shutil.which("bash")
# Real tools the script uses for plumbing.
REAL = ["dirname", "awk", "ls", "sort", "tail", "sleep", "mkdir", "env", "cat"]

STAND_INS = {
    # uid from the test; the user name is only used for a DATABASE_URL without a user
    "id": 'case "$1" in -u) echo "${FAKE_UID:-0}" ;; -un) echo tester ;; esac',
    "sudo": '[ "${FAKE_SUDO:-no}" = yes ]',  # "sudo -n true": no password needed only when the test says so
    "python3": "exit 0",
    "make": "exit 0",
    "pg_ctlcluster": "exit 0",
    "pg_lsclusters": "echo '15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/x.log'",
    "pg_isready": '[ "${FAKE_PG:-up}" = up ]',
    "psql": 'if [ -n "${FAKE_PSQL_ERROR:-}" ]; then echo "$FAKE_PSQL_ERROR" >&2; exit 2; fi',
    "runuser": "exit 0",
    "redis-server": "exit 0",
    "redis-cli": '[ "${FAKE_REDIS:-up}" = up ] && echo PONG',
    "chromium": "exit 0",
    "tesseract": "exit 0",
    "apt-get": "exit 0",
}


@pytest.fixture
def machine(tmp_path):
    """machine(hide=[...], **env) -> CompletedProcess of the script on a PATH of stand-ins (minus ``hide``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in REAL:
        (bin_dir / name).symlink_to(shutil.which(name))
    calls = tmp_path / "calls.log"

    def run(*args, hide=(), dry_run=True, **env):
        for name, body in STAND_INS.items():
            path = bin_dir / name
            path.unlink(missing_ok=True)
            if name in hide:
                continue
            path.write_text(f'#!{BASH}\necho "{name} $*" >>"{calls}"\n{body}\n')
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        calls.write_text("")
        environment = {
            "PATH": str(bin_dir),
            "HOME": str(tmp_path),
            "NEEDLE_SETUP_WAIT_SECONDS": "0",
            "NEEDLE_SETUP_DRY_RUN": "1" if dry_run else "0",
            **env,
        }
        result = subprocess.run([BASH, str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=60)
        result.calls = calls.read_text()
        return result

    return run


def test_a_missing_package_without_root_or_sudo_stops_at_once_with_the_command_to_run(machine):
    result = machine(hide=["tesseract"], FAKE_UID="1000")
    assert result.returncode == 1
    assert "make test cannot go on" in result.stderr
    assert "    sudo apt-get install -y tesseract-ocr\n" in result.stderr
    assert "pg_isready" not in result.calls and "apt-get" not in result.calls, "it stops before anything else"


def test_as_root_missing_packages_are_installed_with_apt_get(machine):
    result = machine(hide=["tesseract", "chromium"], FAKE_UID="0")
    assert result.returncode == 0, result.stderr
    assert (
        "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium tesseract-ocr" in result.stderr
    )


def test_with_sudo_that_needs_no_password_packages_are_installed_through_sudo(machine):
    result = machine(hide=["redis-server"], FAKE_UID="1000", FAKE_SUDO="yes")
    assert result.returncode == 0, result.stderr
    assert "would run: sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server" in result.stderr


def test_a_remote_database_needs_only_the_client_tools(machine):
    result = machine(hide=["pg_ctlcluster", "psql"], FAKE_UID="0", DATABASE_URL="postgres://u:p@db.example.org:5433/x")
    assert "apt-get install -y -qq postgresql-client" in result.stderr


def test_a_stopped_local_postgresql_is_started(machine):
    result = machine(FAKE_UID="0", FAKE_PG="down")
    assert result.returncode == 0, result.stderr
    assert "would run: pg_ctlcluster --skip-systemctl-redirect 15 main start" in result.stderr


def test_without_root_a_stopped_postgresql_stops_with_the_sudo_command(machine):
    result = machine(FAKE_UID="1000", FAKE_PG="down")
    assert result.returncode == 1
    assert "    sudo pg_ctlcluster --skip-systemctl-redirect 15 main start\n" in result.stderr
    assert "redis-cli" not in result.calls


def test_a_remote_postgresql_that_does_not_answer_is_reported_not_started(machine):
    result = machine(FAKE_UID="0", FAKE_PG="down", DATABASE_URL="postgres://u:p@db.example.org:5432/needle")
    assert result.returncode == 1
    assert "PostgreSQL at db.example.org:5432 (DATABASE_URL) does not answer" in result.stderr
    assert "pg_ctlcluster" not in result.calls


def test_a_missing_database_role_is_created_on_the_local_server(machine):
    result = machine(FAKE_UID="0", FAKE_PSQL_ERROR='psql: error: FATAL:  role "needle" does not exist')
    assert result.returncode == 0, result.stderr
    assert (
        "would run: runuser -u postgres -- psql -X -q -p 5432 -v ON_ERROR_STOP=1 "
        "-c CREATE ROLE needle LOGIN CREATEDB PASSWORD 'needle'"
    ) in result.stderr


def test_a_refused_password_stops_with_the_command_that_sets_it(machine):
    result = machine(FAKE_UID="0", FAKE_PSQL_ERROR='FATAL:  password authentication failed for user "needle"')
    assert result.returncode == 1
    assert "sudo -u postgres psql -p 5432 -c \"ALTER ROLE needle LOGIN CREATEDB PASSWORD 'needle'\"" in result.stderr


def test_a_stopped_local_redis_is_started_without_root_under_var(machine):
    result = machine(FAKE_UID="1000", FAKE_REDIS="down")
    assert result.returncode == 0, result.stderr
    assert "would run: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379" in result.stderr
    assert f"--dir {ROOT}/var/redis" in result.stderr


def test_with_everything_up_it_changes_nothing_and_runs_the_command_with_the_default_urls(machine):
    result = machine("env", dry_run=False, FAKE_UID="1000")
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL=postgres://needle:needle@127.0.0.1:5432/needle\n" in result.stdout
    assert "CELERY_BROKER_URL=redis://127.0.0.1:6379/15\n" in result.stdout
    assert "+ " not in result.stderr and "apt-get" not in result.calls and "pg_ctlcluster" not in result.calls


def test_make_test_and_ci_share_the_script_and_ci_runs_exactly_make_test():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/test_services.sh" in recipe
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test_services.sh" in ci and "\nmake test 2>&1 | tee var/ci-test.log\n" in ci
    assert "passed' var/ci-test.log" in ci, "CI still checks that tests ran"
    readme = (ROOT / "README.md").read_text()
    assert "```\nmake demo\nmake test\n```" in readme
