#!/usr/bin/env bash
# The demo on embedded defaults: SQLite and a filesystem message queue under
# var/, a real Celery worker process, the Django development server.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
PORT=${PORT:-8000}

$PY manage.py migrate --noinput -v 0
$PY manage.py demo_setup

mkdir -p var/logs
.venv/bin/celery -A evalsite worker -Q generation -c 1 -l info >var/logs/demo-worker.log 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true' EXIT
echo "Celery worker started (pid $worker, log var/logs/demo-worker.log)"

$PY manage.py generate --models tiny-base tiny-tuned --prompt-set demo --seeds 0-3 \
    --name "demo: tiny-base vs tiny-tuned" --timeout 900

echo
echo "Needle is running at http://127.0.0.1:$PORT/"
echo "Log in as: researcher / $(cat var/demo-login.txt)"
echo "(Ctrl-C stops the server and the worker.)"
exec_server() { $PY manage.py runserver "127.0.0.1:$PORT" --noreload; }
exec_server
