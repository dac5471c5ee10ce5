"""Queueing a Celery task by its name, after the current transaction commits.

Tasks call services; a service that asks for background work would otherwise import its app's task module and
close a cycle (services -> tasks -> services). Sending by name keeps services below the tasks that run them, and
the site's routing (CELERY_TASK_ROUTES, by name) still picks the queue.
"""

from __future__ import annotations

import importlib

from celery import current_app
from django.db import transaction


def enqueue_on_commit(task_name: str, *args, task_id: str | None = None) -> None:
    """Send ``task_name(*args)`` once the current transaction commits (at once outside one)."""
    # A misspelt name would be queued and never run: the task's module must define it (importing it registers it).
    importlib.import_module(task_name.rpartition(".")[0])
    if task_name not in current_app.tasks:
        raise LookupError(f"No Celery task is registered as {task_name!r}.")
    transaction.on_commit(lambda: current_app.send_task(task_name, args=list(args), task_id=task_id))
