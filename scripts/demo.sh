#!/usr/bin/env bash
# The demo on embedded defaults: SQLite and a filesystem message queue under
# var/, a real Celery worker process, the Django development server.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
PORT=${PORT:-8000}   # PORT=8001 make demo, when 8000 is taken
mkdir -p var/logs    # demo_setup writes var/ whatever DATABASE_URL says

$PY manage.py migrate --noinput -v 0
$PY manage.py demo_setup

.venv/bin/celery -A evalsite worker -Q generation,default -c 1 -n demo@%h -l info >var/logs/demo-worker.log 2>&1 &
worker=$!
# Curation funnels and quality-tuning runs started from the pages get their own worker, so a long run never
# holds up image generation.
.venv/bin/celery -A evalsite worker -Q training -c 1 -n demo-training@%h -l info >var/logs/demo-training-worker.log 2>&1 &
training_worker=$!
trap 'kill "$worker" "$training_worker" 2>/dev/null || true; wait "$worker" "$training_worker" 2>/dev/null || true' EXIT
echo "Celery workers started (pids $worker, $training_worker; logs var/logs/demo-*worker.log)"

# --reuse: a second `make demo` finds this batch (complete, or resumes it) instead of adding another.
$PY manage.py generate --models tiny-base tiny-tuned --prompt-set demo --seeds 0-3 \
    --name "demo: tiny-base vs tiny-tuned" --reuse --timeout 900

# demo_setup made the draft campaign over those images (the same prompts and seeds, both Emu criteria, 30 tasks
# per rater of which 20% gold, so gold can exclude; settings in demo_setup.DEMO_CAMPAIGN). Launching finds every
# image already made and goes live.
# (The status is read whole before its first line is looked at: `status | head -n 1` would close the pipe under a
# command still writing, and the broken pipe would skip the launch.)
status=$($PY manage.py campaign status demo)
if [[ ${status%%$'\n'*} == *': draft' ]]; then
    $PY manage.py campaign launch demo --wait --timeout 300
fi
# One invite link for the demo, reused on every run: printed plain (works as is: each browser that opens it is
# its own anonymous rater) and as the template to paste into Prolific (which fills in the placeholders).
demo_link() {
    $PY manage.py campaign invite demo --label "demo link" --reuse --base-url "http://127.0.0.1:$PORT" "$@" \
        2>var/logs/demo-invite.log || { cat var/logs/demo-invite.log >&2; return 1; }
}
invite=$(demo_link --plain)
prolific=$(demo_link)

echo
echo "Needle is running at http://127.0.0.1:$PORT/"
echo "Log in as: researcher / $(cat var/demo-login.txt)   (campaigns: http://127.0.0.1:$PORT/annotation/)"
echo "Rate as a crowd worker (open it in several browsers or private windows: each is a new rater):"
echo "  $invite"
echo "The same link for a Prolific study (Prolific fills in the placeholders):"
echo "  $prolific"
echo "(Ctrl-C stops the server and the workers.)"

# The mini-Emu loop (docs/mini-emu.md): curation, quality-tuning of the shipped base, checkpoint pick and three
# campaigns, with simulated reviewers and raters using this very server over HTTP. It runs once the server is up;
# a rerun reuses what exists. MINI_EMU=0 skips it; MINI_EMU_SCALE=ci runs the small version.
if [ "${MINI_EMU:-1}" != "0" ]; then
    (
        for _ in $(seq 60); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" 2>/dev/null && break; sleep 1; done
        LOG_LEVEL=WARNING $PY manage.py mini_emu reproduce --scale "${MINI_EMU_SCALE:-demo}" \
            --base-url "http://127.0.0.1:$PORT" --out var/mini-emu-results.json 2>&1 \
            | tee var/logs/mini-emu.log | sed -u 's/^/[mini-Emu] /' \
            && echo "mini-Emu loop finished: results in var/mini-emu-results.json, campaigns at http://127.0.0.1:$PORT/annotation/" \
            || echo "mini-Emu loop stopped; see var/logs/mini-emu.log"
    ) &
    echo "The mini-Emu loop runs in the background; its progress follows here (also in var/logs/mini-emu.log)."
fi
# The server's request log goes to a file, so the loop's progress stays readable here.
echo "Server log: var/logs/demo-server.log"
$PY manage.py runserver "127.0.0.1:$PORT" --noreload >var/logs/demo-server.log 2>&1 \
    || { tail -n 20 var/logs/demo-server.log >&2; exit 1; }
