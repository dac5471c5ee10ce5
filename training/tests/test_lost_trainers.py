"""A run whose worker died can be resumed at once when that is provable, else the refusal says exactly when; a
trainer's failure is one readable line in the run's error field, the traceback stays in its log."""

import os
import socket
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from training import selectors, services
from training.models import QualityTuningRun
from training.trainer_process import TRAINER_LOG, trainer_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def running(run, *, worker, seconds_ago, trainer_pid=None):
    QualityTuningRun.objects.filter(pk=run.pk).update(
        status="running",
        worker=worker,
        trainer_pid=trainer_pid,
        started_at=timezone.now() - timedelta(hours=1),
        heartbeat_at=timezone.now() - timedelta(seconds=seconds_ago),
    )
    run.refresh_from_db()
    return run


def test_a_run_whose_worker_died_on_this_machine_can_be_resumed_at_once(run, dead_pid):
    running(run, worker=f"{socket.gethostname()} pid {dead_pid}", seconds_ago=30, trainer_pid=dead_pid)
    assert selectors.trainer_is_dead(run) and selectors.can_start(run)
    resumed = services.start_run(run)
    assert resumed.status == "queued" and resumed.error == ""


def test_a_cancelled_dead_run_is_cancelled_at_once(run, dead_pid):
    running(run, worker=f"{socket.gethostname()} pid {dead_pid}", seconds_ago=30)
    assert services.cancel_run(run).status == "cancelled"


def test_a_run_whose_task_is_alive_here_is_refused_with_the_time_it_can_be_resumed(run, settings):
    settings.NEEDLE_TRAINING_STALE_SECONDS = 600
    running(run, worker=f"{socket.gethostname()} pid {os.getpid()}", seconds_ago=30)
    with pytest.raises(services.TrainingError) as refused:
        services.start_run(run)
    when = timezone.localtime(run.heartbeat_at + timedelta(seconds=600))
    message = str(refused.value)
    assert "cannot be started twice" in message and f"pid {os.getpid()}" in message
    assert f"resumed from {when:%Y-%m-%d %H:%M:%S}" in message and "NEEDLE_TRAINING_STALE_SECONDS=600" in message
    run.refresh_from_db()
    assert run.status == "running"


def test_a_live_trainer_in_the_lock_file_keeps_the_run_alive(run, dead_pid):
    running(run, worker=f"{socket.gethostname()} pid {dead_pid}", seconds_ago=30)
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    assert not selectors.trainer_is_dead(run) and not selectors.can_start(run)


def test_a_run_on_another_machine_waits_for_the_stale_time(run, settings):
    settings.NEEDLE_TRAINING_STALE_SECONDS = 600
    running(run, worker="gpu-node-7 pid 4242", seconds_ago=30)
    with pytest.raises(
        services.TrainingError, match=r"runs on gpu-node-7.* resumed from \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    ):
        services.start_run(run)
    running(run, worker="gpu-node-7 pid 4242", seconds_ago=601)
    assert services.start_run(run).status == "queued"


def test_a_task_that_reported_a_moment_ago_is_alive_whatever_its_pid(run, dead_pid):
    running(run, worker=f"{socket.gethostname()} pid {dead_pid}", seconds_ago=1)
    assert not selectors.trainer_is_dead(run) and not selectors.can_start(run)


TRACEBACK = """=== attempt 1 ===
step 3/6 loss 0.1
Traceback (most recent call last):
  File "/app/training/quality_tuning.py", line 500, in train
    optimizer = torch.optim.AdamW(params, betas=(5.0, 0.999))
  File "/venv/torch/optim/adamw.py", line 30, in __init__
    raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
ValueError: Invalid beta parameter at index 0: 5.0
"""


def test_a_trainer_traceback_becomes_one_line_naming_the_exception_and_the_log():
    error = trainer_error(TRACEBACK, "/runs/run-1/trainer.log")
    assert "\n" not in error
    assert error == (
        "The trainer failed: ValueError: Invalid beta parameter at index 0: 5.0 "
        "(the full output is in /runs/run-1/trainer.log)"
    )
    assert trainer_error("error: run directory in use\nerror: second line\n") == ("run directory in use; second line")


def test_the_trainer_prints_a_one_line_error_after_an_unexpected_traceback(monkeypatch, tmp_path, capsys):
    from training import quality_tuning

    def fail(*args, **kwargs):
        raise ValueError("Invalid beta parameter at index 0: 5.0")

    monkeypatch.setattr(quality_tuning, "train", fail)
    code = quality_tuning.main(["--base", "b", "--dataset", "d", "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err
    assert trainer_error(err) == "the trainer failed: ValueError: Invalid beta parameter at index 0: 5.0"


def test_a_stored_config_that_cannot_work_fails_the_task_with_one_line_before_any_trainer_starts(run):
    QualityTuningRun.objects.filter(pk=run.pk).update(config={**run.config, "adam_beta1": 5})
    outcome = services.execute_run(run.pk, task_id="t")
    run.refresh_from_db()
    assert run.status == "failed" and "failed" in outcome
    assert "\n" not in run.error and "adam_beta1 must be at least 0 and below 1" in run.error
    assert not (run.path / TRAINER_LOG).exists()
