"""Start and stop real Celery worker processes (tests, benchmarks, the demo).

A worker is a separate OS process running ``celery -A evalsite worker``, so
what is exercised is exactly what runs in production: the broker, task
serialisation, acks_late redelivery, the per-process pipeline cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings

BASE_DIR = Path(__file__).resolve().parent.parent


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL that points a worker at the database this process uses (e.g. the test database)."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = settings_dict.get("USER") or ""
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "localhost"
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        return f"postgres://{auth}{host}{port}/{settings_dict['NAME']}"
    raise ValueError(f"no worker DATABASE_URL for {engine}")


class WorkerProcess:
    def __init__(
        self,
        *,
        queues: str = "generation",
        database_url: str,
        env: dict | None = None,
        log_dir: Path | None = None,
        pool: str = "prefork",
    ):
        self.queues = queues
        self.pool = pool
        self.env = {**os.environ, "DATABASE_URL": database_url, **(env or {})}
        self.log_dir = Path(log_dir or settings.VAR_DIR / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, timeout: float = 120) -> WorkerProcess:
        name = f"w{uuid.uuid4().hex[:8]}"
        self.log_path = self.log_dir / f"worker-{name}.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "evalsite",
                "worker",
                "-Q",
                self.queues,
                "-c",
                "1",
                "--pool",
                self.pool,
                "-n",
                f"{name}@%h",
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches the pool children too
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return self
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: no cleanup, no acknowledgement, like a lost machine."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown: finish the current task, give back reserved ones."""
        if not self.alive:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
