"""The per-step training log of a quality-tuning run: ``metrics.jsonl`` in the run directory.

One JSON object per optimizer step, appended and flushed as the step ends, so
a dashboard can tail it while the run goes on. A run that resumes from the
checkpoint at step S first drops every line past S (those steps are trained
again), so the curve never shows a step twice. A kill can tear the last line;
readers skip a line that does not parse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from training.atomic import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        return []
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill mid-write
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Keep only the steps up to ``last_step`` (the checkpoint a run resumes from)."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsWriter:
    """Appends one line per step; ``sync()`` makes everything written so far durable (called at checkpoints)."""

    def __init__(self, run_dir: str | Path):
        self._file = open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
