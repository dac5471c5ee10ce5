"""Rater round trips per second over real HTTP: gunicorn + PostgreSQL as production runs them, N raters at once.

Each simulated rater joins through the campaign's invite link (the consent page, then "I agree"), loads the voting
page's tasks.json once, then loops with no think time: both images of the task on screen, then the vote. A vote's
answer carries the rater's next tasks (Needle since issue 12); against a server whose answer does not, the rater
asks tasks.json again, as the old page did. One round trip = the vote and its two images.

    python bench/rater_http.py [--raters 20 50 100] [--seconds 20] [--workers 4] [--worker-class sync]
                               [--conn-max-age 60] [--repeats 1]

Per run it prints votes/s, p50/p99 per request kind, the CPU seconds each party used (PostgreSQL, gunicorn, the
load generator), and the ratio to bare INSERTs measured in the same process right before (the baseline is re-run
before every configuration, interleaved, never averaged in). After every run it checks integrity: votes
acknowledged = votes stored, no item over k, every open lease accounted for (open_leases = leased assignments).

Uses BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/needle_bench_http), dropped and re-created;
the cache (rate limits) is Redis at BENCH_CACHE_URL (default redis://127.0.0.1:6379/12), as production shares it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/needle_bench_http")
CACHE_URL = os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/12")
RESTART_DATABASE = os.environ.get("BENCH_RESTART_DATABASE", "pg_ctlcluster 15 main restart")
MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="needle-bench-media-"))
STATIC_ROOT = Path(tempfile.mkdtemp(prefix="needle-bench-static-"))
SERVER_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "bench-" + "k" * 50,
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "SECURE_SSL_REDIRECT": "0",  # no TLS on the loopback; production terminates it in front of gunicorn
    "DATABASE_URL": URL,
    "NEEDLE_CACHE_URL": CACHE_URL,
    "MEDIA_ROOT": str(MEDIA_ROOT),
    "STATIC_ROOT": str(STATIC_ROOT),
    "NEEDLE_VAR_DIR": str(BASE_DIR / "var" / "bench"),
    "NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE": "1000000",  # simulated raters answer with no think time
    "LOG_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
}
os.environ.update({k: v for k, v in SERVER_ENV.items() if k not in ("DEBUG",)})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

from bench.bench_db import models_prompts_images, recreate_database  # noqa: E402  (BASE_DIR on the path first)

COOKIE = re.compile(r"^([^=;\s]+)=([^;]*)")
KINDS = ("tasks", "image", "vote")


# --- Setup: one campaign with real PNG files, an invite link ---------------------------------------------------


def make_campaign(items: int) -> tuple[int, str]:
    """A live visual-appeal campaign of ``items`` pairs (k=5) whose images are real PNG files; (id, invite token)."""
    import io

    from django.core.files.base import ContentFile
    from django.core.files.storage import storages
    from django.core.management import call_command
    from PIL import Image

    from annotation import services
    from annotation.models import Campaign, ComparisonItem, InviteLink

    call_command("migrate", verbosity=0)
    subprocess.run(  # as a deployment does: the pages name the manifest's hashed static files
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=BASE_DIR,
        env={**os.environ, **SERVER_ENV},
        check=True,
    )
    storage = storages["images"]
    files = {}
    for name, colour in (("a", (200, 80, 40)), ("b", (40, 80, 200))):
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), colour).save(buffer, format="PNG")
        files[name] = storage.save(f"bench/{name}.png", ContentFile(buffer.getvalue()))
    models, prompt_set, rows, image = models_prompts_images(
        ["a", "b"], items, file_for=lambda m: files[m.name], size=256
    )
    campaign = services.create_campaign(
        name="bench", models=models, prompt_set=prompt_set, seeds=[0], criteria={"visual_appeal": {}}, gold_share=0
    )
    criterion = campaign.criteria.get()
    ComparisonItem.objects.bulk_create(
        ComparisonItem(campaign=campaign, criterion=criterion, image_a=a, image_b=b, remaining=criterion.votes_per_item)
        for a, b in ((image[models[0].pk, p.pk], image[models[1].pk, p.pk]) for p in rows)
    )
    # The speeder check runs (its cost is part of every vote) but only flags: these raters have no think time.
    Campaign.objects.filter(pk=campaign.pk).update(exclude_speeders=False)
    services.set_status(campaign, "live")
    link = InviteLink.objects.create(campaign=campaign)
    return campaign.pk, link.token


def integrity(campaign_id: int, acknowledged: int, before: int) -> str:
    """Raise if a vote was lost or invented, an item went over k, or a lease is not accounted for; else a summary."""
    from django.db.models import Count, F, Q

    from annotation.models import Assignment, ComparisonItem, Vote

    stored = Vote.objects.filter(assignment__campaign_id=campaign_id).count() - before
    assert stored == acknowledged, f"votes acknowledged {acknowledged} != stored {stored}"
    items = ComparisonItem.objects.filter(campaign_id=campaign_id).annotate(
        counted=Count("assignments__vote", filter=Q(assignments__vote__excluded=False)),
        leased=Count("assignments", filter=Q(assignments__state=Assignment.State.LEASED)),
    )
    over = items.filter(counted__gt=F("criterion__votes_per_item")).count()
    assert over == 0, f"{over} items over k"
    drift = items.exclude(open_leases=F("leased")).count() + items.exclude(votes=F("counted")).count()
    assert drift == 0, f"{drift} items whose counters disagree with their assignments"
    slots = items.exclude(remaining=F("criterion__votes_per_item") - F("counted") - F("open_leases")).count()
    assert slots == 0, f"{slots} items whose free slots disagree with k - votes - leases"
    return f"integrity ok: {stored} votes acknowledged = stored, no item over k, every lease accounted for"


def bare_inserts_per_second(seconds: float = 2.0, processes: int = 4) -> float:
    """The baseline: one bare autocommitted INSERT per vote-sized row, ``processes`` connections at once."""
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (id serial primary key, v int, t float)")
    context = multiprocessing.get_context("fork")
    counts = context.Queue()

    def insert(_):
        n = 0
        with psycopg.connect(URL, autocommit=True) as conn:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                conn.execute("INSERT INTO bench_bare (v, t) VALUES (%s, %s)", (n, 1.0))
                n += 1
        counts.put(n)

    workers = [context.Process(target=insert, args=(i,)) for i in range(processes)]
    for w in workers:
        w.start()
    total = sum(counts.get() for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


# --- The server ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int, worker_class: str, conn_max_age: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, **SERVER_ENV, "DB_CONN_MAX_AGE": str(conn_max_age)}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "evalsite.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        *(["--threads", "4"] if worker_class == "gthread" else []),
        *extra,
    ]
    server = subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("gunicorn did not start")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGINT)  # gunicorn's quick shutdown: the load is over
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def cpu_seconds(pattern: str) -> float:
    """utime + stime of every process whose command line matches ``pattern`` (children's time included).

    PostgreSQL's share counts the backends of the benchmark's database alive at both readings: with connections
    kept (DB_CONN_MAX_AGE > 0) that is all of them; with a connection per request it misses most.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not re.search(pattern, cmdline):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / tick


# --- The simulated raters ----------------------------------------------------------------------------------------


class Rater:
    """One browser: its cookies, one keep-alive connection (re-opened whenever the server closes it)."""

    def __init__(self, port: int, latencies: dict[str, list[float]]):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}
        self.latencies = latencies
        self.recorded: set[str] = set()  # tasks whose vote the server acknowledged (first time or as a duplicate)
        self.retries = 0

    def request(self, kind: str | None, method: str, path: str, body: bytes | None = None, headers=None):
        headers = {**(headers or {}), "Host": "127.0.0.1"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started = time.perf_counter()
        for attempt in range(60):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.status < 500:
                    break
            except (http.client.HTTPException, OSError):
                pass
            # A kept connection the server closed, a killed worker, a database restarting: as the page does, send
            # again (a vote is idempotent), a little later.
            self.connection.close()
            self.retries += 1
            time.sleep(min(1.0, 0.05 * (attempt + 1)))
        else:
            raise RuntimeError(f"{method} {path}: no answer after 60 attempts")
        if kind:
            self.latencies[kind].append(time.perf_counter() - started)
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and (match := COOKIE.match(value)):
                self.cookies[match.group(1)] = match.group(2)
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        return response.status, data, response

    def join(self, invite: str) -> str:
        path = f"/join/{invite}/"
        status, page, _ = self.request(None, "GET", path)
        assert status == 200, (status, page[:300])
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        form = urlencode({"csrfmiddlewaretoken": token}).encode()
        status, _, response = self.request(
            None, "POST", path, form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 302, status
        return response.getheader("Location").rstrip("/")

    def rate(self, page: str, stop_at: float) -> None:
        status, data, _ = self.request("tasks", "GET", f"{page}/tasks.json")  # the voting page's first load
        assert status == 200, (status, data[:300])
        queue = json.loads(data)["tasks"]
        while queue and time.perf_counter() < stop_at:
            task = queue[0]
            for side in ("left", "right"):
                status, image, _ = self.request("image", "GET", task["images"][side])
                assert status == 200 and image[:4] == b"\x89PNG", (status, image[:100])
            body = json.dumps({"task": task["id"], "choice": "left", "seconds": 1.5}).encode()
            headers = {"Content-Type": "application/json", "X-CSRFToken": self.cookies["csrftoken"]}
            status, data, _ = self.request("vote", "POST", f"{page}/vote", body, headers)
            answer = json.loads(data)
            assert status == 200 and answer.get("recorded"), (status, data[:300])
            self.recorded.add(task["id"])
            if "tasks" in answer:
                queue = answer["tasks"]
            else:  # a server whose vote answer carries no tasks: ask again, as the old page did
                status, data, _ = self.request("tasks", "GET", f"{page}/tasks.json")
                queue = json.loads(data)["tasks"]


def client_process(port: int, invite: str, raters: int, seconds: float, start_at: float, results) -> None:
    try:
        results.put(_client(port, invite, raters, seconds, start_at))
    except Exception as exc:  # the parent waits for every process's answer
        results.put(
            {"latencies": {k: [] for k in KINDS}, "acknowledged": 0, "retries": 0, "errors": [repr(exc)], "cpu": 0}
        )


def _client(port: int, invite: str, raters: int, seconds: float, start_at: float) -> dict:
    latencies = {kind: [] for kind in KINDS}
    joined: list[tuple[Rater, str]] = []
    for _ in range(raters):
        rater = Rater(port, {kind: [] for kind in KINDS})  # joining is not measured
        joined.append((rater, rater.join(invite)))
    for rater, _ in joined:
        rater.latencies = latencies
    errors: list[str] = []

    def run(rater, page):
        try:
            rater.rate(page, stop_at)
        except Exception as exc:  # reported, and the run fails
            errors.append(repr(exc))

    while time.time() < start_at:
        time.sleep(0.01)
    stop_at = time.perf_counter() + seconds
    cpu0 = time.process_time()
    threads = [threading.Thread(target=run, args=pair) for pair in joined]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latencies": latencies,
        "acknowledged": sum(len(r.recorded) for r, _ in joined),
        "retries": sum(r.retries for r, _ in joined),
        "errors": errors,
        "cpu": time.process_time() - cpu0,
    }


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def inject_faults(fault: str, port: int, seconds: float) -> threading.Thread | None:
    """During the run: SIGKILL a gunicorn worker every 2 s (kill-workers), or restart PostgreSQL once (restart-db)."""
    if not fault:
        return None

    def workers() -> list[int]:
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parent = Path(f"/proc/{stat[1]}/cmdline").read_bytes() if Path(f"/proc/{stat[1]}").exists() else b""
            if f"127.0.0.1:{port}" in cmdline and b"gunicorn" in parent:
                pids.append(int(pid))
        return pids

    def run():
        if fault == "kill-workers":
            end = time.time() + seconds - 1
            while time.time() < end:
                time.sleep(2)
                for pid in workers()[:1]:
                    os.kill(pid, signal.SIGKILL)
        elif fault == "restart-db":
            time.sleep(seconds / 3)
            subprocess.run(RESTART_DATABASE, shell=True, check=True)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def run_load(port: int, invite: str, raters: int, seconds: float, clients: int, fault: str = "") -> dict:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 2 + raters * 0.05  # every rater has joined before the clock starts
    shares = [raters // clients + (i < raters % clients) for i in range(clients)]
    processes = [
        context.Process(target=client_process, args=(port, invite, n, seconds, start_at, results)) for n in shares if n
    ]
    for p in processes:
        p.start()
    while time.time() < start_at:
        time.sleep(0.01)
    server, database = f"gunicorn evalsite.wsgi --bind 127.0.0.1:{port}", rf"^postgres: .*{URL.rsplit('/', 1)[1]}"
    postgres0, gunicorn0 = cpu_seconds(database), cpu_seconds(server)
    faults = inject_faults(fault, port, seconds)
    parts = [results.get() for _ in processes]
    if faults:
        faults.join()
    postgres1, gunicorn1 = cpu_seconds(database), cpu_seconds(server)
    for p in processes:
        p.join()
    errors = [e for part in parts for e in part["errors"]]
    if errors:
        raise SystemExit(f"{len(errors)} raters failed, e.g. {errors[0]}")
    latencies = {kind: [x for part in parts for x in part["latencies"][kind]] for kind in KINDS}
    return {
        "votes_per_second": len(latencies["vote"]) / seconds,
        "acknowledged": sum(part["acknowledged"] for part in parts),
        "retries": sum(part["retries"] for part in parts),
        "latencies": latencies,
        "cpu": {
            "postgres": (postgres1 - postgres0) / seconds,
            "gunicorn": (gunicorn1 - gunicorn0) / seconds,
            "load generator": sum(part["cpu"] for part in parts) / seconds,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raters", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the server")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gunicorn-arg", action="append", default=[], help="extra gunicorn argument (repeatable)")
    parser.add_argument("--fault", choices=["", "kill-workers", "restart-db"], default="")
    parser.add_argument("--instances", type=int, default=1, help="gunicorn instances sharing the port (reuse-port)")
    args = parser.parse_args()

    recreate_database(URL)
    import django

    django.setup()
    from django.db import connections

    from annotation.models import Vote

    campaign_id, invite = make_campaign(args.items)
    connections.close_all()
    port = free_port()
    extra = [*args.gunicorn_arg, *(["--reuse-port"] if args.instances > 1 else [])]
    servers = [
        start_server(port, args.workers, args.worker_class, args.conn_max_age, extra) for _ in range(args.instances)
    ]
    print(
        f"{args.instances} x gunicorn {args.workers} {args.worker_class} workers {' '.join(extra)}, "
        f"DB_CONN_MAX_AGE={args.conn_max_age}, PostgreSQL, fault: {args.fault or 'none'}, "
        f"{args.clients} load-generator processes, {os.cpu_count()} CPU cores shared by all; {args.seconds:g} s a run"
    )
    print(
        "raters | votes/s | tasks p50/p99 ms | image p50/p99 ms | vote p50/p99 ms | "
        "CPU cores: postgres / gunicorn / load | bare inserts/s | ratio"
    )
    try:
        for _ in range(args.repeats):
            for raters in args.raters:
                bare = bare_inserts_per_second()
                before = Vote.objects.filter(assignment__campaign_id=campaign_id).count()
                connections.close_all()
                result = run_load(port, invite, raters, args.seconds, args.clients, args.fault)
                lat, cpu = result["latencies"], result["cpu"]
                cells = " | ".join(f"{percentile(lat[k], 0.5):.0f}/{percentile(lat[k], 0.99):.0f}" for k in KINDS)
                print(
                    f"{raters} | {result['votes_per_second']:.1f} | {cells} | "
                    f"{cpu['postgres']:.2f} / {cpu['gunicorn']:.2f} / {cpu['load generator']:.2f} | "
                    f"{bare:.0f} | {result['votes_per_second'] / bare:.4f}",
                    flush=True,
                )
                print("   ", integrity(campaign_id, result["acknowledged"], before), flush=True)
                if result["retries"]:
                    print(f"    requests sent again after an error or a dropped connection: {result['retries']}")
    finally:
        for server in servers:
            stop_server(server)


if __name__ == "__main__":
    main()
