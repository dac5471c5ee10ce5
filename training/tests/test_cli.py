"""``python -m training.quality_tuning``: bad input exits 2 with the reason, SIGTERM checkpoints and exits cleanly."""

import json
import os
import signal
import threading
import time

import pytest

from training import checkpoints
from training.metrics import read_metrics
from training.quality_tuning import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--resolution",
    "32",
    "--batch-size",
    "4",
    "--checkpoint-every",
    "1000",
    "--validation-every",
    "1000",
    "--validation-prompts",
    "a red circle",
    "--validation-seeds",
    "0",
    "--validation-inference-steps",
    "2",
]


def test_bad_input_exits_2_with_the_reason(tiny_pipeline_dir, curated_dataset, tmp_path, capsys):
    assert (
        main(["--base", str(tmp_path / "nowhere"), "--dataset", str(curated_dataset), "--run-dir", str(tmp_path / "a")])
        == 2
    )
    assert "nowhere does not exist" in capsys.readouterr().err
    assert (
        main(["--base", str(tiny_pipeline_dir("sd", 0)), "--dataset", str(tmp_path), "--run-dir", str(tmp_path / "b")])
        == 2
    )
    assert "has no captions.jsonl" in capsys.readouterr().err
    assert main(["--run-dir", str(tmp_path / "c")]) == 2
    assert "--base and --dataset are required" in capsys.readouterr().err


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tiny_pipeline_dir, curated_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"

    def terminate_after_two_steps():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_metrics(run_dir)) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_two_steps)
    killer.start()
    code = main(
        [
            "--base",
            str(tiny_pipeline_dir("sd", 0)),
            "--dataset",
            str(curated_dataset),
            "--run-dir",
            str(run_dir),
            "--max-steps",
            "500",
            *TINY,
        ]
    )
    killer.join()
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["stopped"] is True and 2 <= result["step"] < 500
    assert checkpoints.checkpoint_step(checkpoints.latest_checkpoint(run_dir)) == result["step"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the CLI's only while it trains
