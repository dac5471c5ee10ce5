"""The trainer as a process: start it tied to its parent, ask whether it holds its run directory, stop it, and read
what it wrote (metrics, its result line, its error). No database and no Django: the task in
``training.services.trainer`` does the bookkeeping.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from core.locking import is_locked
from training import checkpoints

# The repository root: the trainer runs there, with it on its PYTHONPATH (settings.BASE_DIR).
BASE_DIR = Path(__file__).resolve().parent.parent
TRAINER_LOG = "trainer.log"
# What the trainer prints (exit 2) when another process holds the run directory.
IN_USE_MESSAGE = "is being trained by another process"
# How long a SIGTERMed trainer may take to checkpoint and exit before it is killed.
STOP_GRACE_SECONDS = 900


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def trainer_is_running(run_dir: str | Path) -> bool:
    """Whether a live process holds the run directory's lock (training.checkpoints.run_directory_lock).

    Only the task that is about to start a trainer may probe: the probe holds
    the lock for an instant, and a trainer starting in that instant gives up
    (its task then sees the lock free and starts it again).
    """
    return is_locked(Path(run_dir) / checkpoints.LOCK_FILE)


_PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent(parent_pid: int):
    """preexec_fn: the trainer gets SIGKILL when the process that started it dies (Linux), even by SIGKILL."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc = _libc

    def preexec():
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn_trainer(command: list[str], log_file, *, env: dict | None = None) -> subprocess.Popen:
    """Start the trainer in this process's process group, tied to this process's life."""
    pythonpath = os.pathsep.join(p for p in (str(BASE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    environment = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env or {}),
    }
    return subprocess.Popen(
        command,
        cwd=BASE_DIR,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def stop_trainer(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class MetricsTail:
    """Reads the lines appended to ``metrics.jsonl`` since the last look (and starts over when a resume rewrites it)."""

    def __init__(self, run_dir: Path, remember: int = 5000):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.inode, self.offset, self.pending = None, 0, b""
        self.last: dict | None = None
        self.losses: dict[int, float] = {}
        self.remember = remember

    def poll(self) -> bool:
        """True when new complete lines were read."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        with handle:
            stat = os.fstat(handle.fileno())
            if stat.st_ino != self.inode or stat.st_size < self.offset:
                self.inode, self.offset, self.pending, self.last = stat.st_ino, 0, b"", None
                self.losses.clear()
            if stat.st_size == self.offset:
                return False
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        new = False
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                self.last, new = record, True
                self.losses[record["step"]] = record.get("loss")
        if len(self.losses) > self.remember:
            for step in sorted(self.losses)[: len(self.losses) - self.remember]:
                del self.losses[step]
        return new


# --- Reading the trainer's output ---------------------------------------------------------------


def log_section(log_path: Path, offset: int) -> str:
    with open(log_path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", errors="replace")


def trainer_result(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                if isinstance(result, dict) and "stopped" in result:
                    return result
    return None


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line (a run's error field is read in a table cell and a terminal), at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def trainer_error(output: str, log_path: Path | str | None = None) -> str:
    """One readable line on why the trainer failed: its own ``error:`` lines, else the exception a traceback ends
    with. The traceback itself stays in the trainer's log."""
    where = f" (the full output is in {log_path})" if log_path else ""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    if errors:
        return one_line("; ".join(errors)) + where
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        after = [line for line in lines[tracebacks[-1] + 1 :] if not line.startswith((" ", "\t"))]
        if after:
            return one_line(f"The trainer failed: {after[-1]}") + where
    return one_line(f"The trainer failed: {lines[-1]}" if lines else "The trainer exited without output") + where


def signal_name(number: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return str(number)
