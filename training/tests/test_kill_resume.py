"""A quality-tuning run SIGKILLed at an arbitrary step resumes to the weights of an uninterrupted run."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from training import checkpoints
from training.metrics import read_metrics
from training.quality_tuning import train
from training.tests.curated_datasets import TINY_CONFIG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
# Observed on CPU in fp32 with one thread: the resumed weights equal the uninterrupted ones bit for bit.
RESUME_TOLERANCE = 0.0

CONFIG = dataclasses.replace(
    TINY_CONFIG, max_steps=30, checkpoint_every=5, validation_every=5, learning_rate=1e-4, random_flip=True, seed=3
)
CLI_FLAGS = [
    "--resolution",
    "32",
    "--batch-size",
    "4",
    "--max-steps",
    "30",
    "--checkpoint-every",
    "5",
    "--validation-every",
    "5",
    "--validation-prompts",
    "a red circle on a blue background",
    "--validation-seeds",
    "0",
    "--validation-inference-steps",
    "2",
    "--learning-rate",
    "1e-4",
    "--random-flip",
    "--seed",
    "3",
]


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "training.quality_tuning", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(process, condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if process.poll() is not None:
            raise AssertionError(f"training exited before {what}:\n{process.stderr.read()}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"no {what} after {timeout}s")


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tiny_pipeline_dir, curated_dataset, tmp_path):
    base, cache = tiny_pipeline_dir("sd", 0), tmp_path / "cache"
    killed_dir = tmp_path / "killed"
    process = run_cli(
        "--base", base, "--dataset", curated_dataset, "--run-dir", killed_dir, "--cache-dir", cache, *CLI_FLAGS
    )
    pointer = killed_dir / "checkpoints" / "latest"
    reported = wait_until(process, lambda: pointer.is_file() and pointer.read_text().strip(), "a checkpoint")
    # Kill between checkpoints, so that trained steps are lost and their metrics lines must be dropped.
    wait_until(process, lambda: len(read_metrics(killed_dir)) >= 7, "step 7")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL

    # The checkpoint that was reported saved is complete and loadable.
    checkpoint = killed_dir / "checkpoints" / reported
    assert checkpoints.read_training_state(checkpoint)["step"] == checkpoints.checkpoint_step(checkpoint)
    assert load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    killed_at = max(m["step"] for m in read_metrics(killed_dir))
    assert checkpoints.checkpoint_step(checkpoint) < killed_at < CONFIG.max_steps
    # What a kill in the middle of writing the next checkpoint leaves behind; resuming must ignore it.
    half_written = checkpoints.staging_dir(killed_dir, 100)
    half_written.mkdir(parents=True, exist_ok=True)
    (half_written / "optimizer.pt").write_bytes(b"\0" * 10)

    resumed = run_cli("--run-dir", killed_dir)  # base, dataset and settings come from the run's run.json
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err

    # The uninterrupted run, in this process (one thread, like the subprocesses).
    reference = train(CONFIG, base, curated_dataset, tmp_path / "reference", cache_dir=cache)

    final = checkpoints.latest_checkpoint(killed_dir)
    assert final.name == "step-000030" and not half_written.exists()
    expected = load_file(reference.checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    difference = max((expected[k] - actual[k]).abs().max().item() for k in expected)
    assert difference <= RESUME_TOLERANCE, f"max abs weight difference {difference} (killed after step {killed_at})"
    metrics = read_metrics(killed_dir)
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert [m["loss"] for m in metrics] == [m["loss"] for m in read_metrics(reference.run_dir)]
