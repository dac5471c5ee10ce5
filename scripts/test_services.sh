#!/usr/bin/env bash
# What the test suite runs against, set up from nothing. `make test` and CI (.ci/run) both run this.
#
#   scripts/test_services.sh [COMMAND...]
#
# 1. Packages: PostgreSQL, Redis, Chromium, tesseract, python3-venv (and make). Missing ones are installed with
#    apt-get when this runs as root or sudo needs no password.
# 2. PostgreSQL at DATABASE_URL and Redis at CELERY_BROKER_URL: started when they are on this machine and not
#    answering. The database role in DATABASE_URL is created (LOGIN CREATEDB) when it does not exist yet.
# 3. COMMAND, if given, runs with DATABASE_URL and CELERY_BROKER_URL exported (the defaults below when unset).
#
# Whatever it cannot do itself, it stops at once and prints the exact command to run, then `make test` again.
# NEEDLE_SETUP_DRY_RUN=1 checks everything but changes nothing: it prints what it would run instead.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL=${DATABASE_URL:-postgres://needle:needle@127.0.0.1:5432/needle}
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}
DRY_RUN=${NEEDLE_SETUP_DRY_RUN:-0}
WAIT_SECONDS=${NEEDLE_SETUP_WAIT_SECONDS:-30}

say() { printf '%s\n' "$*" >&2; }

# stop WHAT COMMAND: what is wrong, and the one command that fixes it.
stop() {
    say ""
    say "make test cannot go on: $1"
    say "Run this, then run make test again:"
    say "    $2"
    exit 1
}

# run COMMAND...: show it, then run it (or only show it, in a dry run).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        say "would run: $*"
    else
        say "+ $*"
        "$@"
    fi
}

have() { command -v "$1" >/dev/null 2>&1; }

is_local() { case "$1" in 127.0.0.1 | localhost | ::1 | "") return 0 ;; *) return 1 ;; esac; }

# How this script may change the machine: as root, through sudo without a password, or not at all.
if [ "$(id -u)" = 0 ]; then
    SUDO=()
    privileged=1
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
    privileged=1
else
    SUDO=()
    privileged=0
fi

# --- The two URLs ---------------------------------------------------------------------------------------------

url_re='^([a-z0-9+]+)://(([^:@/]*)(:([^@/]*))?@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?'
[[ $DATABASE_URL =~ $url_re ]] || stop "DATABASE_URL is not a URL: $DATABASE_URL" \
    "export DATABASE_URL=postgres://needle:needle@127.0.0.1:5432/needle"
case "${BASH_REMATCH[1]}" in
    postgres | postgresql) ;;
    *) stop "the test suite runs on PostgreSQL, and DATABASE_URL is $DATABASE_URL" \
        "export DATABASE_URL=postgres://needle:needle@127.0.0.1:5432/needle" ;;
esac
pg_user=${BASH_REMATCH[3]:-$(id -un)}
pg_password=${BASH_REMATCH[5]}
pg_host=${BASH_REMATCH[6]:-127.0.0.1}
pg_host=${pg_host#[}
pg_host=${pg_host%]}
pg_port=${BASH_REMATCH[8]:-5432}

redis_host=""
if [[ $CELERY_BROKER_URL =~ $url_re ]] && [[ ${BASH_REMATCH[1]} == redis || ${BASH_REMATCH[1]} == rediss ]]; then
    redis_host=${BASH_REMATCH[6]:-127.0.0.1}
    redis_host=${redis_host#[}
    redis_host=${redis_host%]}
    redis_port=${BASH_REMATCH[8]:-6379}
    [ -n "${BASH_REMATCH[5]}" ] && export REDISCLI_AUTH=${BASH_REMATCH[5]}
    redis_tls=()
    [ "${BASH_REMATCH[1]}" = rediss ] && redis_tls=(--tls)
else
    say "CELERY_BROKER_URL is not Redis ($CELERY_BROKER_URL): using it as it is."
fi

# --- 1. Packages ----------------------------------------------------------------------------------------------

missing=()
have make || missing+=(make)
{ have python3 && python3 -c 'import venv, ensurepip' 2>/dev/null; } || missing+=(python3-venv)
if is_local "$pg_host"; then
    { have pg_ctlcluster && have pg_isready && have psql; } || missing+=(postgresql)
else
    { have pg_isready && have psql; } || missing+=(postgresql-client)
fi
if [ -n "$redis_host" ]; then
    if is_local "$redis_host"; then
        { have redis-server && have redis-cli; } || missing+=(redis-server)
    else
        have redis-cli || missing+=(redis-tools)
    fi
fi
have chromium || missing+=(chromium)
have tesseract || missing+=(tesseract-ocr)

if [ ${#missing[@]} -gt 0 ]; then
    say "Missing for the tests: ${missing[*]}"
    if ! have apt-get; then
        stop "these (Debian) packages are missing: ${missing[*]}; this is not a Debian-like system (no apt-get)" \
            "your package manager's install command for: ${missing[*]}"
    fi
    if [ "$privileged" = 0 ]; then
        stop "packages are missing (${missing[*]}), and installing them needs root (sudo asks for a password)" \
            "sudo apt-get install -y ${missing[*]}"
    fi
    run "${SUDO[@]}" apt-get update -qq
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# In a dry run nothing was installed: steps that need what is still missing say so and are skipped.
missing_now() { [ "$DRY_RUN" = 1 ] && ! have "$1"; }

wait_until() { # wait_until SECONDS COMMAND...: true once COMMAND succeeds
    local i
    for ((i = 0; i < $1; i++)); do
        "${@:2}" && return 0
        sleep 1
    done
    "${@:2}"
}

# --- 2. PostgreSQL ---------------------------------------------------------------------------------------------

pg_ready() { pg_isready -q -h "$pg_host" -p "$pg_port"; }

if missing_now pg_isready; then
    say "would check PostgreSQL at $pg_host:$pg_port once it is installed"
elif ! pg_ready; then
    is_local "$pg_host" || stop "PostgreSQL at $pg_host:$pg_port (DATABASE_URL) does not answer" \
        "export DATABASE_URL=postgres://needle:needle@127.0.0.1:5432/needle   # or start that server"
    # The cluster on DATABASE_URL's port (Debian's pg_lsclusters: version, name, port, status, ...).
    cluster=$(pg_lsclusters -h 2>/dev/null | awk -v port="$pg_port" '$3 == port { print $1, $2; exit }')
    if [ -z "$cluster" ]; then
        version=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
        start=(pg_createcluster --port "$pg_port" --start "${version:-15}" main)
    else
        start=(pg_ctlcluster --skip-systemctl-redirect $cluster start)
    fi
    [ "$privileged" = 1 ] || stop "PostgreSQL is not running on port $pg_port, and starting it needs root" \
        "sudo ${start[*]}"
    run "${SUDO[@]}" "${start[@]}"
    if [ "$DRY_RUN" != 1 ] && ! wait_until "$WAIT_SECONDS" pg_ready; then
        stop "PostgreSQL did not come up on port $pg_port within $WAIT_SECONDS s (see /var/log/postgresql/)" \
            "sudo ${start[*]}"
    fi
fi

# The role in DATABASE_URL must log in; on this machine's own server a missing role is created.
if ! missing_now psql && { [ "$DRY_RUN" != 1 ] || pg_ready; }; then
    # Log in as the suite will, to the maintenance database (the test runner creates its own database from there).
    [[ ${DATABASE_URL%%\?*} =~ ^([a-z0-9+]+://[^/]*) ]]
    login_error=$(PGCONNECT_TIMEOUT=5 psql "${BASH_REMATCH[1]}/postgres" -X -Atqc 'select 1' 2>&1 >/dev/null) || {
        as_postgres=(runuser -u postgres --)
        [ "$(id -u)" = 0 ] || as_postgres=(sudo -n -u postgres)
        if [[ $login_error == *"role \"$pg_user\" does not exist"* ]] && is_local "$pg_host"; then
            [[ $pg_user =~ ^[A-Za-z_][A-Za-z0-9_]*$ && $pg_password =~ ^[A-Za-z0-9_]*$ ]] || stop \
                "the role $pg_user does not exist, and its name or password needs quoting this script does not do" \
                "sudo -u postgres createuser --createdb --pwprompt '$pg_user'"
            sql="CREATE ROLE $pg_user LOGIN CREATEDB${pg_password:+ PASSWORD '$pg_password'}"
            [ "$privileged" = 1 ] || stop "the database role $pg_user does not exist yet" \
                "sudo -u postgres psql -p $pg_port -c \"$sql\""
            (cd / && run "${as_postgres[@]}" psql -X -q -p "$pg_port" -v ON_ERROR_STOP=1 -c "$sql")
        elif is_local "$pg_host"; then
            stop "PostgreSQL refused $pg_user: ${login_error//$'\n'/ }" \
                "sudo -u postgres psql -p $pg_port -c \"ALTER ROLE $pg_user LOGIN CREATEDB PASSWORD '${pg_password:-needle}'\""
        else
            stop "PostgreSQL at $pg_host:$pg_port refused $pg_user: ${login_error//$'\n'/ }" \
                "export DATABASE_URL=postgres://USER:PASSWORD@$pg_host:$pg_port/needle   # a role that may create databases"
        fi
    }
fi

# --- 3. Redis --------------------------------------------------------------------------------------------------

redis_ready() { [ "$(redis-cli "${redis_tls[@]}" -h "$redis_host" -p "$redis_port" ping 2>/dev/null)" = PONG ]; }

if [ -n "$redis_host" ]; then
    if missing_now redis-cli; then
        say "would check Redis at $redis_host:$redis_port once it is installed"
    elif ! redis_ready; then
        is_local "$redis_host" || stop "Redis at $redis_host:$redis_port (CELERY_BROKER_URL) does not answer" \
            "export CELERY_BROKER_URL=redis://127.0.0.1:6379/15   # or start that server"
        # A throwaway server for the tests: no persistence, its files under var/redis (no root needed).
        run mkdir -p var/redis
        run redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no \
            --dir "$PWD/var/redis" --logfile "$PWD/var/redis/redis.log"
        if [ "$DRY_RUN" != 1 ] && ! wait_until "$WAIT_SECONDS" redis_ready; then
            stop "Redis did not come up on port $redis_port (see var/redis/redis.log)" \
                "redis-server --port $redis_port --daemonize yes"
        fi
    fi
fi

say "Test services: PostgreSQL $pg_host:$pg_port as $pg_user, broker ${CELERY_BROKER_URL%%\?*}, chromium, tesseract."

if [ $# -gt 0 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        say "would run: $*"
        exit 0
    fi
    exec "$@"
fi
